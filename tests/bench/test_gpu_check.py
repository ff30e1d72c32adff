"""``bench.gpu_check``: refuses without CUDA; its dry run on the CPU goes through every phase."""

import json

import torch

from bench import gpu_check


def test_refuses_clearly_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--dry-run" in err


def test_dry_run_measures_every_phase_and_writes_json(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--steps", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["dry_run"] and len(data["cases"]) == 2
    for case in data["cases"]:
        for micro in (1, 2):
            m = case[f"micro_batch_{micro}"]["measured"]
            assert m["rollout_step_s"] > 0 and m["update_s"] > 0 and not m["errors"]
        assert case["vae_decode"]["tiled_s"] > 0 and case["vae_decode"]["untiled_s"] > 0
    first = data["cases"][0]
    assert first["sdpa"]["seconds"]["default"] > 0 and first["sdpa"]["ratio_to_default"]["default"] == 1.0
    assert first["ratio_check"]["max_abs_ratio_minus_1"] < 1e-6  # float32: the ratio is exactly 1
    text = capsys.readouterr().out
    assert "| update, micro-batch 2 |" in text and "VAE decode" in text and "|ratio - 1|" in text
    e2e = data["end_to_end"]
    assert "error" not in e2e and e2e["seconds"]["update"] > 0 and e2e["ratio_max_dev"] < 1e-3
    assert "End-to-end recipe iteration" in text
