"""Peak host memory of one training iteration against the group size G.

    python -m bench.host_memory [--sizes 2 16] [--frames 33 --height 128 --width 128] [--json PATH]

Method: for each group size, a fresh process builds the recipe on the built-in tiny Wan model
(one prompt of G videos, CPU, float32), runs one iteration and reports its peak resident set size
(``ru_maxrss``). Setup costs the same in every process, so the difference between two group sizes,
divided by the difference in videos, is what one extra video costs at peak. It is printed as a
ratio to the size of one decoded video as uint8 (``T*H*W*3`` bytes), the baseline of the same
run. Decoding is chunked (``decode_batch_size``, 1 by default) and scored chunk by chunk, so that
ratio stays near 1 (the chunk being scored; latents and the trained transitions grow with G, at 1/48 of a video each);
keeping every decoded video as float32 costs 4 (plus 4 more for the reward's copy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc: every allocation above 128 KiB gets its own mapping, returned when freed, so that the
peak RSS follows the tensors alive at the peak instead of the heap's fragmentation (glibc's
dynamic threshold otherwise moves up to 32 MiB after the first frees)."""


def child(group_size: int, frames: int, height: int, width: int, steps: int, **overrides) -> dict:
    """Run one iteration in this process and return its peak RSS in bytes."""
    import resource
    import tempfile

    import torch

    from trainer.engine.config import FlashGRPOConfig
    from trainer.engine.recipe import FlashGRPORecipe

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = FlashGRPOConfig.from_dict(dict(
            output_dir=tmp, run_name="m", iterations=1, sample_videos=False, eval_prompts=0,
            group_size=group_size, prompts_per_iteration=1, num_frames=frames, height=height, width=width,
            sampling_steps=steps, max_sequence_length=32, **overrides), preset="tiny_demo")
        recipe = FlashGRPORecipe(cfg).setup()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        recipe.run_iteration(0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"group_size": group_size, "peak_rss": peak, "peak_rss_before_iteration": before}


def measure(sizes=(2, 16), frames: int = 33, height: int = 128, width: int = 128, steps: int = 4,
            **overrides) -> dict:
    """One fresh process per group size; the per-video growth of peak RSS and its ratio to a
    uint8 video."""
    runs = []
    for g in sizes:
        code = (f"import json, bench.host_memory as m; "
                f"print(json.dumps(m.child({g}, {frames}, {height}, {width}, {steps}, **{overrides!r})))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **MALLOC_ENV}, timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    video_bytes = frames * height * width * 3
    lo, hi = runs[0], runs[-1]
    per_video = (hi["peak_rss"] - lo["peak_rss"]) / (hi["group_size"] - lo["group_size"])
    return {"settings": dict(sizes=list(sizes), frames=frames, height=height, width=width, steps=steps,
                             **overrides),
            "runs": runs, "uint8_video_bytes": video_bytes, "peak_growth_per_video": per_video,
            "growth_per_video_over_uint8_video": per_video / video_bytes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    out = measure(tuple(args.sizes), args.frames, args.height, args.width, args.steps)
    mib = 1024**2
    print("| G | peak RSS MiB |\n|---:|---:|")
    for r in out["runs"]:
        print(f"| {r['group_size']} | {r['peak_rss'] / mib:.1f} |")
    print(f"\npeak growth per extra video: {out['peak_growth_per_video'] / mib:.2f} MiB = "
          f"{out['growth_per_video_over_uint8_video']:.2f} x one uint8 video "
          f"({out['uint8_video_bytes'] / mib:.2f} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
