"""Weight-free temporal rewards: ``motion`` and the ``subject_consistency`` proxy.

Both take uint8 videos ``[N, T, H, W, 3]`` and return float32 CPU scores in 0..1.

* ``motion``: how much the video moves, as the mean absolute difference of consecutive frames,

  ``motion = mean_{t=0..T-2} mean_pixels,channels |F_{t+1} - F_t| / 255``,

  computed with exact integer sums. 0 for a static video (and for a single frame), 1 for frames
  alternating black/white. It equals ``1 - temporal_flickering``: use a positive weight to reward
  dynamic videos (static collapse is a known failure of RL on video models) and
  ``temporal_flickering`` to reward smoothness. ``details["peak"]`` is the largest per-pair mean.
  This is a pixel-difference measure, not optical flow: a large uniform object moving slowly
  changes few pixels, a flashing light changes many.

* ``subject_consistency``: a weight-free **proxy** of VBench's subject consistency. VBench embeds
  every frame with DINO and averages, over frames ``t = 1..T-1``,
  ``(max(0, cos(f_t, f_0)) + max(0, cos(f_t, f_{t-1}))) / 2``. This reward uses the same formula
  with features anyone can compute without weights:

  - ``features="pixels"`` (default): the frame area-averaged to at most ``size x size`` pixels
    (default 32), mapped from 0..1 to -1..1 and flattened. Centred values make opposite
    brightness anti-correlated (clamped to 0) instead of always similar. Sensitive to motion and
    layout: it measures *appearance stability*, not identity of a moving subject.
  - ``features="histogram"``: the per-channel colour histogram with ``bins`` equal bins (default
    16) of the full-resolution frame, each channel normalised to sum 1. Ignores where things are,
    so motion of a subject that keeps its colours barely lowers it.

  ``cos(a, b)`` of two zero vectors is 1 and of one zero vector 0 (a ``pixels`` feature is zero
  only for a frame averaging to exactly mid-grey everywhere). A static video scores 1; a
  single-frame video scores 1. ``details``: ``to_first`` and ``to_previous``, the two clamped
  cosine means (the score is their average). It does not recognise objects the way DINO does:
  report VBench numbers with VBench, and use this as a cheap training signal or sanity check.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import Reward, RewardOutput, register_reward

__all__ = [
    "Motion",
    "SubjectConsistency",
    "pixel_features",
    "histogram_features",
    "clamped_cosine",
    "consistency_scores",
]

_ZERO_NORM = 1e-12
"""Feature vectors with an L2 norm at or below this count as zero in :func:`clamped_cosine`."""


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}.")
    return value


@register_reward("motion")
class Motion(Reward):
    """Amount of motion: ``mean_t mean |F_{t+1} - F_t| / 255`` over consecutive uint8 frames, 0..1.

    0 = static (or one frame); equals ``1 - temporal_flickering``. ``details["peak"]``: the largest
    mean absolute difference of one frame pair, also divided by 255.
    """

    input_format = "uint8"

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        n, t = int(videos.shape[0]), int(videos.shape[1])
        if t < 2:
            zeros = torch.zeros(n, dtype=torch.float32)
            return RewardOutput(zeros, {"peak": zeros.clone()})
        values_per_pair = int(videos[0, 0].numel())  # H * W * 3
        pair_sums = torch.zeros(n, t - 1, dtype=torch.int64)
        for i in range(t - 1):  # one pair at a time keeps memory at two frames per video
            diff = (videos[:, i + 1].to(torch.int16) - videos[:, i].to(torch.int16)).abs()
            pair_sums[:, i] = diff.sum(dim=(1, 2, 3), dtype=torch.int64).cpu()
        pair_means = pair_sums.to(torch.float64) / (values_per_pair * 255.0)  # [N, T-1]
        motion = pair_sums.sum(dim=1).to(torch.float64) / ((t - 1) * values_per_pair * 255.0)
        return RewardOutput(motion.float(), {"peak": pair_means.max(dim=1).values.float()})


def pixel_features(frames: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Pixel features of uint8 frames ``[M, H, W, 3]``: area-averaged to ``min(size, H) x
    min(size, W)``, mapped to -1..1, flattened. Returns float64 ``[M, D]``."""
    x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # [M, 3, H, W]
    h, w = int(x.shape[2]), int(x.shape[3])
    x = F.adaptive_avg_pool2d(x, (min(size, h), min(size, w)))
    return (x.to(torch.float64) * 2.0 - 1.0).flatten(1)


def histogram_features(frames: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """Per-channel colour histograms of uint8 frames ``[M, H, W, 3]``.

    Value ``v`` falls in bin ``v * bins // 256``; each channel's histogram is divided by the pixel
    count (sums to 1). Returns float64 ``[M, 3 * bins]`` (R bins, then G, then B).
    """
    m = int(frames.shape[0])
    pixels = int(frames.shape[1]) * int(frames.shape[2])
    offsets = torch.arange(3, device=frames.device, dtype=torch.int64) * bins  # channel c -> c * bins
    out = torch.zeros(m, 3 * bins, dtype=torch.float64)
    for i in range(m):  # one frame at a time: bincount's int64 index costs 24 bytes per pixel
        index = (frames[i].to(torch.int64) * bins) // 256 + offsets  # [H, W, 3]
        out[i] = torch.bincount(index.flatten(), minlength=3 * bins).cpu().to(torch.float64)
    return out / pixels


def clamped_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ``max(0, cos(a_i, b_i))`` of float ``[M, D]`` features; two zero rows give 1 and
    one zero row gives 0 (norm at most 1e-12 counts as zero). Returns float64 ``[M]``."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    zero_a, zero_b = norm_a <= _ZERO_NORM, norm_b <= _ZERO_NORM
    cosine = (a * b).sum(dim=1) / (norm_a * norm_b).clamp_min(_ZERO_NORM * _ZERO_NORM)
    cosine = cosine.clamp(0.0, 1.0)  # clamp(max=1) only removes rounding overshoot
    cosine = torch.where(zero_a | zero_b, torch.zeros_like(cosine), cosine)
    return torch.where(zero_a & zero_b, torch.ones_like(cosine), cosine)


def consistency_scores(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VBench's consistency averages for one video's frame features ``[T, D]``.

    Returns ``(to_first, to_previous)`` (float64 scalars): the means over ``t = 1..T-1`` of
    :func:`clamped_cosine` ``(f_t, f_0)`` and ``(f_t, f_{t-1})``; both 1 for ``T = 1``.
    """
    if features.shape[0] < 2:
        one = torch.ones((), dtype=torch.float64)
        return one, one.clone()
    later = features[1:]
    to_first = clamped_cosine(later, features[:1].expand_as(later)).mean()
    to_previous = clamped_cosine(later, features[:-1]).mean()
    return to_first, to_previous


@register_reward("subject_consistency")
class SubjectConsistency(Reward):
    """Weight-free proxy of VBench subject consistency (see :mod:`trainer.rewards.motion`).

    ``score = (to_first + to_previous) / 2`` with clamped cosine similarities of each frame's
    features to the first and to the previous frame, 0..1, 1 for a static video.

    Arguments: ``features`` = ``"pixels"`` (default; downsampled frames in -1..1) or
    ``"histogram"`` (per-channel colour histograms); ``size`` (default 32): the pixel features'
    largest side; ``bins`` (default 16, at most 256): histogram bins per channel.
    """

    input_format = "uint8"

    def __init__(self, features: str = "pixels", size: int = 32, bins: int = 16):
        if features not in ("pixels", "histogram"):
            raise UserError(
                f"subject_consistency 'features' must be \"pixels\" or \"histogram\", got {features!r}."
            )
        self.features = features
        self.size = _positive_int(size, "subject_consistency 'size'")
        self.bins = _positive_int(bins, "subject_consistency 'bins'")
        if self.bins > 256:
            raise UserError(f"subject_consistency 'bins' must be at most 256 (uint8 values), got {bins}.")

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Features ``[T, D]`` (float64) of one video's uint8 frames ``[T, H, W, 3]``."""
        if self.features == "pixels":
            return pixel_features(frames, self.size)
        return histogram_features(frames, self.bins)

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        n = int(videos.shape[0])
        to_first = torch.zeros(n, dtype=torch.float64)
        to_previous = torch.zeros(n, dtype=torch.float64)
        for i in range(n):
            to_first[i], to_previous[i] = consistency_scores(self.frame_features(videos[i]))
        scores = (to_first + to_previous) / 2.0
        return RewardOutput(scores.float(), {"to_first": to_first.float(), "to_previous": to_previous.float()})

    def __repr__(self) -> str:
        return f"SubjectConsistency(features={self.features!r})"
