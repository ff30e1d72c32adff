"""bench.evaluate_lora on a tiny run: it reproduces the run's own held-out before/after and scores
the training prompts the same way."""

import json

import pytest

from trainer.engine.config import FlashGRPOConfig
from trainer.engine.recipe import FlashGRPORecipe
from trainer.errors import UserError


def test_evaluate_lora_reproduces_the_runs_held_out_scores_and_scores_its_training_prompts(tmp_path, capsys):
    from bench import evaluate_lora

    cfg = FlashGRPOConfig.from_dict(dict(
        output_dir=str(tmp_path), run_name="r", iterations=2, sample_videos=False, eval_prompts=2, eval_samples=2,
        learning_rate=0.2, prompts=["a red cat", "a blue dog", "a green car", "a white boat", "a black bird"],
        rewards=[{"name": "brightness"}]), preset="tiny_demo")
    result = FlashGRPORecipe(cfg).setup().train()
    summary = json.loads((result.run_dir / "summary.json").read_text())

    out = evaluate_lora.main([str(result.run_dir), "--samples", "2"])  # --threads 0: torch's own count kept
    held, train = out["sets"]["held_out"], out["sets"]["train"]
    assert (held["prompts"], train["prompts"]) == (2, 3)
    # the same draws as the run's own evaluation: its before (base) and after (LoRA) means
    before = [row["before"] for row in summary["held_out"]]
    after = [row["after"] for row in summary["held_out"]]
    assert held["base"]["mean"] == pytest.approx(sum(before) / 2, abs=1e-6)
    assert held["lora"]["mean"] == pytest.approx(sum(after) / 2, abs=1e-6)
    assert held["lora"]["mean"] != pytest.approx(held["base"]["mean"], abs=1e-6)  # the LoRA moved the samples
    assert held["gain"] == pytest.approx(held["lora"]["mean"] - held["base"]["mean"], abs=1e-9)
    assert len(train["base"]["per_draw"]) == 2 and train["base"]["objects_kept"] is None  # brightness reads no objects
    assert json.loads((result.run_dir / "evaluation.json").read_text()) == json.loads(json.dumps(out))
    assert "| held-out | 2 |" in capsys.readouterr().out

    # the LoRA at the first K steps only: K = every step is the LoRA; K = 1 neither it nor the base
    every = evaluate_lora.evaluate(result.run_dir, samples=2, lora_steps=10)["sets"]["held_out"]["lora"]["mean"]
    assert every == pytest.approx(held["lora"]["mean"], abs=1e-6)
    first = evaluate_lora.evaluate(result.run_dir, samples=2, lora_steps=1)["sets"]["held_out"]
    assert first["lora"]["mean"] != pytest.approx(held["lora"]["mean"], abs=1e-6)
    assert first["lora"]["mean"] != pytest.approx(held["base"]["mean"], abs=1e-6)
    assert first["base"]["mean"] == pytest.approx(held["base"]["mean"], abs=1e-6)
    with pytest.raises(UserError, match="--lora-steps 11: must be 0 .* to 10"):
        evaluate_lora.evaluate(result.run_dir, lora_steps=11)

    with pytest.raises(UserError, match="no config.json"):
        evaluate_lora.evaluate(tmp_path / "nothing")
    (result.run_dir / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="no exported LoRA"):
        evaluate_lora.evaluate(result.run_dir)


def test_table_gives_the_objects_kept_over_all_draws_and_on_the_first():
    from bench import evaluate_lora

    def side(mean, kept):
        return {"mean": mean, "per_draw": [mean], "objects_kept": sum(kept) / len(kept), "objects_kept_per_draw": kept}

    result = {"sets": {"held_out": {"prompts": 16, "base": side(0.394, [1.0, 1.0]), "lora": side(0.651, [0.875, 0.9375]),
                                    "gain": 0.257, "gain_std_over_draws": 0.1}}}
    row = evaluate_lora.table(result).splitlines()[-1]
    assert row == "| held-out | 16 | 0.394 | 0.651 | +0.257 | 0.100 | 1.00 → 0.91 (first draw: 16 → 14 of 16) |"
