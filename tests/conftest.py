import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Backends started by tests live in a private state dir (never a user's running backend).
os.environ["FLASH_GRPO_STATE_DIR"] = tempfile.mkdtemp(prefix="flash_grpo_test_backend_")
os.environ.pop("FLASH_GRPO_BACKEND_URL", None)
os.environ.pop("FLASH_GRPO_IN_PROCESS", None)


@pytest.fixture(scope="session")
def tiny_pipe():
    """One tiny Wan pipeline for read-only use (tests that train build their own)."""
    from trainer.models import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


def run_cli(*args, timeout=600, env=None):
    """Run ``python -m <args>`` from the repo root as a real subprocess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="session", autouse=True)
def _stop_test_backends():
    """Shut down a backend that in-process tests (through trainer.jobs) started."""
    yield
    from trainer import jobs

    jobs.close()
