"""The backend trainer process: real torchrun processes, real HTTP on loopback."""

import json
import os
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from trainer.engine.config import FlashGRPOConfig
from trainer.service import client


def tiny(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), sample_videos=False, eval_prompts=0, iterations=3)
    base.update(kw)
    return FlashGRPOConfig.from_dict(base, preset="tiny_demo")


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    c = client.launch(1, tmp_path_factory.mktemp("state"))
    yield c
    c.shutdown()


def test_listens_on_loopback_only_with_a_token(backend):
    assert backend.url.startswith("http://127.0.0.1:")
    info = json.loads((backend.directory / "backend.json").read_text())
    assert oct((backend.directory / "backend.json").stat().st_mode & 0o777) == "0o600"
    assert len(info["token"]) >= 32
    req = urllib.request.Request(backend.url + "/health")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
    bad = client.BackendClient(backend.url, "wrong-token")
    with pytest.raises(client.BackendError, match="refused the token"):
        bad.health()
    assert backend.health()["ok"]
    # nothing answers on the machine's other addresses
    port = int(backend.url.rsplit(":", 1)[1])
    addrs = {ai[4][0] for ai in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    for addr in addrs:
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex((addr, port)) != 0


def test_warm_backend_loads_the_model_once(backend, tmp_path):
    cfg = tiny(tmp_path)
    first = backend.run_job("sample", {"config": cfg.to_dict(), "prompts": ["a red ball"]})
    loads = backend.health()["model_loads"]
    second = backend.run_job("sample", {"config": cfg.to_dict(), "prompts": ["a cat", "a dog"]})
    assert loads == 1 and backend.health()["model_loads"] == 1
    assert first["videos"]["shape"] == [4, 9, 64, 64, 3] and second["videos"]["shape"] == [8, 9, 64, 64, 3]


def test_backend_runner_gives_what_the_local_runner_gives(backend, tmp_path):
    """Sample and score through the backend (its counters move) and here: the same results."""
    from trainer.rewards import as_uint8
    from trainer.service.runner import BackendRunner, LocalRunner

    remote, local = BackendRunner(1, client=backend), LocalRunner()
    cfg = tiny(tmp_path)
    before = backend.health()["jobs_run"]
    out = remote.sample(cfg, ["a red ball", "a cat"])
    assert backend.health()["jobs_run"] == {**before, "sample": before["sample"] + 1}
    here = local.sample(cfg, ["a red ball", "a cat"])
    assert out.steps == here.steps and out.prompts == here.prompts
    assert torch.allclose(out.videos, here.videos, atol=1 / 255 + 1e-6)  # another process: a rounding may differ
    scored = remote.score([{"name": "brightness"}], out.videos, out.prompts, 4)
    assert backend.health()["jobs_run"] == {**before, "sample": before["sample"] + 1, "score": before["score"] + 1}
    # the backend receives uint8 videos: score the same uint8 videos here
    mine = local.score([{"name": "brightness"}], as_uint8(out.videos), out.prompts, 4)
    assert scored.scores.shape == (8,)
    assert torch.allclose(scored.scores, mine.scores) and torch.allclose(scored.advantages, mine.advantages, atol=1e-4)


def test_each_node_job_reaches_the_backend(backend, tmp_path):
    """The group sampler's, the scorer's and the trainer's jobs run in the backend: after each
    node, the backend's own count of jobs of that kind (``/health``) is one higher."""
    from trainer.graph import host, node_types
    from trainer.service.runner import BackendRunner

    class BackendHost(host.Host):
        def runner(self, gpus=1):
            return BackendRunner(gpus, client=backend)

    model = {"model": "tiny", "device": "cpu", "dtype": "float32", "gpus": 1}
    prompts = {"prompts": ["a red ball", "a cat"], "prompt_file": "", "eval_prompts": 0}
    reward = [{"name": "brightness", "weight": 1.0, "args": {}}]
    counts = [backend.health()["jobs_run"]]
    old = host.current()
    host.install(BackendHost())
    try:
        out = node_types.FlashGRPOGroupSampler().sample(model, prompts, 2, 2, "tiny_demo", 0, 0,
                                                         json.dumps({"sampling_steps": 4}))
        counts.append(backend.health()["jobs_run"])
        videos, per_video = out["result"][0], out["result"][1]
        node_types.FlashGRPORewardScorer().score([reward], [2], ["group"], [5.0], videos=videos, prompts=per_video)
        counts.append(backend.health()["jobs_run"])
        node_types.FlashGRPOTrainer().train(model, prompts, reward, "tiny_demo", "flash", 1, 1, 2, 1e-3, 2, 0,
                                            "via-backend", False, json.dumps({"output_dir": str(tmp_path),
                                                                              "sampling_steps": 4}))
        counts.append(backend.health()["jobs_run"])
    finally:
        host.install(old)
    for kind, (a, b) in zip(("sample", "score", "train"), zip(counts, counts[1:])):
        assert b == {**a, kind: a[kind] + 1}, (kind, a, b)
    assert (tmp_path / "via-backend" / "lora" / "via-backend.safetensors").is_file()


def test_in_process_runner_is_chosen_once_by_the_host():
    """``--in-process`` (a host with ``in_process``) gives a local runner; the default host the
    backend; the choice is kept per host and refuses more than one process in-process."""
    from trainer.errors import UserError
    from trainer.graph import host
    from trainer.service.runner import BackendRunner, LocalRunner

    local = host.Host()
    local.in_process = True
    assert isinstance(local.runner(), LocalRunner) and local.runner() is local.runner()
    with pytest.raises(UserError, match="in-process jobs use one process"):
        local.runner(2)
    remote = host.Host()
    assert isinstance(remote.runner(2), BackendRunner) and remote.runner(2).gpus == 2  # nothing started yet
    remote.close()


def test_client_can_reattach_and_read_all_events(backend, tmp_path):
    cfg = tiny(tmp_path, run_name="reattach")
    job_id = backend.request("POST", "/jobs", {"kind": "train", "config": cfg.to_dict()})["job_id"]
    # the submitting client goes away; a new one follows the same job from the start
    other = client.BackendClient(backend.url, backend.token)
    events = []
    result = other.run_job("train", {}, on_event=events.append, job_id=job_id)
    assert result["state"] == "done" and result["iterations_done"] == 3
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [0, 1, 2]
    assert Path(result["lora_path"]).is_file()


def test_cancel_stops_within_an_iteration_and_leaves_a_resumable_checkpoint(backend, tmp_path):
    cfg = tiny(tmp_path, run_name="cancel", iterations=50)
    seen = []
    result = backend.run_job("train", {"config": cfg.to_dict()}, on_event=seen.append,
                             should_stop=lambda: any(e["event"] == "iteration" for e in seen))
    assert result["state"] == "cancelled" and result["cancelled"]
    done = result["iterations_done"]
    assert 1 <= done <= 3  # stopped within about an iteration of the request
    from trainer.engine.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "cancel" / "checkpoints" / "latest.pt")["iteration"] == done
    resumed = backend.run_job("train", {"config": {**cfg.to_dict(), "iterations": done + 2}, "resume": True})
    assert resumed["state"] == "done" and resumed["iterations_done"] == done + 2


class _Interrupted(Exception):
    """Stands for ComfyUI's InterruptProcessingException, raised by its progress-bar hook."""


def test_an_exception_in_the_event_callback_cancels_the_job_and_keeps_its_checkpoint(backend, tmp_path):
    """ComfyUI's progress hook raises its interrupt inside on_event: the job must not run on."""
    from trainer.engine.checkpoint import load_checkpoint

    cfg = tiny(tmp_path, run_name="raises", iterations=200)

    def on_event(e):
        if e["event"] == "iteration":
            raise _Interrupted()

    with pytest.raises(_Interrupted):
        backend.run_job("train", {"config": cfg.to_dict()}, on_event=on_event)
    # By the time the exception reaches the caller the job has ended, with its checkpoint.
    done = load_checkpoint(tmp_path / "raises" / "checkpoints" / "latest.pt")["iteration"]
    assert 1 <= done < 200
    events = [json.loads(line) for line in (tmp_path / "raises" / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "cancelled"


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun worker ``rank`` (a child of the launcher with RANK=<rank> in its environment)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(next(ln.split()[1] for ln in status.read_text().splitlines() if ln.startswith("PPid:")))
            environ = (status.parent / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration):
            continue
        if ppid == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(status.parent.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher_pid}")


def test_killing_a_rank_gives_a_clear_error_and_a_resumable_checkpoint(tmp_path):
    state = tmp_path / "state2"
    c = client.launch(2, state)
    try:
        cfg = tiny(tmp_path, run_name="killed", iterations=40, checkpoint_every=1)
        seen = []

        def kill_after_two():
            if sum(e["event"] == "iteration" for e in seen) >= 2:
                os.kill(_rank_pid(c.process.pid, 1), signal.SIGKILL)
                seen.append({"event": "killed"})
            return False

        with pytest.raises(client.BackendError) as err:
            c.run_job("train", {"config": cfg.to_dict()}, on_event=seen.append,
                      should_stop=lambda: kill_after_two() if not any(e["event"] == "killed" for e in seen) else False)
        message = str(err.value)
        assert "rank 1" in message and "SIGKILL" in message and "resume" in message
    finally:
        try:
            os.killpg(c.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    from trainer.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "killed" / "checkpoints" / "latest.pt")
    assert ckpt["iteration"] >= 2
    fresh = client.launch(1, tmp_path / "state3")
    try:
        resumed = fresh.run_job("train", {"config": {**cfg.to_dict(), "iterations": ckpt["iteration"] + 1},
                                          "resume": True})
        assert resumed["state"] == "done" and resumed["iterations_done"] == ckpt["iteration"] + 1
    finally:
        fresh.shutdown()


def test_weights_hash_ignores_a_lora_that_was_added_and_removed():
    """A warm model reused after a LoRA run keeps its hash (resume on a warm backend)."""
    from trainer.engine import lora as lora_lib
    from trainer.engine.models import build_tiny_pipeline, weights_hash

    transformer = build_tiny_pipeline(seed=0).transformer
    before = weights_hash(transformer)
    lora_lib.add_lora(transformer, rank=4, alpha=8.0)
    assert weights_hash(transformer) == before
    lora_lib.remove_lora(transformer)
    assert weights_hash(transformer) == before
    assert weights_hash(build_tiny_pipeline(seed=1).transformer) != before  # other weights, other hash


def test_after_job_policy_offload_is_the_default_and_shutdown_exits_after_the_job(backend, tmp_path, monkeypatch):
    from trainer.service.wire import encode_array

    assert backend.health()["after_job"] == "offload"
    monkeypatch.setenv("FLASH_GRPO_BACKEND_AFTER_JOB", "shutdown")
    c = client.launch(1, tmp_path / "state")
    try:
        assert c.health()["after_job"] == "shutdown"
        videos = torch.full((2, 5, 16, 16, 3), 128, dtype=torch.uint8)
        out = c.run_job("score", {"rewards": [{"name": "brightness"}], "videos": encode_array(videos),
                                  "prompts": ["a", "b"], "group_size": 2})
        assert len(out["scores"]) == 2
        c.process.wait(timeout=60)  # SHUTDOWN_GRACE_S idle seconds after the job, then it exits
        assert c.process.returncode == 0
    finally:
        if c.process.poll() is None:
            c.shutdown()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offload_gives_the_gpu_memory_back_and_the_next_job_still_runs(tmp_path):
    from trainer.service.runner import LocalRunner

    runner = LocalRunner()
    cfg = tiny(tmp_path, device="cuda", dtype="float32")
    runner.sample(cfg, ["a red ball"])
    runner.release("keep")
    held, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    assert held > 0, "keep: the warm model stays on the GPU"
    runner.release("offload")  # not run on a GPU by the session that wrote it (none was lent)
    assert torch.cuda.memory_allocated() <= held // 10 and torch.cuda.memory_reserved() < reserved
    again = runner.sample(cfg, ["a red ball"])  # moved back by the next job, not reloaded
    assert runner.model_loads == 1 and again.videos.shape == (4, 9, 64, 64, 3)
    runner.close()


def test_a_sample_job_can_be_abandoned_and_the_backend_takes_the_next_job(backend, tmp_path):
    """ComfyUI's Cancel during a sample (or score) job: the client stops waiting at once; the
    backend finishes that job (and deletes its videos), then serves the next."""
    from trainer.service.runner import BackendRunner, JobAbandoned

    runner = BackendRunner(1, client=backend)  # not closed: the module's backend stays up
    cfg = tiny(tmp_path)
    files = set(backend.blob_store().directory.iterdir())
    with pytest.raises(JobAbandoned, match="stopped waiting"):
        runner.sample(cfg, ["a red ball"], should_stop=lambda: True)
    assert runner.sample(cfg, ["a red ball"]).videos.shape == (4, 9, 64, 64, 3)
    assert set(backend.blob_store().directory.iterdir()) <= files  # nobody reads an abandoned job's videos


def test_videos_travel_as_files_in_the_backends_folder(backend, tmp_path):
    """A client on the backend's machine sends and receives videos as files in <state>/blobs:
    the same videos as inline JSON, bit for bit; each file is gone once read (sample) or once its
    job has ended (score)."""
    from trainer.service.runner import BackendRunner
    from trainer.service.wire import encode_array

    store = backend.blob_store()
    assert store is not None and store.directory == backend.directory / "blobs" and backend.transport() == "file"
    before = set(store.directory.iterdir())  # earlier tests' unread results stay until their jobs are pruned
    cfg = tiny(tmp_path).to_dict()
    as_file = backend.run_job("sample", {"config": cfg, "prompts": ["a red ball"]})
    inline = backend.run_job("sample", {"config": cfg, "prompts": ["a red ball"], "transport": "inline"})
    assert set(as_file["videos"]) == {"file", "shape", "dtype"} and "data" in inline["videos"]
    path = store.path(as_file["videos"]["file"])
    assert path.is_file() and path.stat().st_size > 4 * 9 * 64 * 64 * 3  # the raw uint8 videos and a header
    videos = backend.take_videos(as_file["videos"])
    assert not path.exists()  # deleted once read
    assert videos.dtype == torch.uint8 and torch.equal(videos, backend.take_videos(inline["videos"]))

    ref = backend.put_videos(videos)
    assert store.path(ref["file"]).is_file()
    out = backend.run_job("score", {"rewards": [{"name": "brightness"}], "videos": ref, "prompts": ["a"] * 4,
                                    "group_size": 4})
    assert not store.path(ref["file"]).exists()  # deleted by the backend once the job has ended
    inline_score = backend.run_job("score", {"rewards": [{"name": "brightness"}], "prompts": ["a"] * 4,
                                             "videos": encode_array(videos), "group_size": 4})
    assert out["scores"] == inline_score["scores"]
    scored = BackendRunner(1, client=backend).score([{"name": "brightness"}], videos, ["a"] * 4, 4)
    assert scored.scores.tolist() == out["scores"]
    assert set(store.directory.iterdir()) <= before  # nothing left behind (pruning may delete older files)


def test_a_client_that_does_not_share_the_folder_sends_and_gets_videos_inline(backend, tmp_path, monkeypatch):
    """A client elsewhere (here: a probe file it cannot find) falls back to inline videos."""
    from trainer.service.runner import BackendRunner

    remote = client.BackendClient(backend.url, backend.token)
    monkeypatch.setattr(client, "PROBE_FILE", "not-the-probe.txt")
    assert remote.blob_store() is None and remote.transport() == "inline"
    runner = BackendRunner(1, client=remote)
    out = runner.sample(tiny(tmp_path), ["a red ball"])
    assert out.videos.shape == (4, 9, 64, 64, 3)
    assert runner.score([{"name": "brightness"}], out.videos, out.prompts, 4).scores.shape == (4,)


def test_finished_jobs_are_pruned_with_their_files(tmp_path):
    """A backend started by hand keeping 2 finished jobs for at most 8 s: the oldest job, and then
    every job past 8 s, answers 404 saying it was pruned; its video file is deleted."""
    import subprocess
    import sys
    import time

    from tests.support import ROOT

    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "trainer.backend", "--state-dir", str(state), "--keep-jobs", "2",
                             "--keep-jobs-for", "8"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (state / "backend.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        info = json.loads((state / "backend.json").read_text())
        c = client.BackendClient(info["url"], info["token"], None, state)
        sampled = c.run_job("sample", {"config": tiny(tmp_path).to_dict(), "prompts": ["a red ball"]})
        path = c.blob_store().path(sampled["videos"]["file"])
        assert path.is_file()
        videos = torch.zeros((2, 5, 16, 16, 3), dtype=torch.uint8)
        scores = [c.run_job("score", {"rewards": ["brightness"], "videos": c.put_videos(videos), "prompts": ["a", "b"],
                                      "group_size": 2}) for _ in range(2)]
        with pytest.raises(client.BackendError, match=f"404.*job {sampled['job_id']} has finished and was pruned"):
            c.request("GET", f"/jobs/{sampled['job_id']}")
        assert not path.exists()
        with pytest.raises(client.BackendError, match="was pruned"):
            c.run_job("sample", {}, job_id=sampled["job_id"])  # re-attaching to it says why it is gone
        assert c.request("GET", f"/jobs/{scores[1]['job_id']}")["state"] == "done"
        with pytest.raises(client.BackendError, match="404.*no job 0123 on this backend"):
            c.request("GET", "/jobs/0123")
        deadline = time.time() + 30  # 8 s after it finished, within a heartbeat (5 s)
        while time.time() < deadline:
            try:
                c.request("GET", f"/jobs/{scores[1]['job_id']}")
            except client.BackendError as e:
                assert "was pruned" in str(e)
                break
            time.sleep(0.5)
        else:
            pytest.fail("a finished job outlived --keep-jobs-for")
        c.shutdown()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_two_processes_sample_every_ranks_videos_in_global_order(tmp_path):
    """A sample job on a 2-process backend: rank 1's videos reach the client too, after rank 0's
    (prompt order), as one process samples them; with DDP and with FSDP (whose sharded model is not
    kept warm: the next job loads afresh); a score job runs there as here."""
    from trainer.service.runner import BackendRunner, LocalRunner

    c = client.launch(2, tmp_path / "state")
    try:
        runner = BackendRunner(2, client=c)
        cfg, prompts = tiny(tmp_path), ["a red ball", "a cat"]  # one prompt per process
        here = LocalRunner().sample(cfg, prompts)
        ddp = runner.sample(cfg, prompts)
        assert ddp.videos.shape == (8, 9, 64, 64, 3) and ddp.prompts == here.prompts and ddp.steps == here.steps
        assert torch.allclose(ddp.videos, here.videos, atol=1 / 255 + 1e-6)  # other processes: a rounding may differ
        assert (ddp.videos[:4] - here.videos[4:]).abs().mean() > 20 / 255  # so the order is what is checked
        fsdp = runner.sample(FlashGRPOConfig.from_dict({**cfg.to_dict(), "parallel": "fsdp"}), prompts)
        assert torch.allclose(fsdp.videos, here.videos, atol=1 / 255 + 1e-6)
        loads = c.health()["model_loads"]
        again = runner.sample(cfg, prompts)
        assert c.health()["model_loads"] == loads + 1 and torch.equal(again.videos, ddp.videos)
        scored = runner.score([{"name": "brightness"}], ddp.videos, ddp.prompts, 4)
        mine = LocalRunner().score([{"name": "brightness"}], (ddp.videos * 255).round().to(torch.uint8), ddp.prompts, 4)
        assert torch.allclose(scored.scores, mine.scores) and torch.allclose(scored.advantages, mine.advantages)
        assert [p.name for p in c.blob_store().directory.iterdir()] == ["probe.txt"]
    finally:
        c.shutdown()
        if c.process.poll() is None:
            os.killpg(c.process.pid, signal.SIGKILL)
