"""The toy world: captioned synthetic clips whose every caption attribute a program can check.

One object moves in a straight line over a plain background. A caption states seven attributes,
each drawn uniformly from a small vocabulary (chance level = 1 / number of choices)::

    "a small red circle on the left moves up slowly on a black background"
       size  colour shape position  direction speed          background

=============  ==========================================  ==================================
attribute      choices                                     how it is drawn (fractions of W/H)
=============  ==========================================  ==================================
colour         red green blue yellow purple cyan           saturated RGB, +-0.1 jitter
shape          square circle                               hard-edged
size           small large                                 half-size 0.10 / 0.22 of the side
position       left center right                           mean x over the clip 0.25/0.5/0.75
direction      left right up down                          constant velocity
speed          slow fast                                   0.015 / 0.045 of the side per frame
background     black gray white                            uniform colour
=============  ==========================================  ==================================

Jitter: mean x +-0.04, mean y 0.5 +-0.08, size and speed +-10 %. ``generate`` is deterministic
for a seed (a private ``torch.Generator``) and returns videos in the VAE layout
``[n, 3, frames, H, W]`` in -1..1, the attributes and the captions.

``measure`` is the inverse: from pixels only (float ``[N, T, H, W, 3]`` in 0..1, the reward
layout) it estimates the background colour (median of the border), the object (pixels far from
the background), its colour, area, fill of its bounding box, mean position and velocity. From
these ``attribute_probs`` gives, per attribute, a soft classification over the choices
(a softmax of squared distances to each choice's prototype feature); its argmax is the
attribute's exact reading and the probability of the asked choice is the per-attribute reward
(``trainer.rewards.toy_world``). On clips from ``generate`` the argmax reads every attribute
correctly (tested); on VAE-decoded clips small objects blur, so shape is the hardest to read.
``parse_caption`` reads the asked attributes back from a caption (any subset may be stated).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

COLOURS = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "purple": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0),
}
"""Object colours, RGB in 0..1."""
BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0)}
"""Background colours, RGB in 0..1."""
SHAPES = ("square", "circle")
SIZES = {"small": 0.10, "large": 0.22}
"""Half-size (square) or radius (circle) as a fraction of the shorter side."""
POSITIONS = {"left": 0.25, "center": 0.5, "right": 0.75}
"""Mean x of the object's centre over the clip, as a fraction of the width."""
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEEDS = {"slow": 0.015, "fast": 0.045}
"""Distance per frame as a fraction of the shorter side."""

ATTRIBUTES = ("colour", "shape", "size", "position", "direction", "speed", "background")
CHOICES = {
    "colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES), "position": tuple(POSITIONS),
    "direction": tuple(DIRECTIONS), "speed": tuple(SPEEDS), "background": tuple(BACKGROUNDS),
}
"""The choices of each attribute, in the order of ``attribute_probs``' columns."""

_POSITION_PHRASE = {"left": "on the left", "center": "in the center", "right": "on the right"}
_SPEED_WORD = {"slow": "slowly", "fast": "fast"}


def caption(attrs: dict[str, str]) -> str:
    """The caption of one clip's attributes (all seven must be given)."""
    return (f"a {attrs['size']} {attrs['colour']} {attrs['shape']} {_POSITION_PHRASE[attrs['position']]} "
            f"moves {attrs['direction']} {_SPEED_WORD[attrs['speed']]} on a {attrs['background']} background")


_PATTERNS = {
    "colour": r"\b(red|green|blue|yellow|purple|cyan)\b",
    "shape": r"\b(square|circle)\b",
    "size": r"\b(small|large)\b",
    "position": r"\b(?:on|in) the (left|center|right)\b",
    "direction": r"\bmov\w* (left|right|up|down)\b",
    "speed": r"\b(slow|fast)(?:ly)?\b",
    "background": r"\b(black|gray|white) background\b",
}


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption asks for: ``{attribute: choice}`` for each one it states."""
    text = text.lower()
    out = {}
    for attr, pattern in _PATTERNS.items():
        m = re.search(pattern, text)
        if m:
            out[attr] = m.group(1)
    return out


def random_attributes(n: int, g: torch.Generator) -> list[dict[str, str]]:
    """``n`` attribute dicts, each attribute uniform over its choices."""
    cols = {a: torch.randint(0, len(CHOICES[a]), (n,), generator=g).tolist() for a in ATTRIBUTES}
    return [{a: CHOICES[a][cols[a][i]] for a in ATTRIBUTES} for i in range(n)]


def render(attrs: list[dict[str, str]], frames: int = 9, height: int = 64, width: int = 64,
           g: torch.Generator | None = None) -> torch.Tensor:
    """Clips of the given attributes as ``[n, 3, frames, H, W]`` in -1..1 (with ``g``'s jitter)."""
    n = len(attrs)
    g = g if g is not None else torch.Generator().manual_seed(0)
    jitter = lambda scale: (torch.rand(n, generator=g) * 2 - 1) * scale  # noqa: E731
    side = min(height, width)
    colour = torch.tensor([COLOURS[a["colour"]] for a in attrs]) + jitter(0.1)[:, None]
    colour = colour.clamp(0, 1) * 2 - 1
    background = torch.tensor([BACKGROUNDS[a["background"]] for a in attrs]) * 2 - 1
    half = torch.tensor([SIZES[a["size"]] for a in attrs]) * (1 + jitter(0.1)) * side
    mean_x = (torch.tensor([POSITIONS[a["position"]] for a in attrs]) + jitter(0.04)) * width
    mean_y = (0.5 + jitter(0.08)) * height
    speed = torch.tensor([SPEEDS[a["speed"]] for a in attrs]) * (1 + jitter(0.1)) * side
    direction = torch.tensor([DIRECTIONS[a["direction"]] for a in attrs])
    is_circle = torch.tensor([a["shape"] == "circle" for a in attrs])

    t = torch.arange(frames, dtype=torch.float32) - (frames - 1) / 2  # centred: mean position = mean_x
    cx = mean_x[:, None] + (speed * direction[:, 0])[:, None] * t  # [n, frames]
    cy = mean_y[:, None] + (speed * direction[:, 1])[:, None] * t
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    dx = xs.view(1, 1, 1, width) - cx.view(n, frames, 1, 1)
    dy = ys.view(1, 1, height, 1) - cy.view(n, frames, 1, 1)
    r = half.view(n, 1, 1, 1)
    square = (dx.abs() <= r) & (dy.abs() <= r)
    circle = dx.square() + dy.square() <= r.square()
    mask = torch.where(is_circle.view(n, 1, 1, 1), circle, square)  # [n, frames, H, W]
    video = background.view(n, 3, 1, 1, 1).expand(n, 3, frames, height, width)
    return torch.where(mask.unsqueeze(1), colour.view(n, 3, 1, 1, 1), video).contiguous()


def captions(n: int, seed: int = 0) -> list[str]:
    """``n`` random captions (the prompt sets of the toy presets and benchmark)."""
    return [caption(a) for a in random_attributes(n, torch.Generator().manual_seed(int(seed)))]


def generate(n: int, seed: int = 0, frames: int = 9, height: int = 64, width: int = 64):
    """``n`` random clips: ``(videos [n, 3, frames, H, W] in -1..1, attributes, captions)``."""
    g = torch.Generator().manual_seed(int(seed))
    attrs = random_attributes(n, g)
    return render(attrs, frames, height, width, g), attrs, [caption(a) for a in attrs]


# ------------------------------------------------------------------------------ measuring ----

OBJECT_THRESHOLD = 0.3
"""A pixel belongs to the object when its RGB distance (0..1 units) from the background exceeds
this. The weakest contrast in the world is 0.87 (gray against a saturated colour)."""

SHARPNESS = 3.0
"""Log-odds an ideal clip gets for its choice over the nearest other choice (``attribute_probs``)."""

@dataclass
class Measurement:
    """Per-video features read from pixels (``N`` videos); ``found`` is False where no object shows."""

    background: torch.Tensor  # [N, 3] RGB 0..1
    colour: torch.Tensor  # [N, 3] RGB 0..1 of the object's core
    area: torch.Tensor  # [N] mean object area per frame, fraction of the frame
    fill: torch.Tensor  # [N] mean of area / bounding-box area (square 1, circle pi/4)
    x: torch.Tensor  # [N] mean centre x, fraction of the width
    velocity: torch.Tensor  # [N, 2] centre motion per frame (x right, y down), fraction of the side
    found: torch.Tensor  # [N] bool


def measure(videos: torch.Tensor) -> Measurement:
    """Read the toy-world features of float videos ``[N, T, H, W, 3]`` in 0..1."""
    v = videos.float()
    n, frames, height, width, _ = v.shape
    side = min(height, width)
    border = torch.cat([v[:, :, 0], v[:, :, -1], v[:, :, :, 0], v[:, :, :, -1]], dim=2)  # [N, T, 2H+2W, 3]
    background = border.reshape(n, -1, 3).median(dim=1).values
    dist = (v - background.view(n, 1, 1, 1, 3)).norm(dim=-1)  # [N, T, H, W]
    mask = (dist > OBJECT_THRESHOLD).float()
    per_frame = mask.sum(dim=(2, 3))  # [N, T]
    present = per_frame > 0
    found = present.sum(dim=1) >= 2

    # Colour: the pixels at least 70 % as far from the background as the farthest one (the core).
    peak = dist.flatten(1).max(dim=1).values.view(n, 1, 1, 1)
    core = ((dist >= 0.7 * peak) & (mask > 0)).float()
    colour = (v * core.unsqueeze(-1)).sum(dim=(1, 2, 3)) / core.sum(dim=(1, 2, 3)).clamp_min(1).unsqueeze(-1)

    area = per_frame.mean(dim=1) / (height * width)
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    denom = per_frame.clamp_min(1)
    cx = (mask.sum(dim=2) * xs).sum(dim=-1) / denom  # [N, T]
    cy = (mask.sum(dim=3) * ys).sum(dim=-1) / denom
    cols, rows = mask.amax(dim=2), mask.amax(dim=3)  # [N, T, W], [N, T, H]
    bbox = cols.sum(dim=-1) * rows.sum(dim=-1)
    fill_frame = per_frame / bbox.clamp_min(1)
    w = present.float()
    x = (cx * w).sum(dim=1) / w.sum(dim=1).clamp_min(1)
    fill = (fill_frame * w).sum(dim=1) / w.sum(dim=1).clamp_min(1)

    # Velocity: least-squares slope of the centre over the frames where the object shows.
    t = torch.arange(frames, dtype=torch.float32).expand(n, frames)
    t_mean = (t * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1)
    dt = (t - t_mean) * w
    var = (dt * dt).sum(dim=1).clamp_min(1e-6)
    vx = (dt * cx).sum(dim=1) / var * width / side
    vy = (dt * cy).sum(dim=1) / var * height / side
    return Measurement(background, colour, area, fill, x, torch.stack([vx, vy], dim=1), found)


def _prototypes() -> dict[str, torch.Tensor]:
    """The feature each choice shows on an ideal clip (the columns of ``attribute_probs``)."""
    square_area = {k: (2 * s) ** 2 for k, s in SIZES.items()}
    circle_area = {k: math.pi * s ** 2 for k, s in SIZES.items()}
    return {
        "colour": torch.tensor([COLOURS[c] for c in CHOICES["colour"]]),
        "background": torch.tensor([BACKGROUNDS[c] for c in CHOICES["background"]]),
        # log area; the mean of square and circle (the two differ by log(4/pi) = 0.24).
        "size": torch.tensor([[0.5 * math.log(square_area[k] * circle_area[k])] for k in CHOICES["size"]]),
        "shape": torch.tensor([[1.0], [math.pi / 4]]),
        "position": torch.tensor([[POSITIONS[k]] for k in CHOICES["position"]]),
        "direction": torch.tensor([DIRECTIONS[k] for k in CHOICES["direction"]]),
        "speed": torch.tensor([[math.log(SPEEDS[k])] for k in CHOICES["speed"]]),
    }


def attribute_probs(m: Measurement) -> dict[str, torch.Tensor]:
    """``{attribute: [N, len(CHOICES[attribute])]}`` soft readings; rows sum to 1.

    For every attribute but direction: ``softmax(-|feature - prototype|^2 / temperature)`` with
    ``temperature = d_min^2 / SHARPNESS``, ``d_min`` the distance between the two closest
    prototypes: an ideal clip gets log-odds ``SHARPNESS`` for its choice against the nearest other
    one, and a clip half-way between two choices gets 50/50. Smooth rather than 0/1 so that group
    rewards differ by how close a video comes (a usable RL signal); the argmax is the exact reading.
    Direction: ``softmax(velocity . unit_direction / (slow speed / SHARPNESS))``, the same log-odds
    against a perpendicular direction at the slow speed. Where no object is found every object
    attribute is all zeros (nothing is shown); background is always read.
    """
    protos = _prototypes()
    features = {
        "colour": m.colour, "background": m.background, "size": m.area.clamp_min(1e-6).log()[:, None],
        "shape": m.fill[:, None], "position": m.x[:, None],
        "speed": m.velocity.norm(dim=1).clamp_min(1e-6).log()[:, None],
    }
    out = {}
    for attr in ATTRIBUTES:
        p = protos[attr]
        if attr == "direction":
            logits = m.velocity @ p.T / (SPEEDS["slow"] / SHARPNESS)
        else:
            gaps = torch.cdist(p, p).square() + torch.eye(len(p)) * 1e9
            d2 = (features[attr][:, None, :] - p[None]).square().sum(dim=-1)
            logits = -d2 / (gaps.min() / SHARPNESS)
        probs = logits.softmax(dim=1)
        if attr != "background":
            probs = probs * m.found[:, None].float()
        out[attr] = probs
    return out


def read_attributes(videos: torch.Tensor) -> list[dict[str, str | None]]:
    """The attributes each video shows (argmax readings); object attributes are None without an object."""
    m = measure(videos)
    probs = attribute_probs(m)
    out = []
    for i in range(videos.shape[0]):
        row = {}
        for attr in ATTRIBUTES:
            shown = attr == "background" or bool(m.found[i])
            row[attr] = CHOICES[attr][int(probs[attr][i].argmax())] if shown else None
        out.append(row)
    return out


def to_reward_layout(videos: torch.Tensor) -> torch.Tensor:
    """``[n, 3, T, H, W]`` in -1..1 (generator/VAE layout) to ``[n, T, H, W, 3]`` in 0..1."""
    return ((videos.permute(0, 2, 3, 4, 1) + 1) / 2).clamp(0, 1)


def main(argv: list[str] | None = None) -> None:
    """CLI: a contact sheet (PNG) of ``--n`` generated clips with their captions."""
    import argparse

    from ..fileio import write_contact_sheet

    parser = argparse.ArgumentParser(description="Preview the toy world: generated clips and their captions.")
    parser.add_argument("--n", type=int, default=6, help="clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="toy_world.png", help="PNG to write")
    args = parser.parse_args(argv)
    videos, _, captions = generate(args.n, seed=args.seed)
    frames = (to_reward_layout(videos) * 255).round().to(torch.uint8).numpy()
    write_contact_sheet(args.out, [(c, [(f"clip {i}", v)]) for i, (c, v) in enumerate(zip(captions, frames))])
    print("\n".join(captions))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
