"""The run directory: events as JSON lines, videos, the reward curve, atomic file writes.

Layout of ``<output_dir>/<run_name>/``::

    config.json                 the full config of the run
    events.jsonl                one JSON object per line: {"event": "iteration", ...} and others
    checkpoints/latest.pt       the last checkpoint (atomic; see trainer.checkpoint)
    lora/<run_name>.safetensors the aligned LoRA (ComfyUI keys + training metadata)
    samples/before_<i>.mp4      held-out prompt i before training
    samples/after_<i>.mp4       the same prompt and noise after training
    reward_curve.png            reward mean and spread per iteration
    summary.json                final figures (eval reward before/after, LoRA path, timings)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader (or a crash) sees either the old file or the complete new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class EventLog:
    """Append-only JSON-lines event file; each line is flushed and fsynced as written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: ignore it
                    continue
        return out

    def truncate_after(self, iteration: int) -> None:
        """Drop iteration events past ``iteration`` (used when resuming from a checkpoint)."""
        kept = [e for e in self.read() if e.get("iteration", -1) <= iteration or e.get("event") != "iteration"]
        atomic_write_bytes(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in kept).encode())


def write_mp4(path: str | Path, video: np.ndarray, fps: int = 16) -> None:
    """Write a uint8 ``[T, H, W, 3]`` video as H.264 mp4 (imageio-ffmpeg's bundled ffmpeg)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    writer = imageio.get_writer(str(tmp), fps=fps, codec="libx264", quality=8, macro_block_size=16,
                                ffmpeg_log_level="error")
    try:
        for frame in video:
            writer.append_data(np.ascontiguousarray(frame))
    finally:
        writer.close()
    os.replace(tmp, path)


def plot_reward_curve(events: list[dict], path: str | Path) -> None:
    """Reward mean with a +-std band, and the loss, per iteration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [e for e in events if e.get("event") == "iteration"]
    if not it:
        return
    x = np.array([e["iteration"] for e in it])
    mean = np.array([e["reward_mean"] for e in it])
    std = np.array([e["reward_std"] for e in it])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=[3, 1.4])
    ax1.plot(x, mean, color="tab:blue", label="reward mean")
    ax1.fill_between(x, mean - std, mean + std, color="tab:blue", alpha=0.2, label="+-1 std")
    if len(x) >= 5:
        k = max(2, len(x) // 10)
        smooth = np.convolve(mean, np.ones(k) / k, mode="valid")
        ax1.plot(x[k - 1 :], smooth, color="tab:orange", label=f"moving mean ({k})")
    ax1.set_ylabel("reward")
    ax1.legend(loc="best", fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(x, [e.get("loss", np.nan) for e in it], color="tab:gray")
    ax2.set_ylabel("loss")
    ax2.set_xlabel("iteration")
    ax2.grid(alpha=0.3)
    fig.suptitle(it[-1].get("strategy", ""), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write_contact_sheet(path: str | Path, blocks: list[tuple[str, list[tuple[str, np.ndarray]]]],
                        frames: int = 5, scale: int = 2) -> None:
    """A PNG of videos as rows of ``frames`` evenly spaced frames, enlarged ``scale`` x (nearest).

    ``blocks``: ``(title, rows)`` pairs; each row is ``(label, video uint8 [T, H, W, 3])``, all of
    one size. Each block prints its title (e.g. the prompt) above its rows.
    """
    from PIL import Image, ImageDraw

    t, h, w, _ = blocks[0][1][0][1].shape
    idx = np.linspace(0, t - 1, min(frames, t)).round().astype(int)
    fh, fw, text_h, label_w, gap = h * scale, w * scale, 14, 120, 2
    width = label_w + len(idx) * (fw + gap)
    heights = [text_h + len(rows) * (fh + gap) + 6 for _, rows in blocks]
    sheet = Image.new("RGB", (width, sum(heights)), (215, 215, 215))  # light gray: white clips show
    draw = ImageDraw.Draw(sheet)
    top = 0
    for (title, rows), height in zip(blocks, heights):
        draw.text((2, top + 1), title[: width // 6], fill=(0, 0, 0))
        for r, (label, video) in enumerate(rows):
            y = top + text_h + r * (fh + gap)
            draw.text((2, y + fh // 2 - 6), label, fill=(0, 0, 0))
            for j, f in enumerate(idx):
                sheet.paste(Image.fromarray(video[f]).resize((fw, fh), Image.NEAREST), (label_w + j * (fw + gap), y))
        top += height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    sheet.save(tmp)
    os.replace(tmp, path)


def write_before_after(path: str | Path, prompts: list[str], before: np.ndarray, after: np.ndarray,
                       scores_before: list[float], scores_after: list[float]) -> None:
    """Contact sheet of held-out prompts: per prompt the video before training and after, with
    their rewards. ``before``/``after``: uint8 ``[N, T, H, W, 3]``."""
    write_contact_sheet(path, [
        (p, [(f"before: {s0:.3f}", v0), (f"after: {s1:.3f}", v1)])
        for p, v0, v1, s0, s1 in zip(prompts, before, after, scores_before, scores_after)
    ])
