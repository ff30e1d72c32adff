"""The GRPO objective as pure tensor functions.

Group-relative advantages (GRPO, as adapted to flow models by Flow-GRPO, arXiv 2505.05470, and
DanceGRPO, arXiv 2505.07818): ``A_i = clip((r_i - mean_g r) / (std_g r + eps), -A_max, A_max)``
over the ``G`` samples of a prompt's group ``g``. The PPO-style clipped surrogate per trained
transition, ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` with the likelihood ratio
``r = exp(log p - log p_old)``, optionally times the positive rectification weight ``c`` of
Flash-GRPO (arXiv 2605.15980). The KL to the reference policy between two Gaussian transitions of
equal variance: ``||mu - mu_ref||^2 / (2 s^2 |dt|)``. The EMA decay schedule of the LoRA weights
the Flow-GRPO and Flash-GRPO codes use: ``min((1 + s) / (10 + s), decay)`` at optimizer step ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADV_STD_MODES = ("group", "global")


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, std_mode: str = "group", clip: float = 5.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages ``(r - group mean) / (std + eps)``, clipped to ``+-clip``.

    Args:
        rewards: ``[N]`` scores of every sample of the global batch.
        group_ids: ``[N]`` integer id of each sample's group (its prompt slot).
        std_mode: ``"group"`` divides by each group's std, ``"global"`` by the whole batch's.
        clip: the advantage clip ``A_max``.

    Returns:
        ``(advantages [N], has_signal [N] bool)``: a group whose rewards are all equal carries
        no signal; its advantages are exactly 0.
    """
    if std_mode not in ADV_STD_MODES:
        raise ValueError(f"std_mode must be one of {ADV_STD_MODES}, got {std_mode!r}")
    rewards = rewards.float()
    adv = torch.zeros_like(rewards)
    has_signal = torch.zeros_like(rewards, dtype=torch.bool)
    global_std = rewards.std(unbiased=False)
    for g in torch.unique(group_ids):
        m = group_ids == g
        r = rewards[m]
        std = r.std(unbiased=False) if std_mode == "group" else global_std
        adv[m] = (r - r.mean()) / (std + eps)
        has_signal[m] = bool((r.max() - r.min()) > 0)
    adv = torch.where(has_signal, adv, torch.zeros_like(adv))
    return adv.clamp(-clip, clip), has_signal


@dataclass
class SurrogateOut:
    """Per-transition results of the clipped surrogate."""

    loss: torch.Tensor  # [M] weighted clipped surrogate (to be averaged)
    ratio: torch.Tensor  # [M] exp(log p - log p_old)
    clipped: torch.Tensor  # [M] bool: the clip was active
    approx_kl: torch.Tensor  # [M] 0.5 * (log p - log p_old)^2


def clipped_surrogate(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    weights: torch.Tensor | None = None,
) -> SurrogateOut:
    """PPO-style clipped surrogate ``max(-A r, -A clip(r, 1-eps, 1+eps))``, times ``weights``.

    ``weights`` are the (positive) rectification weights; being positive they may multiply the
    surrogate before or after the max with the same result.
    """
    diff = log_prob - old_log_prob
    ratio = torch.exp(diff)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    if weights is not None:
        loss = loss * weights
    return SurrogateOut(
        loss=loss,
        ratio=ratio.detach(),
        clipped=(torch.abs(ratio.detach() - 1.0) > clip_range),
        approx_kl=0.5 * diff.detach() ** 2,
    )


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, step_std: torch.Tensor) -> torch.Tensor:
    """KL between the policy's and the reference's Gaussian transitions, per sample ``[N]``.

    ``||mean - mean_ref||^2 / (2 s^2 |dt|)`` averaged over elements; ``step_std = s sqrt|dt|``
    per sample.
    """
    sq = ((mean.float() - ref_mean.float()) ** 2).flatten(1).mean(dim=1)
    return sq / (2.0 * step_std.float() ** 2)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay after optimizer step ``step`` (0-based): ``min((1 + s) / (10 + s), decay)``, so
    the average follows the weights closely early on and settles at ``decay``."""
    return min((1.0 + step) / (10.0 + step), decay)
