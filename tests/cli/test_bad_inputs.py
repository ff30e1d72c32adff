"""Bad inputs a user can give the entry points, as real subprocesses: exit status 2, a message
naming the file or field (and the fix), no traceback, nothing the user had lost."""

import json

import pytest
import torch

from tests.support import run_cli
from trainer.engine.config import FlashGRPOConfig
from trainer.errors import UserError

TINY = ["--preset", "tiny_demo", "--iterations", "1", "--sample-videos", "false", "--eval-prompts", "0",
        "--sampling-steps", "4"]


def refused(proc, *named):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for text in named:
        assert text in proc.stderr, (text, proc.stderr[-2000:])


def test_binary_prompt_file(tmp_path):
    (tmp_path / "p.txt").write_bytes(bytes(range(256)) * 4)
    refused(run_cli("trainer.train", *TINY, "--output-dir", str(tmp_path), "--prompt-file", str(tmp_path / "p.txt")),
            str(tmp_path / "p.txt"), "not UTF-8 text")


def test_malformed_model_index(tmp_path):
    model = tmp_path / "wan"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        (model / sub).mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "WanPipeline",')
    refused(run_cli("trainer.train", *TINY, "--output-dir", str(tmp_path), "--model", str(model)),
            str(model / "model_index.json"), "not a readable JSON file")


def test_a_foreign_torch_file_given_to_resume(tmp_path):
    run = tmp_path / "theirs"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(3)}, "step": 10}, run / "checkpoints" / "latest.pt")
    refused(run_cli("trainer.train", *TINY, "--output-dir", str(tmp_path), "--resume", str(run)),
            "not a Flash-GRPO checkpoint", str(run / "checkpoints" / "latest.pt"))
    refused(run_cli("trainer.train", *TINY, "--resume", str(run / "checkpoints" / "latest.pt")),
            "give the run directory")
    assert not (run / "config.json").exists()


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("mine")
    refused(run_cli("trainer.train", *TINY, "--output-dir", str(tmp_path / "runs")), str(tmp_path / "runs"),
            "output_dir")
    assert (tmp_path / "runs").read_text() == "mine"


def test_schedule_refuses_a_negative_shift():
    refused(run_cli("trainer.schedule", "--shift", "-3"), "--shift", "> 0")
    refused(run_cli("trainer.schedule", "--noise-level", "0"), "--noise-level")
    assert run_cli("trainer.schedule", "--shift", "3").returncode == 0


def test_near_miss_field_names_get_a_did_you_mean(tmp_path):
    refused(run_cli("trainer.run", "workflows/demo.json", "--set", "iteratons=1"), "did you mean 'iterations'")
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        FlashGRPOConfig.from_dict({"learning_rte": 1e-3})


def test_mixgrpo_fields_are_checked_only_with_mixgrpo():
    assert FlashGRPOConfig.from_dict({"strategy": "flash", "sampling_steps": 2}).sampling_steps == 2
    with pytest.raises(UserError, match="mix_window_size"):
        FlashGRPOConfig.from_dict({"strategy": "mixgrpo", "sampling_steps": 2})
    with pytest.raises(UserError, match="max_sequence_length"):
        FlashGRPOConfig.from_dict({"max_sequence_length": 0})


def test_a_numerical_failure_through_the_backend_names_its_field_and_blocks_no_rerun(tmp_path):
    common = ["trainer.run", "workflows/demo.json", "--set", f"output_dir={tmp_path}", "--set", "run_name=nan",
              "--set", "iterations=1", "--set", "eval_prompts=0", "--set", "sample_videos=false"]
    proc = run_cli(*common, "--set", "guidance_scale=1e300")
    refused(proc, "guidance_scale", "NaN or Inf")
    assert "Checkpoints written so far" not in proc.stderr
    assert not (tmp_path / "nan" / "checkpoints").exists()
    again = run_cli(*common)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "nan" / "config.json").read_text())["guidance_scale"] != 1e300


def test_a_refused_resume_through_the_backend_keeps_the_runs_config(tmp_path):
    common = ["trainer.run", "workflows/demo.json", "--set", f"output_dir={tmp_path}", "--set", "run_name=keep",
              "--set", "iterations=1", "--set", "eval_prompts=0", "--set", "sample_videos=false"]
    first = run_cli(*common)
    assert first.returncode == 0, first.stderr[-2000:]
    config_json = tmp_path / "keep" / "config.json"
    before = config_json.read_bytes()
    proc = run_cli(*common, "--set", "iterations=2", "--set", "learning_rate=0.5", "--resume")
    refused(proc, "learning_rate", str(config_json))
    assert config_json.read_bytes() == before


@pytest.mark.parametrize("field, value", [("prompts", [1, 2]), ("adam_betas", [2, 3]), ("weight_decay", -1.0)])
def test_values_the_optimizer_or_tokenizer_would_reject_are_named_by_the_config(field, value):
    with pytest.raises(UserError, match=field):
        FlashGRPOConfig.from_dict({field: value})


def test_detach_without_a_backend_is_refused():
    proc = run_cli("trainer.run", "workflows/demo.json", "--detach", "--in-process")
    assert proc.returncode == 2 and "--detach" in proc.stderr and "Traceback" not in proc.stderr


def test_an_output_dir_that_cannot_be_written(tmp_path):
    refused(run_cli("trainer.train", *TINY, "--output-dir", "/proc/flash_grpo_runs"), "/proc/flash_grpo_runs",
            "output_dir")
