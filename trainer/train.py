"""Train from a config, without a workflow; the entry point for torchrun.

    python -m trainer.train --preset tiny_demo --iterations 20
    torchrun --nproc_per_node 8 -m trainer.train --preset flash_grpo_wan2.1_1.3b --model /models/Wan2.1-T2V-1.3B-Diffusers
    python -m trainer.train --config runs/x/config.json --resume runs/x

Exit status: 0 done, 2 a problem to fix (the message says what and how), 1 an internal error
(``--debug`` shows the traceback).

Every ``FlashGRPOConfig`` field is a flag (``--help`` lists them with their help texts). Values
are taken in this order: defaults, ``--preset``, ``--config`` (a JSON file), flags.
Under torchrun (``WORLD_SIZE`` > 1) the process group is initialised with NCCL on CUDA and gloo
on CPU; prompts are sharded over ranks and only rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from .engine.config import PRESETS, FlashGRPOConfig, add_cli_arguments, cli_overrides
from .engine.distributed import init_distributed
from .errors import UserError


def build_config(args: argparse.Namespace) -> FlashGRPOConfig:
    values = {}
    if args.config:
        path = Path(args.config).expanduser().absolute()
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            values.update(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
    values.update(cli_overrides(args))
    return FlashGRPOConfig.from_dict(values, preset=args.preset).with_absolute_paths()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default=None, help="base values (see trainer/engine/config.py)")
    ap.add_argument("--config", help="JSON file of config fields (e.g. a run's config.json)")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    add_cli_arguments(ap)
    args = ap.parse_args(argv)
    distributed = finished = False
    try:
        cfg = build_config(args)
        distributed = init_distributed()
        from .engine.recipe import FlashGRPORecipe

        run_dir = Path(args.resume).expanduser().absolute() if args.resume else None
        if run_dir is not None and run_dir.is_file():
            raise UserError(f"--resume {run_dir}: give the run directory (the folder holding checkpoints/latest.pt), "
                            "not a file.")
        recipe = FlashGRPORecipe(cfg, run_dir=run_dir, resume=bool(args.resume)).setup()
        result = recipe.train(on_event=lambda e: print(json.dumps(e, sort_keys=True), flush=True)
                              if e.get("event") != "iteration" else print(
                                  f"iteration {e['iteration'] + 1}/{cfg.iterations} reward {e['reward_mean']:.4f} "
                                  f"loss {e['loss']:.4g} grad {e['grad_norm']:.3g}", flush=True))
        if recipe.dist.is_main:
            print(f"run directory: {result.run_dir}\nLoRA: {result.lora_path}")
        finished = True
        return 0
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # an internal error: say so, traceback only with --debug
        if args.debug:
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e}\nRerun with --debug for the traceback.", file=sys.stderr)
        return 1
    finally:
        if distributed:
            import torch.distributed as dist

            if finished:  # no rank tears down its connections while another still uses them
                dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
