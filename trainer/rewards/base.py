"""The reward interface, the reward registry and weighted sums of rewards.

A reward maps ``N`` videos and their ``N`` prompts to ``N`` float32 scores (higher is better) plus
optional per-component details. Everything the trainer and the ComfyUI nodes need is here:

* :class:`RewardOutput` -- ``scores`` float32 ``[N]`` on CPU and ``details`` ``name -> float32 [N]``.
* :class:`Reward` -- the base class. ``reward(videos, prompts)`` accepts every video form listed in
  :func:`as_uint8`, validates it, converts it to the subclass's ``input_format``, splits it into
  batches of at most ``batch_size`` videos, calls the subclass's :meth:`Reward.score` on each batch
  and checks and joins the results.
* :func:`as_uint8` / :func:`as_float` -- convert any accepted video form to one tensor.
* :func:`register_reward`, :func:`available_rewards`, :func:`build_reward` -- the name registry
  used by configs and nodes (``build_reward("color", rgb=[0, 0, 255])``).
* :class:`WeightedSum` and :func:`build_reward_set` -- ``sum(weight_i * reward_i)`` with each
  component's raw score kept in ``details``; every reward set, even of one reward, is a
  ``WeightedSum`` so that logs always show the same keys.

Video forms accepted everywhere (``N`` videos, ``T`` frames, ``H x W`` pixels, RGB last):

* a ``torch.Tensor`` or ``numpy.ndarray`` of shape ``[N, T, H, W, 3]``, either ``uint8`` in 0..255
  or floating point in 0..1;
* a list (or tuple) of ``[T, H, W, 3]`` tensors/arrays in those forms. Videos of different shapes
  (e.g. different lengths) are fine for a :class:`Reward`, which then scores them one at a time;
  :func:`as_uint8` / :func:`as_float` need equal shapes to stack them.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import UserError

__all__ = [
    "RewardOutput",
    "Reward",
    "VideoFormatError",
    "as_uint8",
    "as_float",
    "register_reward",
    "available_rewards",
    "build_reward",
    "WeightedSum",
    "build_reward_set",
]

_FLOAT_RANGE_TOLERANCE = 1e-3
"""Float videos may overshoot 0..1 by this much (rounding in a decoder); they are then clamped."""


class VideoFormatError(UserError, ValueError):
    """Videos in a form no reward accepts (wrong rank, channel count, dtype or value range).

    Both a :class:`~trainer.errors.UserError` (the runner prints the message) and a ``ValueError``.
    """


# ----------------------------------------------------------------------------------------------
# Video conversion
# ----------------------------------------------------------------------------------------------

def _to_tensor(video: Any, what: str) -> torch.Tensor:
    """One tensor or array as a torch tensor (numpy arrays are shared when possible, not copied)."""
    if isinstance(video, torch.Tensor):
        return video
    if isinstance(video, np.ndarray):
        if not video.flags.writeable:
            video = video.copy()
        return torch.from_numpy(np.ascontiguousarray(video))
    raise VideoFormatError(
        f"{what} must be a torch.Tensor or numpy.ndarray, got {type(video).__name__}. "
        "Pass videos as [N, T, H, W, 3] arrays or a list of [T, H, W, 3] arrays."
    )


def _check_video_tensor(video: torch.Tensor, rank: int, what: str) -> None:
    """Raise :class:`VideoFormatError` unless ``video`` has ``rank`` dims, RGB last, non-empty frames,
    and a uint8 or floating dtype."""
    layout = "[N, T, H, W, 3]" if rank == 5 else "[T, H, W, 3]"
    if video.dim() != rank or video.shape[-1] != 3:
        raise VideoFormatError(
            f"{what} must have shape {layout} (RGB channels last), got {tuple(video.shape)}. "
            "Permute channels-first videos and add the batch dimension for a single video."
        )
    if video.shape[-4] == 0 or video.shape[-3] == 0 or video.shape[-2] == 0:
        raise VideoFormatError(f"{what} has an empty frame, time or size dimension: {tuple(video.shape)}.")
    if video.dtype != torch.uint8 and not video.dtype.is_floating_point:
        raise VideoFormatError(
            f"{what} has dtype {video.dtype}; rewards take uint8 videos in 0..255 or floating point "
            "videos in 0..1. Convert with .to(torch.uint8) or divide by 255."
        )


def _check_float_range(video: torch.Tensor, what: str) -> None:
    """Raise :class:`VideoFormatError` unless a float video lies in 0..1 (up to a small tolerance)."""
    if video.numel() == 0:
        return
    lo, hi = torch.aminmax(video.detach())
    lo, hi = float(lo), float(hi)
    if not (lo >= -_FLOAT_RANGE_TOLERANCE and hi <= 1.0 + _FLOAT_RANGE_TOLERANCE):
        hint = ""
        if hi > 1.5:
            hint = " It looks like 0..255: pass uint8 or divide by 255."
        elif lo < -0.5:
            hint = " It looks like -1..1 (VAE output): map it with (x + 1) / 2."
        raise VideoFormatError(
            f"Float {what} must lie in 0..1, got values in [{lo:.4g}, {hi:.4g}].{hint}"
        )


def _video_runs(videos: Any) -> list[torch.Tensor]:
    """Split any accepted video form into 5-D tensors whose videos share shape and dtype.

    A 5-D tensor/array is one run. A list of equal-shape, equal-dtype videos is stacked into one
    run; otherwise each video becomes its own run of one. Values are not converted here.
    """
    if isinstance(videos, (list, tuple)):
        items = [_to_tensor(v, f"video {i}") for i, v in enumerate(videos)]
        for i, item in enumerate(items):
            _check_video_tensor(item, 4, f"video {i}")
        if not items:
            return []
        first = items[0]
        if all(v.shape == first.shape and v.dtype == first.dtype and v.device == first.device for v in items):
            return [torch.stack(items)]
        return [v.unsqueeze(0) for v in items]
    tensor = _to_tensor(videos, "videos")
    _check_video_tensor(tensor, 5, "videos")
    return [tensor]


def _convert(video: torch.Tensor, fmt: str) -> torch.Tensor:
    """A checked 5-D video as uint8 0..255 (``fmt="uint8"``) or float32 0..1 (``fmt="float"``).

    float -> uint8 clamps to 0..1 and rounds to nearest, so uint8 -> float -> uint8 is exact.
    """
    if fmt == "uint8":
        if video.dtype == torch.uint8:
            return video
        _check_float_range(video, "videos")
        return (video.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    if fmt == "float":
        if video.dtype == torch.uint8:
            return video.float() / 255.0
        _check_float_range(video, "videos")
        return video.detach().float().clamp(0.0, 1.0)
    raise ValueError(f"input_format must be 'uint8' or 'float', got {fmt!r}")


def _stack_for(videos: Any, fmt: str) -> torch.Tensor:
    runs = _video_runs(videos)
    if not runs:
        raise VideoFormatError("Got an empty list of videos; nothing to convert.")
    if len(runs) > 1:
        shapes = sorted({tuple(r.shape[1:]) for r in runs})
        raise VideoFormatError(
            f"Videos of different shapes {shapes[:4]} cannot be stacked into one tensor. "
            "Convert them one by one, or pass the list to a Reward, which scores them one at a time."
        )
    return _convert(runs[0], fmt)


def as_uint8(videos: Any) -> torch.Tensor:
    """Any accepted video form as one uint8 tensor ``[N, T, H, W, 3]`` in 0..255 (same device).

    uint8 input is returned as is (no copy); float input in 0..1 is clamped, scaled by 255 and
    rounded to nearest. A list of ``[T, H, W, 3]`` videos must share one shape to be stacked.
    Raises :class:`VideoFormatError` (a ``ValueError`` and a ``UserError``) for a wrong rank, a last
    dim other than 3, an unsupported dtype, float values outside 0..1 or a ragged list.
    """
    return _stack_for(videos, "uint8")


def as_float(videos: Any) -> torch.Tensor:
    """Any accepted video form as one float32 tensor ``[N, T, H, W, 3]`` in 0..1 (same device).

    uint8 input is divided by 255; float input is cast to float32 and clamped to 0..1 (after the
    range check, which tolerates an overshoot of 1e-3). Same validation as :func:`as_uint8`.
    """
    return _stack_for(videos, "float")


# ----------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------

@dataclass
class RewardOutput:
    """What a reward returns for ``N`` videos.

    ``scores``: float32 ``[N]`` on CPU, one per video, higher is better.
    ``details``: ``name -> float32 [N]`` on CPU; components or diagnostics worth logging (for a
    :class:`WeightedSum`: each component's raw score under its name, nested details under
    ``"component/key"``). May be empty.
    ``readings``: optional, one dict per video of what the reward read from it, for people (the
    toy-world rewards: the attribute each video shows); JSON-serialisable values. ``None`` when
    the reward reads nothing worth showing.
    """

    scores: torch.Tensor
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    readings: list[dict] | None = None

    @staticmethod
    def concat(outputs: Sequence["RewardOutput"]) -> "RewardOutput":
        """The outputs of consecutive chunks of videos joined in order (readings kept only when
        every chunk has them)."""
        if not outputs:
            return RewardOutput(torch.zeros(0, dtype=torch.float32), {})
        readings = None
        if all(o.readings is not None for o in outputs):
            readings = [r for o in outputs for r in o.readings]
        return RewardOutput(torch.cat([o.scores for o in outputs]),
                            {k: torch.cat([o.details[k] for o in outputs]) for k in outputs[0].details},
                            readings)


def _as_score_vector(value: Any, n: int, what: str) -> torch.Tensor:
    """``value`` as a float32 CPU vector of length ``n`` (programming errors raise ValueError)."""
    tensor = torch.as_tensor(value).detach()
    if tensor.dim() != 1 or tensor.shape[0] != n:
        raise ValueError(f"{what} must have shape [{n}], got {tuple(tensor.shape)}")
    return tensor.to(device="cpu", dtype=torch.float32)


class Reward:
    """Base class of every reward: ``reward(videos, prompts) -> RewardOutput``.

    Subclasses set the class attributes below and implement :meth:`score`; :meth:`__call__` does
    the rest. A subclass that needs full control (e.g. :class:`WeightedSum`, or one forwarding raw
    inputs elsewhere) overrides ``__call__`` instead and must honour the same contract.

    Class attributes:

    * ``name`` -- the registry name (set by :func:`register_reward` for registered classes); used as
      the key of the reward's score in a :class:`WeightedSum`'s details.
    * ``input_format`` -- ``"uint8"`` (0..255, as codecs and VBench metrics expect) or ``"float"``
      (float32 0..1, as neural models expect): what :meth:`score` receives.
    * ``batch_size`` -- the most videos handed to one :meth:`score` call, or ``None`` for all at
      once. Models on a GPU or behind a remote server set it to bound memory / request size; such a
      reward keeps its own device and moves each batch there itself. Scores always come back on CPU.

    Contract of :meth:`__call__`: ``videos`` is any form documented in :mod:`trainer.rewards.base`;
    ``prompts`` is a sequence of ``N`` strings (``None`` means ``N`` empty prompts). Returns float32
    CPU ``scores [N]`` and ``details`` whose values are float32 CPU ``[N]``. Runs under
    ``torch.no_grad()``: rewards are black boxes to GRPO, never differentiated.
    """

    name: str = "reward"
    input_format: str = "float"
    batch_size: int | None = None

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput | torch.Tensor:
        """Score one batch: ``videos`` ``[B, T, H, W, 3]`` in ``input_format``, all of one shape,
        ``B <= batch_size``; ``prompts`` ``B`` strings. Return a :class:`RewardOutput` (any float
        dtype/device; it is cast) or just the ``[B]`` scores tensor (no details)."""
        raise NotImplementedError(f"{type(self).__name__} must implement score() or __call__()")

    def __call__(self, videos: Any, prompts: Sequence[str] | None = None) -> RewardOutput:
        runs = _video_runs(videos)
        n = sum(int(r.shape[0]) for r in runs)
        prompts = _check_prompts(prompts, n)
        with torch.no_grad():
            scores: list[torch.Tensor] = []
            details: dict[str, list[torch.Tensor]] = {}
            readings: list[dict] | None = None
            start = 0
            for run in runs:
                step = self.batch_size or int(run.shape[0])
                for lo in range(0, int(run.shape[0]), step):
                    batch = _convert(run[lo:lo + step], self.input_format)
                    b = int(batch.shape[0])
                    out = self.score(batch, prompts[start:start + b])
                    if not isinstance(out, RewardOutput):
                        out = RewardOutput(out, {})
                    scores.append(_as_score_vector(out.scores, b, f"{self.name} scores"))
                    if scores[:-1] and set(out.details) != set(details):
                        raise ValueError(f"{self.name}: detail keys differ between batches")
                    for key, value in out.details.items():
                        details.setdefault(key, []).append(
                            _as_score_vector(value, b, f"{self.name} detail {key!r}"))
                    if out.readings is not None:
                        if len(out.readings) != b:
                            raise ValueError(f"{self.name}: {len(out.readings)} readings for {b} videos")
                        readings = (readings or []) + list(out.readings)
                    start += b
        if not scores:
            return RewardOutput(torch.zeros(0, dtype=torch.float32), {})
        if readings is not None and len(readings) != n:
            readings = None  # some batches read nothing: show nothing rather than misaligned rows
        return RewardOutput(torch.cat(scores), {k: torch.cat(v) for k, v in details.items()}, readings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _check_prompts(prompts: Sequence[str] | None, n: int) -> list[str]:
    """``prompts`` as a list of ``n`` strings (``None`` -> empty prompts)."""
    if prompts is None:
        return [""] * n
    if isinstance(prompts, str):
        raise UserError("prompts must be a list of strings, one per video, not a single string.")
    prompts = list(prompts)
    if len(prompts) != n:
        raise UserError(f"Got {n} videos but {len(prompts)} prompts; pass one prompt per video.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise UserError(f"prompt {i} must be a string, got {type(p).__name__}.")
    return prompts


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str) -> Callable:
    """Decorator registering a reward factory under ``name`` for :func:`build_reward`.

    The decorated object is a :class:`Reward` subclass or a function; either is called with the
    keyword arguments given to :func:`build_reward` (its signature defines the accepted ones) and
    must return a :class:`Reward`. A class without its own ``name`` attribute gets ``name``.
    Registering a name twice is a programming error (``ValueError``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"reward {name!r} is already registered (by {_REGISTRY[name]!r})")
        if isinstance(factory, type) and issubclass(factory, Reward) and "name" not in factory.__dict__:
            factory.name = name
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_rewards() -> list[str]:
    """Sorted names accepted by :func:`build_reward` and in reward specs."""
    return sorted(_REGISTRY)


def _unknown_name_message(name: Any) -> str:
    names = available_rewards()
    suggestion = ""
    if isinstance(name, str):
        close = difflib.get_close_matches(name, names, n=1)
        if close:
            suggestion = f" Did you mean {close[0]!r}?"
    return f"Unknown reward {name!r}.{suggestion} Available rewards: {', '.join(names)}."


def build_reward(name: str, **kwargs: Any) -> Reward:
    """Build the registered reward ``name`` with keyword arguments ``kwargs``.

    Raises :class:`~trainer.errors.UserError` for an unknown name (listing the available names and
    the closest match), for an argument the factory does not accept (naming it and the accepted
    ones), and for a missing required argument. Factories raise ``UserError`` for bad values.
    """
    reward = checked_factory(name, kwargs)(**kwargs)
    if not isinstance(reward, Reward):
        raise TypeError(f"factory of reward {name!r} returned {type(reward).__name__}, not a Reward")
    return reward


def checked_factory(name: str, kwargs: dict) -> Callable[..., Reward]:
    """The factory of reward ``name`` once ``kwargs`` fit its signature (the checks of
    :func:`build_reward`, without calling it: nothing is loaded)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserError(_unknown_name_message(name))
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [
        p.name for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    if not takes_any:
        for key in kwargs:
            if key not in accepted:
                known = ", ".join(accepted) if accepted else "none"
                raise UserError(
                    f"Reward {name!r} does not take argument {key!r}; accepted arguments: {known}."
                )
    missing = [
        p.name for p in params.values()
        if p.name in accepted and p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise UserError(f"Reward {name!r} needs argument(s): {', '.join(missing)}.")
    return factory


# ----------------------------------------------------------------------------------------------
# Weighted sums
# ----------------------------------------------------------------------------------------------

class WeightedSum(Reward):
    """``scores = sum_i weight_i * component_i.scores``; ``details`` keep every component.

    Built from ``[(name, weight, reward), ...]`` with unique names. ``details[name]`` is the
    component's raw (unweighted) score and ``details[f"{name}/{key}"]`` each of its own details.
    Each component receives the videos as given, so it converts them to its own ``input_format``
    (no precision lost to a shared conversion). ``input_format``/``batch_size`` are unused.
    """

    def __init__(self, components: Sequence[tuple[str, float, Reward]]):
        components = list(components)
        if not components:
            raise UserError("A reward set needs at least one reward.")
        seen: set[str] = set()
        for label, weight, reward in components:
            if not isinstance(reward, Reward):
                raise TypeError(f"component {label!r} is {type(reward).__name__}, not a Reward")
            if label in seen:
                raise UserError(f"Reward {label!r} appears twice in the reward set; give each a distinct label.")
            seen.add(label)
            _check_weight(weight, label)
        self.components = [(label, float(weight), reward) for label, weight, reward in components]
        self.name = " + ".join(f"{w:g}*{label}" for label, w, _ in self.components)

    def __call__(self, videos: Any, prompts: Sequence[str] | None = None) -> RewardOutput:
        total: torch.Tensor | None = None
        details: dict[str, torch.Tensor] = {}
        readings: list[dict] | None = None
        for label, weight, reward in self.components:
            out = reward(videos, prompts)
            details[label] = out.scores
            for key, value in out.details.items():
                details[f"{label}/{key}"] = value
            if out.readings is not None:  # merged per video: rewards reading the same thing agree
                readings = [{**(readings[i] if readings else {}), **r} for i, r in enumerate(out.readings)]
            part = weight * out.scores.to(torch.float64)
            total = part if total is None else total + part
        return RewardOutput(total.to(torch.float32), details, readings)

    def __repr__(self) -> str:
        return f"WeightedSum({self.name})"


def _check_weight(weight: Any, label: str) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise UserError(f"Weight of reward {label!r} must be a finite number, got {weight!r}.")


_SPEC_KEYS = ("name", "weight", "args", "label")


def build_reward_set(specs: Any, check_only: bool = False) -> WeightedSum | None:
    """Build a :class:`WeightedSum` from reward specs (always a ``WeightedSum``, even for one).

    ``specs`` is a list whose items are a reward name (weight 1, no args) or a dict
    ``{"name": str, "weight": float = 1.0, "args": dict = {}, "label": str = name}``; a single
    name or dict is accepted too. ``label`` is the key in ``details``; repeated names without a
    label become ``name``, ``name#2``, ... Raises :class:`~trainer.errors.UserError` for an empty
    list, a missing or unknown name, a non-numeric weight, non-dict args or an unknown key.

    Example: ``build_reward_set([{"name": "jpeg_compressibility", "weight": 0.5},
    {"name": "color", "args": {"rgb": [0, 0, 255]}}])``.

    ``check_only``: the same checks (names, weights, argument names, labels) without building the
    rewards, so no reward model is loaded; returns None.
    """
    if isinstance(specs, (str, dict)):
        specs = [specs]
    if not isinstance(specs, (list, tuple)) or not specs:
        raise UserError(
            "The reward set is empty: give a list of rewards such as "
            '[{"name": "jpeg_compressibility", "weight": 1.0}]. '
            f"Available rewards: {', '.join(available_rewards())}."
        )
    components = []
    counts: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict):
            raise UserError(f"Reward spec {i} must be a name or a dict with 'name', 'weight', 'args'; got {spec!r}.")
        unknown = [k for k in spec if k not in _SPEC_KEYS]
        if unknown:
            raise UserError(
                f"Reward spec {i} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"accepted keys: {', '.join(_SPEC_KEYS)} (reward arguments go under 'args')."
            )
        if "name" not in spec:
            raise UserError(
                f"Reward spec {i} has no 'name'. Available rewards: {', '.join(available_rewards())}."
            )
        name = spec["name"]
        weight = spec.get("weight", 1.0)
        _check_weight(weight, str(name))
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise UserError(f"'args' of reward {name!r} must be a dict of keyword arguments, got {args!r}.")
        if check_only:
            checked_factory(name, args)
            reward = None
        else:
            reward = build_reward(name, **args)
        label = spec.get("label")
        if label is None:
            counts[name] = counts.get(name, 0) + 1
            label = name if counts[name] == 1 else f"{name}#{counts[name]}"
        elif not isinstance(label, str) or not label:
            raise UserError(f"'label' of reward {name!r} must be a non-empty string, got {label!r}.")
        if label in (c[0] for c in components):
            raise UserError(f"Reward {label!r} appears twice in the reward set; give each a distinct label.")
        components.append((label, weight, reward))
    return None if check_only else WeightedSum(components)
