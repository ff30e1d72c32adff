"""Print the sampling schedule a config implies: one row per step.

    python -m trainer.schedule --steps 20 --shift 3 --noise flash
    python -m trainer.schedule --steps 10 --noise flow_grpo --noise-level 0.7 --json

Columns: step index j, sigma_j, the transformer timestep (sigma * 1000), dt, the SDE noise scale
s(t), the step's standard deviation s * sqrt|dt|, the gradient scale K(t), and the
rectification weight c = (1/K) / mean(1/K) over the training window (the steps k may take;
default the first half). Use it to choose a noise level and a window: the spread of K over the
window is how unequal the gradients of un-rectified training would be.
"""

from __future__ import annotations

import argparse
import json
import sys

from .algo import sde as sde_math


def schedule_table(steps: int, shift: float, noise: str, noise_level: float | None = None,
                   window: tuple[int, int] | None = None) -> list[dict]:
    """The rows printed by the CLI, as dicts (see module docstring for the columns)."""
    sigmas = sde_math.sigma_grid(steps, shift)
    lo, hi = window if window is not None else (0, max(1, steps // 2))
    s = sde_math.noise_std(noise, sigmas[:-1], sigmas, noise_level).double()
    k = sde_math.grad_scale(sigmas[:-1].float(), sigmas[1:].float(), s.float()).double()
    inv = 1.0 / k
    norm = inv[lo:hi].mean()
    rows = []
    for j in range(steps):
        dt = float(sigmas[j + 1] - sigmas[j])
        rows.append({
            "step": j,
            "sigma": float(sigmas[j]),
            "timestep": float(sigmas[j] * 1000.0),
            "dt": dt,
            "s": float(s[j]),
            "step_std": float(s[j] * abs(dt) ** 0.5),
            "K": float(k[j]),
            "in_window": lo <= j < hi,
            "rect_weight": float(inv[j] / norm),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.schedule", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="sampling steps T (default 20)")
    ap.add_argument("--shift", type=float, default=3.0, help="time shift (default 3)")
    ap.add_argument("--noise", choices=sde_math.NOISE_SCHEDULES, default="flash", help="noise schedule s(t)")
    ap.add_argument("--noise-level", type=float, default=None, help="schedule's level (default: its published one)")
    ap.add_argument("--window-start", type=int, default=0, help="first step of the training window")
    ap.add_argument("--window-end", type=int, default=None, help="end (exclusive) of the window; default steps/2")
    ap.add_argument("--json", action="store_true", help="print JSON (one object with 'rows') instead of a table")
    args = ap.parse_args(argv)
    end = args.window_end if args.window_end is not None else max(1, args.steps // 2)
    if args.steps < 1 or not (0 <= args.window_start < end <= args.steps):
        print(f"error: need steps >= 1 and 0 <= window-start < window-end <= steps "
              f"(got steps={args.steps}, window {args.window_start}..{end})", file=sys.stderr)
        return 2
    if not args.shift > 0 or args.shift == float("inf"):
        print(f"error: --shift {args.shift}: the time shift must be a number > 0 (Wan2.1 480p: 3)", file=sys.stderr)
        return 2
    if args.noise_level is not None and not 0 < args.noise_level < float("inf"):
        print(f"error: --noise-level {args.noise_level}: must be a number > 0 (or leave it out for the "
              "schedule's published level)", file=sys.stderr)
        return 2
    rows = schedule_table(args.steps, args.shift, args.noise, args.noise_level, (args.window_start, end))
    if args.json:
        print(json.dumps({"steps": args.steps, "shift": args.shift, "noise": args.noise,
                          "noise_level": args.noise_level if args.noise_level is not None
                          else sde_math.DEFAULT_NOISE_LEVEL[args.noise],
                          "window": [args.window_start, end], "rows": rows}, indent=1))
        return 0
    win = [r["K"] for r in rows if r["in_window"]]
    print(f"# {args.steps} steps, shift {args.shift}, noise {args.noise} "
          f"(level {args.noise_level if args.noise_level is not None else sde_math.DEFAULT_NOISE_LEVEL[args.noise]}), "
          f"window [{args.window_start}, {end}): K varies {max(win) / min(win):.2f}x inside it")
    print(f"{'step':>4} {'sigma':>8} {'timestep':>9} {'dt':>9} {'s(t)':>8} {'step_std':>9} {'K(t)':>8} {'weight':>8}")
    for r in rows:
        mark = "*" if r["in_window"] else " "
        print(f"{r['step']:>4} {r['sigma']:8.4f} {r['timestep']:9.2f} {r['dt']:9.4f} {r['s']:8.4f} "
              f"{r['step_std']:9.4f} {r['K']:8.4f} {r['rect_weight']:8.4f}{mark}")
    print("# * = in the training window; weight = (1/K) / mean over the window of (1/K)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
