"""Videos between a client and the backend: files in the backend's folder, or inline base64.

* **Files** (client and backend on one machine, the usual case): uint8 ``.npy`` files in the
  backend's ``<state-dir>/blobs/`` (``BlobStore``), referenced in the JSON as ``{"file": name,
  "shape": [...], "dtype": "uint8"}``. A name is 32 hex digits and ``.npy`` (``BLOB_NAME``);
  anything else, a symlink or a missing file is refused. Files are written under a temporary name
  and renamed when complete, read with ``np.load(allow_pickle=False)`` (nothing is unpickled), and
  written chunk by chunk, so a writer holds one chunk at a time. The client writes a score job's
  videos there (the backend deletes them once the job has ended) and reads a sample job's videos
  from there (and deletes them; the backend deletes what is left when it prunes the job).
* **Inline** (``encode_array``): ``{"shape", "dtype", "data": base64}`` inside the JSON, for a client
  that does not share the backend's folder (a backend on another machine reached through
  ``FLASH_GRPO_BACKEND_URL``; ``BackendClient.blob_store`` checks with a probe file). A request is
  at most 1 GiB, so this suits small videos only: at 81x480x832 one video is 776 MB of uint8.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

BLOB_NAME = re.compile(r"[0-9a-f]{32}\.npy")
"""The only file names a blob reference may carry."""

CLIENT_PID_HEADER = "X-Flash-Client-Pid"
"""Request header in which a client on the backend's machine names its process: once that process
has exited, the backend cancels its jobs (``trainer.service.backend``)."""

PROBE_FILE = "probe.txt"
"""Holds a random text the backend also reports in ``/health``: a client that reads the same text
there shares the backend's folder."""


def encode_array(t: torch.Tensor) -> dict:
    """A tensor as ``{"shape", "dtype", "data": base64 raw bytes}`` (uint8 or float32)."""
    t = t.detach().cpu().contiguous()
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
            "data": base64.b64encode(t.numpy().tobytes()).decode()}


def decode_array(obj: dict) -> torch.Tensor:
    """The tensor of ``encode_array``; ``UserError`` names what is wrong with a malformed one."""
    import binascii

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


def is_file_ref(obj) -> bool:
    """Whether ``obj`` references a blob file (``{"file": name, ...}``) rather than inline data."""
    return isinstance(obj, dict) and "file" in obj


class BlobWriter:
    """Writes one uint8 array of a known ``shape`` into the store, chunk by chunk along dim 0
    (``write``); complete when the context exits without error: the file then appears under its
    final name. ``ref`` is its JSON reference."""

    def __init__(self, store: "BlobStore", shape: tuple[int, ...]):
        self.store, self.shape = store, tuple(int(d) for d in shape)
        self.name = f"{secrets.token_hex(16)}.npy"
        self.rows = 0
        store.directory.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=store.directory, prefix=f".{self.name}.", suffix=".tmp")
        self.file = os.fdopen(fd, "wb")
        np.lib.format.write_array_header_1_0(self.file, {"descr": "|u1", "fortran_order": False, "shape": self.shape})

    def write(self, chunk: torch.Tensor) -> None:
        if chunk.dtype != torch.uint8 or tuple(chunk.shape[1:]) != self.shape[1:]:
            raise ValueError(f"a chunk of {tuple(chunk.shape)} {chunk.dtype} does not fit uint8 rows of {self.shape[1:]}")
        if self.rows + chunk.shape[0] > self.shape[0]:
            raise ValueError(f"more than the {self.shape[0]} rows announced")
        chunk.detach().cpu().contiguous().numpy().tofile(self.file)
        self.rows += chunk.shape[0]

    @property
    def ref(self) -> dict:
        return {"file": self.name, "shape": list(self.shape), "dtype": "uint8"}

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if exc_type is None and self.rows != self.shape[0]:
            os.unlink(self.tmp)
            raise ValueError(f"{self.rows} of the {self.shape[0]} rows announced were written")
        if exc_type is None:
            os.replace(self.tmp, self.store.directory / self.name)
        else:
            os.unlink(self.tmp)


class BlobStore:
    """The backend's folder of video files (``<state-dir>/blobs``), seen from either side."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, name) -> Path:
        """The file of blob ``name``; ``UserError`` when the name is not one a blob can have."""
        if not isinstance(name, str) or not BLOB_NAME.fullmatch(name):
            raise UserError(f"file {name!r} is not a video file name (32 hex digits and .npy, as the client or the "
                            "backend made it)")
        return self.directory / name

    def writer(self, shape: tuple[int, ...]) -> BlobWriter:
        return BlobWriter(self, shape)

    def put(self, videos: torch.Tensor) -> dict:
        """Write uint8 ``videos`` as a new file; returns its reference."""
        with self.writer(tuple(videos.shape)) as w:
            w.write(videos)
        return w.ref

    def open(self, ref) -> np.ndarray:
        """The array of a file reference, memory-mapped (no data read yet); ``UserError`` naming
        what is wrong: the name, a missing file or a symlink, a file that is no uint8 ``.npy``, a
        shape other than the reference's."""
        if not isinstance(ref, dict):
            raise UserError(f"a video file reference must be an object {{\"file\": name}}, not {type(ref).__name__}")
        path = self.path(ref.get("file"))
        if path.is_symlink() or not path.is_file():
            raise UserError(f"file {path.name}: no such video file in the backend's folder {self.directory} (each is "
                            "deleted once read, or when its job is pruned)")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise UserError(f"file {path.name}: not a readable .npy array ({e})") from None
        if arr.dtype != np.uint8:
            raise UserError(f"file {path.name}: holds {arr.dtype}, not uint8")
        if "shape" in ref and list(arr.shape) != ref["shape"]:
            raise UserError(f"file {path.name}: holds shape {list(arr.shape)}, not {ref['shape']}")
        return arr

    def get(self, ref) -> torch.Tensor:
        """The uint8 tensor of a file reference (read into memory)."""
        return torch.from_numpy(np.array(self.open(ref)))

    def delete(self, name: str) -> None:
        try:
            self.path(name).unlink(missing_ok=True)
        except UserError:
            pass

    def clear(self) -> None:
        """Delete every video file and temporary file (a fresh backend's folder)."""
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if BLOB_NAME.fullmatch(p.name) or p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
