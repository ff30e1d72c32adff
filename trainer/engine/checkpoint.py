"""Training checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings and nested dicts/lists (LoRA weights,
optimizer state, EMA, RNG state, iteration, config JSON). It is serialised with ``torch.save``
into memory and written through a temporary file and ``os.replace``: a process killed at any
moment leaves either the previous checkpoint or the new one. It is read back with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..errors import UserError
from ..fileio import atomic_write_bytes


def save_checkpoint(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


CHECKPOINT_KEYS = ("iteration", "lora", "optimizer", "ema", "torch_rng", "config", "base_model_hash")
"""What every checkpoint holds (``FlashGRPORecipe.save_checkpoint``)."""


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's dict; ``UserError`` for a missing, damaged or foreign file (never unpickled)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except Exception as e:  # a damaged or foreign file
        raise UserError(f"cannot read checkpoint {path}: {e}. It may be damaged or not a Flash-GRPO checkpoint.") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise UserError(f"{path} is not a Flash-GRPO checkpoint (it lacks {', '.join(missing)}); it may come from "
                        "another trainer. Resume needs the run directory of a Flash-GRPO run.")
    return state
