"""File writing with no project dependency: atomic writes, mp4 videos, contact sheets (PNG).

Used by every layer that writes files (the engine's run directory, checkpoints, the backend's
state file, the toy world's preview).
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
