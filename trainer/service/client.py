"""Client of the backend trainer process: start it on demand, send jobs, follow them.

``connect(gpus)`` finds a running backend or starts one:

1. ``FLASH_GRPO_BACKEND_URL`` (+ ``FLASH_GRPO_BACKEND_TOKEN``): a backend the user started by hand
   (e.g. with torchrun on several machines); used as is.
2. ``<state dir>/backend.json`` of a live backend with the requested number of processes.
3. Otherwise a new one: ``python -m torch.distributed.run --standalone --nproc_per_node <gpus> -m
   trainer.backend``, in its own session; its output goes to ``<state dir>/backend.log``.

A client of a local backend (2. or 3.) names its process in every request (``client_pid``): once
that process has exited, even by SIGKILL, the backend cancels its jobs (a run checkpointed), and
a backend it started exits once every client that used it has (two runs at once share one backend,
and each ends its own job). A ``detached`` client (``trainer.run --detach``: the run outlives the
terminal) names no process. ComfyUI keeps its backend while it runs.

The state dir is ``FLASH_GRPO_STATE_DIR`` or ``~/.cache/flash_grpo/backend``. ``run_job`` follows a
job's events; when the backend dies it raises ``BackendError`` naming the rank and the cause
(from the rank's error file or torchrun's log).

Videos go to and come from the backend as files in its ``blobs`` folder when this process can
read that folder (``blob_store``: the probe file there holds the text ``/health`` reports), else
inline in the JSON (``trainer.service.wire``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import torch

from .. import settings
from ..errors import UserError
from .wire import CLIENT_PID_HEADER, PROBE_FILE, BlobStore, decode_array, encode_array, is_file_ref

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding trainer/


class BackendError(UserError):
    """The backend failed or is unreachable; the message says which rank and why."""


class BackendUnreachable(BackendError):
    """No answer from the backend's address (not started yet, or gone)."""


class JobAbandoned(UserError):
    """``should_stop`` turned true during a sample or score job: the client stopped waiting (the
    backend finishes that job, then takes the next one). Train jobs stop properly instead."""


def state_dir() -> Path:
    return settings.state_dir()


class BackendClient:
    def __init__(self, url: str, token: str, process: subprocess.Popen | None = None, directory: Path | None = None,
                 client_pid: int | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.process = process  # set when this client started the backend
        self.directory = directory
        self.client_pid = client_pid  # sent with every request: this process's exit cancels its jobs
        self._blobs: BlobStore | None | bool = False  # False: not checked yet

    def blob_store(self) -> BlobStore | None:
        """The backend's folder of video files when this process shares it (checked once, with
        the probe file the backend wrote there), else None: videos then travel inline."""
        if self._blobs is False:
            info = self.health().get("blobs") or {}
            store = BlobStore(info.get("dir", ""))
            try:
                shared = bool(info) and (store.directory / PROBE_FILE).read_text() == info.get("probe")
            except OSError:
                shared = False
            self._blobs = store if shared else None
        return self._blobs

    def transport(self) -> str:
        """How a sample job returns its videos to this client: ``file`` or ``inline``."""
        return "file" if self.blob_store() is not None else "inline"

    def put_videos(self, videos: torch.Tensor) -> dict:
        """uint8 videos as a score job's ``videos`` field: a new file in the backend's folder (the
        backend deletes it once the job has ended), or inline."""
        store = self.blob_store()
        return store.put(videos) if store is not None else encode_array(videos)

    def take_videos(self, ref: dict) -> torch.Tensor:
        """The uint8 videos of a sample job's result; a file is deleted once read."""
        if not is_file_ref(ref):
            return decode_array(ref)
        store = self.blob_store()
        if store is None:
            raise BackendError("the backend returned its videos as a file in its folder, which this process cannot "
                               "read; ask for them inline (\"transport\": \"inline\").")
        videos = store.get(ref)
        store.delete(ref["file"])
        return videos

    def discard_videos(self, ref: dict) -> None:
        """Delete the file of ``put_videos`` (nothing for inline videos)."""
        if is_file_ref(ref) and self.blob_store() is not None:
            self.blob_store().delete(ref["file"])

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 60.0) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if self.client_pid is not None:
            headers[CLIENT_PID_HEADER] = str(self.client_pid)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            if e.code == 401:
                raise BackendError(f"the backend at {self.url} refused the token (401). Set "
                                   "FLASH_GRPO_BACKEND_TOKEN to the token in its backend.json.") from None
            raise BackendError(f"backend request {method} {path} failed with {e.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            raise BackendUnreachable(f"cannot reach the backend at {self.url} ({getattr(e, 'reason', e)})") from None

    def health(self) -> dict:
        return self.request("GET", "/health", timeout=5.0)

    def diagnose(self, what: str, run_dir: str | None = None) -> str:
        """Explain a lost backend: which rank failed and why, from torchrun's log and error files.

        A rank killed by a signal shows only in torchrun's log; the ranks that then failed in a
        collective wrote error files. Deaths are listed first: they are the cause. ``run_dir``:
        the run the job was training, if it had started one (the resume hint names it).
        """
        parts = [what]
        directory = self.directory or state_dir()
        log = directory / "backend.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        dead = set()
        for m in re.finditer(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)", text):
            code, rank = int(m.group(1)), m.group(2)
            if code < 0 and rank not in dead:
                dead.add(rank)
                parts.append(f"rank {rank} died (killed by {signal.Signals(-code).name})")
        for path in sorted(directory.glob("rank*.error.json")):
            try:
                info = json.loads(path.read_text())
                cause = info["cause"]
                if dead and ("gloo" in info["message"].lower() or "nccl" in info["message"].lower()):
                    cause = "lost contact with a dead rank"
                parts.append(f"rank {info['rank']} failed: {cause}: {info['message'][:300]}")
            except (OSError, ValueError, KeyError):
                continue
        hint = resume_hint(run_dir)
        parts.append(f"{hint + ' ' if hint else ''}The next request starts a fresh backend.")
        return "\n".join(parts)

    def wait_for_exit(self, timeout: float = 30.0) -> None:
        """After an internal failure: give torchrun time to stop the group and log why."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process is not None:
                if self.process.poll() is not None:
                    return
            else:
                try:
                    self.health()
                except BackendError:
                    return
            time.sleep(0.5)

    def run_job(self, kind: str, payload: dict, on_event: Callable[[dict], None] = lambda e: None,
                should_stop: Callable[[], bool] = lambda: False, job_id: str | None = None) -> dict:
        """Submit (or re-attach to ``job_id``) and follow a job to its end; return its result."""
        run: dict = {}  # the run directory, once the job's "start" or "resume" event names it
        try:
            return self._follow(kind, payload, on_event, should_stop, job_id, run)
        except BackendUnreachable as e:
            self.wait_for_exit()
            raise BackendError(self.diagnose(f"lost the backend during the job: {e}", run.get("dir"))) from None

    def _follow(self, kind, payload, on_event, should_stop, job_id, run):
        if job_id is None:
            job_id = self.request("POST", "/jobs", {"kind": kind, **payload})["job_id"]
        seen, cancel_sent = 0, False
        while True:
            if should_stop() and not cancel_sent:
                self.request("POST", f"/jobs/{job_id}/cancel", {})
                cancel_sent = True
                if kind != "train":  # only training stops early; do not wait for the rest
                    raise JobAbandoned(f"stopped waiting for the backend's {kind} job {job_id}")
            reply = self.request("GET", f"/jobs/{job_id}/events?after={seen}&wait=2", timeout=40.0)
            for event in reply["events"]:
                if event.get("run_dir"):
                    run["dir"] = event["run_dir"]
                try:
                    on_event(event)
                except BaseException:
                    # The caller gave up inside its callback (ComfyUI's progress hook raises its
                    # interrupt there): stop the job too, so it ends with a checkpoint, then re-raise.
                    self._cancel_and_wait(job_id)
                    raise
            seen = reply["next"]
            if reply["state"] in ("done", "cancelled"):
                return {**(reply["result"] or {}), "state": reply["state"], "job_id": job_id}
            if reply["state"] == "failed":
                err = reply["error"] or {}
                message = err.get("message", "unknown error")
                if err.get("user_error"):
                    raise UserError(message)
                cause = f"{err.get('type')}: {message[:300]}"
                if err.get("fatal") is False:  # only this job failed; the backend serves on
                    hint = resume_hint(run.get("dir"))
                    log = (self.directory or state_dir()) / "backend.log"
                    raise BackendError(f"the {kind} job failed in the backend (internal error: {cause}); the "
                                       f"backend is still up and its traceback is in {log}."
                                       + (f" {hint}" if hint else ""))
                self.wait_for_exit()
                raise BackendError(self.diagnose(
                    f"the backend failed during the job (rank {err.get('rank')}: {cause})", run.get("dir")))

    def _cancel_and_wait(self, job_id: str, timeout: float = 600.0) -> None:
        """Cancel ``job_id`` and wait until it has ended (its checkpoint written); best effort."""
        deadline = time.monotonic() + timeout
        try:
            self.request("POST", f"/jobs/{job_id}/cancel", {})
            seen = 0
            while time.monotonic() < deadline:
                reply = self.request("GET", f"/jobs/{job_id}/events?after={seen}&wait=2", timeout=40.0)
                seen = reply["next"]
                if reply["state"] in ("done", "cancelled", "failed"):
                    return
        except BackendError:
            pass

    def shutdown(self) -> None:
        try:
            self.request("POST", "/shutdown", {}, timeout=5.0)
        except BackendError:
            pass
        if self.process is not None:
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGTERM)


def resume_hint(run_dir: str | None) -> str:
    """The "checkpoints are intact; resume the run" hint when ``run_dir`` holds a checkpoint, else ""."""
    if run_dir and (Path(run_dir) / "checkpoints" / "latest.pt").is_file():
        return f"Checkpoints written so far are intact in {run_dir}; resume the run."
    return ""


def _read_state(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "backend.json").read_text())
    except (OSError, ValueError):
        return None


LAUNCHED: list[subprocess.Popen] = []
"""The backends this process started and that stop with it (not detached); see ``stop_launched``."""


def launch(gpus: int, directory: Path | None = None, timeout: float = 300.0, detached: bool = False) -> BackendClient:
    """Start a backend with ``gpus`` processes and wait until it answers.

    It exits once this process has exited (killed or not), its jobs cancelled, unless
    ``detached``; either way after ``FLASH_GRPO_IDLE_TIMEOUT`` idle seconds."""
    idle_timeout = settings.idle_timeout()
    directory = directory or state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for stale in list(directory.glob("rank*.error.json")) + [directory / "backend.json"]:
        stale.unlink(missing_ok=True)
    log = open(directory / "backend.log", "w")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", "trainer.backend", "--state-dir", str(directory), "--idle-timeout", str(idle_timeout)]
    if not detached:
        cmd += ["--owner-pid", str(os.getpid())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(gpus, 1))))
    process = subprocess.Popen(cmd, cwd=PACKAGE_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    if not detached:
        LAUNCHED.append(process)
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _read_state(directory)
        if info:
            client = BackendClient(info["url"], info["token"], process, directory, _client_pid(detached))
            try:
                client.health()
                return client
            except BackendError:
                pass
        if process.poll() is not None:
            raise BackendError(BackendClient("", "", None, directory).diagnose(
                f"the backend exited during start-up (status {process.returncode}); see {directory / 'backend.log'}"))
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    raise BackendError(f"the backend did not start within {timeout:.0f} s; see {directory / 'backend.log'}")


def stop_launched(timeout: float = 30.0) -> None:
    """Stop the backends this process started (not detached) that still run: SIGTERM to their
    process group, SIGKILL after ``timeout`` s. For a test session's end, pass or fail."""
    for process in LAUNCHED:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass
    LAUNCHED.clear()


def _client_pid(detached: bool) -> int | None:
    """The pid a client of a local backend sends: this process, unless its jobs outlive it."""
    return None if detached else os.getpid()


def connect(gpus: int = 1, directory: Path | None = None, detached: bool = False) -> BackendClient:
    """A client for a backend with ``gpus`` processes: the configured one, a live one, or a new
    one (``launch``; ``detached``: it and this client's jobs outlive this process). A live backend
    with another process count is replaced only when it runs no job."""
    address = settings.backend_address()
    if address:
        url, token = address
        if not token:
            raise BackendError("FLASH_GRPO_BACKEND_URL is set but FLASH_GRPO_BACKEND_TOKEN is not: copy the "
                               "token from the backend's backend.json.")
        return BackendClient(url, token)
    directory = directory or state_dir()
    info = _read_state(directory)
    if info:
        client = BackendClient(info["url"], info["token"], None, directory, _client_pid(detached))
        try:
            health = client.health()
            if health.get("world_size") == gpus and not health.get("stopping"):
                return client
            if not health.get("stopping"):
                if health.get("job"):
                    raise UserError(
                        f"the backend in {directory} runs another client's {health['job']['kind']} job on "
                        f"{health.get('world_size')} process(es), and this one needs {gpus}: wait until it has "
                        "finished, or give this run its own backend with FLASH_GRPO_STATE_DIR=<another folder>.")
                client.shutdown()  # an idle live backend with another process count: replace it
            client.wait_for_exit(timeout=600.0)  # a stopping one first ends its job (with a checkpoint)
        except BackendError:
            pass
    return launch(gpus, directory, detached=detached)
