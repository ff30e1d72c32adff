"""Time one training iteration per strategy, and our rollout against diffusers' ``WanPipeline``.

    python -m bench.iteration [--repeats N] [--json PATH] [--steps T] [--group-size G] [--prompts B]

Method
------
Everything runs in one process on the built-in tiny Wan2.1 model (``tiny_demo`` preset: 9 frames,
64x64, CFG 4.5, float32 on CPU), with the same settings for every strategy. torch uses one thread
by default (``--threads``): on cores shared with other processes, two threads spin-wait on each
other and single calls become 10-30x slower at random.

1. **Strategies.** ``flash``, ``flash`` with ``shared_noise=True`` (the ODE prefix before the SDE
   step ``k`` computed once per group), ``flow_grpo`` (every step SDE, train ~all steps) and
   ``mixgrpo`` (SDE and training in a window of 4 steps). Each gets its own recipe on a freshly
   built tiny pipeline (same seed, so the same weights; setup puts a LoRA on it). Each runs one
   warm-up iteration (index 0), then ``--repeats`` iterations with indices 1, 2, ...; strategies
   are interleaved (round-robin, order reversed on every other round) so that load from other
   processes hits all of them alike. Reported times are medians of ``recipe.run_iteration``'s
   own phase timings: ``rollout`` (plan + sampling), ``reward`` (VAE decode + score +
   advantages) and ``update`` (forward/backward of the trained transitions + optimizer step).

2. **Rollout vs diffusers.** On another fresh tiny pipeline (no LoRA), for the ``B*G`` videos of
   one iteration: our ODE-only rollout (``trainer.engine.rollout.rollout`` with an all-ODE ``StepPlan``)
   against ``WanPipeline.__call__(..., output_type="latent")``. Both get the same precomputed
   prompt/negative embeddings (text encoding excluded), the same initial latents, T steps, CFG
   4.5; neither decodes. Measurements alternate ours/diffusers (order swapped every round) and the
   medians are compared. diffusers steps with UniPC and calls the transformer twice per step
   (cond, uncond); we take Euler steps with cond and uncond in one batched call, so the final
   latents differ but the transformer work is the same.

How to read the ratios
----------------------
``x flash`` columns divide a strategy's median seconds by ``flash``'s; ``pred`` is the same ratio
of the transformer passes per sample that ``trainer.engine.strategies.expected_passes`` counts (CFG = 2
passes, backward = 2 forwards; for shared-noise flash the mean ``k`` of the window is used, while
the measurement sees the ``k`` actually drawn in each iteration). The reward phase (decode +
score) is not a transformer pass, so it lies outside the prediction; it costs about the same for
every strategy (same number of videos) and pulls the measured total ratio toward 1. Compare
``transformer-only`` (rollout + update) with ``pred total`` instead. ``total s`` is the median of
the per-iteration totals (not the sum of the phase medians). On the tiny model each transformer
call is cheap and fixed costs (Python per row and step, the optimizer step) weigh a lot, so
measured ratios sit closer to 1 than the pass counts; on a real model, where the
transformer dominates, they approach the prediction. ``ours / diffusers`` below 1 means our
rollout loop is faster than diffusers' sampling loop for the same work (target <= 1.05).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from trainer.algo.sde import sigma_grid  # noqa: E402
from trainer.engine.config import FlashGRPOConfig  # noqa: E402
from trainer.engine.data import DEFAULT_PROMPTS  # noqa: E402
from trainer.engine.models import build_tiny_pipeline  # noqa: E402
from trainer.engine.recipe import FlashGRPORecipe, sample_noise  # noqa: E402
from trainer.engine.rollout import Conditioning, rollout  # noqa: E402
from trainer.engine.strategies import StepPlan, expected_passes  # noqa: E402

PRESET = "tiny_demo"
GUIDANCE = 4.5
# (row name, config overrides); the first one is the reference of every ratio.
STRATEGIES = [
    ("flash", {"strategy": "flash", "shared_noise": False}),
    ("flash_shared", {"strategy": "flash", "shared_noise": True}),
    # shared noise and a few-step second-order solver tail after the SDE step (cheap rollouts)
    ("flash_cheap", {"strategy": "flash", "shared_noise": True, "ode_tail_steps": 3}),
    ("flow_grpo", {"strategy": "flow_grpo"}),
    ("mixgrpo", {"strategy": "mixgrpo"}),
]
PHASES = ("rollout", "reward", "update")


def machine_info() -> dict:
    """CPU model, core counts and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import diffusers

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


MODEL_SIZES = {
    # the built-in tiny model: ~40k parameters, per-call overheads dominate
    "tiny": {"video": {}, "transformer": None},
    # 4 layers of width 128 at 17x128x128: big enough that compute dominates on a CPU, so the
    # measured ratios can be compared with what counting passes predicts
    "small": {"video": {"height": 128, "width": 128, "num_frames": 17},
              "transformer": dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32,
                                  in_channels=4, out_channels=4, text_dim=32, freq_dim=64, ffn_dim=512,
                                  num_layers=4, rope_max_seq_len=64)},
}
MODEL_SIZE = "tiny"  # set from --model


def make_config(overrides: dict, steps: int, group_size: int, prompts: int, output_dir: str) -> FlashGRPOConfig:
    """The config every measurement uses (``--model`` size), plus a strategy's ``overrides``."""
    return FlashGRPOConfig.from_dict({
        "sampling_steps": steps, "group_size": group_size, "prompts_per_iteration": prompts,
        "guidance_scale": GUIDANCE, "sample_videos": False, "eval_prompts": 2, "iterations": 10_000,
        "output_dir": output_dir, **MODEL_SIZES[MODEL_SIZE]["video"], **overrides,
    }, preset=PRESET)


def build_pipeline(cfg: FlashGRPOConfig):
    """A fresh pipeline of the ``--model`` size (the tiny stack, with a larger transformer for small)."""
    pipe = build_tiny_pipeline(seed=cfg.seed, shift=cfg.shift)
    spec = MODEL_SIZES[MODEL_SIZE]["transformer"]
    if spec is not None:
        from diffusers import WanTransformer3DModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            pipe.transformer = WanTransformer3DModel(**spec)
    return pipe


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


# ------------------------------------------------------------------------------ strategies ----
def bench_strategies(args, workdir: str) -> dict:
    """Warm up, then time ``args.repeats`` interleaved iterations of every strategy."""
    recipes, configs = {}, {}
    for name, overrides in STRATEGIES:
        cfg = make_config(overrides, args.steps, args.group_size, args.prompts, workdir)
        pipe = build_pipeline(cfg)  # fresh: setup adds a LoRA
        recipes[name] = FlashGRPORecipe(cfg, run_dir=Path(workdir) / name, pipeline=pipe).setup()
        configs[name] = cfg
    for recipe in recipes.values():  # warm-up, iteration 0
        recipe.run_iteration(0)

    samples = {name: {p: [] for p in PHASES + ("total",)} for name in recipes}
    rows = {name: [] for name in recipes}
    names = list(recipes)
    for rep in range(args.repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            event = recipes[name].run_iteration(rep + 1)
            for p in PHASES + ("total",):
                samples[name][p].append(event["seconds"][p])
            rows[name].append(event["forward_rows"])

    out = {}
    for name, cfg in configs.items():
        n = cfg.group_size * cfg.prompts_per_iteration
        cfg_mult = 2 if cfg.guidance_scale != 1.0 else 1
        out[name] = {
            "config": cfg.to_dict(),
            "seconds": {p: median(v) for p, v in samples[name].items()},
            "samples": samples[name],
            "expected_passes": expected_passes(cfg),
            # transformer passes per sample that the rollouts actually made (forward rows x CFG / N)
            "rollout_passes_counted": [r * cfg_mult / n for r in rows[name]],
        }
    ref = out[names[0]]
    for r in out.values():
        s, rs, e, re_ = r["seconds"], ref["seconds"], r["expected_passes"], ref["expected_passes"]
        r["measured_ratio"] = {
            "total": ratio(s["total"], rs["total"]),
            "rollout": ratio(s["rollout"], rs["rollout"]),
            "update": ratio(s["update"], rs["update"]),
            "transformer_only": ratio(s["rollout"] + s["update"], rs["rollout"] + rs["update"]),
        }
        r["predicted_ratio"] = {
            "total": ratio(e["total"], re_["total"]),
            "rollout": ratio(e["rollout"], re_["rollout"]),
            "update": ratio(e["update"], re_["update"]),
            "transformer_only": ratio(e["total"], re_["total"]),
        }
    return out


# ------------------------------------------------------------------------ vs diffusers ----
def bench_vs_diffusers(args) -> dict:
    """Median seconds of our ODE-only rollout and of ``WanPipeline`` for the same B*G videos."""
    cfg = make_config({}, args.steps, args.group_size, args.prompts, tempfile.gettempdir())
    pipe = build_pipeline(cfg)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer.eval()
    n, T = cfg.group_size * cfg.prompts_per_iteration, cfg.sampling_steps
    prompts = [DEFAULT_PROMPTS[b % len(DEFAULT_PROMPTS)] for b in range(cfg.prompts_per_iteration)
               for _ in range(cfg.group_size)]
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(
            prompts, negative_prompt=[cfg.negative_prompt] * n, do_classifier_free_guidance=True,
            max_sequence_length=cfg.max_sequence_length, device=torch.device("cpu"),
        )
    conditioning = Conditioning(cond, uncond, cfg.guidance_scale)
    shape = (
        transformer.config.in_channels,
        (cfg.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
        cfg.height // pipe.vae_scale_factor_spatial,
        cfg.width // pipe.vae_scale_factor_spatial,
    )
    noise = torch.stack([sample_noise(cfg.seed, 0, i, -1, shape) for i in range(n)])
    sigmas = sigma_grid(T, cfg.shift).float()
    plan = StepPlan(sde=torch.zeros(n, T, dtype=torch.bool), train=torch.zeros(n, T, dtype=torch.bool),
                    group_steps=None)

    def ours() -> torch.Tensor:
        return rollout(transformer, plan, sigmas, torch.zeros(T), conditioning, shape,
                       lambda i, step, s: noise[i]).latents

    def theirs() -> torch.Tensor:
        return pipe(
            prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=T,
            guidance_scale=cfg.guidance_scale, height=cfg.height, width=cfg.width,
            num_frames=cfg.num_frames, latents=noise.clone(), output_type="latent", return_dict=False,
        )[0]

    def timed(fn) -> float:
        t0 = time.perf_counter()
        latents = fn()
        elapsed = time.perf_counter() - t0
        assert latents.shape == (n, *shape), latents.shape
        return elapsed

    timed(ours), timed(theirs)  # warm-up
    times = {"ours": [], "diffusers": []}
    for rep in range(args.repeats):
        pair = [("ours", ours), ("diffusers", theirs)]
        for key, fn in (pair if rep % 2 == 0 else pair[::-1]):
            times[key].append(timed(fn))
    ours_s, theirs_s = median(times["ours"]), median(times["diffusers"])
    return {
        "videos": n, "steps": T, "guidance_scale": cfg.guidance_scale,
        "frames": cfg.num_frames, "height": cfg.height, "width": cfg.width,
        "ours_s": ours_s, "diffusers_s": theirs_s, "ratio": ratio(ours_s, theirs_s), "target": 1.05,
        "samples": times,
    }


FULL_TRAJECTORY = "flow_grpo"


def against_full_trajectory(strategies: dict) -> dict:
    """How many times cheaper each strategy's iteration is than ``flow_grpo``'s (full trajectory):
    ``flow_grpo / strategy`` of the transformer-only time (rollout + update), measured and
    predicted by the pass count, and of the whole iteration (reward phase included)."""
    full = strategies[FULL_TRAJECTORY]
    out = {}
    for name, r in strategies.items():
        mr, pr = r["measured_ratio"], r["predicted_ratio"]
        out[name] = {
            "transformer_only_measured": ratio(full["measured_ratio"]["transformer_only"], mr["transformer_only"]),
            "transformer_only_predicted": ratio(full["predicted_ratio"]["total"], pr["total"]),
            "total_measured": ratio(full["measured_ratio"]["total"], mr["total"]),
        }
    return out


# ------------------------------------------------------------------------------ output ----
def print_report(result: dict) -> None:
    m, s = result["machine"], result["settings"]
    print(f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable, torch threads "
          f"{m['torch_threads']}), torch {m['torch']}, diffusers {m['diffusers']}, python {m['python']}")
    print(f"settings: {s['model']} Wan2.1 ({s['frames']}x{s['height']}x{s['width']}), "
          f"B={s['prompts']} prompts x G={s['group_size']}, T={s['steps']} steps, "
          f"CFG {s['guidance_scale']}, {s['frames']} frames {s['height']}x{s['width']}, "
          f"median of {s['repeats']} iterations after 1 warm-up\n")
    head = (f"{'strategy':<13}{'rollout s':>10}{'reward s':>10}{'update s':>10}{'total s':>9}"
            f"{'total x flash':>16}{'rollout x':>14}{'update x':>14}{'transf.-only x':>16}")
    sub = f"{'':<52}" + "".join(f"{'meas / pred':>{w}}" for w in (16, 14, 14, 16))
    print(head)
    print(sub)
    print("-" * len(head))
    for name, r in result["strategies"].items():
        sec, mr, pr = r["seconds"], r["measured_ratio"], r["predicted_ratio"]
        cells = "".join(f"{mr[k]:>{w - 7}.2f} / {pr[k]:<4.2f}" for k, w in
                        (("total", 16), ("rollout", 14), ("update", 14), ("transformer_only", 16)))
        print(f"{name:<13}{sec['rollout']:>10.3f}{sec['reward']:>10.3f}{sec['update']:>10.3f}"
              f"{sec['total']:>9.3f}{cells}")
    print(f"\nx cheaper than {FULL_TRAJECTORY} (full trajectory = 1): transformer-only measured / predicted, "
          "whole iteration measured")
    for name, r in result["vs_full_trajectory"].items():
        print(f"  {name:<13}{r['transformer_only_measured']:>6.2f} / {r['transformer_only_predicted']:<6.2f}"
              f"{r['total_measured']:>8.2f}")
    print("\npred = ratio of transformer passes per sample from trainer.engine.strategies.expected_passes.")
    print("The reward phase (VAE decode + score) is not a transformer pass and is outside the "
          "prediction:\n'transf.-only' = measured (rollout + update) against the predicted total.")
    d = result["vs_diffusers"]
    verdict = "ok" if d["ratio"] <= d["target"] else "ABOVE TARGET"
    print(f"\nODE rollout vs diffusers WanPipeline ({d['videos']} videos, {d['steps']} steps, CFG "
          f"{d['guidance_scale']}, latents only, precomputed embeddings, median of {s['repeats']}):")
    print(f"  ours {d['ours_s']:.3f} s   diffusers {d['diffusers_s']:.3f} s   ours/diffusers "
          f"{d['ratio']:.2f}  (target <= {d['target']:.2f}: {verdict})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.iteration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per strategy (median)")
    parser.add_argument("--json", default="", help="write every figure to this JSON file")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps T")
    parser.add_argument("--group-size", type=int, default=4, help="videos G per prompt")
    parser.add_argument("--prompts", type=int, default=2, help="prompts B per iteration")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on shared cores more threads oversubscribe "
                             "them and timings vary by 10x; 0 = torch's default)")
    parser.add_argument("--model", choices=list(MODEL_SIZES), default="small",
                        help="tiny: the built-in model; small: a 4-layer width-128 transformer at 17x128x128 "
                             "where compute, not per-call overhead, dominates")
    args = parser.parse_args(argv)
    global MODEL_SIZE
    MODEL_SIZE = args.model
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    result = {"machine": machine_info()}
    cfg = make_config({}, args.steps, args.group_size, args.prompts, tempfile.gettempdir())
    result["settings"] = {
        "preset": PRESET, "model": args.model, "repeats": args.repeats, "steps": args.steps, "group_size": args.group_size,
        "prompts": args.prompts, "guidance_scale": cfg.guidance_scale, "frames": cfg.num_frames,
        "height": cfg.height, "width": cfg.width, "reference": STRATEGIES[0][0],
        "torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-iteration-") as workdir:
        result["strategies"] = bench_strategies(args, workdir)
    result["vs_full_trajectory"] = against_full_trajectory(result["strategies"])
    result["vs_diffusers"] = bench_vs_diffusers(args)
    print_report(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
