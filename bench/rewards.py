"""Throughput of every registered reward on CPU: videos per second at the test sizes.

    python -m bench.rewards [--videos 8] [--frames 9] [--size 64] [--repeats 3] [--max-seconds 20] [--threads 1]
                            [--only NAME,NAME] [--models JSON] [--remote URL] [--json PATH]

Method
------
One process builds every reward of :func:`trainer.rewards.available_rewards` (built-ins and
installed plugins) with no arguments, or with the arguments given for it in ``--models`` (a JSON
object ``{name: kwargs}``, e.g. ``'{"pickscore": {"path": "/models/PickScore_v1",
"processor_path": "/models/CLIP-ViT-H-14"}}'``); rewards that need arguments that were not given
(model rewards need local weight paths; ``remote`` needs ``--remote URL`` and the token in
``FLASH_GRPO_REWARD_TOKEN``) are listed as skipped with the reason.

All rewards score the same ``--videos`` uint8 videos of ``--frames x --size x --size`` (default
8 videos of 9x64x64, as in the tests): a grey background with a moving square and the word OPEN
rendered by Pillow, with prompts ``a sign that says "OPEN"`` (so ``ocr`` detects and reads text).
Each reward gets one *first call* (timed separately: it includes lazy loading, e.g. the OCR
engine's ONNX sessions), then ``--repeats`` timed calls (fewer, but at least one, once the timed
calls of that reward took ``--max-seconds``); the table shows the median call as videos/s and
ms/video. ``ocr`` at its default ``det_limit_side_len`` (736) upsamples 64x64 frames 11x for the
text detector, which dominates its time; ``--models '{"ocr": {"det_limit_side_len": 192}}'``
shows the cost at a detector size suited to small frames. torch uses ``--threads`` threads (default 1: on shared cores more threads
mostly spin-wait); onnxruntime (``ocr``) uses its own default unless ``--models`` sets
``{"ocr": {"threads": N}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from trainer.errors import UserError
from trainer.rewards import available_rewards, build_reward
from trainer.rewards.remote import TOKEN_ENV

PROMPT = 'a sign that says "OPEN"'


def _font(size: int):
    try:
        import matplotlib.font_manager as font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=False), size)
    except Exception:  # noqa: BLE001 -- any font problem: Pillow's bundled font
        return ImageFont.load_default(size=size)


def make_videos(n: int, frames: int, size: int) -> torch.Tensor:
    """``n`` uint8 videos ``[n, frames, size, size, 3]``: grey, a moving square, the word OPEN."""
    font = _font(max(8, size // 3))
    videos = np.zeros((n, frames, size, size, 3), dtype=np.uint8)
    side = max(2, size // 8)
    for i in range(n):
        for t in range(frames):
            image = Image.new("RGB", (size, size), (200 - 8 * i % 100, 200, 190))
            draw = ImageDraw.Draw(image)
            x = (2 * t + 3 * i) % max(1, size - side)
            draw.rectangle([x, size - side - 2, x + side, size - 2], fill=(200, 30, 30))
            draw.text((2, size // 5), "OPEN", fill=(10, 10, 10), font=font)
            videos[i, t] = np.asarray(image)
    return torch.from_numpy(videos)


def bench_one(reward, videos: torch.Tensor, prompts: list[str], repeats: int,
              max_seconds: float = 20.0) -> dict[str, float]:
    """Time one first call, then up to ``repeats`` calls (stopping early, after at least one, once
    the timed calls took ``max_seconds``); seconds and videos/s of the median call."""
    start = time.perf_counter()
    reward(videos, prompts)
    first = time.perf_counter() - start
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < max_seconds):
        start = time.perf_counter()
        reward(videos, prompts)
        times.append(time.perf_counter() - start)
    median = float(statistics.median(times))
    n = int(videos.shape[0])
    return {"first_call_s": first, "median_s": median, "videos_per_s": n / median if median > 0 else float("inf"),
            "ms_per_video": 1000.0 * median / n, "calls": len(times)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    extra_args: dict[str, dict] = json.loads(args.models) if args.models else {}
    if not isinstance(extra_args, dict) or not all(isinstance(v, dict) for v in extra_args.values()):
        raise UserError('--models must be a JSON object {"reward name": {keyword arguments}}.')
    if args.remote:
        extra_args.setdefault("remote", {})["url"] = args.remote
    names = available_rewards()
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in names]
        if unknown:
            raise UserError(f"--only: unknown reward(s) {unknown}; available: {', '.join(names)}.")
        names = wanted
    videos = make_videos(args.videos, args.frames, args.size)
    prompts = [PROMPT] * args.videos
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            reward = build_reward(name, **extra_args.get(name, {}))
            rows[name] = bench_one(reward, videos, prompts, args.repeats, args.max_seconds)
        except UserError as exc:
            rows[name] = {"skipped": str(exc).split("\n")[0]}
    return {
        "settings": {"videos": args.videos, "frames": args.frames, "size": args.size, "repeats": args.repeats,
                     "max_seconds": args.max_seconds,
                     "torch_threads": torch.get_num_threads()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "rewards": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(f"rewards on CPU: {s['videos']} videos of {s['frames']}x{s['size']}x{s['size']}, "
          f"median of up to {s['repeats']} calls after one first call, torch threads {s['torch_threads']}")
    head = f"{'reward':<24}{'videos/s':>12}{'ms/video':>12}{'first call s':>14}{'calls':>7}"
    print(head)
    print("-" * len(head))
    skipped = []
    for name, row in result["rewards"].items():
        if "skipped" in row:
            skipped.append((name, row["skipped"]))
            continue
        print(f"{name:<24}{row['videos_per_s']:>12.1f}{row['ms_per_video']:>12.2f}{row['first_call_s']:>14.3f}{row['calls']:>7}")
    for name, reason in skipped:
        print(f"skipped {name}: {reason[:150]}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.rewards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="stop timing a reward after this many seconds of timed calls (at least one call)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--only", default="", help="comma-separated reward names (default: all)")
    parser.add_argument("--models", default="", help='JSON {"name": {kwargs}}: arguments of rewards that need them')
    parser.add_argument("--remote", default="", help=f"URL of a reward server for 'remote' (token in ${TOKEN_ENV})")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if min(args.videos, args.frames, args.size, args.repeats, args.threads) < 1:
        parser.error("--videos, --frames, --size, --repeats and --threads must be at least 1")
    try:
        result = run(args)
    except (UserError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
