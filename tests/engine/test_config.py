"""The config: defaults, validation messages, presets, CLI and README generated from it."""

import argparse
import dataclasses

import pytest

from tests.support import ROOT
from trainer.engine.config import PRESETS, FlashGRPOConfig, add_cli_arguments, cli_overrides, markdown_reference
from trainer.errors import UserError


def test_every_field_has_a_default_and_help():
    for f in dataclasses.fields(FlashGRPOConfig):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
        assert len(f.metadata.get("help", "")) > 10, f.name
    FlashGRPOConfig().validate()


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid(name):
    cfg = FlashGRPOConfig.from_dict({}, preset=name)
    assert cfg.to_dict() == FlashGRPOConfig.from_dict(cfg.to_dict()).to_dict()


def test_flash_grpo_recipe_preset_matches_the_paper():
    cfg = FlashGRPOConfig.from_dict({}, preset="flash_grpo_wan2.1_1.3b")
    assert (cfg.height, cfg.width, cfg.num_frames, cfg.sampling_steps) == (480, 832, 81, 20)
    assert cfg.resolved_window() == (0, 10) and cfg.guidance_scale == 4.5 and cfg.shift == 3.0
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.learning_rate, cfg.weight_decay) == (16, 32.0, 1e-4, 1e-4)
    assert (cfg.clip_range, cfg.advantage_clip, cfg.kl_beta, cfg.group_size, cfg.ema_decay) == (1e-3, 5.0, 0.0, 8, 0.9)


def test_validation_names_the_field_and_the_allowed_values():
    with pytest.raises(UserError) as e:
        FlashGRPOConfig.from_dict({"strategy": "fast", "height": 100, "group_size": 1})
    msg = str(e.value)
    assert "strategy='fast'" in msg and "flash, flow_grpo, dance, mixgrpo" in msg
    assert "height=100" in msg and "multiple of 16" in msg and "group_size=1" in msg


def test_unknown_field_suggests_the_right_one():
    with pytest.raises(UserError, match="did you mean 'iterations'"):
        FlashGRPOConfig.from_dict({"itertions": 3})
    with pytest.raises(UserError, match="unknown preset"):
        FlashGRPOConfig.from_dict({}, preset="nope")


def test_types_are_coerced_or_rejected_by_name():
    cfg = FlashGRPOConfig.from_dict({"iterations": "7", "iso_temporal": "false", "learning_rate": "0.01",
                                     "rewards": '[{"name": "brightness"}]'})
    assert cfg.iterations == 7 and cfg.iso_temporal is False and cfg.learning_rate == 0.01
    with pytest.raises(UserError, match="iterations"):
        FlashGRPOConfig.from_dict({"iterations": "many"})
    with pytest.raises(UserError, match="window_start"):
        FlashGRPOConfig.from_dict({"window_start": 8, "window_end": 4})


def test_cli_flags_are_generated_from_the_fields():
    ap = argparse.ArgumentParser()
    add_cli_arguments(ap)
    args = ap.parse_args(["--group-size", "6", "--noise-level", "null", "--strategy", "dance"])
    over = cli_overrides(args)
    assert over == {"group_size": "6", "noise_level": None, "strategy": "dance"}
    assert FlashGRPOConfig.from_dict(over).group_size == 6
    assert len([a for a in ap._actions if a.dest in FlashGRPOConfig.field_names()]) == len(FlashGRPOConfig.field_names())


def test_readme_config_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    assert markdown_reference() in readme, "regenerate the README table with: python -m trainer.engine.config"


def test_strategy_choices_defaults_and_readme_table_come_from_the_registry():
    from trainer.engine.strategies import STRATEGIES, markdown_table

    field = {f.name: f for f in dataclasses.fields(FlashGRPOConfig)}
    assert field["strategy"].metadata["choices"] == tuple(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        cfg = FlashGRPOConfig.from_dict({"strategy": name})
        assert cfg.resolved_noise_schedule() == strategy.noise_schedule
        assert cfg.resolved_shared_noise() == strategy.shared_noise
        assert cfg.resolved_rectification() == strategy.rectification
        assert name in field["strategy"].metadata["help"]
    assert FlashGRPOConfig.from_dict({"strategy": "flash", "rectification": False}).resolved_rectification() is False
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the README table with: python -m trainer.engine.strategies"


def test_the_recipe_never_tests_a_strategy_name():
    source = (ROOT / "trainer" / "engine" / "recipe.py").read_text()
    for name in ("flash", "flow_grpo", "dance", "mixgrpo"):
        assert f'"{name}"' not in source and f"'{name}'" not in source, name
