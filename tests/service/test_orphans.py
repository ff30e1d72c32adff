"""A backend stops with the client that started it (killed or not), unless detached; a detached
or idle one stops after the configured idle timeout; several clients share one backend, each
client's exit cancels only its own jobs. Real processes, real SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import ROOT
from trainer import settings
from trainer.engine.config import FlashGRPOConfig
from trainer.errors import UserError
from trainer.service.backend import process_alive

CLIENT = """
import json, sys, time
from pathlib import Path
from trainer.service import client
c = client.launch(1, Path(sys.argv[1]), detached=sys.argv[2] == "1")
print(c.health()["pid"], flush=True)
if sys.argv[3]:
    c.request("POST", "/jobs", {"kind": "train", "config": json.loads(sys.argv[3])})
time.sleep(600)
"""


def start_client(state, detached=False, train=None, env=None):
    """A client process that starts a backend (and a training job); returns it and the backend's rank-0 pid."""
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(state), "1" if detached else "0",
                             json.dumps(train) if train else ""], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"the client did not start a backend (exit {proc.poll()})"
    return proc, int(line)


SHARER = """
import json, sys, time
from pathlib import Path
from trainer.service import client
c = client.connect(1, Path(sys.argv[1]))
if sys.argv[2] == "follow":
    print(c.run_job("train", {"config": json.loads(sys.argv[3])})["state"], flush=True)
else:
    print(c.request("POST", "/jobs", {"kind": "train", "config": json.loads(sys.argv[3])})["job_id"], flush=True)
    time.sleep(600)
"""


def start_sharer(state, mode, train):
    """A client process that attaches to the live backend in ``state`` and submits a job: it then
    waits (``mode`` "submit": prints the job id) or follows the job to its end ("follow": prints
    the job's final state and exits)."""
    return subprocess.Popen([sys.executable, "-c", SHARER, str(state), mode, json.dumps(train)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)


def wait_gone(pid, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and process_alive(pid):
        time.sleep(0.5)
    return not process_alive(pid)


def kill_group(pid):
    """Test cleanup: the backend's whole torchrun process group, if it still runs."""
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_killed_client_takes_its_backend_down_and_the_run_is_checkpointed(tmp_path):
    cfg = FlashGRPOConfig.from_dict(dict(output_dir=str(tmp_path), run_name="orphan", iterations=500,
                                         sample_videos=False, eval_prompts=0, sampling_steps=4),
                                    preset="tiny_demo").to_dict()
    proc, pid = start_client(tmp_path / "state", train=cfg)
    try:
        events = tmp_path / "orphan" / "events.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and '"iteration"' not in (events.read_text() if events.exists() else ""):
            time.sleep(0.2)
        proc.kill()
        proc.wait()
        assert wait_gone(pid, 120), "the backend outlived the client that started it"
        logged = [json.loads(line) for line in events.read_text().splitlines()]
        assert logged[-1]["event"] == "cancelled" and logged[-1]["iteration"] < 500
        assert (tmp_path / "orphan" / "checkpoints" / "latest.pt").is_file()
        assert not (tmp_path / "state" / "backend.json").exists()
    finally:
        proc.kill()
        kill_group(pid)


def test_a_detached_backend_outlives_its_client_until_the_idle_timeout(tmp_path):
    proc, pid = start_client(tmp_path / "state", detached=True, env={"FLASH_GRPO_IDLE_TIMEOUT": "12"})
    try:
        proc.kill()
        proc.wait()
        time.sleep(3)
        assert process_alive(pid), "a detached backend stopped with its client"
        assert wait_gone(pid, 120), "the idle timeout did not stop the backend"
    finally:
        proc.kill()
        kill_group(pid)


def test_process_alive_sees_a_zombie_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline and process_alive(child.pid):
        time.sleep(0.1)
    assert not process_alive(child.pid)  # exited, not yet waited for
    child.wait()
    assert process_alive(os.getpid())


def test_the_idle_timeout_setting_is_checked(monkeypatch):
    monkeypatch.delenv(settings.IDLE_TIMEOUT_ENV, raising=False)
    assert settings.idle_timeout() == settings.DEFAULT_IDLE_TIMEOUT_S
    monkeypatch.setenv(settings.IDLE_TIMEOUT_ENV, "30")
    assert settings.idle_timeout() == 30.0
    for bad in ("soon", "0", "-5", "nan"):
        monkeypatch.setenv(settings.IDLE_TIMEOUT_ENV, bad)
        with pytest.raises(UserError, match=settings.IDLE_TIMEOUT_ENV):
            settings.idle_timeout()


def test_connect_does_not_hand_out_a_stopping_backend(tmp_path):
    """A backend that is stopping (here: shut down during a training job) takes no new job:
    connect waits until it has exited, starts a fresh one, and the old one leaves its
    successor's backend.json alone."""
    from trainer.service import client

    state = tmp_path / "state"
    old = client.launch(1, state)
    fresh = None
    try:
        cfg = FlashGRPOConfig.from_dict(dict(output_dir=str(tmp_path), run_name="stopping", iterations=500,
                                             sample_videos=False, eval_prompts=0, sampling_steps=4),
                                        preset="tiny_demo").to_dict()
        job = old.request("POST", "/jobs", {"kind": "train", "config": cfg})["job_id"]
        while old.request("GET", f"/jobs/{job}")["state"] == "queued":
            time.sleep(0.05)
        old.request("POST", "/shutdown", {})
        assert old.health()["stopping"]
        fresh = client.connect(1, state)
        assert fresh.url != old.url or fresh.token != old.token
        with pytest.raises(client.BackendError):
            old.health()  # the old one had stopped serving first
        assert json.loads((state / "backend.json").read_text())["token"] == fresh.token
        assert fresh.health()["ok"] and not fresh.health()["stopping"]
    finally:
        if fresh is not None:
            fresh.shutdown()
        old.shutdown()


def test_clients_sharing_a_backend_each_end_only_their_own_job(tmp_path):
    """Two runs at once on one machine share one backend: a killed client's job is cancelled (with
    a checkpoint) while the backend serves on; the client that started the backend may exit while
    another client's job runs, and that job ends normally; the backend exits once every client has."""
    from trainer.service import client

    def config(name, iterations):
        return FlashGRPOConfig.from_dict(dict(output_dir=str(tmp_path), run_name=name, iterations=iterations,
                                              sample_videos=False, eval_prompts=0, sampling_steps=4),
                                         preset="tiny_demo").to_dict()

    state = tmp_path / "state"
    owner, pid = start_client(state)  # started the backend; submits nothing
    procs = [owner]
    try:
        info = json.loads((state / "backend.json").read_text())
        watcher = client.BackendClient(info["url"], info["token"])  # names no process: observes only
        killed = start_sharer(state, "submit", config("killed", 500))
        procs.append(killed)
        job = killed.stdout.readline().strip()
        events = tmp_path / "killed" / "events.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and '"iteration"' not in (events.read_text() if events.exists() else ""):
            time.sleep(0.2)
        with pytest.raises(UserError, match="FLASH_GRPO_STATE_DIR"):  # a busy backend is not replaced
            client.connect(2, state, detached=True)
        killed.kill()
        killed.wait()
        deadline = time.time() + 120
        while time.time() < deadline and watcher.request("GET", f"/jobs/{job}")["state"] == "running":
            time.sleep(0.5)
        assert watcher.request("GET", f"/jobs/{job}")["state"] == "cancelled"
        assert (tmp_path / "killed" / "checkpoints" / "latest.pt").is_file()
        assert process_alive(pid) and not watcher.health()["stopping"], "one client's exit stopped the backend"

        follower = start_sharer(state, "follow", config("follower", 12))
        procs.append(follower)
        deadline = time.time() + 120
        while time.time() < deadline and not (watcher.health()["job"] or {}).get("state") == "running":
            time.sleep(0.2)
        owner.kill()  # the client that started the backend exits during the other client's job
        owner.wait()
        assert follower.stdout.readline().strip() == "done"
        assert follower.wait(timeout=60) == 0
        logged = [json.loads(line) for line in (tmp_path / "follower" / "events.jsonl").read_text().splitlines()]
        assert logged[-1]["event"] == "done" and logged[-1]["iteration"] == 12
        assert wait_gone(pid, 120), "the backend outlived every client that used it"
    finally:
        for proc in procs:
            proc.kill()
        kill_group(pid)
