"""Weight-free rewards: deterministic, no model files, float32 CPU scores.

Registered names and definitions (a video is ``T`` RGB frames; higher score is better):

* ``jpeg_incompressibility`` (DDPO): mean over frames of the frame's JPEG size in kB (1 kB =
  1000 bytes), encoded by Pillow at quality 95. ``every=k`` encodes only frames 0, k, 2k, ...
* ``jpeg_compressibility`` (DDPO): ``-size_kB / 500`` with the same size, so it rewards simple,
  flat, compressible videos; always equals ``-jpeg_incompressibility / 500``.
* ``temporal_flickering`` (VBench): on uint8 frames,
  ``(255 - mean_t mean_pixels |F_{t+1} - F_t|) / 255`` in 0..1; 1 for a static video, 0 for
  frames alternating black/white; a single-frame video scores 1.
* ``brightness``: mean Rec.601 luminance ``0.299 R + 0.587 G + 0.114 B`` over all frames and
  pixels, in 0..1.
* ``color``: closeness to a target colour ``rgb=[r, g, b]`` (0..255, default red):
  ``1 - mean_pixels ||pixel - rgb|| / (255 * sqrt(3))`` in 0..1 (1 when every pixel is the target).

All but the JPEG encoding are vectorised torch over the whole batch; they run on the videos'
device and return scores on CPU (the :class:`~trainer.rewards.base.Reward` base casts them).
"""

from __future__ import annotations

import io
import math
from typing import Any

import torch
from PIL import Image

from ..errors import UserError
from .base import Reward, RewardOutput, register_reward

__all__ = [
    "jpeg_sizes_kb",
    "JpegCompressibility",
    "JpegIncompressibility",
    "TemporalFlickering",
    "Brightness",
    "Color",
]

JPEG_QUALITY = 95
"""Pillow JPEG quality used by the JPEG rewards (DDPO's setting)."""

REC601 = (0.299, 0.587, 0.114)
"""Rec.601 luma weights of R, G, B used by ``brightness``."""


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}.")
    return value


def jpeg_sizes_kb(videos: torch.Tensor, every: int = 1) -> torch.Tensor:
    """Mean JPEG size in kB (1000 bytes) of frames ``0, every, 2*every, ...`` of each video.

    ``videos``: uint8 ``[N, T, H, W, 3]``. Each frame is encoded by Pillow at quality
    :data:`JPEG_QUALITY` with default settings (deterministic). Returns float32 ``[N]`` on CPU.
    """
    frames = videos[:, ::every].cpu().numpy()
    sizes = torch.zeros(frames.shape[0], dtype=torch.float64)
    for n in range(frames.shape[0]):
        total = 0
        for t in range(frames.shape[1]):
            buffer = io.BytesIO()
            Image.fromarray(frames[n, t]).save(buffer, format="JPEG", quality=JPEG_QUALITY)
            total += buffer.tell()
        sizes[n] = total / 1000.0 / frames.shape[1]
    return sizes.to(torch.float32)


@register_reward("jpeg_incompressibility")
class JpegIncompressibility(Reward):
    """DDPO's JPEG incompressibility: mean per-frame JPEG size in kB at quality 95 (see
    :func:`jpeg_sizes_kb`). Rewards detailed, textured videos. ``every``: score every n-th frame."""

    input_format = "uint8"

    def __init__(self, every: int = 1):
        self.every = _positive_int(every, "jpeg_incompressibility 'every'")

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        return RewardOutput(jpeg_sizes_kb(videos, self.every))


@register_reward("jpeg_compressibility")
class JpegCompressibility(Reward):
    """DDPO's JPEG compressibility: ``-size_kB / 500`` with ``size_kB`` the mean per-frame JPEG
    size at quality 95 (see :func:`jpeg_sizes_kb`). Rewards flat, simple videos; a 1 MB-per-frame
    video scores -2. ``every``: score every n-th frame."""

    input_format = "uint8"

    def __init__(self, every: int = 1):
        self.every = _positive_int(every, "jpeg_compressibility 'every'")

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        return RewardOutput(-jpeg_sizes_kb(videos, self.every) / 500.0)


@register_reward("temporal_flickering")
class TemporalFlickering(Reward):
    """VBench temporal flickering on uint8 frames: ``(255 - mean over consecutive frame pairs of
    mean |F_{t+1} - F_t|) / 255``. 1 = static, 0 = every pixel jumps 0 <-> 255 each frame; a
    single-frame video scores 1. Computed with exact integer sums."""

    input_format = "uint8"

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        n, t = int(videos.shape[0]), int(videos.shape[1])
        if t < 2:
            return RewardOutput(torch.ones(n, dtype=torch.float32))
        x = videos.to(torch.int16)
        diff = (x[:, 1:] - x[:, :-1]).abs()
        pixels_per_pair = diff[0, 0].numel()
        # Mean over pairs of per-pair means == total |diff| / (pairs * pixels): every pair is the same size.
        total = diff.sum(dim=(1, 2, 3, 4), dtype=torch.int64).to(torch.float64)
        mean_abs = total / ((t - 1) * pixels_per_pair)
        return RewardOutput(((255.0 - mean_abs) / 255.0).to(torch.float32))


@register_reward("brightness")
class Brightness(Reward):
    """Mean Rec.601 luminance ``0.299 R + 0.587 G + 0.114 B`` of all pixels of all frames, 0..1."""

    input_format = "float"

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        channel_means = videos.mean(dim=(1, 2, 3)).to(torch.float64)  # [N, 3]; luminance is linear
        weights = torch.tensor(REC601, dtype=torch.float64, device=channel_means.device)
        return RewardOutput((channel_means @ weights).to(torch.float32))


@register_reward("color")
class Color(Reward):
    """Closeness to a target colour: ``1 - mean_pixels ||pixel - rgb|| / (255 * sqrt(3))``, 0..1.

    ``rgb``: three numbers in 0..255 (default ``[255, 0, 0]``, red). The distance is Euclidean in
    RGB, so 1 means every pixel equals ``rgb`` and 0 means every pixel is the opposite cube corner.
    """

    input_format = "float"

    def __init__(self, rgb: Any = (255, 0, 0)):
        values = list(rgb) if isinstance(rgb, (list, tuple)) else None
        if (
            values is None or len(values) != 3
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 255 for v in values)
        ):
            raise UserError(f"color 'rgb' must be three numbers in 0..255 such as [255, 0, 0], got {rgb!r}.")
        self.rgb = tuple(float(v) for v in values)

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        target = torch.tensor(self.rgb, dtype=torch.float32, device=videos.device) / 255.0
        distance = (videos - target).pow(2).sum(dim=-1).sqrt()  # [N, T, H, W], 0..sqrt(3)
        mean = distance.mean(dim=(1, 2, 3)).to(torch.float64)
        return RewardOutput((1.0 - mean / math.sqrt(3.0)).to(torch.float32))
