"""``python -m bench.iteration`` as a real subprocess: the JSON's structure and predicted numbers.

No timing is asserted (the machine is shared); only that every figure exists and is positive, and
that the predicted ratios are exactly the ratios of ``expected_passes``.
"""

import json
import math

from tests.support import run_cli
from trainer.engine.config import FlashGRPOConfig
from trainer.engine.strategies import expected_passes

SMALL = ["--model", "tiny", "--repeats", "1", "--steps", "6", "--group-size", "2", "--prompts", "1"]
EXPECTED_ROWS = {
    "flash": ("flash", False),
    "flash_shared": ("flash", True),
    "flash_cheap": ("flash", True),
    "flow_grpo": ("flow_grpo", None),
    "mixgrpo": ("mixgrpo", None),
}


def test_bench_iteration_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench.iteration", *SMALL, "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ours/diffusers" in proc.stdout and "transf.-only" in proc.stdout
    data = json.loads(out.read_text())

    assert data["machine"]["cpu"] and data["machine"]["cores"] >= 1 and data["machine"]["torch"]
    s = data["settings"]
    assert (s["repeats"], s["steps"], s["group_size"], s["prompts"]) == (1, 6, 2, 1)

    rows = data["strategies"]
    assert set(rows) == set(EXPECTED_ROWS)
    configs = {name: FlashGRPOConfig.from_dict(r["config"]) for name, r in rows.items()}
    ref = expected_passes(configs["flash"])
    for name, r in rows.items():
        cfg = configs[name]
        strategy, shared = EXPECTED_ROWS[name]
        assert cfg.strategy == strategy and cfg.shared_noise == shared
        assert (cfg.sampling_steps, cfg.group_size, cfg.prompts_per_iteration) == (6, 2, 1)
        assert cfg.guidance_scale == 4.5
        for phase in ("rollout", "reward", "update", "total"):
            assert r["seconds"][phase] > 0, (name, phase)
            assert len(r["samples"][phase]) == 1
        passes = expected_passes(cfg)
        assert r["expected_passes"] == passes
        for key in ("total", "rollout", "update"):
            assert math.isclose(r["predicted_ratio"][key], passes[key] / ref[key]), (name, key)
        assert math.isclose(r["predicted_ratio"]["transformer_only"], passes["total"] / ref["total"])
        for key in ("total", "rollout", "update", "transformer_only"):
            assert r["measured_ratio"][key] > 0
    for key in ("total", "rollout", "update", "transformer_only"):
        assert rows["flash"]["predicted_ratio"][key] == 1.0
    # the pass count is what the rollout really did: without shared noise every sample runs T steps
    # (mixgrpo shares its noise: its count is a mean over the window's positions)
    for name in ("flash", "flow_grpo"):
        assert rows[name]["rollout_passes_counted"] == [rows[name]["expected_passes"]["rollout"]]

    # how many times cheaper than the full trajectory: the same ratios, inverted against flow_grpo
    full = data["vs_full_trajectory"]
    assert set(full) == set(EXPECTED_ROWS) and "cheaper than flow_grpo" in proc.stdout
    for name, r in full.items():
        assert math.isclose(r["transformer_only_predicted"],
                            rows["flow_grpo"]["predicted_ratio"]["total"] / rows[name]["predicted_ratio"]["total"])
        assert math.isclose(r["transformer_only_measured"], rows["flow_grpo"]["measured_ratio"]["transformer_only"]
                            / rows[name]["measured_ratio"]["transformer_only"])
    assert full["flow_grpo"]["total_measured"] == 1.0
    assert full["flash_cheap"]["transformer_only_predicted"] > full["flash"]["transformer_only_predicted"] > 1

    d = data["vs_diffusers"]
    assert d["ours_s"] > 0 and d["diffusers_s"] > 0 and d["ratio"] > 0
    assert math.isclose(d["ratio"], d["ours_s"] / d["diffusers_s"])
    assert (d["videos"], d["steps"], d["guidance_scale"]) == (2, 6, 4.5)
    assert len(d["samples"]["ours"]) == len(d["samples"]["diffusers"]) == 1
