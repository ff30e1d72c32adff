"""Run a workflow headlessly: ``python -m trainer.run workflows/align.json``.

The workflow may be in ComfyUI's UI format (Save) or API format (Export (API)); it is made of
this pack's node types (``trainer.graph.node_types``), executed exactly as ComfyUI would.

Exit status: 0 done, 2 a problem to fix (the message says what and how), 130 cancelled with
Ctrl-C (checkpoint written; ``--resume`` continues), 1 an internal error (``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
import warnings

from . import settings
from .errors import UserError
from .graph import host

MODEL_NODE = "FlashGRPOModelSource"
TRAINER_NODE = "FlashGRPOTrainer"


class CliHost(host.Host):
    """Progress bar on stderr; Ctrl-C (or SIGTERM) asks the run to stop after the iteration."""

    def __init__(self, in_process: bool = False, detached: bool = False):
        self.in_process = in_process  # where the jobs run: decided once, here
        self.detached = detached
        self.stop = False
        self.t0 = None

    def interrupted(self) -> bool:
        return self.stop

    def progress(self, node_id, done, total, event=None):
        now = time.time()
        if self.t0 is None or done <= 1:
            self.t0, self.first = now, done - 1
        rate = (now - self.t0) / max(done - self.first - 1, 1) if done - self.first > 1 else None
        eta = f"{int(rate * (total - done)) // 60:d}:{int(rate * (total - done)) % 60:02d}" if rate else "?"
        width = 24
        fill = int(width * done / max(total, 1))
        reward = f" reward {event['reward_mean']:.4f}" if event and "reward_mean" in event else ""
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total}{reward} "
                         f"| {f'{rate:.1f}' if rate else '?'}s/it | ETA {eta} ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def apply_overrides(prompt: dict, model: str | None, sets: list[str], resume: bool) -> None:
    """Apply --model / FLASH_GRPO_MODEL to model nodes and --set / --resume to trainer nodes."""
    from .engine.config import parse_set_items

    model = model or settings.model_override()
    overrides = parse_set_items(sets)
    for node in prompt.values():
        inputs = node.setdefault("inputs", {})
        if node.get("class_type") == MODEL_NODE and model:
            inputs["model"] = model
        if node.get("class_type") == TRAINER_NODE:
            widget_fields = {k for k in inputs if not isinstance(inputs[k], list)}
            extra = json.loads(inputs.get("config_overrides") or "{}")
            for key, value in overrides.items():
                if key in widget_fields and key not in ("config_overrides",):
                    inputs[key] = value
                else:
                    extra[key] = value
            inputs["config_overrides"] = json.dumps(extra)
            if resume:
                inputs["resume"] = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("workflow", help="workflow JSON (ComfyUI UI or API format)")
    ap.add_argument("--model", help="Wan model folder for every model-source node (or FLASH_GRPO_MODEL)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field of every trainer node (repeatable), e.g. --set iterations=5")
    ap.add_argument("--resume", action="store_true", help="continue the trainer node's run (same run_name) from its checkpoint")
    ap.add_argument("--in-process", action="store_true",
                    help="run the jobs in this process instead of the backend trainer process (one CPU/GPU)")
    ap.add_argument("--detach", action="store_true",
                    help="a backend this run starts keeps training if this process is killed (without it, the "
                         "backend stops, its run checkpointed, once this process has gone)")
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    args = ap.parse_args(argv)
    if args.detach and args.in_process:
        ap.error("--detach is for the backend; --in-process runs no backend")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

    cli = CliHost(in_process=args.in_process, detached=args.detach)
    host.install(cli)

    def on_signal(signum, frame):
        if cli.stop:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        cli.stop = True
        sys.stderr.write("\nstopping after this iteration (Ctrl-C again to abort at once)...\n")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    from .service.runner import RunCancelled

    try:
        from .graph.node_types import NODE_CLASS_MAPPINGS
        from .graph.workflow import execute_prompt, load_workflow

        prompt = load_workflow(args.workflow, NODE_CLASS_MAPPINGS)
        apply_overrides(prompt, args.model, args.set, args.resume)
        results = execute_prompt(
            prompt, NODE_CLASS_MAPPINGS,
            on_node_start=lambda nid, ct: args.debug and print(f"node {nid} ({ct})", file=sys.stderr),
        )
    except RunCancelled as e:
        print(f"cancelled: {e}", file=sys.stderr)
        return 130
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aborted (no checkpoint written for the current iteration)", file=sys.stderr)
        return 130
    except Exception as e:  # an internal error: say so, traceback only with --debug
        if args.debug:
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e}\nRerun with --debug for the traceback.", file=sys.stderr)
        return 1
    finally:
        cli.close()  # shuts down the backend this run started
    for ui in results.ui.values():
        for line in (ui or {}).get("text", []):
            print(line)
    for nid, node in prompt.items():
        if node["class_type"] == TRAINER_NODE and nid in results:
            lora, run_dir, metrics = results[nid][:3]  # then the sheet and curve images
            print(f"run directory: {run_dir}\nLoRA: {lora}")
            m = json.loads(metrics)
            if "reward_first" in m:
                print(f"training reward (mean of the first/last {m.get('reward_iterations', 5)} iterations): "
                      f"{m['reward_first']:.4f} -> {m['reward_last']:.4f}")
            rows = [r for r in m.get("held_out", []) if "gain" in r]
            if rows:
                before = sum(r["before"] for r in rows) / len(rows)
                after = sum(r["after"] for r in rows) / len(rows)
                line = f"held-out reward ({len(rows)} prompts): {before:.4f} -> {after:.4f} ({after - before:+.4f})"
                kept = [r["after_readings"].get("object_kept") for r in rows if "after_readings" in r]
                if kept and all(k is not None for k in kept):
                    line += f"; objects kept after training: {sum(kept)}/{len(kept)}"
                    had = [r.get("before_readings", {}).get("object_kept") for r in rows]
                    if len(had) == len(kept) and None not in had:  # lost by training vs never there
                        line += (f" (lost by training: {sum(h and not k for h, k in zip(had, kept))}, "
                                 f"missing before it: {had.count(False)})")
                print(line + " (per prompt in summary.json)")
                along = [(r["before_readings"].get("motion_along"), r["after_readings"].get("motion_along"))
                         for r in rows if "before_readings" in r and "after_readings" in r]
                along = [(b, a) for b, a in along if b is not None and a is not None]
                if along:
                    print(f"held-out motion along the asked direction ({len(along)} videos, fraction of the side "
                          f"per frame): {sum(b for b, _ in along) / len(along):+.4f} -> "
                          f"{sum(a for _, a in along) / len(along):+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
