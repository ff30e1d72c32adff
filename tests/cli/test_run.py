"""The headless runner end to end, as real subprocesses: demo, errors, kill and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest
import torch
from safetensors import safe_open

from tests.support import ROOT, run_cli

# The demo's held-out gain on seeds 0, 1, 2 through the backend (README, "Two commands"): +0.168,
# +0.144, +0.134, no held-out object lost by training; in-process at 1 thread the same, with AVX2
# kernels only the same (+0.1437 on seed 1), and seeds 3 and 4 +0.098 and +0.284, none lost. A CPU
# with other floating-point results trains another LoRA, so the margins: every seed gains more
# than 0.05, the mean of the three gains is above 0.1, and training loses at most one of a seed's
# 16 held-out objects.
DEMO_MIN_MEAN_GAIN = 0.1
DEMO_MIN_SEED_GAIN = 0.05
DEMO_MAX_LOST = 1

KEY = re.compile(r"^diffusion_model\.blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)\.(lora_A\.weight|lora_B\.weight|alpha)$")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = run_cli("trainer.run", "workflows/demo.json", "--set", f"output_dir={out}", "--set", "run_name=demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "demo", proc


def test_demo_writes_a_complete_run_directory(demo_run):
    run_dir, proc = demo_run
    assert "LoRA:" in proc.stdout
    for rel in ["config.json", "events.jsonl", "summary.json", "reward_curve.png", "samples/before_after.png",
                "samples/before_00.mp4", "samples/after_00.mp4", "checkpoints/latest.pt", "lora/demo.safetensors"]:
        assert (run_dir / rel).is_file() and (run_dir / rel).stat().st_size > 0, rel
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    its = [e for e in events if e["event"] == "iteration"]
    iterations = json.loads((run_dir / "config.json").read_text())["iterations"]
    assert [e["iteration"] for e in its] == list(range(iterations))
    for field in ["reward_mean", "reward_std", "rewards", "loss", "clip_frac", "approx_kl", "grad_norm",
                  "steps", "rect_weights", "seconds"]:
        assert field in its[0], field
    assert set(its[0]["seconds"]) == {"rollout", "reward", "update", "total"}
    # 4 optimizer steps per rollout: the ratio is exactly 1 on the first minibatch (tests/engine),
    # and the later ones stay inside the PPO clip range.
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["updates_per_iteration"] == 4 and 0 < its[0]["ratio_max_dev"] < cfg["clip_range"]
    # the printed training reward: means of the first and the last fifth of the iterations
    summary, k = json.loads((run_dir / "summary.json").read_text()), iterations // 5
    assert summary["reward_iterations"] == k
    first, last = (sum(e["reward_mean"] for e in part) / k for part in (its[:k], its[-k:]))
    assert summary["reward_first"] == pytest.approx(first) and summary["reward_last"] == pytest.approx(last)
    assert f"training reward (mean of the first/last {k} iterations): {first:.4f} -> {last:.4f}" in proc.stdout


def _held_out_gain(run_dir: Path) -> float:
    rows = json.loads((run_dir / "summary.json").read_text())["held_out"]
    return sum(r["gain"] for r in rows) / len(rows)


def test_demo_keeps_the_held_out_objects_and_shows_what_it_evaluated(demo_run):
    """The held-out "after" videos, read from the mp4s a person would watch, still show one object
    of the caption's colour on the caption's background wherever the "before" video did (all but
    at most one of 16); summary.json says per prompt what was evaluated and what the reward read."""
    import imageio.v3 as iio

    from trainer.toy import world as toy_world

    run_dir, proc = demo_run
    rows = json.loads((run_dir / "summary.json").read_text())["held_out"]
    assert len(rows) == 16 and all({"prompt", "before", "after", "gain", "after_readings"} <= set(r) for r in rows)
    kept = [r["after_readings"]["object_kept"] for r in rows]
    assert len(_lost_by_training(rows)) <= DEMO_MAX_LOST, rows

    def kept_in_mp4s(tag):
        videos = [iio.imread(run_dir / "samples" / f"{tag}_{i:02d}.mp4") for i in range(len(rows))]
        return toy_world.objects_kept(torch.from_numpy(numpy.stack(videos)).float() / 255, [r["prompt"] for r in rows])

    before, after = kept_in_mp4s("before"), kept_in_mp4s("after")
    assert sum(b and not a for b, a in zip(before, after)) <= DEMO_MAX_LOST, [r["after_readings"] for r in rows]
    assert "held-out reward (16 prompts)" in proc.stdout
    lost, missing = len(_lost_by_training(rows)), sum(not r["before_readings"]["object_kept"] for r in rows)
    assert (f"objects kept after training: {kept.count(True)}/16 (lost by training: {lost}, "
            f"missing before it: {missing})") in proc.stdout
    # how far the objects move downward, as asked: printed as the mean of summary.json's readings
    pairs = [(r["before_readings"]["motion_along"], r["after_readings"]["motion_along"]) for r in rows]
    pairs = [(b, a) for b, a in pairs if b is not None and a is not None]
    printed = re.search(r"held-out motion along the asked direction \((\d+) videos, fraction of the side per frame\): "
                        r"([-+][0-9.]+) -> ([-+][0-9.]+)", proc.stdout)
    assert printed and int(printed.group(1)) == len(pairs) > 0, proc.stdout
    for value, column in ((printed.group(2), 0), (printed.group(3), 1)):
        assert float(value) == pytest.approx(sum(p[column] for p in pairs) / len(pairs), abs=6e-5)


def test_demo_aligns_the_held_out_prompts_on_every_seed(demo_run, tmp_path):
    """Seeds 0, 1 and 2 (1 and 2 run here, side by side): the held-out reward rises by more than 0.05
    on every seed and by more than 0.1 on average, and training loses at most one of a seed's 16
    held-out objects. The held-out reward is each prompt's mean over eval_samples=4, on prompts the
    training never saw."""
    run_dir, _ = demo_run
    procs = [subprocess.Popen([sys.executable, "-m", "trainer.run", "workflows/demo.json", "--in-process",
                               "--set", f"output_dir={tmp_path}", "--set", f"run_name=s{seed}", "--set", f"seed={seed}"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for seed in (1, 2)]
    try:
        errors = [p.communicate(timeout=900)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for e in errors]
    dirs = [run_dir, tmp_path / "s1", tmp_path / "s2"]
    gains = [_held_out_gain(d) for d in dirs]
    assert min(gains) > DEMO_MIN_SEED_GAIN and sum(gains) / 3 > DEMO_MIN_MEAN_GAIN, gains
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        assert summary["before"]["eval_samples"] == summary["after"]["eval_samples"] == 4
        lost = _lost_by_training(summary["held_out"])
        assert len(lost) <= DEMO_MAX_LOST, (d, lost)


def _lost_by_training(rows: list[dict]) -> list[str]:
    """Held-out prompts whose first sample showed the caption's object before training and not after."""
    return [r["prompt"] for r in rows if r["before_readings"]["object_kept"] and not r["after_readings"]["object_kept"]]


def test_demo_videos_are_real_mp4(demo_run):
    import imageio.v3 as iio

    run_dir, _ = demo_run
    frames = iio.imread(run_dir / "samples" / "after_00.mp4")
    assert frames.shape == (9, 64, 64, 3)


def test_demo_lora_file_format_and_metadata(demo_run):
    run_dir, _ = demo_run
    path = run_dir / "lora" / "demo.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
        alphas = [f.get_tensor(k) for k in keys if k.endswith(".alpha")]
    assert keys and all(KEY.match(k) for k in keys)
    assert all(a.ndim == 0 and float(a) == 8.0 for a in alphas)
    assert meta["strategy"] == "flash" and meta["iterations"] == str(json.loads(meta["config"])["iterations"]) and meta["trainer"] == "flash-grpo"
    assert len(meta["base_model_hash"]) == 16
    assert json.loads(meta["config"])["lora_rank"] == 4
    assert json.loads(meta["rewards"])[0]["name"]


def test_demo_lora_loads_in_diffusers_and_changes_the_output(demo_run):
    from diffusers.utils import logging as dlogging

    from trainer.engine.models import load_pipeline

    run_dir, _ = demo_run
    pipe = load_pipeline("toy")
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([700.0])
    with torch.no_grad():
        before = pipe.transformer(x, t, emb, return_dict=False)[0]
    dlogging.set_verbosity_warning()
    import io
    import logging

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger("diffusers").addHandler(handler)
    try:
        pipe.load_lora_weights(str(run_dir / "lora" / "demo.safetensors"))
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert "unexpected" not in buf.getvalue().lower() and "not loaded" not in buf.getvalue().lower()
    with torch.no_grad():
        after = pipe.transformer(x, t, emb, return_dict=False)[0]
    assert not torch.allclose(before, after)


def test_align_without_weights_names_the_missing_folder():
    proc = run_cli("trainer.run", "workflows/align.json", env={"FLASH_GRPO_MODEL": ""})
    assert proc.returncode == 2
    assert "models/Wan2.1-T2V-1.3B-Diffusers" in proc.stderr
    assert "Traceback" not in proc.stderr and "--model" in proc.stderr


def test_model_flag_and_env_override_the_workflow_path(tmp_path):
    proc = run_cli("trainer.run", "workflows/align.json", "--model", str(tmp_path / "mine"))
    assert proc.returncode == 2 and str(tmp_path / "mine") in proc.stderr
    proc = run_cli("trainer.run", "workflows/align.json", env={"FLASH_GRPO_MODEL": str(tmp_path / "env")})
    assert proc.returncode == 2 and str(tmp_path / "env") in proc.stderr


def test_bad_workflows_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = run_cli("trainer.run", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "line 1" in proc.stderr
    proc = run_cli("trainer.run", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "missing.json" in proc.stderr
    proc = run_cli("trainer.run", "workflows/demo.json", "--set", "strategy=fast", "--set", f"output_dir={tmp_path}")
    assert proc.returncode == 2 and "strategy" in proc.stderr and "flash" in proc.stderr
    proc = run_cli("trainer.run", "workflows/demo.json", "--set", "itertions=3")
    assert proc.returncode == 2 and "iterations" in proc.stderr


def test_api_format_workflow_runs(tmp_path):
    from trainer.graph.node_types import NODE_CLASS_MAPPINGS
    from trainer.graph.workflow import load_workflow

    api = load_workflow(ROOT / "workflows" / "demo.json", NODE_CLASS_MAPPINGS)
    path = tmp_path / "demo_api.json"
    path.write_text(json.dumps(api))
    proc = run_cli("trainer.run", str(path), "--set", "iterations=2", "--set", f"output_dir={tmp_path}",
                   "--set", "run_name=api", "--set", "sample_videos=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "api" / "lora" / "api.safetensors").is_file()


# ---- kill and resume ----------------------------------------------------------------------------
def _train_args(out, name, extra=()):
    return [sys.executable, "-m", "trainer.run", "workflows/demo.json", "--set", f"output_dir={out}",
            "--set", f"run_name={name}", "--set", "iterations=8", "--set", "checkpoint_every=2",
            "--set", "ema_decay=0.9", "--set", "sample_videos=false", "--set", "prompts_per_iteration=2",
            "--set", "group_size=4", "--in-process", *extra]


def _lora(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _iterations_logged(events: Path) -> int:
    if not events.exists():
        return 0
    return sum(1 for line in events.read_text().splitlines() if '"event": "iteration"' in line)


def test_killed_run_resumes_to_the_same_lora(tmp_path):
    ref = subprocess.run(_train_args(tmp_path, "ref"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen(_train_args(tmp_path, "killed"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    events = tmp_path / "killed" / "events.jsonl"
    deadline = time.time() + 300
    while _iterations_logged(events) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside the next iteration
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _iterations_logged(events) < 8, "the run finished before it could be killed"
    assert (tmp_path / "killed" / "checkpoints" / "latest.pt").exists()

    again = subprocess.run(_train_args(tmp_path, "killed", ["--resume"]), cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = _lora(tmp_path / "ref" / "lora" / "ref.safetensors"), _lora(tmp_path / "killed" / "lora" / "killed.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(ln)["iteration"] for ln in events.read_text().splitlines() if '"iteration"' in ln
              and json.loads(ln)["event"] == "iteration"]
    assert logged == list(range(8))  # no duplicated or missing iteration after the resume


def test_resume_without_checkpoint_and_rerun_into_existing_dir_are_refused(tmp_path):
    proc = run_cli("trainer.run", "workflows/demo.json", "--set", f"output_dir={tmp_path}", "--set", "run_name=none",
                   "--resume")
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr
