"""Every ``FLASH_GRPO_*`` environment variable the pack reads, read here and nowhere else.

User settings:

``FLASH_GRPO_MODEL``
    Wan model folder for every model-source node of a headless run (``--model`` wins).
``FLASH_GRPO_STATE_DIR``
    Folder of the backend trainer process's ``backend.json`` (URL + token), log and error files
    (default ``~/.cache/flash_grpo/backend``).
``FLASH_GRPO_IDLE_TIMEOUT``
    Seconds a backend started by a client waits without jobs or requests before it exits
    (default 900).
``FLASH_GRPO_BACKEND_URL``, ``FLASH_GRPO_BACKEND_TOKEN``
    A backend started by hand (e.g. with torchrun on several machines): used as is, never started
    or stopped by a client.
``FLASH_GRPO_BACKEND_AFTER_JOB``
    What a backend started on demand does with its model after each job: ``offload`` (default:
    the model moves to the CPU and the CUDA cache is emptied, so ComfyUI can use the GPU next),
    ``keep`` (stays on the GPU, fastest next job), ``shutdown`` (the backend exits once idle for
    a few seconds). ``python -m trainer.backend --after-job`` sets it for a backend started by hand.
``FLASH_GRPO_REWARD_TOKEN``
    Bearer token of a reward server (``python -m trainer.rewards.serve``) and its ``remote`` clients.

Test and debugging switches:

``FLASH_GRPO_DIST_BACKEND=gloo``
    Use gloo instead of NCCL on a CUDA machine.
``FLASH_GRPO_TEST_DISABLE_GRAD_SYNC=1``
    DDP never all-reduces gradients (a negative control: ranks must then drift apart).
``FLASH_GRPO_TEST_FAULT_PROMPT=TEXT``
    A backend job with this prompt fails with an internal error (tests of the backend's recovery).
``FLASH_GRPO_COMPILE_BACKEND=aot_eager``
    The torch.compile backend of ``compile_blocks`` (default ``inductor``; ``aot_eager`` or
    ``eager`` compile nothing to machine code: to debug, and for tests on a 2-core CPU, where
    inductor takes minutes).

Where jobs run (in this process or in the backend) is not an environment variable: it is chosen
once by the entry point (``python -m trainer.run --in-process``) and carried by the host's runner.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

MODEL_ENV = "FLASH_GRPO_MODEL"
STATE_DIR_ENV = "FLASH_GRPO_STATE_DIR"
BACKEND_URL_ENV = "FLASH_GRPO_BACKEND_URL"
BACKEND_TOKEN_ENV = "FLASH_GRPO_BACKEND_TOKEN"
REWARD_TOKEN_ENV = "FLASH_GRPO_REWARD_TOKEN"
AFTER_JOB_ENV = "FLASH_GRPO_BACKEND_AFTER_JOB"
AFTER_JOB_POLICIES = ("offload", "keep", "shutdown")
IDLE_TIMEOUT_ENV = "FLASH_GRPO_IDLE_TIMEOUT"
DIST_BACKEND_ENV = "FLASH_GRPO_DIST_BACKEND"
NO_GRAD_SYNC_ENV = "FLASH_GRPO_TEST_DISABLE_GRAD_SYNC"
TEST_FAULT_ENV = "FLASH_GRPO_TEST_FAULT_PROMPT"
COMPILE_BACKEND_ENV = "FLASH_GRPO_COMPILE_BACKEND"

DEFAULT_STATE_DIR = "~/.cache/flash_grpo/backend"
DEFAULT_IDLE_TIMEOUT_S = 900.0


def model_override() -> str | None:
    """``FLASH_GRPO_MODEL``, or None when unset or empty."""
    return os.environ.get(MODEL_ENV) or None


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR)).expanduser()


def idle_timeout() -> float:
    """``FLASH_GRPO_IDLE_TIMEOUT`` in seconds (default 900); ``UserError`` naming it when it is no number > 0."""
    raw = os.environ.get(IDLE_TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_IDLE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise UserError(f"{IDLE_TIMEOUT_ENV}={raw!r}: give the idle timeout in seconds, a number > 0")
    return value


def backend_address() -> tuple[str, str] | None:
    """``(url, token)`` of a backend the user started by hand, or None. The token may be empty."""
    url = os.environ.get(BACKEND_URL_ENV)
    return (url, os.environ.get(BACKEND_TOKEN_ENV, "")) if url else None


def after_job_policy() -> str:
    """``FLASH_GRPO_BACKEND_AFTER_JOB`` (``offload`` when unset; an unknown value is refused)."""
    value = os.environ.get(AFTER_JOB_ENV) or AFTER_JOB_POLICIES[0]
    if value not in AFTER_JOB_POLICIES:
        raise ValueError(f"{AFTER_JOB_ENV}={value!r}: use one of {', '.join(AFTER_JOB_POLICIES)}")
    return value


def reward_token() -> str | None:
    return os.environ.get(REWARD_TOKEN_ENV)


def force_gloo() -> bool:
    return os.environ.get(DIST_BACKEND_ENV) == "gloo"


def grad_sync_disabled() -> bool:
    return os.environ.get(NO_GRAD_SYNC_ENV) == "1"


def test_fault_prompt() -> str | None:
    return os.environ.get(TEST_FAULT_ENV) or None


def compile_backend() -> str:
    """``FLASH_GRPO_COMPILE_BACKEND`` (``inductor`` when unset)."""
    return os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
