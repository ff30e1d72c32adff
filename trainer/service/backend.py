"""The backend trainer process: a warm model behind a small JSON API, on one GPU or many.

Start it with torchrun (clients do this on demand, see ``trainer.service.client``)::

    torchrun --standalone --nproc_per_node 8 -m trainer.backend --state-dir ~/.cache/flash_grpo/backend

(``trainer.backend`` is the entry point; the server is this module.) Every job runs through this
rank's ``LocalRunner`` (``trainer.service.runner``), which keeps the model warm.

Every rank runs the same jobs in lockstep; rank 0 also serves HTTP on 127.0.0.1 (``--port``,
0 = any free port) and writes ``<state-dir>/backend.json`` (mode 0600) with its URL and a random
token that every request must carry (``Authorization: Bearer <token>``; 401 otherwise). The other
ranks receive each command from rank 0 through torch.distributed (JSON bytes in a tensor over a
gloo group; nothing is unpickled).

HTTP API (all JSON, all need the token):

``GET /health``                 status, world size, model loads so far, jobs run per kind, current job,
                                ``stopping`` (it takes no new jobs)
``POST /jobs``                  ``{"kind": "train"|"sample"|"score", ...}`` -> ``{"job_id"}``
``GET /jobs/{id}``              state (queued, running, done, failed, cancelled), result, error;
                                404 once the job is pruned
``GET /jobs/{id}/events``       ``?after=N&wait=S``: events after the N-th, long-polling up to S s
``POST /jobs/{id}/cancel``      stop after the current iteration (a checkpoint is written)
``POST /shutdown``              stop the backend

Jobs run one at a time in a worker thread; the HTTP loop stays responsive, and a client that
disconnects loses nothing: the job runs on and its events can be read again by job id. After
``--idle-timeout`` seconds without jobs or requests the backend exits. A local client names its
process in the ``X-Flash-Client-Pid`` header of its requests: once that process has exited (killed
or not), its jobs are cancelled (a training run checkpointed), other clients' jobs run on. With
``--owner-pid`` (the client that started it) the backend also exits once the owner and every other
client that used it have exited: two runs sharing one backend each end their own job. After each
job the warm model is handled by the ``--after-job`` policy (``FLASH_GRPO_BACKEND_AFTER_JOB``):
``offload`` (default) moves it to the CPU and empties the CUDA cache, so ComfyUI on the same GPU
gets its memory back; ``keep`` leaves it on the GPU; ``shutdown`` exits ``SHUTDOWN_GRACE_S`` idle
seconds after the job.

Videos travel as files in ``<state-dir>/blobs/`` (``trainer.service.wire``): a score job names the
file the client wrote, a sample job's result the file rank 0 wrote (every rank's videos, gathered
to rank 0 in global sample order). A client that does not share the folder sends and receives
them inline instead (``"transport": "inline"``). Finished jobs are pruned: the last
``--keep-jobs`` of them are kept, none longer than ``--keep-jobs-for`` seconds; a pruned job's
id answers 404 and its files are deleted.

Every POST /jobs body is checked against its kind's fields (``check_job``) before it is queued: a
malformed one gets a 400 naming the field. A job that fails with a ``UserError`` fails alone; so
does one with an internal error on one process. With several processes an internal error stops
the group (the other ranks may wait in a collective): the failure on any rank is written to
``<state-dir>/rank<R>.error.json`` (rank, exception, message) before the process exits, so the
client can name the rank and the cause.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import secrets
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from .. import settings
from ..engine.config import FlashGRPOConfig
from ..engine.distributed import broadcast_bytes, init_distributed
from ..errors import UserError
from ..fileio import atomic_write_bytes
from .runner import LocalRunner, RunCancelled
from .wire import CLIENT_PID_HEADER, PROBE_FILE, BlobStore, decode_array, encode_array, is_file_ref

HEARTBEAT_S = 5.0
KEEP_JOBS = 16
"""Finished jobs kept (their results and video files); older ones are pruned."""
KEEP_JOBS_FOR_S = 3600.0
"""Seconds a finished job is kept at most."""
SHUTDOWN_GRACE_S = 10.0
"""Idle seconds before a backend with the ``shutdown`` after-job policy exits after a job."""


# ---- control channel: rank 0 -> all ranks ------------------------------------------------------
class Control:
    """Broadcast JSON commands and stop flags from rank 0 over a gloo group (CPU tensors)."""

    def __init__(self):
        self.enabled = dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.group = dist.new_group(backend="gloo") if self.enabled else None

    def broadcast(self, message: dict | None) -> dict:
        if not self.enabled:
            return message
        data = broadcast_bytes(json.dumps(message).encode() if self.rank == 0 else None, self.group)
        return json.loads(data.decode()) if self.rank != 0 else message

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag, on every rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.uint8)
        dist.broadcast(t, 0, group=self.group)
        return bool(t.item())


# ---- jobs -----------------------------------------------------------------------------------------
class Job:
    def __init__(self, kind: str, payload: dict, client_pid: int | None = None):
        self.id = uuid.uuid4().hex[:12]
        self.kind = kind
        self.payload = payload
        self.client_pid = client_pid  # the local process that submitted it: its exit cancels the job
        self.orphaned = False  # that process has exited: nobody waits for the result
        self.state = "queued"
        self.events: list[dict] = []
        self.result = None
        self.error = None
        self.cancel = False
        self.finished_at: float | None = None
        self.cond = threading.Condition()

    def add_event(self, event: dict) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def finish(self, state: str, result=None, error=None) -> None:
        with self.cond:
            self.state, self.result, self.error = state, result, error
            self.finished_at = time.time()
            self.cond.notify_all()

    def files(self) -> list[str]:
        """The video files of this job: its input (score) and its result (sample)."""
        refs = [self.payload.get("videos"), (self.result or {}).get("videos")]
        return [ref["file"] for ref in refs if is_file_ref(ref)]

    def view(self) -> dict:
        return {"job_id": self.id, "kind": self.kind, "state": self.state, "result": self.result,
                "error": self.error, "events": len(self.events)}


JOB_KINDS = ("train", "sample", "score")
JOB_FIELDS = {  # field -> required, per job kind
    "train": {"config": True, "resume": False},
    "sample": {"config": True, "prompts": True, "iteration": False, "transport": False, "lora": False},
    "score": {"rewards": True, "videos": True, "prompts": True, "group_size": True, "std_mode": False, "clip": False},
}
STD_MODES = ("group", "global")
TRANSPORTS = ("file", "inline")


class BadRequest(UserError):
    """A request the backend refuses before queueing it (HTTP 400); the message names the field."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_job(body, blobs: BlobStore | None = None) -> tuple[str, dict]:
    """``(kind, payload)`` of a POST /jobs body, checked against its kind's fields before it is
    queued; ``BadRequest`` names the first wrong field. Checks what can be checked without the
    model: field types, the config (``FlashGRPOConfig.from_dict``), the videos' file (its name, in
    ``blobs``, and header) or inline array (its size)."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object with a 'kind' field, not a JSON {type(body).__name__}")
    body = dict(body)
    kind = body.pop("kind", None)
    if kind not in JOB_KINDS:
        raise BadRequest(f"kind: must be train, sample or score, not {kind!r}")
    fields = JOB_FIELDS[kind]
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(f"{unknown[0]}: not a field of a {kind} job (fields: {', '.join(fields)})")
    missing = [k for k, required in fields.items() if required and k not in body]
    if missing:
        raise BadRequest(f"{missing[0]}: missing (a {kind} job needs {', '.join(k for k, r in fields.items() if r)})")
    if "config" in body:
        if not isinstance(body["config"], dict):
            raise BadRequest(f"config: must be a JSON object of config fields, not a JSON {type(body['config']).__name__}")
        try:
            FlashGRPOConfig.from_dict(body["config"])
        except UserError as e:
            raise BadRequest(f"config: {e}") from None
    if "resume" in body and not isinstance(body["resume"], bool):
        raise BadRequest(f"resume: must be true or false, not {body['resume']!r}")
    if "iteration" in body and not (_is_int(body["iteration"]) and body["iteration"] >= 0):
        raise BadRequest(f"iteration: must be an integer >= 0, not {body['iteration']!r}")
    if body.get("transport", "file") not in TRANSPORTS:
        raise BadRequest(f"transport: must be one of {', '.join(TRANSPORTS)}, not {body['transport']!r}")
    if "lora" in body:
        lora = body["lora"]
        if not (isinstance(lora, dict) and set(lora) <= {"path", "strength"} and isinstance(lora.get("path"), str)
                and isinstance(lora.get("strength", 1.0), (int, float)) and not isinstance(lora.get("strength"), bool)):
            raise BadRequest('lora: must be {"path": "<absolute path of an aligned LoRA file>", "strength": number}')
        if not (os.path.isabs(lora["path"]) and os.path.isfile(lora["path"])):
            raise BadRequest(f"lora: {lora['path']!r} is not an existing file (an absolute path)")
    prompts = body.get("prompts", [""])
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompts: must be a non-empty list of strings")
    if kind == "score":
        rewards = body["rewards"]
        if not isinstance(rewards, list) or not rewards or not all(isinstance(r, (str, dict)) for r in rewards):
            raise BadRequest('rewards: must be a non-empty list of reward names or {"name": ...} objects')
        try:
            if is_file_ref(body["videos"]):
                if blobs is None:
                    raise UserError("this backend takes no video files")
                videos = blobs.open(body["videos"])
            else:
                videos = decode_array(body["videos"])
        except UserError as e:
            raise BadRequest(f"videos: {e} (expected {{\"file\": name}} of a uint8 .npy file [N, T, H, W, 3] in "
                             'the backend\'s blobs folder, or inline {"shape": [N, T, H, W, 3], "dtype": "uint8" or '
                             '"float32", "data": base64 bytes of exactly that shape})') from None
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise BadRequest(f"videos: shape {list(videos.shape)} is not [N, T, H, W, 3]")
        n, group_size = videos.shape[0], body["group_size"]
        if len(body["prompts"]) != n:
            raise BadRequest(f"prompts: {len(body['prompts'])} prompts for {n} videos; give one prompt per video")
        if not _is_int(group_size) or group_size < 1 or n % group_size:
            raise BadRequest(f"group_size: {group_size!r} must be a positive integer that divides the {n} videos")
        if body.get("std_mode", "group") not in STD_MODES:
            raise BadRequest(f"std_mode: must be one of {', '.join(STD_MODES)}, not {body['std_mode']!r}")
        clip = body.get("clip", 5.0)
        if not isinstance(clip, (int, float)) or isinstance(clip, bool) or not clip > 0:
            raise BadRequest(f"clip: must be a number > 0, not {clip!r}")
    return kind, body


def execute(command: dict, runner: LocalRunner, should_stop, on_event, after_job: str = "keep",
            blobs: BlobStore | None = None) -> dict | None:
    """Run one command on this rank (every rank runs it) with this rank's ``runner``, then apply the
    ``after_job`` policy to the warm model (``LocalRunner.release``). Returns rank 0's JSON result.
    ``blobs``: rank 0's video files (None on the other ranks)."""
    try:
        return _run_command(command, runner, should_stop, on_event, blobs)
    finally:
        runner.release(after_job)


def _run_command(command: dict, runner: LocalRunner, should_stop, on_event, blobs: BlobStore | None) -> dict | None:
    op = command["op"]
    fault = settings.test_fault_prompt()
    if fault and fault in command.get("prompts", ()):
        raise RuntimeError(f"test fault: prompt {fault!r} ({settings.TEST_FAULT_ENV})")
    if op == "train":
        cfg = FlashGRPOConfig.from_dict(command["config"])
        try:
            result = runner.train(cfg, resume=command.get("resume", False), should_stop=should_stop,
                                  on_event=on_event)
        except RunCancelled as e:
            result = e.result
        return {"run_dir": str(result.run_dir), "lora_path": str(result.lora_path),
                "iterations_done": result.iterations_done, "cancelled": result.cancelled,
                "summary": result.summary}
    if op == "sample":  # rank 0 receives every rank's uint8 videos in global order, into a file or a list
        cfg = FlashGRPOConfig.from_dict(command["config"])
        shape = (len(command["prompts"]) * cfg.group_size, cfg.num_frames, cfg.height, cfg.width, 3)
        inline = blobs is None or command.get("transport") == "inline"
        parts: list[torch.Tensor] = []
        with contextlib.nullcontext() if inline else blobs.writer(shape) as writer:
            out = runner.sample_videos(cfg, command["prompts"], command.get("iteration", 0),
                                       parts.append if inline else writer.write, lora=command.get("lora"))
        if blobs is None:
            return None
        videos = encode_array(torch.cat(parts)) if inline else writer.ref
        return {"videos": videos, "steps": out.steps, "prompts": out.prompts, "seed": out.seed}
    if op == "score":  # on rank 0 alone: only it reads the videos
        if blobs is None:
            return None
        videos = command["videos"]
        videos = blobs.get(videos) if is_file_ref(videos) else decode_array(videos)
        out = runner.score(command["rewards"], videos, command["prompts"],
                           command["group_size"], command.get("std_mode", "group"), command.get("clip", 5.0))
        return {"scores": out.scores.tolist(), "advantages": out.advantages.tolist(),
                "has_signal": out.has_signal.tolist(),
                "details": {k: v.tolist() for k, v in out.details.items()}}
    raise UserError(f"unknown backend command {op!r}")


class Backend:
    """Rank 0's server state: the job queue, the worker loop and the HTTP app."""

    def __init__(self, state_dir: Path, control: Control, idle_timeout: float, runner: LocalRunner | None = None,
                 after_job: str = "keep", owner_pid: int | None = None, keep_jobs: int = KEEP_JOBS,
                 keep_jobs_for: float = KEEP_JOBS_FOR_S):
        self.state_dir = state_dir
        self.blobs = BlobStore(state_dir / "blobs")
        self.blobs.clear()  # files of an earlier backend: no job of this one names them
        self.blob_probe = secrets.token_hex(16)
        atomic_write_bytes(self.blobs.directory / PROBE_FILE, self.blob_probe.encode())
        os.chmod(self.blobs.directory, 0o700)
        self.keep_jobs, self.keep_jobs_for = keep_jobs, keep_jobs_for
        self.pruned: dict[str, None] = {}  # ids of pruned jobs (the latest 10,000), for a clear 404
        self.jobs_lock = threading.Lock()
        self.after_job = after_job
        # local client processes whose exit cancels their jobs; once none is left, a backend that an
        # owner started (not detached) exits too
        self.clients: set[int] = {owner_pid} if owner_pid is not None else set()
        self.owned = owner_pid is not None
        self.control = control
        self.runner = runner or LocalRunner()
        self.jobs_run = dict.fromkeys(JOB_KINDS, 0)  # jobs started per kind, reported by /health
        self.idle_timeout = idle_timeout
        self.token = secrets.token_urlsafe(32)
        self.jobs: dict[str, Job] = {}
        self.queue: queue.Queue[Job] = queue.Queue()
        self.current: Job | None = None
        self.last_activity = time.time()
        self.shutdown = threading.Event()

    # -- worker (runs the jobs; the only thread that talks to the other ranks) --
    def worker(self) -> None:
        while True:
            try:
                job = self.queue.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                self.prune()
                idle = time.time() - self.last_activity > self.idle_timeout
                if self.shutdown.is_set() or idle:
                    self.control.broadcast({"op": "shutdown"})
                    self.shutdown.set()
                    return
                self.control.broadcast({"op": "noop"})
                continue
            if self.shutdown.is_set():  # stopping: the queued jobs do not start
                job.finish("failed", error={"rank": 0, "type": "Shutdown", "user_error": True, "message":
                                            "the backend shut down before this job started; submit it again"})
                self._delete_spent_files(job)
                continue
            if job.orphaned:  # its client exited while it was queued: do not start it
                job.finish("cancelled", result={"cancelled": True})
                self._delete_spent_files(job)
                continue
            self.current = job
            job.state = "running"
            self.jobs_run[job.kind] += 1
            command = {"op": job.kind, **job.payload}
            # the other ranks need no videos (a score job runs on rank 0)
            self.control.broadcast({k: v for k, v in command.items() if k != "videos"})
            try:
                result = execute(command, self.runner, lambda job=job: self.control.agree(job.cancel), job.add_event,
                                 self.after_job, self.blobs)
                cancelled = bool(result and result.get("cancelled"))
                job.finish("cancelled" if cancelled else "done", result=result)
            except UserError as e:
                job.finish("failed", error={"rank": 0, "type": type(e).__name__, "message": str(e), "user_error": True})
            except Exception as e:  # noqa: BLE001 - an internal error: reported to the client
                # On one process only this job fails; the model is reloaded for the next one.
                # With several, the other ranks may wait in a collective: the group stops.
                fatal = self.control.enabled
                traceback.print_exc()
                if fatal:
                    write_rank_error(self.state_dir, 0, e)
                job.finish("failed", error={"rank": 0, "type": type(e).__name__, "message": str(e), "fatal": fatal})
                if fatal:
                    self.shutdown.set()
                    raise
                self.runner.drop_warm_pipeline()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            finally:
                self._delete_spent_files(job)
                self.current = None
                self.last_activity = time.time()
                self.prune()
                if self.after_job == "shutdown":  # exit once the client has read the result
                    self.idle_timeout = min(self.idle_timeout, SHUTDOWN_GRACE_S)

    def _delete_spent_files(self, job: Job) -> None:
        """A job's input videos are read once: delete them when it has ended; so too the videos of
        a sample job whose client stopped waiting (it cancelled the job): nobody will read them."""
        videos = job.payload.get("videos")
        names = job.files() if job.cancel else [videos["file"]] if is_file_ref(videos) else []
        for name in names:
            self.blobs.delete(name)

    def prune(self) -> None:
        """Forget the finished jobs beyond the latest ``keep_jobs`` and those finished more than
        ``keep_jobs_for`` seconds ago; delete their video files."""
        now = time.time()
        with self.jobs_lock:
            finished = sorted((j for j in self.jobs.values() if j.finished_at is not None), key=lambda j: j.finished_at)
            old = finished[:max(len(finished) - self.keep_jobs, 0)]
            old += [j for j in finished[len(old):] if now - j.finished_at > self.keep_jobs_for]
            for job in old:
                del self.jobs[job.id]
                self.pruned[job.id] = None
            while len(self.pruned) > 10_000:
                del self.pruned[next(iter(self.pruned))]
        for job in old:
            for name in job.files():
                self.blobs.delete(name)

    def stop(self, why: str) -> None:
        """Stop: cancel every job (a running training run ends with a checkpoint), then exit."""
        print(f"flash-grpo backend stopping: {why}", flush=True)
        self.shutdown.set()
        with self.jobs_lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            job.cancel = True

    def add_client(self, pid: int) -> None:
        with self.jobs_lock:
            self.clients.add(pid)

    def watch_clients(self) -> None:
        """Once a client process has exited (killed or not), cancel its jobs; once every client of
        an owned backend has, stop."""
        while not self.shutdown.is_set():
            with self.jobs_lock:
                gone = {pid for pid in self.clients if not process_alive(pid)}
                self.clients -= gone
                left = bool(self.clients)
                orphans = [j for j in self.jobs.values() if j.client_pid in gone and j.finished_at is None]
            for job in orphans:
                print(f"flash-grpo backend: cancelling job {job.id}: its client (pid {job.client_pid}) has exited",
                      flush=True)
                job.orphaned = job.cancel = True
            if self.owned and not left:
                self.stop(f"every client that used it has exited (the last: pid {', '.join(map(str, sorted(gone)))})")
                return
            time.sleep(1.0)

    # -- HTTP --
    def app(self):
        from aiohttp import web

        @web.middleware
        async def auth(request, handler):
            if request.headers.get("Authorization", "") != f"Bearer {self.token}":
                return web.json_response({"error": "missing or wrong token"}, status=401)
            self.last_activity = time.time()
            pid = client_pid(request.headers)
            if pid is not None:
                self.add_client(pid)
            return await handler(request)

        async def health(request):
            return web.json_response({
                "ok": True, "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                "model_loads": self.runner.model_loads, "jobs_run": dict(self.jobs_run), "pid": os.getpid(),
                "after_job": self.after_job,
                "job": self.current.view() if self.current else None, "stopping": self.shutdown.is_set(),
                "blobs": {"dir": str(self.blobs.directory.absolute()), "probe": self.blob_probe},
            })

        async def submit(request):
            try:
                body = await request.json()
            except ValueError:  # not JSON, or not UTF-8
                return web.json_response({"error": "the body is not JSON"}, status=400)
            try:
                kind, payload = check_job(body, self.blobs)
            except BadRequest as e:
                return web.json_response({"error": str(e)}, status=400)
            job = Job(kind, payload, client_pid(request.headers))
            with self.jobs_lock:
                self.jobs[job.id] = job
            self.queue.put(job)
            return web.json_response({"job_id": job.id})

        def find(request):
            job_id = request.match_info["job_id"]
            job = self.jobs.get(job_id)
            if job is None:
                error = (f"job {job_id} has finished and was pruned: this backend keeps its last {self.keep_jobs} "
                         f"finished jobs for at most {self.keep_jobs_for:g} s, so its result and videos are gone; "
                         "submit the job again" if job_id in self.pruned else
                         f"no job {job_id} on this backend (a restarted backend knows none of the earlier one's jobs)")
                raise web.HTTPNotFound(text=json.dumps({"error": error}), content_type="application/json")
            return job

        async def status(request):
            return web.json_response(find(request).view())

        async def events(request):
            import asyncio

            job = find(request)
            try:
                after = int(request.query.get("after", 0))
                wait = min(float(request.query.get("wait", 0)), 30.0)
                if after < 0 or not wait >= 0:
                    raise ValueError
            except ValueError:
                return web.json_response({"error": "after must be an integer >= 0 and wait a number of seconds >= 0"},
                                         status=400)
            deadline = time.time() + wait
            while len(job.events) <= after and job.state in ("queued", "running") and time.time() < deadline:
                await asyncio.sleep(0.1)
            return web.json_response({**job.view(), "events": job.events[after:], "next": len(job.events)})

        async def cancel(request):
            job = find(request)
            job.cancel = True
            return web.json_response(job.view())

        async def shutdown(request):
            self.stop("POST /shutdown")
            return web.json_response({"ok": True})

        app = web.Application(middlewares=[auth], client_max_size=1024**3)
        app.add_routes([
            web.get("/health", health), web.post("/jobs", submit), web.get("/jobs/{job_id}", status),
            web.get("/jobs/{job_id}/events", events), web.post("/jobs/{job_id}/cancel", cancel),
            web.post("/shutdown", shutdown),
        ])
        return app

    def serve(self, host: str, port: int) -> None:
        import asyncio

        from aiohttp import web

        async def main():
            runner = web.AppRunner(self.app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            real_port = site._server.sockets[0].getsockname()[1]
            info = {"url": f"http://{host}:{real_port}", "token": self.token, "pid": os.getpid(),
                    "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                    "started": time.time()}
            path = self.state_dir / "backend.json"
            atomic_write_bytes(path, json.dumps(info).encode())
            os.chmod(path, 0o600)
            print(f"flash-grpo backend on {info['url']} ({info['world_size']} processes); token in {path}", flush=True)
            while not self.shutdown.is_set() or self.current is not None:
                await asyncio.sleep(0.2)
            if f'"{self.token}"' in (path.read_text() if path.exists() else ""):  # ours, not a successor's
                path.unlink(missing_ok=True)
            await runner.cleanup()

        asyncio.run(main())


def client_pid(headers) -> int | None:
    """The pid a local client names in ``CLIENT_PID_HEADER`` (None when absent or not a pid)."""
    value = headers.get(CLIENT_PID_HEADER, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet waited for, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal test is all there is
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def write_rank_error(state_dir: Path, rank: int, exc: BaseException) -> None:
    cause = "CUDA out of memory" if isinstance(exc, torch.cuda.OutOfMemoryError) else type(exc).__name__
    atomic_write_bytes(state_dir / f"rank{rank}.error.json", json.dumps({
        "rank": rank, "type": type(exc).__name__, "cause": cause, "message": str(exc)[:2000],
        "traceback": traceback.format_exc()[-4000:], "time": time.time(),
    }).encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.backend", description=__doc__.split("\n\n")[0])
    ap.add_argument("--state-dir", required=True, help="folder for backend.json (URL + token) and error files")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    ap.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    ap.add_argument("--idle-timeout", type=float, default=settings.DEFAULT_IDLE_TIMEOUT_S,
                    help="exit after this many idle seconds")
    ap.add_argument("--after-job", choices=settings.AFTER_JOB_POLICIES, default=None,
                    help="after each job: offload the model to the CPU and empty the CUDA cache (default), keep it "
                    f"on the GPU, or shut down once idle (default: {settings.AFTER_JOB_ENV} or offload)")
    ap.add_argument("--owner-pid", type=int, default=None,
                    help="exit (after cancelling their jobs) once this process, the client that started it, and "
                    "every other client that used it have exited")
    ap.add_argument("--keep-jobs", type=int, default=KEEP_JOBS,
                    help="finished jobs kept with their results and video files (older ones are pruned)")
    ap.add_argument("--keep-jobs-for", type=float, default=KEEP_JOBS_FOR_S,
                    help="seconds a finished job is kept at most")
    ap.add_argument("--allow-remote", action="store_true",
                    help="allow a non-loopback --host (multi-node setups behind your own network controls)")
    args = ap.parse_args(argv)
    if args.keep_jobs < 1 or not args.keep_jobs_for > 0:
        print("error: --keep-jobs must be >= 1 and --keep-jobs-for > 0 (a client reads a result after the job ended)",
              file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        print(f"error: --host {args.host} is not loopback; add --allow-remote to listen there anyway", file=sys.stderr)
        return 2
    try:
        after_job = args.after_job or settings.after_job_policy()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir).expanduser()
    state_dir.mkdir(parents=True, exist_ok=True)
    distributed = init_distributed()
    rank = dist.get_rank() if distributed else 0
    (state_dir / f"rank{rank}.error.json").unlink(missing_ok=True)
    control = Control()
    runner = LocalRunner()  # this rank's warm model
    try:
        if rank == 0:
            backend = Backend(state_dir, control, args.idle_timeout, runner, after_job, owner_pid=args.owner_pid,
                              keep_jobs=args.keep_jobs, keep_jobs_for=args.keep_jobs_for)
            threading.Thread(target=backend.watch_clients, daemon=True).start()
            worker_error = []

            def run_worker():
                try:
                    backend.worker()
                except BaseException as e:  # noqa: BLE001
                    worker_error.append(e)
                    backend.shutdown.set()

            thread = threading.Thread(target=run_worker, daemon=True)
            thread.start()
            backend.serve(args.host, args.port)
            thread.join(timeout=60)
            if worker_error:
                return 1
        else:
            while True:
                command = control.broadcast(None)
                if command["op"] == "shutdown":
                    break
                if command["op"] == "noop":
                    continue
                try:
                    execute(command, runner, lambda: control.agree(False), lambda e: None, after_job)
                except UserError:
                    pass  # rank 0 raises the same error and reports it
        return 0
    except Exception as e:  # noqa: BLE001
        write_rank_error(state_dir, rank, e)
        raise
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
