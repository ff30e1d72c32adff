"""Score a run's LoRA against its base model on many samples of the run's own prompts.

    python -m bench.evaluate_lora RUN_DIR [--samples 4] [--threads 0] [--lora-steps K]

A run's held-out "before -> after" is a handful of samples of a handful of prompts; this asks the
two questions behind it, each over ``--samples`` initial noises per prompt:

* did the LoRA learn its training prompts (the prompts it was trained on, fresh samples)?
* does what it learnt carry over to the held-out prompts?

It reads ``RUN_DIR/config.json`` and the LoRA named in ``RUN_DIR/summary.json``, splits the prompts
as the run did, and scores deterministic ODE samples (``eval_sampling_steps``) of both prompt sets
with the LoRA and without it (the base model), with the run's rewards. The noise of draw ``d`` is
the one a run's own held-out evaluation uses for its sample ``d`` (``recipe.scored_draws``), so
on the held-out prompts, with ``--samples`` equal to the run's ``eval_samples``, the base and LoRA
means are the run's own before and after. Prints one row per prompt set (prompts, base, LoRA,
gain, the spread of the gain over draws, and for the toy world's rewards the objects kept: their
share over all draws, and their count on the first draw, the one the run's videos show) and
writes ``RUN_DIR/evaluation.json``. Nothing else in ``RUN_DIR`` is touched.

``--lora-steps K`` applies the LoRA at the first ``K`` sampling steps only (the base model does
the others): which steps a LoRA's gain, and what it breaks, come from. A LoRA is trained at the
steps its strategy trains (flash: the window) but, loaded as usual, acts at every step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from trainer.engine.config import FlashGRPOConfig
from trainer.engine.recipe import FlashGRPORecipe
from trainer.errors import UserError
from trainer.fileio import atomic_write_json


def _score(recipe: FlashGRPORecipe, prompts: list[str], samples: int, lora: bool) -> dict:
    """Per draw, the mean score over ``prompts`` (and the share of objects kept, where read)."""
    means, kept = [], []
    for _, scored in recipe.scored_draws(prompts, samples, lora):
        means.append(float(scored.scores.mean()))
        if scored.readings is not None and all("object_kept" in r for r in scored.readings):
            kept.append(float(np.mean([r["object_kept"] for r in scored.readings])))
    return {"per_draw": means, "mean": float(np.mean(means)), "objects_kept": float(np.mean(kept)) if kept else None,
            "objects_kept_per_draw": kept or None}


@contextlib.contextmanager
def lora_at_first_steps(recipe: FlashGRPORecipe, steps: int):
    """Inside the block, the LoRA acts only at the first ``steps`` steps of the evaluation sampler's
    grid (a forward pre-hook switches it on or off by the call's timestep)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from trainer.algo import sde as sde_math

    grid = sde_math.sigma_grid(recipe.cfg.eval_sampling_steps, recipe.cfg.shift).float()
    last_on = float(grid[steps - 1]) * 1000.0  # the transformer's timestep at step steps - 1
    layers = [m for m in recipe.transformer.modules() if isinstance(m, BaseTunerLayer)]

    def switch(module, args, kwargs):
        on = float(kwargs["timestep"].flatten()[0]) >= last_on - 1e-3
        for layer in layers:
            layer.enable_adapters(on)

    hook = recipe.transformer.register_forward_pre_hook(switch, with_kwargs=True)
    try:
        yield
    finally:
        hook.remove()
        for layer in layers:
            layer.enable_adapters(True)


def evaluate(run_dir: str | Path, samples: int = 4, lora_steps: int = 0) -> dict:
    """Base and LoRA scores of the run's training and held-out prompts; also written to
    ``run_dir/evaluation.json``. ``lora_steps`` > 0: the LoRA at the first that many sampling
    steps only. ``UserError`` when the run has no config or no exported LoRA."""
    run_dir = Path(run_dir)
    if samples < 1:
        raise UserError(f"--samples {samples}: must be >= 1")
    config, summary = run_dir / "config.json", run_dir / "summary.json"
    if not config.is_file():
        raise UserError(f"{run_dir}: no config.json; give the folder of a finished run (the one that holds "
                        "config.json, summary.json and lora/).")
    lora = json.loads(summary.read_text()).get("lora") if summary.is_file() else None
    if not lora or not Path(lora).is_file():
        raise UserError(f"{run_dir}: no exported LoRA ({summary.name} names {lora!r}); evaluate a run that "
                        "finished or was cancelled after its first iteration.")
    cfg = FlashGRPOConfig.from_dict(json.loads(config.read_text()))
    if not 0 <= lora_steps <= cfg.eval_sampling_steps:
        raise UserError(f"--lora-steps {lora_steps}: must be 0 (every step) to {cfg.eval_sampling_steps} "
                        "(the run's eval_sampling_steps)")
    with tempfile.TemporaryDirectory(prefix="evaluate_lora_") as scratch:
        recipe = FlashGRPORecipe(cfg, run_dir=scratch, lora_file=(lora, 1.0)).setup(training=False)
        sets = {"train": recipe.prompts.train, "held_out": recipe.prompts.eval}
        result = {"run_dir": str(run_dir), "lora": lora, "samples": samples, "lora_steps": lora_steps or None,
                  "sets": {}}
        for name, prompts in sets.items():
            if not prompts:
                continue
            base = _score(recipe, prompts, samples, False)
            with lora_at_first_steps(recipe, lora_steps) if lora_steps else contextlib.nullcontext():
                tuned = _score(recipe, prompts, samples, True)
            gains = [t - b for b, t in zip(base["per_draw"], tuned["per_draw"])]
            result["sets"][name] = {"prompts": len(prompts), "base": base, "lora": tuned,
                                    "gain": float(np.mean(gains)), "gain_std_over_draws": float(np.std(gains))}
    atomic_write_json(run_dir / "evaluation.json", result)
    return result


def table(result: dict) -> str:
    """The result as a markdown table, one row per prompt set."""
    lines = ["| prompts | n | base | LoRA | gain | gain std over draws | objects kept, base → LoRA |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in result["sets"].items():
        kept = ""
        if s["base"]["objects_kept"] is not None:  # all draws, then the first (the run's own videos)
            first = [round(s[k]["objects_kept_per_draw"][0] * s["prompts"]) for k in ("base", "lora")]
            kept = (f"{s['base']['objects_kept']:.2f} → {s['lora']['objects_kept']:.2f} "
                    f"(first draw: {first[0]} → {first[1]} of {s['prompts']})")
        lines.append(f"| {name.replace('_', '-')} | {s['prompts']} | {s['base']['mean']:.3f} | {s['lora']['mean']:.3f} "
                     f"| {s['gain']:+.3f} | {s['gain_std_over_draws']:.3f} | {kept} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run's folder (config.json, summary.json, lora/)")
    parser.add_argument("--samples", type=int, default=4, help="initial noises per prompt")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--lora-steps", type=int, default=0,
                        help="apply the LoRA at the first K sampling steps only (0 = at every step)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        result = evaluate(args.run_dir, args.samples, args.lora_steps)
    except UserError as exc:
        parser.exit(2, f"error: {exc}\n")
    where = f", the LoRA at the first {args.lora_steps} steps only" if args.lora_steps else ""
    print(f"{args.run_dir}: {args.samples} samples per prompt{where}\n\n{table(result)}\n\nwrote "
          f"{Path(args.run_dir) / 'evaluation.json'}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
