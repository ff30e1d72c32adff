"""The run directory: events as JSON lines, the reward curve, the before/after sheet.

Layout of ``<output_dir>/<run_name>/``::

    config.json                 the full config of the run
    events.jsonl                one JSON object per line: {"event": "iteration", ...} and others
    checkpoints/latest.pt       the last checkpoint (atomic; see trainer.engine.checkpoint)
    lora/<run_name>.safetensors the aligned LoRA (ComfyUI keys + training metadata)
    samples/before_<i>.mp4      held-out prompt i before training
    samples/after_<i>.mp4       the same prompt and noise after training
    reward_curve.png            reward mean and spread per iteration
    summary.json                final figures (eval reward before/after, LoRA path, timings)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes, atomic_write_json, write_contact_sheet, write_mp4

__all__ = ["EventLog", "atomic_write_bytes", "atomic_write_json", "plot_reward_curve", "write_animation",
           "write_before_after", "write_contact_sheet", "write_mp4"]


class EventLog:
    """Append-only JSON-lines event file; each line is flushed and fsynced as written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)  # its folder is made on the first write

    def write(self, event: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        """Drop iteration and preview events past ``iteration`` (used when resuming from a checkpoint)."""
        kept = [e for e in self.read()
                if e.get("iteration", -1) <= iteration or e.get("event") not in ("iteration", "preview")]
        atomic_write_bytes(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in kept).encode())


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


def write_before_after(path: str | Path, prompts: list[str], before: np.ndarray, after: np.ndarray,
                       scores_before: list[float], scores_after: list[float]) -> None:
    """Contact sheet of held-out prompts: per prompt the video before training and after, with
    their rewards. ``before``/``after``: uint8 ``[N, T, H, W, 3]``."""
    write_contact_sheet(path, [
        (p, [(f"before: {s0:.3f}", v0), (f"after: {s1:.3f}", v1)])
        for p, v0, v1, s0, s1 in zip(prompts, before, after, scores_before, scores_after)
    ])


def write_animation(path: str | Path, rows: list[np.ndarray], fps: int = 16, scale: int = 2) -> np.ndarray:
    """An animated WebP (lossless, looping) of videos tiled in a grid: ``rows`` is a list of
    uint8 ``[N, T, H, W, 3]`` arrays of one size, one grid row each (e.g. before, after), each
    video a column; frames enlarged ``scale`` x (nearest). Returns the grid's middle frame (uint8
    ``[H', W', 3]``), a still for a progress preview. Written through a temp file and a rename."""
    from PIL import Image

    n = max(r.shape[0] for r in rows)
    t, h, w, _ = rows[0].shape[1:]
    gap = 2
    grid = np.full((t, len(rows) * (h + gap) - gap, n * (w + gap) - gap, 3), 215, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, video in enumerate(row):
            grid[:, i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = video
    grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
    frames = [Image.fromarray(f) for f in grid]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.webp")
    frames[0].save(tmp, format="WEBP", save_all=True, append_images=frames[1:], duration=max(1, round(1000 / fps)),
                   loop=0, lossless=True)
    os.replace(tmp, path)
    return grid[t // 2]
