"""A remote reward server that goes down mid-run: clear error, checkpoint kept, resume completes."""

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support import ROOT
from trainer.engine.checkpoint import load_checkpoint
from trainer.engine.config import FlashGRPOConfig
from trainer.engine.recipe import FlashGRPORecipe
from trainer.errors import UserError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "trainer.rewards.serve", "--reward", "brightness",
                             "--port", str(port), "--token", "secret-token"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("reward server did not start")


def test_reward_server_down_mid_run_keeps_a_resumable_checkpoint(tmp_path):
    port = _free_port()
    cfg = FlashGRPOConfig.from_dict({
        "output_dir": str(tmp_path), "run_name": "remote", "iterations": 5, "checkpoint_every": 100,
        "sample_videos": False, "eval_prompts": 0,
        "rewards": [{"name": "remote", "args": {"url": f"http://127.0.0.1:{port}", "token": "secret-token",
                                                 "retries": 1, "backoff": 0.05, "timeout": 20}}],
    }, preset="tiny_demo")
    server = _serve(port)
    try:
        recipe = FlashGRPORecipe(cfg).setup()

        def on_event(event):
            if event.get("event") == "iteration" and event["iteration"] == 1:
                server.kill()
                server.wait()

        with pytest.raises(UserError) as err:
            recipe.train(on_event=on_event)
        message = str(err.value)
        assert f"127.0.0.1:{port}" in message and "resume" in message.lower()
        assert load_checkpoint(tmp_path / "remote" / "checkpoints" / "latest.pt")["iteration"] == 2
    finally:
        server.kill()

    server = _serve(port)
    try:
        resumed = FlashGRPORecipe(cfg, run_dir=tmp_path / "remote", resume=True).setup().train()
        assert resumed.iterations_done == 5 and not resumed.cancelled
    finally:
        server.kill()
