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
``color``); :func:`available_rewards` lists every registered name. New rewards subclass
:class:`Reward` (implement ``score``) and register with ``@register_reward("name")``.
"""

from .base import (
    Reward,
    RewardOutput,
    VideoFormatError,
    WeightedSum,
    as_float,
    as_uint8,
    available_rewards,
    build_reward,
    build_reward_set,
    register_reward,
)
from . import simple  # noqa: F401  (registers the weight-free rewards)
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
    "register_reward",
    "Brightness",
    "Color",
    "JpegCompressibility",
    "JpegIncompressibility",
    "TemporalFlickering",
    "jpeg_sizes_kb",
]
