"""Serve any registered reward over HTTP: ``python -m trainer.rewards.serve --reward NAME``.

::

    python -m trainer.rewards.serve --reward ocr --args '{"every": 4}' --port 8123
    # prints: token: <random>   and   serving reward 'ocr' on http://127.0.0.1:8123
    FLASH_GRPO_REWARD_TOKEN=<random> python -m trainer.run workflow.json   # uses {"name": "remote", ...}

Options: ``--reward NAME`` (any name of :func:`trainer.rewards.available_rewards`, plugins
included), ``--args JSON`` (the reward's keyword arguments), ``--host`` (default ``127.0.0.1``),
``--port`` (default 8123; 0 picks a free port, printed), ``--token`` (default: the
``FLASH_GRPO_REWARD_TOKEN`` environment variable, else a random token that is printed),
``--batch-size`` (default 8), ``--batch-wait-ms`` (default 10), ``--max-request-mb`` (default
2048), ``--allow-remote``.

Security: every ``/score`` request needs ``Authorization: Bearer <token>`` (401 otherwise; the
token is compared in constant time). The server listens on loopback only unless ``--allow-remote``
is given for a non-loopback ``--host`` (then it warns: plain HTTP carries the token and videos
unencrypted; prefer an SSH tunnel). Requests are JSON or multipart mp4 only -- nothing received is
ever unpickled or evaluated, unlike the pickle-over-HTTP reward servers of earlier projects.

Batching: each request's videos are queued; one worker takes the oldest request, waits
``--batch-wait-ms`` for concurrent requests, adds queued requests while the total stays within
``--batch-size`` videos (a larger request is scored alone), scores them with one reward call in a
worker thread (the event loop stays responsive) and answers each request with its own slice. If a
batch fails, its requests are scored one by one so that only the bad request gets the error.
The wire format is documented in :mod:`trainer.rewards.remote`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hmac
import json
import logging
import secrets
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import settings
from ..errors import UserError
from .base import Reward
from .remote import TOKEN_ENV, PayloadError, _check_prompts, _is_loopback_host, parse_score_request

__all__ = ["RewardServer", "main"]

logger = logging.getLogger("trainer.rewards.serve")

DEFAULT_PORT = 8123


@dataclass
class _Job:
    """One ``/score`` request waiting in the queue."""

    videos: list[np.ndarray]
    prompts: list[str]
    future: asyncio.Future = field(repr=False)


class _BadRequest(Exception):
    """The reward rejected a request's videos or prompts (a UserError): answered with 400."""


class RewardServer:
    """The aiohttp application around one :class:`Reward` (see the module docstring).

    ``reward``: what ``/score`` computes; ``token``: the bearer token; ``batch_size``: the most
    videos per reward call; ``batch_wait_s``: how long the worker waits for concurrent requests
    before scoring; ``max_request_bytes``: the largest accepted body (413 above it).
    """

    def __init__(self, reward: Reward, token: str, batch_size: int = 8, batch_wait_s: float = 0.01,
                 max_request_bytes: int = 2048 * 1024**2, reward_name: str | None = None):
        if not token:
            raise ValueError("the reward server needs a non-empty token")
        self.reward = reward
        self.reward_name = reward_name or reward.name
        self.token = token
        self.batch_size = int(batch_size)
        self.batch_wait_s = float(batch_wait_s)
        self.max_request_bytes = int(max_request_bytes)
        self.batches_scored = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")

    # -- application ---------------------------------------------------------------------------

    def make_app(self):
        """The ``aiohttp.web.Application`` with ``POST /score`` and ``GET /health``."""
        from aiohttp import web

        app = web.Application(client_max_size=self.max_request_bytes)
        app.router.add_post("/score", self.handle_score)
        app.router.add_get("/health", self.handle_health)
        app.on_startup.append(self._start_worker)
        app.on_cleanup.append(self._stop_worker)
        return app

    async def _start_worker(self, app) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run_batches())

    async def _stop_worker(self, app) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- handlers ------------------------------------------------------------------------------

    def _authorised(self, request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8"), self.token.encode("utf-8"))

    async def handle_health(self, request):
        from aiohttp import web

        return web.json_response({"status": "ok", "reward": self.reward_name})

    async def handle_score(self, request):
        from aiohttp import web

        if not self._authorised(request):
            return web.json_response(
                {"error": "missing or wrong token: send the header 'Authorization: Bearer <token>' "
                          "with the token the server printed at start"}, status=401)
        try:
            if request.content_type.startswith("multipart/"):
                videos, prompts = await self._read_multipart(request)
            else:
                videos, prompts = parse_score_request(await request.read())
        except PayloadError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(videos, prompts, future))
        try:
            scores, details = await future
        except _BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except Exception as exc:  # noqa: BLE001 -- the reward's own failure
            return web.json_response({"error": f"the reward failed: {type(exc).__name__}: {exc}"}, status=500)
        return web.json_response({"scores": scores, "details": details})

    async def _read_multipart(self, request) -> tuple[list[np.ndarray], list[str]]:
        """Multipart body: a ``prompts`` part (JSON list of strings) and ``video`` parts (mp4)."""
        reader = await request.multipart()
        prompts: Any = None
        files: list[bytes] = []
        async for part in reader:
            if part.name == "prompts":
                try:
                    prompts = json.loads(await part.text())
                except json.JSONDecodeError as exc:
                    raise PayloadError(f"The 'prompts' part is not a JSON list of strings ({exc}).") from None
            elif part.name == "video":
                files.append(bytes(await part.read()))
                if sum(len(f) for f in files) > self.max_request_bytes:  # streamed parts skip aiohttp's limit
                    raise PayloadError(f"The uploaded videos exceed the server's limit of "
                                       f"{self.max_request_bytes} bytes (--max-request-mb).")
            else:
                raise PayloadError(f"Unknown multipart part {part.name!r}; send 'prompts' and 'video' parts.")
        if not files:
            raise PayloadError("The multipart body has no 'video' part (one mp4 file per video).")
        prompts = _check_prompts(prompts, len(files))
        loop = asyncio.get_running_loop()
        videos = [await loop.run_in_executor(None, _decode_mp4, data, i) for i, data in enumerate(files)]
        return videos, prompts

    # -- batching ------------------------------------------------------------------------------

    async def _run_batches(self) -> None:
        """Forever: gather queued jobs into batches of at most ``batch_size`` videos and score them."""
        carry: _Job | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            if self.batch_wait_s > 0:
                await asyncio.sleep(self.batch_wait_s)
            batch, count = [first], len(first.videos)
            while count < self.batch_size and not self._queue.empty():
                job = self._queue.get_nowait()
                if count + len(job.videos) > self.batch_size:
                    carry = job  # first in line for the next batch
                    break
                batch.append(job)
                count += len(job.videos)
            batch = [job for job in batch if not job.future.done()]  # drop requests whose client left
            if batch:
                await self._score_jobs(batch)

    def _score_sync(self, videos: list[np.ndarray], prompts: list[str]) -> tuple[list[float], dict[str, list[float]]]:
        out = self.reward(videos, prompts)
        return out.scores.tolist(), {key: value.tolist() for key, value in out.details.items()}

    async def _score_jobs(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        videos = [v for job in jobs for v in job.videos]
        prompts = [p for job in jobs for p in job.prompts]
        try:
            scores, details = await loop.run_in_executor(self._executor, self._score_sync, videos, prompts)
        except Exception as exc:  # noqa: BLE001
            if len(jobs) > 1:
                for job in jobs:  # isolate the failing request
                    await self._score_jobs([job])
                return
            job = jobs[0]
            if isinstance(exc, UserError):
                error: Exception = _BadRequest(str(exc))
            else:
                logger.exception("reward %r failed on a request of %d video(s)", self.reward_name, len(videos))
                error = exc
            if not job.future.done():
                job.future.set_exception(error)
            return
        self.batches_scored += 1
        start = 0
        for job in jobs:
            stop = start + len(job.videos)
            if not job.future.done():
                job.future.set_result((scores[start:stop], {k: v[start:stop] for k, v in details.items()}))
            start = stop


def _decode_mp4(data: bytes, index: int) -> np.ndarray:
    """An mp4 file's frames as uint8 ``[T, H, W, 3]`` (imageio); PayloadError if it cannot be read."""
    try:
        import imageio.v3 as iio

        frames = iio.imread(data, extension=".mp4")
    except Exception as exc:  # noqa: BLE001 -- any decoder failure is a bad upload
        raise PayloadError(f"video part {index} is not a readable mp4 file ({type(exc).__name__}: {exc}).") from None
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise PayloadError(f"video part {index} decoded to {frames.dtype} {frames.shape}, not uint8 RGB frames.")
    return frames


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.rewards.serve",
        description="Serve a registered Flash-GRPO reward over HTTP (POST /score, GET /health).",
    )
    parser.add_argument("--reward", required=True, help="registered reward name, e.g. ocr or brightness")
    parser.add_argument("--args", default="{}", help="the reward's keyword arguments as a JSON object")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: pick a free one)")
    parser.add_argument("--token", default=None,
                        help=f"bearer token clients must send (default: ${TOKEN_ENV}, else random, printed)")
    parser.add_argument("--batch-size", type=int, default=8, help="most videos scored in one reward call")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="wait this long for concurrent requests before scoring a batch")
    parser.add_argument("--max-request-mb", type=float, default=2048.0, help="largest request body in MiB")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host (plain HTTP: use only on a trusted network)")
    return parser


def _check_options(options: argparse.Namespace) -> dict[str, Any]:
    """Validate the command line before anything heavy happens; the reward's kwargs."""
    if not _is_loopback_host(options.host):
        if not options.allow_remote:
            raise UserError(
                f"--host {options.host} is not a loopback address; the server would accept connections from "
                "other machines. Use --host 127.0.0.1 (and an SSH tunnel), or pass --allow-remote explicitly."
            )
        logger.warning("listening on %s: any machine that can reach it and knows the token can score videos; "
                       "token and videos travel unencrypted over plain HTTP.", options.host)
    if not 0 <= options.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {options.port}.")
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {options.batch_size}.")
    if options.batch_wait_ms < 0 or options.max_request_mb <= 0:
        raise UserError("--batch-wait-ms must be >= 0 and --max-request-mb > 0.")
    try:
        kwargs = json.loads(options.args)
    except json.JSONDecodeError as exc:
        raise UserError(f"--args must be a JSON object such as '{{\"every\": 4}}' ({exc}).") from None
    if not isinstance(kwargs, dict):
        raise UserError(f"--args must be a JSON object such as '{{\"every\": 4}}', got {options.args!r}.")
    if options.token is not None and not options.token.strip():
        raise UserError("--token must not be empty.")
    return kwargs


async def _serve(server: RewardServer, host: str, port: int, token_was_generated: bool) -> None:
    from aiohttp import web

    runner = web.AppRunner(server.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    url_host = f"[{host}]" if ":" in host else host
    if token_was_generated:
        print(f"token: {server.token}", flush=True)
        print(f"  (clients: export {TOKEN_ENV}={server.token})", flush=True)
    print(f"serving reward {server.reward_name!r} on http://{url_host}:{bound} (POST /score, GET /health)",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not on this platform / thread
            pass
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, build the reward, serve until SIGINT/SIGTERM. Returns the exit status
    (2 with the message on stderr for a :class:`~trainer.errors.UserError`)."""

    options = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        kwargs = _check_options(options)
        from . import build_reward  # loads plugins too

        reward = build_reward(options.reward, **kwargs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    token = options.token or settings.reward_token() or None
    generated = token is None
    if generated:
        token = secrets.token_urlsafe(24)
    server = RewardServer(reward, token, batch_size=options.batch_size,
                          batch_wait_s=options.batch_wait_ms / 1000.0,
                          max_request_bytes=int(options.max_request_mb * 1024**2),
                          reward_name=options.reward)
    try:
        asyncio.run(_serve(server, options.host, options.port, generated))
    except OSError as exc:
        print(f"error: cannot listen on {options.host}:{options.port} ({exc}); pick another --port.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
