"""Video handling shared by the model rewards: frame sampling, frame batching, per-video
aggregation, device/dtype choice and a bounded per-prompt cache.

Image reward models (CLIP score, PickScore, HPSv2, LAION aesthetic) score single frames. A
:class:`FrameReward` turns such a per-frame scorer into a video reward:

1. **Sample** frames ``0, every, 2*every, ...`` of each video (:func:`frame_indices`).
2. **Batch** the sampled frames of *all* videos of the call together, ``batch_size`` frames per
   model forward (a batch may mix frames of several videos; each frame keeps its video's prompt).
3. **Aggregate** each video's frame scores (:func:`aggregate_frame_scores`):

   * ``"mean"`` -- the mean over the sampled frames;
   * ``"top_p"`` -- the mean of the best ``k = max(1, int(F * top_p))`` of the ``F`` sampled frames.
     Flash-GRPO's recipe is HPSv3 per frame with ``top_p = 0.3``: its reward client
     (``flow_grpo/rewards.py``, ``video_hpsv3_remote`` in Shredded-Pork/Flash-GRPO) sorts the frame
     scores in descending order and averages the first ``int(l * 0.3)``. We use the same ``int()``
     (floor) and clamp ``k`` to at least 1 where Flash-GRPO would divide by zero (fewer than 4
     frames at p = 0.3);
   * ``"min"`` -- the worst sampled frame.

Everything here is independent of the policy being trained: frames are scored fresh on every call
and nothing derived from a video is cached. Only text features, which depend on the prompt alone,
may be cached (:class:`PromptCache`).

Devices: ``device="auto"`` means ``cuda`` when available, else ``cpu``; ``dtype="auto"`` means
bfloat16 on CUDA and float32 on CPU (:func:`resolve_device`, :func:`resolve_dtype`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch

from ..errors import UserError
from .base import Reward, RewardOutput

__all__ = [
    "AGGREGATES",
    "frame_indices",
    "aggregate_frame_scores",
    "resolve_device",
    "resolve_dtype",
    "check_positive_int",
    "PromptCache",
    "FrameReward",
]

AGGREGATES = ("mean", "top_p", "min")
"""Accepted values of ``aggregate``."""

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def check_positive_int(value: Any, what: str) -> int:
    """``value`` if it is an int >= 1 (bools refused), else :class:`UserError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}.")
    return value


def frame_indices(num_frames: int, every: int) -> list[int]:
    """Indices ``0, every, 2*every, ... < num_frames`` of the frames to score (never empty for
    ``num_frames >= 1``: frame 0 is always scored)."""
    return list(range(0, num_frames, every))


def top_p_count(num_frames: int, top_p: float) -> int:
    """How many of ``num_frames`` frames the ``top_p`` mean averages: ``max(1, int(num_frames *
    top_p))`` (Flash-GRPO's ``int(l * 0.3)``, at least one frame)."""
    return max(1, int(num_frames * top_p))


def aggregate_frame_scores(scores: torch.Tensor, aggregate: str, top_p: float = 0.3) -> torch.Tensor:
    """Per-video scores ``[N]`` from per-frame scores ``[N, F]`` (see the module docstring).

    ``aggregate`` is ``"mean"``, ``"top_p"`` (mean of the ``max(1, int(F * top_p))`` highest) or
    ``"min"``. Computed in float64 and returned as float32.
    """
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"frame scores must have shape [N, F] with F >= 1, got {tuple(scores.shape)}")
    x = scores.to(torch.float64)
    if aggregate == "mean":
        out = x.mean(dim=1)
    elif aggregate == "min":
        out = x.min(dim=1).values
    elif aggregate == "top_p":
        k = top_p_count(int(x.shape[1]), top_p)
        out = x.topk(k, dim=1, largest=True, sorted=False).values.mean(dim=1)
    else:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    return out.to(torch.float32)


def resolve_device(device: Any, what: str = "reward") -> torch.device:
    """``"auto"`` -> ``cuda`` if available else ``cpu``; other strings / devices are parsed.

    Raises :class:`UserError` for an unparsable device or for CUDA on a machine without it.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"{what}: device {device!r} is not a valid torch device ({exc}). "
                        "Use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{what}: device {device!r} asks for CUDA, but no CUDA GPU is available. "
                        "Use device='auto' or 'cpu'.")
    return resolved


def resolve_dtype(dtype: Any, device: torch.device, what: str = "reward") -> torch.dtype:
    """``"auto"`` -> bfloat16 on CUDA, float32 elsewhere; or one of float32/bfloat16/float16
    (also ``fp32``/``bf16``/``fp16`` or a ``torch.dtype``). :class:`UserError` otherwise."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise UserError(f"{what}: dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}.")


class PromptCache:
    """A bounded least-recently-used cache ``key -> value`` for prompt-only features.

    ``get_many(keys, compute)`` returns one value per key, calling ``compute(missing_keys)`` once
    for the keys not cached (it must return a sequence/tensor with one entry per missing key) and
    storing those. At most ``max_size`` entries are kept (oldest dropped first); ``max_size=0``
    disables caching. Only ever store features that depend on the prompt alone, never on videos.
    """

    def __init__(self, max_size: int = 4096):
        self.max_size = max_size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def get_many(self, keys: list[Hashable], compute: Callable[[list[Hashable]], Any]) -> list[Any]:
        found: dict[Hashable, Any] = {}
        missing: list[Hashable] = []
        for key in keys:
            if key in found or key in missing:
                continue
            if key in self._items:
                self._items.move_to_end(key)
                found[key] = self._items[key]
            else:
                missing.append(key)
        if missing:
            values = compute(missing)
            for key, value in zip(missing, values):
                found[key] = value
                if self.max_size > 0:
                    self._items[key] = value
                    while len(self._items) > self.max_size:
                        self._items.popitem(last=False)
        return [found[key] for key in keys]


class FrameReward(Reward):
    """Base class of per-frame image rewards: sample, batch, score, aggregate.

    Subclasses implement :meth:`score_frames` (a batch of uint8 frames ``[B, H, W, 3]`` on CPU and
    their ``B`` prompts -> float ``[B]`` scores) and call ``super().__init__(...)`` with the
    shared arguments:

    * ``every`` -- score frames ``0, every, 2*every, ...`` (default 1: every frame);
    * ``aggregate`` -- ``"mean"``, ``"top_p"`` or ``"min"`` (default ``"mean"``);
    * ``top_p`` -- the fraction for ``"top_p"``, in (0, 1] (default 0.3, Flash-GRPO's value);
    * ``batch_size`` -- the most frames per model forward (default 32). This is a *frame* count:
      frames of different videos share a forward. (``Reward.batch_size``, the number of videos
      per :meth:`score` call, stays ``None``; videos arrive as uint8 and only frame batches are
      moved to the model's device.)

    ``input_format`` is ``"uint8"``: every reference implementation scores 8-bit images (PIL or
    decoded video frames), so float videos are rounded to uint8 first, as a saved PNG/MP4 would be.
    """

    input_format = "uint8"

    def __init__(self, every: int = 1, aggregate: str = "mean", top_p: float = 0.3, batch_size: int = 32):
        what = f"reward {self.name!r}"
        self.every = check_positive_int(every, f"{what}: 'every'")
        if aggregate not in AGGREGATES:
            raise UserError(f"{what}: aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}.")
        self.aggregate = aggregate
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < float(top_p) <= 1.0:
            raise UserError(f"{what}: top_p must be a number in (0, 1], got {top_p!r}.")
        self.top_p = float(top_p)
        self.frame_batch_size = check_positive_int(batch_size, f"{what}: 'batch_size'")

    def score_frames(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Score ``B`` uint8 frames ``[B, H, W, 3]`` (CPU) against their ``B`` prompts -> ``[B]``."""
        raise NotImplementedError

    def frame_scores(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores ``[N, F]`` of the sampled frames of uint8 ``videos [N, T, H, W, 3]``."""
        n, t = int(videos.shape[0]), int(videos.shape[1])
        indices = frame_indices(t, self.every)
        frames = videos[:, indices].reshape(n * len(indices), *videos.shape[2:])
        frame_prompts = [p for p in prompts for _ in indices]
        out = []
        for lo in range(0, frames.shape[0], self.frame_batch_size):
            hi = lo + self.frame_batch_size
            chunk = frames[lo:hi].cpu()
            scores = self.score_frames(chunk, frame_prompts[lo:hi])
            out.append(scores.detach().to(device="cpu", dtype=torch.float32).reshape(-1))
        return torch.cat(out).view(n, len(indices))

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        per_frame = self.frame_scores(videos, prompts)
        return RewardOutput(aggregate_frame_scores(per_frame, self.aggregate, self.top_p))
