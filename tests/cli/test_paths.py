"""Relative paths mean the user's working directory, also when the backend runs elsewhere."""

import json
import os
import subprocess
import sys

from tests.support import ROOT
from trainer.engine.config import FlashGRPOConfig

PROMPTS = ["a small red circle on the left moves up slowly on a black background",
           "a large blue square on the right moves down fast on a white background"]


def run_from(cwd, *args, timeout=600):
    """``python -m <args>`` with ``cwd`` as the working directory (the pack importable from anywhere)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_config_paths_are_made_absolute_against_the_given_folder(tmp_path):
    cfg = FlashGRPOConfig.from_dict({"prompt_file": "p.txt", "output_dir": "out", "model": "models/wan"})
    done = cfg.with_absolute_paths(tmp_path)
    assert done.prompt_file == str(tmp_path / "p.txt") and done.output_dir == str(tmp_path / "out")
    assert done.model == str(tmp_path / "models" / "wan")
    assert FlashGRPOConfig.from_dict({"model": "toy"}).with_absolute_paths(tmp_path).model == "toy"
    assert FlashGRPOConfig.from_dict({"output_dir": "~/runs"}).with_absolute_paths(tmp_path).output_dir == \
        os.path.expanduser("~/runs")
    assert cfg.prompt_file == "p.txt"  # a copy: the original is unchanged


def test_a_workflow_run_from_another_folder_reads_and_writes_there(tmp_path):
    """Through the backend (which runs in the pack's folder): the prompt file and the output
    folder are the user's, and the run directory is printed absolute."""
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    proc = run_from(tmp_path, "trainer.run", str(ROOT / "workflows" / "demo.json"), "--set", "prompt_file=p.txt",
                    "--set", "output_dir=out", "--set", "run_name=rel", "--set", "iterations=1",
                    "--set", "eval_prompts=0", "--set", "sample_videos=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "out" / "rel"
    assert f"run directory: {run_dir}" in proc.stdout
    assert (run_dir / "lora" / "rel.safetensors").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["prompt_file"] == str(tmp_path / "p.txt") and config["output_dir"] == str(tmp_path / "out")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert {p for e in events if e["event"] == "iteration" for p in e["prompts"]} <= set(PROMPTS)
    assert not (ROOT / "out").exists()


def test_trainer_train_from_another_folder_prints_absolute_paths(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"iterations": 1, "sample_videos": False, "eval_prompts": 0,
                                                   "sampling_steps": 4, "output_dir": "runs", "run_name": "t"}))
    proc = run_from(tmp_path, "trainer.train", "--preset", "tiny_demo", "--config", "cfg.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"run directory: {tmp_path / 'runs' / 't'}" in proc.stdout
    assert (tmp_path / "runs" / "t" / "lora" / "t.safetensors").is_file()
    missing = run_from(tmp_path, "trainer.train", "--config", "nope.json")
    assert missing.returncode == 2 and str(tmp_path / "nope.json") in missing.stderr
