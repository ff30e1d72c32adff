"""Runs that fail or are refused leave the run directory as the user had it: a refused resume
keeps config.json, a numerical failure names its fields and writes no checkpoint that would
block a rerun, a foreign file is never taken for a checkpoint."""

import json

import pytest
import torch

from trainer.engine.checkpoint import load_checkpoint
from trainer.engine.config import FlashGRPOConfig
from trainer.engine.recipe import FlashGRPORecipe
from trainer.errors import UserError


def tiny(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), run_name="run", sample_videos=False, eval_prompts=0, iterations=1,
                sampling_steps=4, prompts_per_iteration=1, group_size=2)
    base.update(kw)
    return FlashGRPOConfig.from_dict(base, preset="tiny_demo")


def test_a_refused_resume_leaves_config_json_as_it_was(tmp_path):
    FlashGRPORecipe(tiny(tmp_path)).setup().train()
    config_json = tmp_path / "run" / "config.json"
    before = config_json.read_bytes()
    changed = tiny(tmp_path, iterations=2, learning_rate=0.5)
    with pytest.raises(UserError) as err:
        FlashGRPORecipe(changed, resume=True).setup()
    assert "learning_rate" in str(err.value) and str(config_json) in str(err.value)
    assert config_json.read_bytes() == before
    # the file the message points at resumes the run
    kept = FlashGRPOConfig.from_dict({**json.loads(before), "iterations": 2})
    assert FlashGRPORecipe(kept, resume=True).setup().train().iterations_done == 2


def test_a_refused_start_writes_nothing(tmp_path):
    FlashGRPORecipe(tiny(tmp_path)).setup().train()
    run = tmp_path / "run"
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="already holds a run"):
        FlashGRPORecipe(tiny(tmp_path, learning_rate=0.5)).setup()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_output_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(UserError) as err:
        FlashGRPORecipe(tiny(tmp_path / "out")).setup()
    assert str(tmp_path / "out") in str(err.value) and "output_dir" in str(err.value)
    assert (tmp_path / "out").read_text() == "not a folder"


def test_non_finite_latents_name_guidance_scale_and_do_not_block_a_rerun(tmp_path):
    with pytest.raises(UserError) as err:
        FlashGRPORecipe(tiny(tmp_path, guidance_scale=1e300)).setup().train()
    message = str(err.value)
    assert "NaN or Inf" in message and "guidance_scale" in message and "1e+300" in message
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()
    result = FlashGRPORecipe(tiny(tmp_path)).setup().train()  # the same run_name, the fix applied
    assert result.iterations_done == 1
    events = [json.loads(ln)["event"] for ln in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert events == ["start", "iteration", "done"]


def test_a_diverging_update_is_caught_before_its_step_lands(tmp_path):
    cfg = tiny(tmp_path, learning_rate=1e30, max_grad_norm=0, updates_per_iteration=2, iterations=3,
               checkpoint_every=1, ema_decay=0)
    recipe = FlashGRPORecipe(cfg).setup()
    with pytest.raises(UserError) as err:
        recipe.train()
    assert "learning_rate" in str(err.value) and "NaN or Inf" in str(err.value)
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pt"
    if ckpt.exists():  # whatever was checkpointed is finite: the state after a completed iteration
        state = load_checkpoint(ckpt)
        assert all(torch.isfinite(v).all() for v in state["lora"].values())
        assert state["iteration"] >= 1


def test_a_foreign_torch_file_is_not_taken_for_a_checkpoint(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "run" / "checkpoints" / "latest.pt")
    with pytest.raises(UserError) as err:
        FlashGRPORecipe(tiny(tmp_path), resume=True).setup()
    assert "not a Flash-GRPO checkpoint" in str(err.value) and "latest.pt" in str(err.value)
    assert not (tmp_path / "run" / "config.json").exists()


def test_after_a_failure_only_a_consistent_state_is_checkpointed(tmp_path):
    """An iteration that failed before its optimizer step leaves the weights of the last
    completed one: checkpointed. One that failed after a step (a later minibatch) does not:
    the checkpoint on disk stays, and the message says which iterations it lacks."""
    recipe = FlashGRPORecipe(tiny(tmp_path, iterations=2, checkpoint_every=1)).setup()
    recipe.train()
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pt"
    written = ckpt.read_bytes()
    recipe._stepped = True  # as after the first of two minibatches of iteration 3
    message = recipe._checkpoint_after_failure(3)
    assert ckpt.read_bytes() == written and load_checkpoint(ckpt)["iteration"] == 2
    assert "iteration 2" in message and "3" in message and str(ckpt) in message
    recipe._stepped = False  # failed before any step: the weights are those after iteration 3
    recipe._checkpoint_after_failure(3)
    assert load_checkpoint(ckpt)["iteration"] == 3
