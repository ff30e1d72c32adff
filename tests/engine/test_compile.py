"""``compile_blocks``: torch.compile of each transformer block, on the CPU.

Inductor needs minutes on a 2-core machine for the tiny model's graphs (about 110 s for one
forward, backward and no-grad pass), so the run here compiles with ``aot_eager``
(``FLASH_GRPO_COMPILE_BACKEND``): dynamo traces every block and AOT autograd builds its forward
and backward graphs, which run eagerly. Inductor's own code generation is not exercised here.
"""

import pytest

from trainer.engine.config import FlashGRPOConfig
from trainer.engine.recipe import FlashGRPORecipe
from trainer.errors import UserError


def run(tmp_path, compiled: bool) -> list[dict]:
    cfg = FlashGRPOConfig.from_dict(dict(iterations=2, sample_videos=False, eval_prompts=0, sampling_steps=6,
                                         kl_beta=0.1, compile_blocks=compiled, output_dir=str(tmp_path),
                                         run_name=f"compiled_{compiled}"), preset="tiny_demo")
    recipe = FlashGRPORecipe(cfg).setup()
    recipe.train()
    return [e for e in recipe.events.read() if e["event"] == "iteration"]


def test_compiled_blocks_train_as_the_plain_ones(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setenv("FLASH_GRPO_COMPILE_BACKEND", "aot_eager")
    plain = run(tmp_path, False)
    counters.clear()
    compiled = run(tmp_path, True)
    assert counters["stats"]["unique_graphs"] >= 2  # the blocks were compiled (with and without the LoRA: KL)
    for a, b in zip(plain, compiled):
        assert b["reward_mean"] == pytest.approx(a["reward_mean"], rel=1e-4, abs=1e-6)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-7)
        assert b["kl"] == pytest.approx(a["kl"], rel=1e-3, abs=1e-9)
    assert plain[1]["loss"] != 0.0  # a real update


def test_compile_blocks_is_refused_where_it_cannot_run(tmp_path, monkeypatch):
    monkeypatch.delenv("FLASH_GRPO_COMPILE_BACKEND", raising=False)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    cfg = FlashGRPOConfig.from_dict(dict(compile_blocks=True, output_dir=str(tmp_path)), preset="tiny_demo")
    with pytest.raises(UserError, match="compile_blocks=true cannot be used here: torch.compile needs a C\\+\\+ "
                                        "compiler on the CPU"):
        FlashGRPORecipe(cfg).setup()
