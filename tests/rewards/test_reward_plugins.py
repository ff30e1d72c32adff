"""Third-party rewards through the ``flash_grpo.rewards`` entry-point group, with a real installed
distribution: a package plus a ``.dist-info`` folder (what ``pip install`` writes) on sys.path."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLUGIN_MODULE = '''
"""A tiny third-party reward package used by the plugin tests."""
import torch
from trainer.rewards import Reward, RewardOutput


class Redness(Reward):
    """Mean red channel, 0..1."""
    input_format = "float"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def score(self, videos, prompts):
        return RewardOutput(videos[..., 0].mean(dim=(1, 2, 3)) * self.scale)


def make_constant(value: float = 0.5):
    """A factory entry point: returns a Reward instance."""
    class Constant(Reward):
        name = "constant_plugin"
        def score(self, videos, prompts):
            return torch.full((videos.shape[0],), float(value))
    return Constant()


NOT_A_REWARD = 42
'''

ENTRY_POINTS = """
[flash_grpo.rewards]
redness = fg_demo_plugin:Redness
constant_plugin = fg_demo_plugin:make_constant
broken_import = fg_missing_module_xyz:Thing
broken_attr = fg_demo_plugin:does_not_exist
not_a_reward = fg_demo_plugin:NOT_A_REWARD
brightness = fg_demo_plugin:Redness
"""


@pytest.fixture
def plugin_dir():
    """A folder holding an 'installed' distribution fg-demo-plugin with reward entry points."""
    with tempfile.TemporaryDirectory(prefix="fg_plugin_") as folder:
        yield _write_distribution(Path(folder))


def _write_distribution(site):
    (site / "fg_demo_plugin.py").write_text(PLUGIN_MODULE)
    dist = site / "fg_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fg-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (dist / "RECORD").write_text("")
    return site


def run_python(code, plugin_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_plugins_register_lazily_and_broken_ones_only_warn(plugin_dir):
    result = run_python("""
        import json, sys, torch
        import trainer.rewards as R
        lazy = "fg_demo_plugin" not in sys.modules and not R.plugins.loaded_plugins()
        # The first call (here a reward set, as the trainer makes) scans the entry points.
        reward_set = R.build_reward_set([{"name": "redness", "weight": 2.0}, "brightness"])
        video = torch.zeros(2, 3, 4, 4, 3); video[0, ..., 0] = 0.25
        red = R.build_reward("redness", scale=2.0)
        const = R.build_reward("constant_plugin", value=0.75)
        print(json.dumps({
            "lazy": lazy,
            "names": R.available_rewards(),
            "set": reward_set(video, ["", ""]).scores.tolist(),
            "red": red(video, ["", ""]).scores.tolist(),
            "red_name": red.name,
            "const": const(video, None).scores.tolist(),
            "brightness_is_builtin": type(R.build_reward("brightness")).__module__,
            "plugins": R.plugins.loaded_plugins(),
        }))
    """, plugin_dir)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["lazy"] is True
    assert {"redness", "constant_plugin", "brightness", "motion", "ocr", "remote"} <= set(out["names"])
    assert not {"broken_import", "broken_attr", "not_a_reward"} & set(out["names"])
    assert out["set"] == pytest.approx([2 * 0.25 + 0.299 * 0.25, 0.0])
    assert out["red"] == [0.5, 0.0] and out["red_name"] == "redness"
    assert out["const"] == [0.75, 0.75]
    assert out["brightness_is_builtin"] == "trainer.rewards.simple"  # built-ins win a name clash
    assert out["plugins"] == {"redness": "fg_demo_plugin:Redness", "constant_plugin": "fg_demo_plugin:make_constant"}
    # One warning per broken plugin, naming it; the built-ins and good plugins still work.
    for name in ("broken_import", "broken_attr", "not_a_reward", "brightness"):
        assert f"reward plugin '{name}'" in result.stderr, result.stderr
    assert "fg_missing_module_xyz" in result.stderr


def test_load_plugins_in_process_with_a_broken_entry_point(monkeypatch, caplog):
    """In-process: a plugin raising at import time is logged and skipped; force re-scans."""
    import importlib.metadata

    from trainer.rewards import available_rewards, base, plugins

    entry_points = [
        importlib.metadata.EntryPoint("explodes", "trainer.rewards._no_such_module:X", plugins.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("simple_again", "trainer.rewards.simple:Brightness", plugins.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(plugins, "_entry_points", lambda: entry_points)
    try:
        with caplog.at_level("WARNING", logger="trainer.rewards.plugins"):
            registered = plugins.load_plugins(force=True)
        assert registered.get("simple_again") == "trainer.rewards.simple:Brightness"
        assert "explodes" not in available_rewards()
        assert any("reward plugin 'explodes'" in r.getMessage() for r in caplog.records)
    finally:
        base._REGISTRY.pop("simple_again", None)
        plugins._plugins.pop("simple_again", None)


def test_workflows_cannot_name_import_paths():
    from trainer.errors import UserError
    from trainer.rewards import build_reward, build_reward_set

    for name in ("os:system", "my_pkg.rewards.Sharpness", "/tmp/reward.py"):
        with pytest.raises(UserError, match="looks like an import path"):
            build_reward(name)
        with pytest.raises(UserError, match="never load code"):
            build_reward_set([{"name": name, "weight": 1.0}])
    with pytest.raises(UserError, match="Unknown reward 'sharpnes'"):
        build_reward_set("sharpnes")
