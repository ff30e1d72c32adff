"""Malformed requests and failing jobs against a real backend process (real HTTP on loopback):
every bad request gets a 400 naming its field, the backend stays up, queued work is not lost."""

import base64
import json
import os
import urllib.error
import urllib.request

import pytest

from trainer import settings
from trainer.engine.config import FlashGRPOConfig
from trainer.service import client

FAULT = "a prompt that makes the backend's job fail"


def tiny(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), sample_videos=False, eval_prompts=0, iterations=2, sampling_steps=4)
    base.update(kw)
    return FlashGRPOConfig.from_dict(base, preset="tiny_demo").to_dict()


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    old = os.environ.get(settings.TEST_FAULT_ENV)
    os.environ[settings.TEST_FAULT_ENV] = FAULT
    try:
        c = client.launch(1, tmp_path_factory.mktemp("state"))
    finally:
        if old is None:
            os.environ.pop(settings.TEST_FAULT_ENV)
        else:
            os.environ[settings.TEST_FAULT_ENV] = old
    yield c
    c.shutdown()


def raw(backend, method, path, data: bytes | None = None):
    """``(status, JSON reply)`` of a request with exactly these body bytes."""
    req = urllib.request.Request(backend.url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {backend.token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def video_array(n=4, t=2, h=8, w=8, extra_bytes=0):
    data = bytes(n * t * h * w * 3 + extra_bytes)
    return {"shape": [n, t, h, w, 3], "dtype": "uint8", "data": base64.b64encode(data).decode()}


def bad_files(blobs, tmp_path):
    """Video file references the backend must refuse (each names a file in or near its folder)."""
    import numpy as np

    outside = tmp_path / ("d" * 32 + ".npy")
    np.save(outside, np.zeros((4, 2, 8, 8, 3), dtype=np.uint8))
    (blobs.directory / ("e" * 32 + ".npy")).symlink_to(outside)  # a valid name, but a link out of the folder
    np.save(blobs.directory / ("f" * 32 + ".npy"), np.array([{"x": 1}], dtype=object), allow_pickle=True)
    np.save(blobs.directory / ("0" * 32 + ".npy"), np.zeros((4, 2, 8, 8, 3), dtype=np.float32))
    np.save(blobs.directory / ("1" * 32 + ".npy"), np.zeros((4, 2, 8, 8), dtype=np.uint8))
    return [{"file": f"../{outside.name}"}, {"file": str(outside)}, {"file": "../backend.json"},
            {"file": "backend.json"}, {"file": "probe.txt"}, {"file": 7}, {"file": "a" * 32 + ".npy"},
            {"file": "e" * 32 + ".npy"}, {"file": "f" * 32 + ".npy"}, {"file": "0" * 32 + ".npy"},
            {"file": "1" * 32 + ".npy"}]


def bad_bodies(tmp_path, blobs):
    """(body, the field its 400 must name)."""
    cfg = tiny(tmp_path)
    score = {"kind": "score", "rewards": [{"name": "brightness"}], "videos": video_array(),
             "prompts": ["a"] * 4, "group_size": 2}
    return [*[(json.dumps({**score, "videos": ref}).encode(), "videos") for ref in bad_files(blobs, tmp_path)],
        (json.dumps({"kind": "sample", "config": cfg, "prompts": ["a"], "transport": "pigeon"}).encode(), "transport"),
        (b"[1, 2]", "JSON object"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (json.dumps({"config": cfg}).encode(), "kind"),
        (json.dumps({"kind": "paint"}).encode(), "kind"),
        (json.dumps({"kind": "train", "config": "iterations=3"}).encode(), "config"),
        (json.dumps({"kind": "train"}).encode(), "config"),
        (json.dumps({"kind": "train", "config": {**cfg, "iteratons": 3}}).encode(), "iterations"),
        (json.dumps({"kind": "train", "config": {**cfg, "learning_rate": -1}}).encode(), "learning_rate"),
        (json.dumps({"kind": "train", "config": cfg, "resume": "yes"}).encode(), "resume"),
        (json.dumps({"kind": "train", "config": cfg, "speed": 3}).encode(), "speed"),
        (json.dumps({"kind": "sample", "config": cfg}).encode(), "prompts"),
        (json.dumps({"kind": "sample", "config": cfg, "prompts": "a cat"}).encode(), "prompts"),
        (json.dumps({"kind": "sample", "config": cfg, "prompts": [1, 2]}).encode(), "prompts"),
        (json.dumps({"kind": "sample", "config": cfg, "prompts": ["a"], "iteration": "x"}).encode(), "iteration"),
        (json.dumps({"kind": "sample", "config": cfg, "prompts": ["a"], "lora": "x.safetensors"}).encode(), "lora"),
        (json.dumps({"kind": "sample", "config": cfg, "prompts": ["a"],
                     "lora": {"path": str(tmp_path / "missing.safetensors")}}).encode(), "lora"),
        (json.dumps({"kind": "sample", "config": cfg, "prompts": ["a"],
                     "lora": {"path": "relative.safetensors", "strength": 1}}).encode(), "lora"),
        (json.dumps({"kind": "sample", "config": cfg, "prompts": ["a"],
                     "lora": {"path": str(tmp_path), "strength": "1"}}).encode(), "lora"),
        (json.dumps({**score, "videos": video_array(extra_bytes=5)}).encode(), "videos"),
        (json.dumps({**score, "videos": {**video_array(), "shape": [4, 2, 8, 8]}}).encode(), "videos"),
        (json.dumps({**score, "videos": {**video_array(), "data": "***"}}).encode(), "videos"),
        (json.dumps({**score, "videos": {**video_array(), "dtype": "float64"}}).encode(), "videos"),
        (json.dumps({**score, "videos": "pixels"}).encode(), "videos"),
        (json.dumps({**score, "prompts": ["a"] * 3}).encode(), "prompts"),
        (json.dumps({**score, "group_size": 3}).encode(), "group_size"),
        (json.dumps({**score, "group_size": "2"}).encode(), "group_size"),
        (json.dumps({**score, "rewards": []}).encode(), "rewards"),
        (json.dumps({**score, "std_mode": "batch"}).encode(), "std_mode"),
        (json.dumps({**score, "clip": -1}).encode(), "clip"),
        (json.dumps({k: v for k, v in score.items() if k != "group_size"}).encode(), "group_size"),
    ]


def test_malformed_requests_get_400_naming_the_field_and_lose_no_queued_job(backend, tmp_path):
    pid = backend.health()["pid"]
    # a training job is running (or queued) while the bad requests arrive
    job_id = backend.request("POST", "/jobs", {"kind": "train", "config": tiny(tmp_path, run_name="kept",
                                                                                iterations=3)})["job_id"]
    queued = backend.request("POST", "/jobs", {"kind": "sample", "config": tiny(tmp_path), "prompts": ["a cat"]})
    for body, field in bad_bodies(tmp_path, backend.blob_store()):
        status, reply = raw(backend, "POST", "/jobs", body)
        assert status == 400, (body[:80], status, reply)
        assert field in reply["error"], (body[:80], reply)
    for query in ("after=abc", "after=-1", "wait=abc", "after=1.5"):
        status, reply = raw(backend, "GET", f"/jobs/{job_id}/events?{query}")
        assert status == 400 and "after" in reply["error"], (query, reply)
    assert raw(backend, "GET", "/jobs/nope/events?after=0")[0] == 404
    # the backend is the same process, and both jobs ran to their end
    assert backend.health()["pid"] == pid
    result = backend.run_job("train", {}, job_id=job_id)
    assert result["state"] == "done" and result["iterations_done"] == 3
    sampled = backend.run_job("sample", {}, job_id=queued["job_id"])
    assert sampled["state"] == "done" and sampled["videos"]["shape"][0] == 4


def test_a_job_that_fails_at_run_time_fails_alone(backend, tmp_path):
    pid = backend.health()["pid"]
    with pytest.raises(client.BackendError) as err:
        backend.run_job("sample", {"config": tiny(tmp_path), "prompts": [FAULT]})
    message = str(err.value)
    assert "test fault" in message and "still up" in message
    assert "resume" not in message  # no run exists: nothing to resume
    assert backend.health()["pid"] == pid
    after = backend.run_job("sample", {"config": tiny(tmp_path), "prompts": ["a cat"]})
    assert after["state"] == "done" and backend.health()["pid"] == pid


def test_a_user_error_before_any_run_does_not_suggest_resuming(backend, tmp_path):
    cfg = tiny(tmp_path, run_name="nofile", prompt_file=str(tmp_path / "missing.txt"))
    with pytest.raises(client.UserError) as err:
        backend.run_job("train", {"config": cfg})
    assert "missing.txt" in str(err.value) and "resume" not in str(err.value).lower()
    assert not (tmp_path / "nofile" / "checkpoints").exists()


def test_the_resume_hint_names_a_run_only_when_it_has_a_checkpoint(tmp_path):
    assert client.resume_hint(None) == "" and client.resume_hint(str(tmp_path)) == ""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.pt").write_bytes(b"x")
    assert str(tmp_path) in client.resume_hint(str(tmp_path))
