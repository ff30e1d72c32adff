"""The equal-compute alignment benchmark (bench/alignment.py) on the tiny model, in-process."""

import json

import torch

BUDGET = 600  # FE: 3 flash iterations (208 FE each) against 2 flow_grpo iterations (592 FE each)


def test_alignment_benchmark_equal_compute(tmp_path, capsys):
    from bench import alignment

    threads = torch.get_num_threads()
    try:
        result = alignment.main([
            "--preset", "tiny_demo", "--model", "tiny", "--reward", "brightness",
            "--strategies", "flash,flow_grpo", "--seeds", "0,1", "--budget", str(BUDGET),
            "--eval-every", "300", "--jobs", "1", "--threads", "1", "--out", str(tmp_path),
            "--prompts", "preset", "--train-prompts", "4", "--val-prompts", "2", "--test-prompts", "2",
            "--lrs", "2e-2", "--snr-batches", "3", "--set", "lora_init=kaiming",
        ])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out

    # outputs
    assert (tmp_path / "alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "curves.json").read_text())
    md = (tmp_path / "alignment.md").read_text()
    for text in (md, printed):
        assert "| strategy | lr | iterations |" in text and "| flash |" in text and "| flow_grpo |" in text
        assert "python -m bench.alignment --preset tiny_demo" in text
    assert data["summary"] == json.loads(json.dumps(result["summary"]))
    runs = {(r["strategy"], r["seed"]): r for r in data["runs"]}
    assert set(runs) == {("flash", 0), ("flash", 1), ("flow_grpo", 0), ("flow_grpo", 1)}

    start_heldout = set()
    for (strategy, seed), run in runs.items():
        its = run["iterations"]
        assert run["config"]["strategy"] == strategy and run["config"]["seed"] == seed
        # the budget: the last iteration started below it, the run ended at or above it
        assert run["final_compute"] >= BUDGET
        assert its[-1]["compute_start"] < BUDGET
        assert its[0]["compute_start"] == 0
        assert all(a["compute_end"] == b["compute_start"] for a, b in zip(its, its[1:]))
        assert its[-1]["compute_end"] == run["final_compute"]
        # the counted FE agree with the recipe's own counters (CFG = 2 rows, backward = 2 forwards;
        # flash and flow_grpo without shared noise: one input state per trained transition)
        for it in its:
            assert it["rollout_fe"] == 2 * it["forward_rows"]
            assert it["update_fe"] == 3 * 2 * it["transitions"]
        # held-out evaluations at compute 0 and at the end
        held = run["heldout"]
        assert held[0]["compute"] == 0 and held[0]["iterations"] == 0
        assert held[-1]["compute"] == run["final_compute"] and held[-1]["iterations"] == len(its)
        assert len(held[0]["scores"]) == data["settings"]["eval_prompts"]
        start_heldout.add(round(held[0]["mean"], 6))
    # every run starts from the same base model and the same held-out prompts and noise
    assert len(start_heldout) == 1
    # equal compute: the cheap strategy does more iterations
    for seed in (0, 1):
        assert len(runs[("flash", seed)]["iterations"]) > len(runs[("flow_grpo", seed)]["iterations"])
    # the seed changes the rollouts
    assert runs[("flash", 0)]["iterations"][0]["reward_mean"] != runs[("flash", 1)]["iterations"][0]["reward_mean"]
    rows = {r["strategy"]: r for r in data["summary"]}
    assert rows["flash"]["iterations"] > rows["flow_grpo"]["iterations"]
    # the held-out records count optimizer steps; the gradient measurement ran for each arm
    assert all(r["heldout"][-1]["optimizer_steps"] >= len(r["iterations"]) for r in data["runs"])
    assert set(data["gradients"]) == {"flash", "flow_grpo"}
    assert all(-1.0 <= g["mean_cosine"] <= 1.0 and g["batches"] >= 2 for g in data["gradients"].values())


def test_settings_expand_to_their_options_and_explicit_ones_win():
    import pytest

    from bench import alignment

    args = alignment.parse_args(["--signal"])
    assert (args.preset, args.model, args.reward, args.budget) == ("tiny_demo", "tiny", "brightness", 8000)
    assert args.lrs == [5e-3, 1e-2, 2e-2, 4e-2, 8e-2] and args.seeds == [0, 1, 2, 3, 4]
    assert args.out == "bench/results/alignment/signal"
    # 32 noise dimensions: latents 4 x 2 x 2 x 2 at 5 frames of 16x16
    assert {k: args.overrides[k] for k in ("height", "width", "num_frames")} == {"height": 16, "width": 16, "num_frames": 5}
    # an option given explicitly replaces the setting's; --set items are added after the setting's
    args = alignment.parse_args(["--signal", "--lrs", "1e-2", "--set", "kl_beta=0.1", "--set", "iterations=3"])
    assert args.lrs == [1e-2] and args.overrides["kl_beta"] == 0.1 and args.overrides["iterations"] == 3
    assert args.overrides["group_size"] == 8
    reduced = alignment.parse_args(["--reduced"])
    assert reduced.lrs == [6e-4] and reduced.model == "toy" and reduced.overrides == {}
    with pytest.raises(SystemExit):
        alignment.parse_args(["--signal", "--reduced"])


def test_shared_initial_noise_makes_flash_batch_gradients_agree(tmp_path):
    """In the --signal setting (32 noise dimensions), the policy gradients of independent batches
    agree far more when a group shares its initial noise: the rewards of a group then differ only
    through the one SDE step that gets the credit. Measured over seeds 0-7 with 4 batches (2-core
    AMD EPYC, 1 thread; 32 or 8 training prompts): mean cosine 0.41-0.53 shared, -0.07-0.17
    independent, gap >= 0.27."""
    from bench import alignment

    threads = torch.get_num_threads()
    plan = alignment.Plan(alignment.parse_args(["--signal", "--train-prompts", "8", "--val-prompts", "1",
                                                "--test-prompts", "1", "--out", str(tmp_path)]))
    try:
        for seed in (0, 1):
            cosine = {arm: alignment.gradient_snr(plan.task(arm, seed, 1e-2, "snr", "test", batches=4))["mean_cosine"]
                      for arm in ("flash", "flash_shared")}
            assert cosine["flash_shared"] > 0.3, cosine
            assert cosine["flash_shared"] - cosine["flash"] > 0.15, cosine
    finally:
        torch.set_num_threads(threads)
