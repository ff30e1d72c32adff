"""Video files between a client and the backend (``trainer.service.wire.BlobStore``): real files."""

import numpy as np
import pytest
import torch

from trainer.errors import UserError
from trainer.service.wire import BlobStore


def videos(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 5, 16, 24, 3), dtype=torch.uint8, generator=g)


def test_a_file_round_trips_exactly_and_is_written_chunk_by_chunk(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    v = videos()
    ref = store.put(v)
    assert ref["shape"] == [3, 5, 16, 24, 3] and ref["dtype"] == "uint8"
    assert torch.equal(store.get(ref), v)
    with store.writer(v.shape) as w:
        for chunk in v.split(1):
            w.write(chunk)
    assert torch.equal(store.get(w.ref), v)
    assert np.load(store.path(w.ref["file"]), allow_pickle=False).shape == (3, 5, 16, 24, 3)  # plain .npy
    store.delete(ref["file"])
    with pytest.raises(UserError, match="no such video file"):
        store.get(ref)


def test_an_unfinished_file_never_appears(tmp_path):
    store = BlobStore(tmp_path)
    v = videos()
    with pytest.raises(RuntimeError), store.writer(v.shape) as w:
        w.write(v[:1])
        raise RuntimeError("the job failed")
    with pytest.raises(ValueError, match="1 of the 3 rows"), store.writer(v.shape) as w:
        w.write(v[:1])
    with pytest.raises(ValueError, match="does not fit"), store.writer(v.shape) as w:
        w.write(v.float())
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary file


def test_names_and_files_that_are_not_video_files_are_refused(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    (tmp_path / "secret.npy").write_bytes(b"x")
    for name in ("../secret.npy", "/etc/passwd", "a" * 32 + ".npz", "A" * 32 + ".npy", "", None, 3, "a" * 32 + ".npy/"):
        with pytest.raises(UserError, match="not a video file name"):
            store.get({"file": name})
    good = store.put(videos())
    link = store.directory / ("b" * 32 + ".npy")
    link.symlink_to(store.path(good["file"]))
    with pytest.raises(UserError, match="no such video file"):
        store.get({"file": link.name})
    name = "c" * 32 + ".npy"
    np.save(store.directory / name, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickle inside
    with pytest.raises(UserError, match="not a readable .npy"):
        store.get({"file": name})
    np.save(store.directory / name, np.zeros((1, 2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(UserError, match="holds float32, not uint8"):
        store.get({"file": name})
    with pytest.raises(UserError, match="not \\[9, 5, 16, 24, 3\\]"):
        store.get({**good, "shape": [9, 5, 16, 24, 3]})
    store.clear()
    assert sorted(p.name for p in store.directory.iterdir()) == []
