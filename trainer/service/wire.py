"""Tensors over JSON between a client and the backend: ``{"shape", "dtype", "data": base64}``."""

from __future__ import annotations

import base64

import torch

from ..errors import UserError


def encode_array(t: torch.Tensor) -> dict:
    """A tensor as ``{"shape", "dtype", "data": base64 raw bytes}`` (uint8 or float32)."""
    t = t.detach().cpu().contiguous()
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
            "data": base64.b64encode(t.numpy().tobytes()).decode()}


def decode_array(obj: dict) -> torch.Tensor:
    import numpy as np

    dtypes = {"uint8": np.uint8, "float32": np.float32, "bool": np.bool_}
    if obj.get("dtype") not in dtypes:
        raise UserError(f"array dtype {obj.get('dtype')!r} is not one of {list(dtypes)}")
    arr = np.frombuffer(base64.b64decode(obj["data"]), dtype=dtypes[obj["dtype"]])
    return torch.from_numpy(arr.copy()).reshape(obj["shape"])
