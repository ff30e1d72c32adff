"""The toy world: captioned synthetic clips whose every caption attribute a program can check.

One object moves in a straight line over a plain background. A caption states seven attributes,
each drawn uniformly from a small vocabulary (chance level = 1 / number of choices)::

    "a small red bar on the left moves upward slowly on a black background"
       size  colour shape position  direction  speed          background

=============  ==========================================  ==================================
attribute      choices                                     how it is drawn (fractions of W/H)
=============  ==========================================  ==================================
colour         red green blue yellow purple cyan           saturated RGB, +-0.1 jitter
shape          square bar                                  hard-edged; a bar is half as tall
size           small large                                 half-width 0.12 / 0.22 of the side
position       left center right                           mean x over the clip 0.25/0.5/0.75
direction      left right up down ("moves leftward", ...)  constant velocity
speed          slow fast                                   0.024 / 0.06 of the side per frame
background     black gray white                            uniform colour
=============  ==========================================  ==================================

Jitter: mean x +-0.04, mean y 0.5 +-0.08, size and speed +-10 %. A fast object travels 0.48 of
the frame over 9 frames, so it may leave the frame in part. A bar is as wide as a square of its
size and half as tall: the two shapes differ in their proportions, which blur, the VAE's 4x4 pixel
cells and a model that rounds its corners all keep (a disc and a square differ in a few corner
pixels: the toy model, which works on 16x16-pixel tokens, drew its squares as round blobs that read
as discs). Position and direction use different
words ("on the left" / "moves leftward"): with the same word for both, a small text encoder has
to learn to tell them apart by context, and the toy model learned neither (measured).
``generate`` is deterministic for a seed (a private ``torch.Generator``) and returns videos in the
VAE layout ``[n, 3, frames, H, W]`` in -1..1, the attributes and the captions.

``measure`` is the inverse: from pixels only (float ``[N, T, H, W, 3]`` in 0..1, the reward
layout) it estimates the background colour (median of the border), the object's colour, and from
each pixel's *coverage* (how far its colour lies from the background towards the object's) the
area, the width and height of the box it spans, its aspect (height / width: 1 square, 1/2 bar), its mean position and its velocity
(the edges' least-squares slope over frames). Coverage sums survive blur and the VAE's averaging,
so the readings hold on decoded videos too. From these ``attribute_probs`` gives, per attribute, a
soft classification over the choices (a softmax of squared distances to each choice's prototype
feature); its argmax is the attribute's exact reading and the probability of the asked choice is
the per-attribute reward (``trainer.rewards.toy_world``). On clips from ``generate`` the argmax
reads every attribute correctly; through the toy model's VAE at least 90 % (tested).
``parse_caption`` reads the asked attributes back from a caption (any subset may be stated);
``objects_kept`` checks that a video still shows an object of the asked colour on the asked
background (the guard against reward hacking that the demo uses).
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
SHAPES = ("square", "bar")
SIZES = {"small": 0.12, "large": 0.22}
"""Half the object's width (both shapes) as a fraction of the shorter side; a bar is half as tall as wide."""
POSITIONS = {"left": 0.25, "center": 0.5, "right": 0.75}
"""Mean x of the object's centre over the clip, as a fraction of the width."""
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEEDS = {"slow": 0.024, "fast": 0.06}
"""Distance per frame as a fraction of the shorter side."""

ATTRIBUTES = ("colour", "shape", "size", "position", "direction", "speed", "background")
CHOICES = {
    "colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES), "position": tuple(POSITIONS),
    "direction": tuple(DIRECTIONS), "speed": tuple(SPEEDS), "background": tuple(BACKGROUNDS),
}
"""The choices of each attribute, in the order of ``attribute_probs``' columns."""

_POSITION_PHRASE = {"left": "on the left", "center": "in the center", "right": "on the right"}
_SPEED_WORD = {"slow": "slowly", "fast": "fast"}
_DIRECTION_WORD = {"left": "leftward", "right": "rightward", "up": "upward", "down": "downward"}
"""Direction words differ from the position words ("on the left" / "moves leftward"), so a text
encoder need not tell the two uses of "left" apart by context."""
CAPTION_WORDS = ("a", "on", "in", "the", "moves", "background", *_POSITION_PHRASE, *_DIRECTION_WORD.values(),
                 *_SPEED_WORD.values(), *COLOURS, *SHAPES, *SIZES, *BACKGROUNDS)
"""Every word a caption uses."""


def caption(attrs: dict[str, str]) -> str:
    """The caption of one clip's attributes (all seven must be given)."""
    return (f"a {attrs['size']} {attrs['colour']} {attrs['shape']} {_POSITION_PHRASE[attrs['position']]} "
            f"moves {_DIRECTION_WORD[attrs['direction']]} {_SPEED_WORD[attrs['speed']]} on a {attrs['background']} background")


_PATTERNS = {
    "colour": r"\b(red|green|blue|yellow|purple|cyan)\b",
    "shape": r"\b(square|bar)\b",
    "size": r"\b(small|large)\b",
    "position": r"\b(?:on|in) the (left|center|right)\b",
    "direction": r"\bmov\w* (left|right|up|down)(?:wards?)?\b",
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
    is_bar = torch.tensor([a["shape"] == "bar" for a in attrs])

    t = torch.arange(frames, dtype=torch.float32) - (frames - 1) / 2  # centred: mean position = mean_x
    cx = mean_x[:, None] + (speed * direction[:, 0])[:, None] * t  # [n, frames]
    cy = mean_y[:, None] + (speed * direction[:, 1])[:, None] * t
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    dx = xs.view(1, 1, 1, width) - cx.view(n, frames, 1, 1)
    dy = ys.view(1, 1, height, 1) - cy.view(n, frames, 1, 1)
    r = half.view(n, 1, 1, 1)
    square = (dx.abs() <= r) & (dy.abs() <= r)
    bar = (dx.abs() <= r) & (dy.abs() <= r / 2)
    mask = torch.where(is_bar.view(n, 1, 1, 1), bar, square)  # [n, frames, H, W]
    video = background.view(n, 3, 1, 1, 1).expand(n, 3, frames, height, width)
    return torch.where(mask.unsqueeze(1), colour.view(n, 3, 1, 1, 1), video).contiguous()


def captions(n: int, seed: int = 0, **fixed: str) -> list[str]:
    """``n`` random captions (the prompt sets of the toy presets, the demo and the benchmark).

    ``fixed``: attributes every caption asks for, e.g. ``captions(16, shape="bar")``."""
    for attr, choice in fixed.items():
        if choice not in CHOICES.get(attr, ()):
            raise ValueError(f"{attr}={choice!r}: not a toy-world choice ({CHOICES.get(attr)})")
    return [caption({**a, **fixed}) for a in random_attributes(n, torch.Generator().manual_seed(int(seed)))]


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
    width: torch.Tensor  # [N] mean width of the object per frame, fraction of the side
    aspect: torch.Tensor  # [N] mean height / width per frame (square 1, bar 1/2)
    x: torch.Tensor  # [N] mean centre x, fraction of the width
    velocity: torch.Tensor  # [N, 2] centre motion per frame (x right, y down), fraction of the side
    found: torch.Tensor  # [N] bool


def _edge_slope(edges: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Least-squares slope over frames of edge positions ``[N, E, T]`` (E edges fitted with one
    common slope and their own intercepts), using only ``valid`` entries; 0 where under-determined."""
    t = torch.arange(edges.shape[-1], dtype=torch.float32).expand_as(edges)
    w = valid.float()
    count = w.sum(dim=-1, keepdim=True).clamp_min(1)
    dt = (t - (t * w).sum(dim=-1, keepdim=True) / count) * w
    de = (edges - (edges * w).sum(dim=-1, keepdim=True) / count) * w
    var = (dt * dt).sum(dim=(1, 2))
    return torch.where(var > 0.5, (dt * de).sum(dim=(1, 2)) / var.clamp_min(1e-6), torch.zeros_like(var))


def measure(videos: torch.Tensor) -> Measurement:
    """Read the toy-world features of float videos ``[N, T, H, W, 3]`` in 0..1.

    * background: the median colour of the frame border;
    * colour: the mean of the object's core, the pixels at least 70 % as far from the background
      as the farthest one;
    * coverage ``c`` of every pixel: its colour projected on the segment background -> object
      colour, clamped to 0..1 (1 inside the object, the covered fraction on a blurred or blocky
      edge). Blur and the VAE's averaging keep sums of ``c``, so the measures below are built from
      them: area = ``sum c`` per frame; width = the sum over columns of each column's largest
      ``c``, height the same over rows (a blurred edge keeps the sum); aspect = height / width
      (1 for a square, 1/2 for a bar, blurred or not); width and aspect over the frames where
      the object does not touch the border;
    * x: the coverage-weighted mean x over the frames;
    * velocity: one least-squares slope over frames for the object's edges (the columns / rows
      where ``c`` crosses 1/2), leaving out edges on the frame border, so an object partly out of
      the frame is measured by the edge still inside.
    """
    v = videos.float()
    n, frames, height, width, _ = v.shape
    side = min(height, width)
    border = torch.cat([v[:, :, 0], v[:, :, -1], v[:, :, :, 0], v[:, :, :, -1]], dim=2)  # [N, T, 2H+2W, 3]
    background = border.reshape(n, -1, 3).median(dim=1).values
    diff = v - background.view(n, 1, 1, 1, 3)
    dist = diff.norm(dim=-1)  # [N, T, H, W]
    peak = dist.flatten(1).max(dim=1).values.view(n, 1, 1, 1)
    core = ((dist >= 0.7 * peak) & (dist > OBJECT_THRESHOLD)).float()
    colour = (v * core.unsqueeze(-1)).sum(dim=(1, 2, 3)) / core.sum(dim=(1, 2, 3)).clamp_min(1).unsqueeze(-1)
    axis = colour - background  # [N, 3]
    reach = axis.square().sum(dim=-1).clamp_min(1e-6)
    cover = ((diff * axis.view(n, 1, 1, 1, 3)).sum(dim=-1) / reach.view(n, 1, 1, 1)).clamp(0, 1)
    cover = cover * (dist > OBJECT_THRESHOLD).float()  # [N, T, H, W]
    mask = cover >= 0.5
    present = mask.flatten(2).any(dim=2)  # [N, T]
    found = (present.sum(dim=1) >= 2) & (peak.flatten() > OBJECT_THRESHOLD)
    w = present.float()
    frames_present = w.sum(dim=1).clamp_min(1)

    per_frame = cover.sum(dim=(2, 3))  # [N, T]
    area = (per_frame * w).sum(dim=1) / frames_present / (height * width)
    col_profile, row_profile = cover.amax(dim=2), cover.amax(dim=3)  # [N, T, W], [N, T, H]
    obj_width, obj_height = col_profile.sum(dim=-1), row_profile.sum(dim=-1)  # [N, T] pixels
    touches = (mask[:, :, 0].any(-1) | mask[:, :, -1].any(-1) | mask[:, :, :, 0].any(-1) | mask[:, :, :, -1].any(-1))
    inner = w * (~touches).float()
    use = torch.where(inner.sum(dim=1, keepdim=True) > 0, inner, w)
    frames_used = use.sum(dim=1).clamp_min(1)
    aspect = (obj_height / obj_width.clamp_min(1e-6) * use).sum(dim=1) / frames_used
    size = (obj_width * use).sum(dim=1) / frames_used / side

    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    cx = (cover.sum(dim=2) * xs).sum(dim=-1) / per_frame.clamp_min(1e-6)  # [N, T]
    x = (cx * w).sum(dim=1) / frames_present

    def edges(profile: torch.Tensor, length: int):
        """First and last index where the profile reaches 1/2, and whether each is off the border."""
        on = profile >= 0.5
        idx = torch.arange(length, dtype=torch.float32)
        lo = torch.where(on, idx, torch.full_like(idx, float(length))).amin(dim=-1)
        hi = torch.where(on, idx, torch.full_like(idx, -1.0)).amax(dim=-1)
        any_on = on.any(dim=-1)
        return torch.stack([lo, hi], dim=1), torch.stack([any_on & (lo > 0), any_on & (hi < length - 1)], dim=1)

    ex, vx_ok = edges(col_profile, width)
    ey, vy_ok = edges(row_profile, height)
    vx = _edge_slope(ex, vx_ok) / side
    vy = _edge_slope(ey, vy_ok) / side
    return Measurement(background, colour, area, size, aspect, x, torch.stack([vx, vy], dim=1), found)


def _prototypes() -> dict[str, torch.Tensor]:
    """The feature each choice shows on an ideal clip (the columns of ``attribute_probs``)."""
    return {
        "colour": torch.tensor([COLOURS[c] for c in CHOICES["colour"]]),
        "background": torch.tensor([BACKGROUNDS[c] for c in CHOICES["background"]]),
        # log width, the same for both shapes of a size; log aspect (height / width).
        "size": torch.tensor([[math.log(2 * SIZES[k])] for k in CHOICES["size"]]),
        "shape": torch.tensor([[0.0], [math.log(0.5)]]),
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
        "colour": m.colour, "background": m.background, "size": m.width.clamp_min(1e-6).log()[:, None],
        "shape": m.aspect.clamp_min(1e-6).log()[:, None], "position": m.x[:, None],
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


def motion_along(m: Measurement, directions: list[str]) -> torch.Tensor:
    """``[N]`` each video's velocity along its direction (a ``DIRECTIONS`` key), fraction of the side
    per frame: the asked speed for a clip that moves as asked, negative for one moving against it."""
    return (m.velocity * torch.tensor([DIRECTIONS[d] for d in directions])).sum(dim=1)


def motion_shown(m: Measurement, attrs: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """How far videos move their object along the direction their captions ask, per asked speed.

    ``{speed: {"asked": distance per frame, "along": mean velocity along the asked direction,
    "magnitude": mean speed in any direction, "videos": count}}``, in fractions of the side per
    frame, over the videos that show an object. A clip of ``generate`` moves ``along`` about its
    ``asked`` speed; a model that ignores direction averages ``along`` near 0 whatever its
    ``magnitude``, and one that draws still objects has both near 0.
    """
    along = motion_along(m, [a["direction"] for a in attrs])
    out = {}
    for speed, asked in SPEEDS.items():
        rows = [i for i, a in enumerate(attrs) if a["speed"] == speed and bool(m.found[i])]
        if rows:
            out[speed] = {"asked": asked, "along": float(along[rows].mean()),
                          "magnitude": float(m.velocity[rows].norm(dim=1).mean()), "videos": len(rows)}
    return out


def read_attributes(videos: torch.Tensor, m: Measurement | None = None) -> list[dict[str, str | None]]:
    """The attributes each video shows (argmax readings); object attributes are None without an object.

    ``m``: the videos' ``measure`` when already computed."""
    m = measure(videos) if m is None else m
    probs = attribute_probs(m)
    out = []
    for i in range(videos.shape[0]):
        row = {}
        for attr in ATTRIBUTES:
            shown = attr == "background" or bool(m.found[i])
            row[attr] = CHOICES[attr][int(probs[attr][i].argmax())] if shown else None
        out.append(row)
    return out


MAX_OBJECT_AREA = 0.3
"""The largest object the world draws (a large square) covers 0.19 of the frame; a reading above
this is a frame flooded with the object's colour, not an object."""


def objects_kept(videos: torch.Tensor, prompts: list[str], m: Measurement | None = None) -> list[bool]:
    """Per video: does it still show one object of the caption's colour on the caption's background?

    The guard against reward hacking and drift that the demo and its tests use: an aligned model
    may move or reshape its objects, but must not lose them, recolour them, flood the frame with
    them or change the background. Attributes a caption does not state are not checked.
    """
    m = measure(videos) if m is None else m
    read = read_attributes(videos, m)
    out = []
    for i, (r, prompt) in enumerate(zip(read, prompts)):
        asked = parse_caption(prompt)
        ok = bool(m.found[i]) and float(m.area[i]) <= MAX_OBJECT_AREA
        ok = ok and all(r[a] == asked[a] for a in ("colour", "background") if a in asked)
        out.append(ok)
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
