import os
import sys
import tempfile

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Backends started by tests live in a private state dir (never a user's running backend).
os.environ["FLASH_GRPO_STATE_DIR"] = tempfile.mkdtemp(prefix="flash_grpo_test_backend_")
os.environ.pop("FLASH_GRPO_BACKEND_URL", None)


@pytest.fixture(scope="session")
def tiny_pipe():
    """One tiny Wan pipeline for read-only use (tests that train build their own)."""
    from trainer.engine.models import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="session", autouse=True)
def _stop_test_backends():
    """Shut down the backends that tests started through a host's runner (the headless host,
    or the pack's own copy of it), any other backend left in the tests' state dir, and then
    every backend this test process launched that still runs, whatever the tests' outcome.
    (Backends started by the tests' subprocesses stop with those: they watch their client.)"""
    yield
    from trainer.graph import host
    from trainer.service import client

    try:
        host.current().close()
        pack_host = sys.modules.get("flash_grpo_pack.trainer.graph.host")
        if pack_host is not None:
            pack_host.current().close()
        info = client._read_state(client.state_dir())
        if info:
            client.BackendClient(info["url"], info["token"]).shutdown()
    finally:
        client.stop_launched()
        pack_client = sys.modules.get("flash_grpo_pack.trainer.service.client")
        if pack_client is not None:
            pack_client.stop_launched()
