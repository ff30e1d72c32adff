"""Which steps of each trajectory are SDE steps and which are trained, per strategy.

Every strategy is expressed as a ``StepPlan``: two boolean masks over (sample, step). The
rollout and the update are the same code for all of them (REFERENCE sections 4-5):

* ``flash`` (Flash-GRPO): one SDE step ``k`` per prompt, drawn from the training window and shared
  by the whole group (iso-temporal grouping); ODE elsewhere; train that step. With
  ``iso_temporal`` off every sample draws its own ``k`` (ablation).
* ``flow_grpo`` (full trajectory): every step SDE; train the first ``timestep_fraction`` of steps.
* ``dance`` (DanceGRPO): every step SDE; train a random ``dance_train_fraction`` of each sample's
  steps.
* ``mixgrpo`` (sliding window): SDE and training inside a window of ``mix_window_size`` steps that
  moves one step toward clean every ``mix_shift_every`` iterations and rolls back to the start.

Randomness comes from a generator seeded by ``(seed, iteration)`` only, so every process of a
distributed run draws the same plan without communicating.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import FlashGRPOConfig


@dataclass
class StepPlan:
    sde: torch.Tensor  # [N, T] bool: step j of sample i is an SDE step
    train: torch.Tensor  # [N, T] bool: transition (i, j) is trained (always a subset of sde)
    group_steps: list[int] | None  # flash with iso-temporal grouping: k of each group, else None

    @property
    def transitions(self) -> int:
        return int(self.train.sum())


def plan_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator all processes use to draw iteration ``iteration``'s plan."""
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration * 7919 + 17)


def mix_window_start(cfg: FlashGRPOConfig, iteration: int) -> int:
    """mixgrpo: first step of the window at ``iteration`` (moves every ``mix_shift_every``)."""
    positions = cfg.sampling_steps - cfg.mix_window_size + 1
    return (iteration // cfg.mix_shift_every) % positions


def make_plan(cfg: FlashGRPOConfig, iteration: int, num_groups: int, group_size: int) -> StepPlan:
    """Draw the step plan of one iteration for ``num_groups`` groups of ``group_size`` samples.

    Sample ``i`` belongs to group ``i // group_size``. ``num_groups`` is the global number of
    prompts of the iteration: each process takes its own rows afterwards.
    """
    T = cfg.sampling_steps
    n = num_groups * group_size
    gen = plan_generator(cfg.seed, iteration)
    sde = torch.zeros(n, T, dtype=torch.bool)
    group_steps = None
    if cfg.strategy == "flash":
        lo, hi = cfg.resolved_window()
        if cfg.iso_temporal:
            ks = torch.randint(lo, hi, (num_groups,), generator=gen)
            group_steps = ks.tolist()
            ks = ks.repeat_interleave(group_size)
        else:
            ks = torch.randint(lo, hi, (n,), generator=gen)
        sde[torch.arange(n), ks] = True
        train = sde.clone()
    elif cfg.strategy == "flow_grpo":
        sde[:] = True
        train = torch.zeros_like(sde)
        train[:, : max(1, int(T * cfg.timestep_fraction))] = True
    elif cfg.strategy == "dance":
        sde[:] = True
        train = torch.zeros_like(sde)
        count = max(1, round(T * cfg.dance_train_fraction))
        for i in range(n):
            train[i, torch.randperm(T, generator=gen)[:count]] = True
    elif cfg.strategy == "mixgrpo":
        start = mix_window_start(cfg, iteration)
        sde[:, start : start + cfg.mix_window_size] = True
        train = sde.clone()
    else:  # validated in the config
        raise ValueError(f"unknown strategy {cfg.strategy!r}")
    return StepPlan(sde=sde, train=train, group_steps=group_steps)


def expected_passes(cfg: FlashGRPOConfig) -> dict[str, float]:
    """Transformer passes per sample that counting predicts for one iteration of ``cfg``.

    ``rollout``: forward passes per sample (CFG counted as 2 when guidance > 1; the shared ODE prefix
    of ``flash`` with shared noise counted once per group); ``update``: forward+backward passes
    per sample (a backward counted as 2 forwards, so one trained transition costs 3 forwards, times
    2 with CFG, plus one forward when the KL is on). Used by the benchmark to compare measured
    times with what the pass count predicts.
    """
    T, G = cfg.sampling_steps, cfg.group_size
    cfg_mult = 2 if cfg.guidance_scale != 1.0 else 1
    if cfg.strategy == "flash":
        lo, hi = cfg.resolved_window()
        if cfg.resolved_shared_noise() and cfg.iso_temporal:
            mean_k = (lo + hi - 1) / 2
            # prefix and step k once per group, then T - k - 1 steps per sample
            rollout = (mean_k + 1) / G + (T - mean_k - 1)
            trained = 1.0 / G  # the G transitions of a group share x_k: one forward/backward
        else:
            rollout, trained = T, 1.0
    elif cfg.strategy == "flow_grpo":
        rollout, trained = T, max(1, int(T * cfg.timestep_fraction))
    elif cfg.strategy == "dance":
        rollout, trained = T, max(1, round(T * cfg.dance_train_fraction))
    else:
        rollout, trained = T, cfg.mix_window_size
    kl = 1 if cfg.kl_beta > 0 else 0
    return {
        "rollout": rollout * cfg_mult,
        "update": trained * cfg_mult * (3 + kl),
        "total": rollout * cfg_mult + trained * cfg_mult * (3 + kl),
    }
