"""Rewards scored by another process over HTTP: the ``remote`` client and the wire format.

Serve any registered reward (e.g. a large model on another GPU) with
``python -m trainer.rewards.serve --reward NAME`` (see :mod:`trainer.rewards.serve`) and use it
from a workflow as::

    {"name": "remote", "args": {"url": "http://127.0.0.1:8123"}}

with the token the server prints in the environment variable ``FLASH_GRPO_REWARD_TOKEN`` (or as
``args.token``).

Wire format (JSON only; nothing received is ever unpickled or evaluated):

* ``POST /score`` with header ``Authorization: Bearer <token>`` and body
  ``{"prompts": [str, ...], "videos": [{"shape": [T, H, W, 3], "dtype": "uint8",
  "data": base64(raw C-order bytes)}, ...]}`` (one prompt per video). The server also accepts
  ``multipart/form-data`` with a ``prompts`` part (the JSON list) and one ``video`` part per video
  holding an mp4 file, decoded with imageio.
* Answer ``200 {"scores": [float, ...], "details": {name: [float, ...]}}``; errors are
  ``{"error": message}`` with status 400 (bad payload), 401 (missing/wrong token), 413 (body
  over the server's ``--max-request-mb``) or 500 (the reward failed).
* ``GET /health`` (no token) answers ``{"status": "ok", "reward": name}``.

The client sends videos as uint8 (the server's reward converts them to its own input format),
at most ``batch_size`` videos per request, and retries connection errors, timeouts and 5xx answers
with exponential backoff (``backoff * 2**attempt`` seconds) before raising
:class:`RewardServerError`.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import json
import logging
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
import torch

from .. import settings
from ..errors import UserError
from .base import Reward, RewardOutput, register_reward

__all__ = [
    "TOKEN_ENV",
    "RewardServerError",
    "PayloadError",
    "encode_video",
    "decode_video",
    "parse_score_request",
    "RemoteReward",
]

TOKEN_ENV = settings.REWARD_TOKEN_ENV
"""Environment variable holding the reward server's token (read by the client and the server)."""

MAX_VIDEO_BYTES = 4 * 1024**3
"""Largest decoded video accepted by :func:`decode_video` (4 GiB)."""

logger = logging.getLogger(__name__)


class RewardServerError(UserError):
    """The reward server is unreachable, failed, or rejected the request (message says which)."""


class PayloadError(ValueError):
    """A malformed ``/score`` request; the server answers 400 with this message."""


# ----------------------------------------------------------------------------------------------
# Wire format
# ----------------------------------------------------------------------------------------------

def encode_video(video: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """One uint8 video ``[T, H, W, 3]`` as ``{"shape", "dtype": "uint8", "data": base64}``."""
    array = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"encode_video needs a uint8 [T, H, W, 3] video, got {array.dtype} {array.shape}")
    data = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")
    return {"shape": [int(s) for s in array.shape], "dtype": "uint8", "data": data}


def decode_video(item: Any, index: int = 0) -> np.ndarray:
    """The uint8 ``[T, H, W, 3]`` array of one encoded video; raises :class:`PayloadError`
    naming the problem for anything else (no pickle, no eval: only base64 bytes and integers)."""
    where = f"videos[{index}]"
    if not isinstance(item, dict):
        raise PayloadError(f"{where} must be an object with 'shape', 'dtype' and 'data', got {type(item).__name__}.")
    missing = [key for key in ("shape", "dtype", "data") if key not in item]
    if missing:
        raise PayloadError(f"{where} lacks {', '.join(map(repr, missing))}; give shape [T, H, W, 3], dtype 'uint8' and base64 data.")
    shape, dtype, data = item["shape"], item["dtype"], item["data"]
    if dtype != "uint8":
        raise PayloadError(f"{where}.dtype must be 'uint8' (0..255 RGB), got {dtype!r}.")
    if (not isinstance(shape, list) or len(shape) != 4
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape) or shape[3] != 3):
        raise PayloadError(f"{where}.shape must be [T, H, W, 3] with positive integers, got {shape!r}.")
    expected = math.prod(shape)
    if expected > MAX_VIDEO_BYTES:
        raise PayloadError(f"{where} is {expected} bytes, more than the {MAX_VIDEO_BYTES} bytes accepted.")
    if not isinstance(data, str):
        raise PayloadError(f"{where}.data must be a base64 string, got {type(data).__name__}.")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f"{where}.data is not valid base64: {exc}.") from None
    if len(raw) != expected:
        raise PayloadError(
            f"{where}.data holds {len(raw)} bytes but shape {shape} needs {expected} (T*H*W*3 uint8)."
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def _check_prompts(prompts: Any, n_videos: int) -> list[str]:
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise PayloadError("'prompts' must be a list of strings, one per video.")
    if len(prompts) != n_videos:
        raise PayloadError(f"Got {n_videos} videos but {len(prompts)} prompts; send one prompt per video.")
    return prompts


def parse_score_request(body: bytes) -> tuple[list[np.ndarray], list[str]]:
    """Decode a JSON ``/score`` body into ``(videos, prompts)``; :class:`PayloadError` if malformed."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"The body is not valid JSON ({exc}); send {{\"prompts\": [...], \"videos\": [...]}}.") from None
    if not isinstance(payload, dict):
        raise PayloadError("The body must be a JSON object with 'prompts' and 'videos'.")
    unknown = sorted(set(payload) - {"prompts", "videos"})
    if unknown:
        raise PayloadError(f"Unknown key(s) {unknown}; the body has 'prompts' and 'videos' only.")
    videos = payload.get("videos")
    if not isinstance(videos, list) or not videos:
        raise PayloadError("'videos' must be a non-empty list of {shape, dtype, data} objects.")
    prompts = _check_prompts(payload.get("prompts"), len(videos))
    return [decode_video(item, i) for i, item in enumerate(videos)], prompts


# ----------------------------------------------------------------------------------------------
# Client
# ----------------------------------------------------------------------------------------------

def _is_loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _number(value: Any, what: str, minimum: float, integer: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:
        kind = "an integer" if integer else "a number"
        raise UserError(f"remote '{what}' must be {kind} >= {minimum:g}, got {value!r}.")
    return value


@register_reward("remote")
class RemoteReward(Reward):
    """A reward computed by ``python -m trainer.rewards.serve`` at ``url``.

    Arguments:

    * ``url``: the server, e.g. ``http://127.0.0.1:8123`` (``/score`` is appended unless present).
    * ``token``: the server's token; default: the ``FLASH_GRPO_REWARD_TOKEN`` environment variable.
    * ``timeout`` (s, default 300): per request; a slow model on long videos needs minutes.
    * ``retries`` (default 3): extra attempts after a connection error, timeout or 5xx answer,
      waiting ``backoff * 2**k`` seconds before retry ``k`` (``backoff`` default 1.0 s).
    * ``batch_size`` (default 4): the most videos sent in one request.

    Scores and details are what the server's reward returns (float32, CPU). A missing or wrong
    token, a rejected request or a server still failing after the retries raise
    :class:`RewardServerError`, whose message names the URL, the cause and the fix.
    """

    input_format = "uint8"

    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0, retries: int = 3,
                 backoff: float = 1.0, batch_size: int = 4):
        if not isinstance(url, str):
            raise UserError(f"remote 'url' must be a string such as 'http://127.0.0.1:8123', got {url!r}.")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"remote 'url' must look like 'http://127.0.0.1:8123', got {url!r}.")
        base_url = url.rstrip("/")
        self.url = base_url[: -len("/score")] if base_url.endswith("/score") else base_url
        self.score_url = self.url + "/score"
        self.token = token if token is not None else settings.reward_token()
        if not isinstance(self.token, str) or not self.token:
            raise UserError(
                f"The remote reward at {self.url} needs the server's token: set the environment variable "
                f"{TOKEN_ENV} to the token python -m trainer.rewards.serve printed at start, or pass args.token."
            )
        self.timeout = float(_number(timeout, "timeout", 0.001))
        self.retries = int(_number(retries, "retries", 0, integer=True))
        self.backoff = float(_number(backoff, "backoff", 0.0))
        self.batch_size = int(_number(batch_size, "batch_size", 1, integer=True))
        self._loopback = _is_loopback_host(parts.hostname)
        if self._loopback:
            # A proxy from the environment must not see (or break) traffic to this machine.
            self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        else:
            self._opener = urllib.request.build_opener()
            if parts.scheme == "http":
                logger.warning("remote reward at %s: the token and videos travel unencrypted over plain "
                               "HTTP; prefer an SSH tunnel to a loopback port or https.", self.url)

    # -- one request ---------------------------------------------------------------------------

    def _start_hint(self) -> str:
        port = urllib.parse.urlsplit(self.url).port or 8123
        return (f"start it with python -m trainer.rewards.serve --reward NAME --port {port} "
                f"and set {TOKEN_ENV} to the token it prints")

    def _post(self, body: bytes) -> dict[str, Any]:
        """POST ``body`` to ``/score`` with retries; the decoded JSON answer or RewardServerError."""
        request_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        cause, kind = "no attempt made", "down"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.score_url, data=body, headers=request_headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code == 401:
                    raise RewardServerError(
                        f"reward server at {self.url} rejected the token (HTTP 401: {message}); set "
                        f"{TOKEN_ENV} (or args.token) to the token the server printed at start."
                    ) from None
                if exc.code < 500:
                    raise RewardServerError(
                        f"reward server at {self.url} rejected the request (HTTP {exc.code}: {message})."
                    ) from None
                cause, kind = f"HTTP {exc.code}: {message}", "failing"
                logger.warning("reward server at %s answered HTTP %d (attempt %d of %d): %s",
                               self.url, exc.code, attempt + 1, self.retries + 1, message)
                continue
            except (OSError, http.client.HTTPException) as exc:
                cause, kind = _connection_cause(exc, self.timeout)
                logger.warning("reward server at %s: %s (attempt %d of %d)",
                               self.url, cause, attempt + 1, self.retries + 1)
                continue
            try:
                answer = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise RewardServerError(
                    f"reward server at {self.url} answered something that is not JSON; is it a "
                    "python -m trainer.rewards.serve server?"
                ) from None
            if not isinstance(answer, dict):
                raise RewardServerError(f"reward server at {self.url} answered {type(answer).__name__}, not an object.")
            return answer
        if kind == "down":
            fix = self._start_hint()
        elif kind == "slow":
            fix = "raise args.timeout or lower args.batch_size"
        else:
            fix = "see the server's log"
        raise RewardServerError(
            f"reward server at {self.url} is {kind} ({cause}) after {self.retries} retries; {fix}."
        )

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        n = int(videos.shape[0])
        payload = {"prompts": list(prompts), "videos": [encode_video(videos[i]) for i in range(n)]}
        answer = self._post(json.dumps(payload).encode("utf-8"))
        scores = _float_list(answer.get("scores"), n, f"reward server at {self.url}: 'scores'")
        details_in = answer.get("details", {})
        if not isinstance(details_in, dict):
            raise RewardServerError(f"reward server at {self.url}: 'details' is not an object.")
        details = {
            str(key): torch.tensor(_float_list(value, n, f"reward server at {self.url}: details[{key!r}]"),
                                   dtype=torch.float32)
            for key, value in details_in.items()
        }
        return RewardOutput(torch.tensor(scores, dtype=torch.float32), details)

    def __repr__(self) -> str:
        return f"RemoteReward(url={self.url!r})"


def _float_list(value: Any, n: int, what: str) -> list[float]:
    if (not isinstance(value, list) or len(value) != n
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
        raise RewardServerError(f"{what} must be a list of {n} numbers, got {str(value)[:200]}.")
    return [float(v) for v in value]


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's ``{"error": ...}`` message of an HTTP error answer, else its reason phrase."""
    try:
        body = exc.read()
        answer = json.loads(body)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            return answer["error"]
        return body.decode("utf-8", "replace")[:300]
    except Exception:  # noqa: BLE001 -- the message is best effort
        return str(exc.reason)


def _connection_cause(exc: BaseException, timeout: float) -> tuple[str, str]:
    """``(cause, kind)`` of a failed connection: kind ``"down"`` (refused, unreachable, reset) or
    ``"slow"`` (timed out)."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within the {timeout:g} s timeout", "slow"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused", "down"
    if isinstance(reason, ConnectionResetError):
        return "connection reset", "down"
    if isinstance(reason, socket.gaierror):
        return f"unknown host: {reason}", "down"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "connection closed without an answer", "down"
    return f"{type(reason).__name__}: {reason}", "down"
