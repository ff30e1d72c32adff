"""The jobs the nodes and the CLI ask for: train, sample a group, score videos.

These three functions are the whole interface between the front ends (ComfyUI nodes, the
headless runner) and the engine. By default they are sent to the backend trainer process
(``trainer.backend``, started on demand with the requested number of GPUs, see
``trainer.client``), so no heavy work runs in ComfyUI's or the runner's process. With
``in_process=True`` (what the backend itself calls) or ``FLASH_GRPO_IN_PROCESS=1`` they run here,
keeping the loaded pipeline warm between calls.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .config import FlashGRPOConfig
from .errors import UserError
from .grpo import group_advantages
from .models import load_pipeline
from .recipe import FlashGRPORecipe, RunResult, resolve_device_and_dtype
from .rewards import build_reward_set


class RunCancelled(UserError):
    """The user stopped a run; its checkpoint is on disk and it can be resumed."""

    def __init__(self, result: RunResult):
        self.result = result
        super().__init__(
            f"run cancelled after {result.iterations_done} iterations; checkpoint and LoRA saved in "
            f"{result.run_dir}. Resume with --resume (headless) or resume=true and the same run_name."
        )


_PIPELINES: dict[tuple, object] = {}
MODEL_LOADS = 0
"""How many times this process loaded a model (a warm backend loads once)."""
_CLIENT = None


def _local(in_process: bool) -> bool:
    return in_process or os.environ.get("FLASH_GRPO_IN_PROCESS") == "1"


def _client(gpus: int = 1):
    """The backend client of this process (reconnects after a backend failure)."""
    global _CLIENT
    from . import client

    if _CLIENT is None or _CLIENT.process is not None and _CLIENT.process.poll() is not None:
        _CLIENT = client.connect(gpus)
    else:
        try:
            if _CLIENT.health().get("world_size") != gpus:
                _CLIENT = client.connect(gpus)
        except client.BackendError:
            _CLIENT = client.connect(gpus)
    return _CLIENT


def close() -> None:
    """Shut down a backend this process started (the CLI does this on exit; ComfyUI keeps it)."""
    global _CLIENT
    if _CLIENT is not None and _CLIENT.process is not None:
        _CLIENT.shutdown()
    _CLIENT = None


def drop_warm_pipeline() -> None:
    _PIPELINES.clear()


def warm_pipeline(cfg: FlashGRPOConfig):
    """The pipeline for ``cfg``'s model, loaded once per process and kept (the warm model).

    The engine takes its sigma grid from ``cfg.shift``, so one loaded pipeline serves any shift.
    """
    global MODEL_LOADS
    _, dtype = resolve_device_and_dtype(cfg)
    key = (cfg.model, str(dtype), cfg.seed if cfg.model == "tiny" else None)
    if key not in _PIPELINES:
        _PIPELINES.clear()  # keep one model in memory
        _PIPELINES[key] = load_pipeline(cfg.model, shift=cfg.shift, dtype=dtype, seed=cfg.seed)
        MODEL_LOADS += 1
    return _PIPELINES[key]


def run_training(cfg: FlashGRPOConfig, resume: bool = False, gpus: int = 1,
                 should_stop: Callable[[], bool] = lambda: False,
                 on_event: Callable[[dict], None] = lambda e: None, in_process: bool = False) -> RunResult:
    """Train ``cfg`` to the end (or until ``should_stop``); raise ``RunCancelled`` if stopped.

    ``on_event`` receives every event of the run (``trainer.runlog``), as it happens.
    """
    if not _local(in_process):
        out = _client(gpus).run_job("train", {"config": cfg.to_dict(), "resume": resume},
                                    on_event=on_event, should_stop=should_stop)
        result = RunResult(Path(out["run_dir"]), Path(out["lora_path"]) if out.get("lora_path") else None,
                           out["iterations_done"], out["cancelled"], out.get("summary", {}))
        if result.cancelled:
            raise RunCancelled(result)
        return result
    if gpus != 1:
        raise UserError(f"gpus={gpus}: in-process training uses one process; multi-GPU runs go through the backend.")
    run_dir = Path(cfg.output_dir) / cfg.run_name if cfg.run_name else None
    recipe = FlashGRPORecipe(cfg, run_dir=run_dir, resume=resume, pipeline=warm_pipeline(cfg)).setup()
    result = recipe.train(should_stop=should_stop, on_event=on_event)
    if result.cancelled:
        raise RunCancelled(result)
    return result


def sample_group(cfg: FlashGRPOConfig, prompts: list[str], iteration: int = 0, gpus: int = 1,
                 in_process: bool = False) -> dict:
    """Iso-temporal group sampling: ``cfg.group_size`` videos per prompt, as in a training rollout.

    Each prompt's group shares one SDE step ``k`` (drawn from the window by ``cfg.seed`` and
    ``iteration``). Returns ``videos`` float ``[P*G, T, H, W, 3]`` (prompt-major), ``steps`` (k per
    prompt), ``prompts`` (per video) and ``seed``.
    """
    cfg = FlashGRPOConfig.from_dict({**cfg.to_dict(), "prompts": list(prompts), "prompt_file": "",
                                     "eval_prompts": 0, "prompts_per_iteration": len(prompts)})
    recipe = FlashGRPORecipe(cfg, pipeline=warm_pipeline(cfg)).setup(training=False)
    batch = recipe.rollout_phase(iteration, prompts_global=list(prompts))
    return {
        "videos": recipe.decode(batch.result.latents),
        "steps": batch.plan.group_steps,
        "prompts": batch.prompts,
        "seed": cfg.seed,
    }


def score_videos(reward_specs: list, videos, prompts: list[str], group_size: int,
                 std_mode: str = "group", clip: float = 5.0, gpus: int = 1, in_process: bool = False) -> dict:
    """Score videos with a reward set and compute their group advantages.

    ``videos``: uint8 or float ``[N, T, H, W, 3]`` with ``N = groups * group_size`` (group-major).
    Returns ``scores`` ``[N]``, ``details`` (per reward), ``advantages`` ``[N]``, ``has_signal``.
    """
    if not _local(in_process):
        from .backend import encode_array
        from .rewards import as_uint8

        out = _client(gpus).run_job("score", {
            "rewards": reward_specs, "videos": encode_array(as_uint8(videos)), "prompts": list(prompts),
            "group_size": group_size, "std_mode": std_mode, "clip": clip})
        return {"scores": torch.tensor(out["scores"]), "advantages": torch.tensor(out["advantages"]),
                "has_signal": torch.tensor(out["has_signal"]),
                "details": {k: torch.tensor(v) for k, v in out["details"].items()}}
    reward = build_reward_set(reward_specs)
    out = reward(videos, prompts)
    n = out.scores.shape[0]
    if group_size < 1 or n % group_size:
        raise UserError(f"{n} videos cannot be split into groups of {group_size}: give a multiple of the group size.")
    groups = torch.arange(n // group_size).repeat_interleave(group_size)
    adv, signal = group_advantages(out.scores, groups, std_mode, clip)
    return {"scores": out.scores, "details": out.details, "advantages": adv, "has_signal": signal}
