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
    """The tensor of ``encode_array``; ``UserError`` names what is wrong with a malformed one."""
    import binascii

    import numpy as np

    dtypes = {"uint8": np.uint8, "float32": np.float32, "bool": np.bool_}
    if not isinstance(obj, dict):
        raise UserError(f"an array must be an object with shape, dtype and data, not {type(obj).__name__}")
    if obj.get("dtype") not in dtypes:
        raise UserError(f"array dtype {obj.get('dtype')!r} is not one of {list(dtypes)}")
    shape = obj.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise UserError(f"array shape {shape!r} is not a list of sizes >= 0")
    try:
        raw = base64.b64decode(obj.get("data", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise UserError("array data is not base64") from None
    itemsize = np.dtype(dtypes[obj["dtype"]]).itemsize
    if len(raw) != int(np.prod(shape)) * itemsize:
        raise UserError(f"array data holds {len(raw)} bytes, but shape {shape} of {obj['dtype']} needs "
                        f"{int(np.prod(shape)) * itemsize}")
    arr = np.frombuffer(raw, dtype=dtypes[obj["dtype"]])
    return torch.from_numpy(arr.copy()).reshape(shape)
