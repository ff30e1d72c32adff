"""Rewards for Flash-GRPO: the interface, the name registry and the built-in rewards.

Typical use::

    from trainer.rewards import build_reward_set
    reward = build_reward_set([{"name": "jpeg_compressibility", "weight": 1.0},
                               {"name": "color", "weight": 0.5, "args": {"rgb": [0, 0, 255]}}])
    out = reward(videos, prompts)   # videos: uint8 [N,T,H,W,3] or float 0..1; prompts: N strings
    out.scores                      # float32 [N] on CPU: the weighted sum
    out.details                     # {"jpeg_compressibility": [N], "color": [N]}: raw components

Importing this package registers the weight-free rewards of :mod:`trainer.rewards.simple`
(``jpeg_compressibility``, ``jpeg_incompressibility``, ``temporal_flickering``, ``brightness``,
``color``), of :mod:`trainer.rewards.motion` (``motion``, ``subject_consistency``), the offline
OCR reward of :mod:`trainer.rewards.ocr` (``ocr``), the exact toy-world rewards of
:mod:`trainer.rewards.toy_world` (``toy_caption``, ``toy_colour``, ``toy_direction``, ...) and the HTTP client of
:mod:`trainer.rewards.remote` (``remote``; serve with ``python -m trainer.rewards.serve``).
The model rewards loaded from local weights register too: :mod:`trainer.rewards.models`
(``clip_score``, ``pickscore``, ``hpsv2``, ``aesthetic``; scored per frame with the frame
sampling/batching/aggregation of :mod:`trainer.rewards.frames`) and
:mod:`trainer.rewards.videoalign` (``videoalign``); they import transformers only when built.
:func:`available_rewards` lists every registered name. New rewards subclass :class:`Reward`
(implement ``score``) and register with ``@register_reward("name")``; installed third-party
packages add rewards through the ``flash_grpo.rewards`` entry-point group
(:mod:`trainer.rewards.plugins`), loaded on the first call of :func:`available_rewards`,
:func:`build_reward` or :func:`build_reward_set` imported from here.
"""

# The order of these imports is the order the built-in rewards register in (not sorted: see pyproject).
from .base import (
    Reward,
    RewardOutput,
    VideoFormatError,
    WeightedSum,
    as_float,
    as_uint8,
    register_reward,
)
from . import simple  # noqa: F401  (registers the weight-free rewards)
from . import models, videoalign  # noqa: F401  (register the model rewards; transformers loads lazily)
from .frames import FrameReward, aggregate_frame_scores, frame_indices
from . import motion, ocr, remote  # noqa: F401  (register motion, subject_consistency, ocr, remote)
from . import toy_world  # noqa: F401  (registers toy_caption and toy_<attribute>)
# These four load the installed reward plugins (entry points) on first use, then call base's.
from .plugins import available_rewards, build_reward, build_reward_set, check_reward_set, load_plugins
from .remote import RewardServerError
from .simple import (
    Brightness,
    Color,
    JpegCompressibility,
    JpegIncompressibility,
    TemporalFlickering,
    jpeg_sizes_kb,
)

__all__ = [
    "Reward",
    "RewardOutput",
    "VideoFormatError",
    "WeightedSum",
    "as_float",
    "as_uint8",
    "available_rewards",
    "build_reward",
    "build_reward_set",
    "check_reward_set",
    "register_reward",
    "load_plugins",
    "RewardServerError",
    "Brightness",
    "Color",
    "JpegCompressibility",
    "JpegIncompressibility",
    "TemporalFlickering",
    "jpeg_sizes_kb",
    "FrameReward",
    "aggregate_frame_scores",
    "frame_indices",
]
