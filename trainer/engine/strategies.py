"""Strategies as objects: everything that makes Flash-GRPO differ from its baselines, in one place.

A strategy decides which (sample, step) pairs of an iteration are SDE steps and which of them are
trained (a ``StepPlan``), and holds its published defaults: its SDE noise schedule ``s(t)``,
whether a group shares its initial noise, whether the update applies temporal gradient
rectification, and an optional filter on the advantages. The rollout and the update are the same
code for every strategy; the recipe only calls the methods below and never tests a strategy's
name. ``STRATEGIES`` is the registry: the config's ``strategy`` choices, the ``auto`` noise
schedule, the ``null`` defaults of ``shared_noise`` and ``rectification``, the README's strategy
table (``python -m trainer.engine.strategies``) and the benchmark's pass counts all come from it.

* ``flash``: Flash-GRPO (arXiv 2605.15980). One SDE step ``k`` per prompt, drawn uniformly from
  the training window ``[window_start, window_end)`` and shared by the prompt's whole group
  (iso-temporal grouping); ODE steps elsewhere; only the transition at ``k`` is trained. With
  ``iso_temporal`` off every sample draws its own ``k`` (ablation).
* ``flow_grpo``: Flow-GRPO (arXiv 2505.05470). Every step is an SDE step; the first
  ``timestep_fraction`` of the steps are trained.
* ``dance``: DanceGRPO (arXiv 2505.07818). Every step SDE with a constant noise ``eta``, the
  initial noise shared per group; a random ``dance_train_fraction`` of each sample's steps is
  trained; optionally only the ``n/2`` best and ``n/2`` worst samples of each group
  (``dance_best_of_n = n``).
* ``mixgrpo``: MixGRPO (arXiv 2507.21802). SDE steps and training inside a window of
  ``mix_window_size`` steps that moves one step toward clean every ``mix_shift_every`` iterations;
  its start runs to ``T - 2`` (the last windows are cut at the end of the trajectory), then rolls
  back to the start. The initial noise is shared inside a group, as in its code.

Plans are drawn from the stream ``(seed, "plan", iteration)`` of ``trainer.seeding`` only, so
every process of a distributed run draws the same plan without communicating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .. import seeding
from ..algo.sde import tail_grid

if TYPE_CHECKING:  # the config imports this registry; strategies only read config fields
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
    """The generator all processes use to draw iteration ``iteration``'s plan: the stream
    ``(seed, "plan", iteration)`` of ``trainer.seeding``."""
    return seeding.generator(seed, "plan", iteration)


class Strategy:
    """One GRPO variant. Subclasses set the class attributes and implement ``plan`` and ``passes``.

    Attributes: ``name`` (the config value), ``paper`` (title and arXiv id), ``summary`` (one
    phrase for the config's help), ``noise_schedule`` (the schedule ``noise_schedule="auto"``
    resolves to), ``shared_noise`` and ``rectification`` (what ``null`` resolves to),
    ``sde_steps`` / ``trained_steps`` (the README's strategy table).
    """

    name: str
    paper: str
    summary: str
    noise_schedule: str
    shared_noise: bool = False
    rectification: bool = False
    sde_steps: str
    trained_steps: str

    def plan(self, cfg: FlashGRPOConfig, iteration: int, num_groups: int, group_size: int) -> StepPlan:
        """The step plan of one iteration for ``num_groups`` groups of ``group_size`` samples.

        Sample ``i`` belongs to group ``i // group_size``. ``num_groups`` is the global number of
        prompts of the iteration: each process takes its own rows afterwards.
        """
        raise NotImplementedError

    def passes(self, cfg: FlashGRPOConfig) -> tuple[float, float]:
        """``(rollout steps, trained transitions)`` per sample that one iteration costs, counting a
        step shared by a group once per group (so as ``1 / G`` per sample)."""
        raise NotImplementedError

    def filter_advantages(self, cfg: FlashGRPOConfig, advantages: torch.Tensor, rewards: torch.Tensor,
                          group_size: int) -> torch.Tensor:
        """Advantages actually trained on, for this process's samples (whole groups of
        ``group_size``, group-major; ``rewards`` are theirs). Default: unchanged."""
        return advantages

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


class Flash(Strategy):
    name = "flash"
    paper = "Flash-GRPO (arXiv 2605.15980)"
    summary = "one SDE step per prompt (Flash-GRPO)"
    noise_schedule = "flash"
    rectification = True
    sde_steps = ("one per prompt, `k` uniform over `[window_start, window_end)` (default: first half), "
                 "shared by the group")
    trained_steps = "`k`"

    def plan(self, cfg, iteration, num_groups, group_size):
        n = num_groups * group_size
        gen = plan_generator(cfg.seed, iteration)
        sde = torch.zeros(n, cfg.sampling_steps, dtype=torch.bool)
        lo, hi = cfg.resolved_window()
        group_steps = None
        if cfg.iso_temporal:
            ks = torch.randint(lo, hi, (num_groups,), generator=gen)
            group_steps = ks.tolist()
            ks = ks.repeat_interleave(group_size)
        else:
            ks = torch.randint(lo, hi, (n,), generator=gen)
        sde[torch.arange(n), ks] = True
        return StepPlan(sde=sde, train=sde.clone(), group_steps=group_steps)

    def passes(self, cfg):
        T, G = cfg.sampling_steps, cfg.group_size
        lo, hi = cfg.resolved_window()
        ks = range(lo, hi)  # k is uniform over the window
        tail = sum(len(tail_grid(k + 1, cfg.ode_tail_steps, T)) - 1 for k in ks) / len(ks)
        prefix = sum(k + 1 for k in ks) / len(ks)  # steps 0..k
        if cfg.resolved_shared_noise() and cfg.iso_temporal:
            # prefix and step k once per group, then the tail per sample; the G transitions of a
            # group share x_k: one forward/backward
            return prefix / G + tail, 1.0 / G
        return prefix + tail, 1.0


class FlowGRPO(Strategy):
    name = "flow_grpo"
    paper = "Flow-GRPO (arXiv 2505.05470)"
    summary = "every step SDE, train all"
    noise_schedule = "flow_grpo"
    sde_steps = "every step (`flow_grpo` noise, a = 0.7)"
    trained_steps = "first `timestep_fraction` of the steps"

    def trained_per_sample(self, cfg) -> int:
        return max(1, int(cfg.sampling_steps * cfg.timestep_fraction))

    def plan(self, cfg, iteration, num_groups, group_size):
        n = num_groups * group_size
        sde = torch.ones(n, cfg.sampling_steps, dtype=torch.bool)
        train = torch.zeros_like(sde)
        train[:, : self.trained_per_sample(cfg)] = True
        return StepPlan(sde=sde, train=train, group_steps=None)

    def passes(self, cfg):
        return cfg.sampling_steps, self.trained_per_sample(cfg)


class Dance(Strategy):
    name = "dance"
    paper = "DanceGRPO (arXiv 2505.07818)"
    summary = "every step SDE, train a random subset, shared noise"
    noise_schedule = "dance"
    shared_noise = True
    sde_steps = "every step (constant eta), initial noise shared per group"
    trained_steps = "random `dance_train_fraction` of the steps; optional n/2 best + n/2 worst only"

    def trained_per_sample(self, cfg) -> int:
        return max(1, round(cfg.sampling_steps * cfg.dance_train_fraction))

    def plan(self, cfg, iteration, num_groups, group_size):
        T, n = cfg.sampling_steps, num_groups * group_size
        gen = plan_generator(cfg.seed, iteration)
        sde = torch.ones(n, T, dtype=torch.bool)
        train = torch.zeros_like(sde)
        count = self.trained_per_sample(cfg)
        for i in range(n):
            train[i, torch.randperm(T, generator=gen)[:count]] = True
        return StepPlan(sde=sde, train=train, group_steps=None)

    def passes(self, cfg):
        T, G = cfg.sampling_steps, cfg.group_size
        kept = cfg.dance_best_of_n / G if cfg.dance_best_of_n and cfg.drop_zero_advantage else 1.0
        rollout = 1 / G + T - 1 if cfg.resolved_shared_noise() else T  # step 0 once per shared group
        return rollout, self.trained_per_sample(cfg) * kept

    def filter_advantages(self, cfg, advantages, rewards, group_size):
        """With ``dance_best_of_n = n > 0``: only the ``n/2`` best and the ``n/2`` worst samples of
        each group keep their advantage (DanceGRPO's best-of-n selection); the others are set to 0
        (and so, with ``drop_zero_advantage``, not trained at all). Ties are broken by position."""
        if cfg.dance_best_of_n <= 0:
            return advantages
        half = cfg.dance_best_of_n // 2
        keep = torch.zeros(len(advantages), dtype=torch.bool)
        for lo in range(0, len(advantages), group_size):
            order = torch.argsort(rewards[lo : lo + group_size], stable=True)
            keep[lo + order[:half]] = keep[lo + order[-half:]] = True
        return torch.where(keep, advantages, torch.zeros_like(advantages))


def mix_window(cfg: FlashGRPOConfig, iteration: int) -> tuple[int, int]:
    """mixgrpo: the window ``[start, end)`` at ``iteration``. The start moves one step every
    ``mix_shift_every`` iterations through ``0 .. T - 2`` and then rolls back to 0; the window is
    ``mix_window_size`` wide, cut at the last step ``T`` (so the last windows are shorter)."""
    start = (iteration // cfg.mix_shift_every) % (cfg.sampling_steps - 1)
    return start, min(start + cfg.mix_window_size, cfg.sampling_steps)


class MixGRPO(Strategy):
    name = "mixgrpo"
    paper = "MixGRPO (arXiv 2507.21802)"
    summary = "SDE and training in a sliding window"
    noise_schedule = "flow_grpo"
    shared_noise = True
    sde_steps = ("a window of `mix_window_size` steps, moving every `mix_shift_every` iterations to the end "
                 "(shorter there), then back")
    trained_steps = "the window"

    def plan(self, cfg, iteration, num_groups, group_size):
        n = num_groups * group_size
        start, end = mix_window(cfg, iteration)
        sde = torch.zeros(n, cfg.sampling_steps, dtype=torch.bool)
        sde[:, start:end] = True
        return StepPlan(sde=sde, train=sde.clone(), group_steps=None)

    def passes(self, cfg):
        T, W, G = cfg.sampling_steps, cfg.mix_window_size, cfg.group_size
        starts = range(T - 1)  # averaged over a full sweep of the window
        widths = [min(s + W, T) - s for s in starts]
        # with shared noise the steps up to the window's first one are computed once per group
        rollout = (sum((s + 1) / G + T - s - 1 for s in starts) / len(starts) if cfg.resolved_shared_noise() else T)
        return rollout, sum(widths) / len(widths)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Flash(), FlowGRPO(), Dance(), MixGRPO())}
"""The registry: config value -> strategy."""

DEFAULT_STRATEGY = "flash"


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:  # the config validates the name first
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None


def make_plan(cfg: FlashGRPOConfig, iteration: int, num_groups: int, group_size: int) -> StepPlan:
    """The step plan of ``cfg``'s strategy for one iteration (see ``Strategy.plan``)."""
    return get_strategy(cfg.strategy).plan(cfg, iteration, num_groups, group_size)


def expected_passes(cfg: FlashGRPOConfig) -> dict[str, float]:
    """Transformer passes per sample that counting predicts for one iteration of ``cfg``.

    ``rollout``: forward passes per sample (CFG counted as 2 when guidance > 1; the shared ODE prefix
    of ``flash`` with shared noise counted once per group); ``update``: forward+backward passes
    per sample (a backward counted as 2 forwards, so one trained transition costs 3 forwards, times
    2 with CFG, plus one forward when the KL is on). Used by the benchmark to compare measured
    times with what the pass count predicts.
    """
    rollout, trained = get_strategy(cfg.strategy).passes(cfg)
    cfg_mult = 2 if cfg.guidance_scale != 1.0 else 1
    kl = 1 if cfg.kl_beta > 0 else 0
    return {
        "rollout": rollout * cfg_mult,
        "update": trained * cfg_mult * (3 + kl),
        "total": rollout * cfg_mult + trained * cfg_mult * (3 + kl),
    }


def markdown_table() -> str:
    """The README's strategy table (``python -m trainer.engine.strategies``)."""
    lines = ["| `strategy` | SDE steps | trained steps | noise `s(t)` | shared noise | rectification | paper |",
             "|---|---|---|---|---|---|---|"]
    yes_no = {True: "on", False: "off"}
    for s in STRATEGIES.values():
        default = " (default)" if s.name == DEFAULT_STRATEGY else ""
        lines.append(f"| `{s.name}`{default} | {s.sde_steps} | {s.trained_steps} | `{s.noise_schedule}` | "
                     f"{yes_no[s.shared_noise]} | {yes_no[s.rectification]} | {s.paper} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
