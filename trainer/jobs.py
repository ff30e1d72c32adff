"""Running a training job for a node or the CLI.

``run_training`` is the one entry point the trainer node calls. It runs the recipe in this
process; the backend trainer process (multi-GPU, warm model) plugs in here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .config import FlashGRPOConfig
from .errors import UserError
from .recipe import FlashGRPORecipe, RunResult


class RunCancelled(UserError):
    """The user stopped a run; its checkpoint is on disk and it can be resumed."""

    def __init__(self, result: RunResult):
        self.result = result
        super().__init__(
            f"run cancelled after {result.iterations_done} iterations; checkpoint and LoRA saved in "
            f"{result.run_dir}. Resume with --resume (headless) or resume=true and the same run_name."
        )


def run_training(cfg: FlashGRPOConfig, resume: bool = False, gpus: int = 1,
                 should_stop: Callable[[], bool] = lambda: False,
                 on_event: Callable[[dict], None] = lambda e: None) -> RunResult:
    """Train ``cfg`` to the end (or until ``should_stop``); raise ``RunCancelled`` if stopped."""
    if gpus != 1:
        raise UserError(f"gpus={gpus}: multi-process training runs in the backend trainer; use gpus=1 here.")
    run_dir = Path(cfg.output_dir) / cfg.run_name if cfg.run_name else None
    recipe = FlashGRPORecipe(cfg, run_dir=run_dir, resume=resume).setup()
    result = recipe.train(should_stop=should_stop, on_event=on_event)
    if result.cancelled:
        raise RunCancelled(result)
    return result
