"""Helpers shared by the tests: the repository root and running ``python -m ...`` as a subprocess."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600, env=None):
    """Run ``python -m <args>`` from the repo root as a real subprocess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
