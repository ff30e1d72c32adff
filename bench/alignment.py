"""Equal-compute alignment benchmark: reward against transformer compute, per GRPO strategy.

    python -m bench.alignment [--reduced] [--preset NAME] [--model M] [--reward SPEC]
                              [--strategies a,b,...] [--seeds 0,1,2] [--lrs a,b,c] [--budget N]
                              [--eval-every N] [--prompts toy|preset] [--fix a=b]
                              [--train-prompts N] [--val-prompts N] [--test-prompts N]
                              [--snr-batches K] [--jobs J] [--threads T] [--out DIR] [--set key=value ...]

    # the full benchmark: toy model, toy_size reward, 8 arms, lr sweep, 3 seeds (not yet timed)
    python -m bench.alignment
    # the reduced setting: no sweep, every arm at lr 6e-4 (22 minutes on a 2-core VM, 2 jobs x 1 thread)
    python -m bench.alignment --reduced
    # where a batch's gradient carries signal: tiny model at 5x16x16, brightness, lr sweep
    python -m bench.alignment --signal

Phases: a learning-rate sweep per arm on the validation prompts (``--lrs``, one seed
``--sweep-seed``; skipped when one rate is given), the gradient cosine of each arm at the base
model (``gradient_snr``), then the main runs of every arm and seed at the arm's best rate on the
held-out test prompts. Training, validation and test prompts are disjoint (``prompt_sets``).

Question answered
-----------------
Given the same amount of transformer compute, which strategy aligns the model further? Each
*arm* (a strategy, see ``ARMS``) trains a LoRA from the same base model with ``FlashGRPORecipe``
until it has spent ``--budget`` compute units, once per seed. Cheap iterations (``flash``: one
trained transition per sample) buy more iterations than expensive ones (``flow_grpo``: ~every
step trained), and the curves show whether that buys more reward.

Arms
----
All arms share one base config: ``--preset``, then ``--model`` / ``--reward`` /
``sample_videos=false``, the Gaussian LoRA init (``BASE_OVERRIDES``); so LoRA rank, group size,
prompts per iteration, sampling steps, guidance, KL weight, EMA... are identical, and the learning
rate is each arm's best from the sweep. Each arm then sets only the
fields that define its strategy (``ARMS``: strategy, the noise schedule and level the strategy
publishes - as the ``flow_grpo_wan2.1_1.3b`` preset does for flow_grpo - iso-temporal grouping,
rectification, shared initial noise); ``--set key=value`` is applied last, to every arm.

* ``flash``: Flash-GRPO (one SDE step k per prompt from the window, iso-temporal grouping,
  1/K(t) rectification, flash noise schedule).
* ``flash_no_iso`` / ``flash_no_rect``: the two ablations (each sample draws its own k /
  rectification off).
* ``flash_cheap``: ``flash_shared`` with a 3-step second-order solver tail after the SDE step
  (``ode_tail_steps``).
* ``flash_shared``: flash with the initial noise shared inside a group (not the paper's setting,
  which draws it per sample): the rewards of a group then differ only through the one SDE step,
  so the advantage is credited to the transition that caused it; and the ODE prefix and the update
  forward are computed once per group, so it is also cheaper per iteration.
* ``flow_grpo``: full trajectory, every step SDE, the first ``timestep_fraction`` trained,
  flow_grpo schedule (a = 0.7).
* ``dance``: DanceGRPO, every step SDE, a random ``dance_train_fraction`` of steps trained, shared
  initial noise per group, constant-eta schedule.
* ``mixgrpo``: SDE and training inside a sliding window of ``mix_window_size`` steps.

Seeds
-----
``--seeds`` sets the config ``seed`` of a run: rollout noise, step plans (k, dance subsets),
training-prompt order and the LoRA ``A`` init (``B`` is zero, so every run starts as the base
model). What does *not* change with the seed, so that runs are comparable: the base model
weights (built/loaded with the base config's seed), the prompt sets (toy captions drawn with
``CAPTION_SEED``, or the preset's prompts split with the base config's seed) and the held-out
sampling noise (``EVAL_SEED``).

Compute unit: forward-equivalents (FE)
--------------------------------------
One FE is one transformer forward pass over one latent video (one batch row) at the run's
resolution. It is counted exactly with a forward pre-hook on the recipe's transformer that adds
the batch size of every call during training iterations (evaluation is not counted):

* calls without gradients (the rollout, and the KL reference pass when ``kl_beta > 0``) cost
  1 FE per row;
* calls with gradients (the update's recomputation of ``log p``) cost ``1 + BACKWARD_FE`` = 3 FE
  per row: a backward pass is counted as two forwards, the convention of
  ``trainer.engine.strategies.expected_passes``.

Classifier-free guidance sends cond and uncond rows in one batch (``trainer.engine.rollout.
predict_velocity``), so each guided velocity costs 2 rows. In terms of what the recipe reports per
iteration: ``rollout FE = forward_rows x 2`` (``forward_rows`` counts a guided row once; shared
ODE prefixes of shared-noise groups are one row) and ``update FE = 3 x 2 x U`` where ``U`` is the
number of distinct input states of the trained transitions (``U = transitions`` unless
transitions share an input: dance's first step with shared noise, flash with shared noise), plus
2 x U for the KL reference. The hook counts ``U`` as it happens, per micro-batch. Not counted:
text encoding (cached), VAE decoding and reward scoring (the same per video for every arm), the
optimizer step, and recomputation by gradient checkpointing (a memory choice, not the algorithm).

Each arm runs iterations while its cumulative compute is below ``--budget``: the last iteration
starts below the budget and the run ends at or just above it. Wall-clock seconds of every
iteration (the recipe's own timings) are recorded too; with ``--jobs`` > 1 runs share the cores,
so compare wall seconds only between runs made alike.

Curves
------
* Training reward: the mean reward of an iteration's ``B x G`` rollout videos, plotted at the
  compute spent *before* the iteration (the policy that made the videos had that much training).
* Held-out reward: the reward of deterministic ODE samples (``recipe.sample``, ``eval_sampling_
  steps``, noise seed ``EVAL_SEED``) of the held-out prompts, with the EMA weights when EMA is on
  (the weights the recipe exports). Evaluated at compute 0, after the first iteration that crosses
  each multiple of ``--eval-every``, and at the end; each point is stored at the compute actually
  spent.
* For means over seeds, every run's curve is linearly interpolated onto a common grid of
  ``GRID_POINTS`` points over ``[0, budget]`` (held constant after a run's last point). The plot
  draws the seed mean per strategy and a min..max band over seeds; the training reward is
  smoothed with a centred moving average over ``SMOOTH_FRACTION`` of the budget.

Outputs (``--out``, default ``bench/results/alignment/``)
-----------------------------------------------------------
* ``curves.json``: settings, the arms' overrides, every run's raw series (per iteration: compute
  before/after, rollout/update FE, forward_rows, transitions, reward, seconds; per evaluation:
  compute, iterations done, per-prompt scores) and the summary rows.
* ``alignment.png``: training reward and held-out reward against compute.
* ``alignment.md``: the summary table (also printed) and the command that reproduces it.
* ``runs/<strategy>-seed<s>/``: each run's recipe directory (``config.json``, ``events.jsonl``).

Table columns: iterations done (mean over seeds); FE per iteration; final held-out reward, mean
± std over seeds (sample std; 0 with one seed); best held-out (each run's best evaluation, mean
over seeds); held-out gain = final minus the compute-0 evaluation (mean ± std); training reward
over the last 20% of the budget (iterations that start at >= 0.8 x budget, else the last
iteration; mean ± std over seeds); training wall seconds (sum of the iterations' totals, mean over
seeds, evaluation excluded).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer.engine.config import PRESETS, FlashGRPOConfig, parse_set_items  # noqa: E402
from trainer.engine.data import DEFAULT_PROMPTS, PromptSet, read_prompt_file  # noqa: E402
from trainer.errors import UserError  # noqa: E402
from trainer.toy import world as toy_world  # noqa: E402

# The defaults: the pretrained toy model on the toy_demo preset's 64 captions (16 held out), with
# the exact position reward.
DEFAULT_PRESET = "toy_demo"
DEFAULT_MODEL = "toy"
DEFAULT_REWARD = "toy_size"
DEFAULT_BUDGET = 24_000  # FE per run: ~27 flash iterations of 4 x 8 videos (896 FE each), ~8 flow_grpo
DEFAULT_LRS = "3e-4,6e-4,1.2e-3"
DEFAULT_OUT = "bench/results/alignment"
CAPTION_SEED = 7  # the toy captions of train / validation / test
# Shared by every arm on top of the preset: the published LoRA init; 8 videos decoded per call.
BASE_OVERRIDES = {"lora_init": "gaussian", "decode_batch_size": 8}
# --reduced: what it sets unless given (shorter runs, no sweep: every arm at lr 6e-4, with the
# Gaussian init about what the demo's 3e-3 is with peft's smaller default init)
REDUCED = ["--lrs", "6e-4", "--budget", "16000", "--test-prompts", "32", "--snr-batches", "4", "--seeds", "0,1,2"]
# --signal: a setting in which one batch's gradient carries signal, so that the arms can learn and
# be ranked. The random tiny model, whose batch gradients agree (flash with shared noise: cosine
# ~0.45) where the trained toy model's do not (~0 for every reward tried; README), at 5 frames of
# 16x16 to keep it fast; reward brightness (smooth, every prompt can gain). No KL, so nothing holds
# an arm back.
SIGNAL = ["--preset", "tiny_demo", "--model", "tiny", "--reward", "brightness", "--lrs", "5e-3,1e-2,2e-2,4e-2,8e-2",
          "--budget", "8000", "--seeds", "0,1,2,3,4", "--snr-batches", "6", "--out", f"{DEFAULT_OUT}/signal",
          "--set", "height=16", "--set", "width=16", "--set", "num_frames=5", "--set", "group_size=8",
          "--set", "prompts_per_iteration=4", "--set", "kl_beta=0"]
SETTINGS = {"--reduced": REDUCED, "--signal": SIGNAL}
GRAD_ITERATION_OFFSET = 10_000  # iteration indices of the gradient batches (streams apart from training)

EVAL_SEED = 0  # noise seed of the held-out ODE samples, the same for every run
BACKWARD_FE = 2  # a backward pass counts as this many forward passes
GRID_POINTS = 201  # common compute grid for averaging over seeds
SMOOTH_FRACTION = 0.1  # width of the training-reward moving average, as a fraction of the budget
LAST_FRACTION = 0.2  # "training reward over the last 20% of compute"

# Each arm: the config fields that define it, applied on top of the shared base config.
ARMS: dict[str, dict] = {
    "flash": {"strategy": "flash", "iso_temporal": True, "rectification": True,
              "noise_schedule": "flash", "noise_level": None, "shared_noise": None},
    "flash_no_iso": {"strategy": "flash", "iso_temporal": False, "rectification": True,
                     "noise_schedule": "flash", "noise_level": None, "shared_noise": None},
    "flash_no_rect": {"strategy": "flash", "iso_temporal": True, "rectification": False,
                      "noise_schedule": "flash", "noise_level": None, "shared_noise": None},
    # Not in the paper: flash with the group's initial noise shared (as dance does), so rewards in a
    # group differ only through the one SDE step (and its ODE prefix is computed once).
    "flash_shared": {"strategy": "flash", "iso_temporal": True, "rectification": True,
                     "noise_schedule": "flash", "noise_level": None, "shared_noise": True},
    # Beyond the paper: flash_shared whose trajectories finish after the SDE step in a few steps of
    # a second-order multistep solver (``ode_tail_steps``): the tail only makes the scored video.
    "flash_cheap": {"strategy": "flash", "iso_temporal": True, "rectification": True,
                    "noise_schedule": "flash", "noise_level": None, "shared_noise": True, "ode_tail_steps": 3},
    "flow_grpo": {"strategy": "flow_grpo", "rectification": False, "noise_schedule": "flow_grpo",
                  "noise_level": 0.7, "timestep_fraction": 0.99, "shared_noise": None},
    "dance": {"strategy": "dance", "rectification": False, "noise_schedule": "dance",
              "noise_level": None, "shared_noise": True},
    "mixgrpo": {"strategy": "mixgrpo", "rectification": False, "noise_schedule": "flow_grpo",
                "noise_level": None, "shared_noise": True},
}


# ------------------------------------------------------------------------------ config ----
def parse_reward_spec(spec: str) -> list:
    """``--reward``: a reward name (``brightness``), comma-separated names (weight 1 each), or
    JSON (a list or one dict of ``{name, weight, args}``, as the config's ``rewards`` field)."""
    spec = spec.strip()
    if spec.startswith(("[", "{")):
        value = json.loads(spec)
        return value if isinstance(value, list) else [value]
    return [{"name": name.strip(), "weight": 1.0} for name in spec.split(",") if name.strip()]


def base_values(args: argparse.Namespace) -> dict:
    """Config fields shared by every arm (on top of ``--preset``), before the arm's overrides."""
    return {"model": args.model, "rewards": parse_reward_spec(args.reward), "sample_videos": False,
            **BASE_OVERRIDES}


def arm_config(preset: str, base: dict, arm: str, seed: int, extra: dict, lr: float | None = None) -> FlashGRPOConfig:
    """The config of one run: preset, shared ``base``, the arm's overrides, ``--set``, seed, lr."""
    values = {**base, **ARMS[arm], **extra, "seed": seed}
    if lr is not None:
        values["learning_rate"] = lr
    return FlashGRPOConfig.from_dict(values, preset=preset)


def prompt_sets(args: argparse.Namespace, base_cfg: FlashGRPOConfig) -> dict[str, list[str]]:
    """Disjoint ``train`` / ``val`` / ``test`` prompts. ``--prompts toy``: distinct toy-world
    captions (seed ``CAPTION_SEED``) with the ``--fix`` attributes; ``--prompts preset``: the
    config's own prompts, shuffled with the base seed and split. ``UserError`` when too few."""
    need = args.train_prompts + args.val_prompts + args.test_prompts
    if args.prompts == "toy":
        fixed = dict(item.split("=", 1) for item in args.fix.split(",") if item.strip())
        pool = list(dict.fromkeys(toy_world.captions(20 * need, seed=CAPTION_SEED, **fixed)))
    else:
        prompts = (read_prompt_file(base_cfg.prompt_file) if base_cfg.prompt_file
                   else (list(base_cfg.prompts) or DEFAULT_PROMPTS))
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(base_cfg.seed)).tolist()
        pool = [prompts[i] for i in order]
    if len(pool) < need:
        raise UserError(f"{len(pool)} distinct prompts, but --train-prompts + --val-prompts + --test-prompts "
                        f"ask for {need}; ask for fewer.")
    test, val = pool[: args.test_prompts], pool[args.test_prompts: args.test_prompts + args.val_prompts]
    train = pool[args.test_prompts + args.val_prompts: need]
    return {"train": train, "val": val, "test": test}


def trained_attributes(rewards: list[dict]) -> set[str]:
    """The toy-world attributes the rewards score (``toy_caption``: all of them)."""
    names = {r["name"] for r in rewards}
    if "toy_caption" in names:
        return set(toy_world.ATTRIBUTES)
    return {n.removeprefix("toy_") for n in names if n.removeprefix("toy_") in toy_world.ATTRIBUTES}


# ------------------------------------------------------------------------------ one run ----
class ComputeCounter:
    """Counts transformer rows in forward-equivalents with a forward pre-hook (see the module doc).

    ``no_grad_rows``: rows of calls without gradients (rollout, KL reference), 1 FE each;
    ``grad_rows``: rows of calls with gradients (update), ``1 + BACKWARD_FE`` FE each. Counts only
    while ``active``.
    """

    def __init__(self, module: torch.nn.Module):
        self.active = False
        self.no_grad_rows = 0
        self.grad_rows = 0
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if not self.active:
            return None
        x = kwargs.get("hidden_states", args[0] if args else None)
        if torch.is_grad_enabled():
            self.grad_rows += int(x.shape[0])
        else:
            self.no_grad_rows += int(x.shape[0])
        return None

    def take(self) -> tuple[int, int]:
        """``(no_grad_rows, grad_rows)`` since the last call; resets both."""
        out = (self.no_grad_rows, self.grad_rows)
        self.no_grad_rows = self.grad_rows = 0
        return out

    def close(self) -> None:
        self._handle.remove()


def evaluate_heldout(recipe, watch) -> dict:
    """Deterministic ODE samples of the held-out prompts (EMA weights when EMA is on): the trained
    reward per prompt, and with ``watch`` (the toy world's ``toy_caption`` reward, or None) the
    probability of each caption attribute and whether each video kept its object."""
    with recipe.ema_weights():
        videos = recipe.sample(recipe.prompts.eval, seed=EVAL_SEED)
    out = {"scores": recipe.reward_fn(videos, recipe.prompts.eval).scores.tolist()}
    if watch is not None:
        seen = watch(videos, recipe.prompts.eval)
        out["attributes"] = {k: float(v.mean()) for k, v in seen.details.items() if k != "accuracy"}
        out["objects_kept"] = float(np.mean([r["object_kept"] for r in seen.readings]))
    return out


def _setup_run(task: dict):
    """A recipe for ``task`` on the base weights (the base config's seed), with the task's own
    training and held-out prompts; and the watch reward (``None`` without one)."""
    from trainer.engine.models import load_pipeline
    from trainer.engine.recipe import FlashGRPORecipe, resolve_device_and_dtype
    from trainer.rewards import build_reward_set

    if task.get("threads", 0) > 0:
        torch.set_num_threads(task["threads"])
    cfg = FlashGRPOConfig.from_dict(task["config"])
    run_dir = Path(task["run_dir"])
    if run_dir.exists():
        shutil.rmtree(run_dir)  # every run starts afresh
    _, dtype = resolve_device_and_dtype(cfg)
    pipe = load_pipeline(cfg.model, shift=cfg.shift, dtype=dtype, seed=task["base_seed"])
    recipe = FlashGRPORecipe(cfg, run_dir=run_dir, pipeline=pipe).setup(training=True)
    recipe.prompts = PromptSet(train=list(task["train_prompts"]), eval=list(task["eval_prompts"]), seed=cfg.seed)
    watch = build_reward_set([{"name": task["watch"]}]) if task.get("watch") else None
    return cfg, recipe, watch


def run_arm(task: dict) -> dict:
    """Train one (arm, seed) until ``task["budget"]`` FE are spent; return its raw series.

    ``task``: ``arm``, ``seed``, ``config`` (a ``FlashGRPOConfig`` dict), ``base_seed`` (base
    weights), ``train_prompts`` / ``eval_prompts``, ``watch`` (a reward name or ""), ``budget``,
    ``eval_every``, ``run_dir``, ``threads``, ``phase`` (``sweep`` or ``main``). Runs in the
    calling process (a worker of ``run_all`` or the main process with ``--jobs 1``).
    """
    t_start = time.perf_counter()
    cfg, recipe, watch = _setup_run(task)
    budget, eval_every = float(task["budget"]), float(task["eval_every"])
    counter = ComputeCounter(recipe.transformer)
    iterations, heldout = [], []
    eval_seconds = 0.0

    def evaluate(compute: float, done: int) -> None:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        seen = evaluate_heldout(recipe, watch)
        eval_seconds += time.perf_counter() - t0
        heldout.append({"compute": compute, "iterations": done, "optimizer_steps": recipe.optimizer_steps,
                        "mean": float(np.mean(seen["scores"])), **seen})

    compute = 0.0
    evaluate(compute, 0)
    next_eval = eval_every if eval_every > 0 else float("inf")
    it = 0
    while compute < budget:
        counter.active = True
        event = recipe.run_iteration(it)
        counter.active = False
        no_grad_rows, grad_rows = counter.take()
        cost = no_grad_rows + (1 + BACKWARD_FE) * grad_rows
        if cost <= 0:
            raise RuntimeError("an iteration counted no transformer work; is the hook on the right module?")
        recipe.events.write(event)
        iterations.append({
            "iteration": it, "compute_start": compute, "compute_end": compute + cost,
            "rollout_fe": no_grad_rows, "update_fe": (1 + BACKWARD_FE) * grad_rows,
            "forward_rows": event["forward_rows"], "transitions": event["transitions"],
            "optimizer_steps": recipe.optimizer_steps,
            "reward_mean": event["reward_mean"], "reward_std": event["reward_std"],
            "seconds": event["seconds"]["total"],
        })
        compute += cost
        it += 1
        if compute >= budget:
            evaluate(compute, it)
        elif compute >= next_eval:
            evaluate(compute, it)
            next_eval = (compute // eval_every + 1) * eval_every
    counter.close()
    return {
        "phase": task.get("phase", "main"), "strategy": task["arm"], "seed": task["seed"],
        "learning_rate": cfg.learning_rate, "run_dir": str(task["run_dir"]), "config": cfg.to_dict(),
        "iterations": iterations, "heldout": heldout, "final_compute": compute,
        "train_seconds": sum(r["seconds"] for r in iterations), "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - t_start,
    }


def gradient_snr(task: dict) -> dict:
    """The policy gradient of ``task["batches"]`` independent batches at the base model.

    Each batch is one iteration (rollout, rewards, advantages, update) whose optimizer step is
    undone afterwards (LoRA, optimizer, EMA restored), so every gradient is taken at the same
    weights; the config has ``updates_per_iteration = 1``, so the gradient is the whole batch's.
    With ``g_b = s + n_b`` (signal plus independent noise), the mean cosine between two batches'
    gradients estimates ``|s|^2 / (|s|^2 + E|n|^2)``: the share of a batch gradient that is
    signal; ``snr = cos / (1 - cos)``.
    """
    from trainer.engine import lora as lora_lib

    cfg, recipe, _ = _setup_run(task)
    params = dict(lora_lib.lora_parameters(recipe.transformer))
    saved = {n: p.detach().clone() for n, p in params.items()}
    optim = copy.deepcopy(recipe.optimizer.state_dict())
    grads = []
    for b in range(task["batches"]):
        recipe.run_iteration(GRAD_ITERATION_OFFSET + b)
        if recipe.optimizer_steps:  # a batch without any signal takes no step and has no gradient
            grads.append(torch.cat([p.grad.detach().flatten().double() for p in params.values()
                                    if p.grad is not None]))
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
                p.grad = None
        recipe.optimizer.load_state_dict(copy.deepcopy(optim))
        recipe.optimizer_steps = 0
    cosines = [float(torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=0))
               for a in range(len(grads)) for b in range(a + 1, len(grads))]
    cos = float(np.mean(cosines)) if cosines else float("nan")
    return {"strategy": task["arm"], "batches": len(grads), "mean_cosine": cos,
            "cosine_std": float(np.std(cosines)) if cosines else float("nan"),
            "snr": cos / (1.0 - cos) if cosines and cos < 1 else float("nan"),
            "grad_norm_mean": float(np.mean([float(g.norm()) for g in grads])) if grads else 0.0}


def _run_task(task: dict) -> dict:
    return gradient_snr(task) if task.get("phase") == "snr" else run_arm(task)


def _init_worker(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def run_all(tasks: list[dict], jobs: int, threads: int) -> list[dict]:
    """Run every task (a training run, or a gradient measurement with ``phase = "snr"``);
    ``jobs`` > 1 uses that many spawned worker processes (one task each at a time), ``jobs`` = 1
    runs them one after the other in this process. Prints a line per task; returns the results in
    the order of ``tasks``."""
    def report(r: dict) -> dict:
        if "mean_cosine" in r:
            print(f"  {r['strategy']:<14} gradient: mean cosine {r['mean_cosine']:+.4f} over "
                  f"{r['batches']} batches", flush=True)
            return r
        h = r["heldout"]
        print(f"  [{r['phase']}] {r['strategy']:<14} lr {r['learning_rate']:g} seed {r['seed']}: "
              f"{len(r['iterations'])} iterations, {r['final_compute']:.0f} FE, held-out "
              f"{h[0]['mean']:.4f} -> {h[-1]['mean']:.4f}, {r['total_seconds']:.1f} s", flush=True)
        return r

    if jobs <= 1:
        return [report(_run_task(t)) for t in tasks]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(jobs, len(tasks)), initializer=_init_worker, initargs=(threads,)) as pool:
        return [report(r) for r in pool.imap(_run_task, tasks)]


# ------------------------------------------------------------------------------ analysis ----
def compute_grid(budget: float) -> np.ndarray:
    """The common compute grid ``[0, budget]`` every run's curves are interpolated onto."""
    return np.linspace(0.0, budget, GRID_POINTS)


def training_curve(run: dict, grid: np.ndarray) -> np.ndarray:
    """A run's iteration rewards at the compute before each iteration, interpolated onto ``grid``."""
    xs = [r["compute_start"] for r in run["iterations"]]
    ys = [r["reward_mean"] for r in run["iterations"]]
    return np.interp(grid, xs, ys)


def heldout_curve(run: dict, grid: np.ndarray) -> np.ndarray:
    """A run's held-out means at their compute, interpolated onto ``grid``."""
    return np.interp(grid, [h["compute"] for h in run["heldout"]], [h["mean"] for h in run["heldout"]])


def moving_average(y: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average over ``width`` points (fewer at the ends)."""
    if width <= 1:
        return y
    half = width // 2
    c = np.concatenate([[0.0], np.cumsum(y)])
    lo = np.clip(np.arange(len(y)) - half, 0, len(y))
    hi = np.clip(np.arange(len(y)) + half + 1, 0, len(y))
    return (c[hi] - c[lo]) / (hi - lo)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value)."""
    return float(np.mean(values)), (float(statistics.stdev(values)) if len(values) > 1 else 0.0)


def steps_curve(run: dict, grid: np.ndarray) -> np.ndarray:
    """A run's held-out means at their optimizer-step counts, interpolated onto ``grid``."""
    return np.interp(grid, [h["optimizer_steps"] for h in run["heldout"]], [h["mean"] for h in run["heldout"]])


def untrained_curve(run: dict, grid: np.ndarray, trained: set[str]) -> np.ndarray | None:
    """The mean probability of the attributes the reward does not score, against compute."""
    if "attributes" not in run["heldout"][0]:
        return None
    ys = [np.mean([v for k, v in h["attributes"].items() if k not in trained]) for h in run["heldout"]]
    return np.interp(grid, [h["compute"] for h in run["heldout"]], ys)


def best_learning_rates(sweep: list[dict], strategies: list[str]) -> dict[str, float]:
    """Per arm, the sweep's learning rate with the highest final validation reward (ties: the
    smaller rate)."""
    best = {}
    for name in strategies:
        mine = sorted((r for r in sweep if r["strategy"] == name), key=lambda r: r["learning_rate"])
        if mine:
            best[name] = max(mine, key=lambda r: r["heldout"][-1]["mean"])["learning_rate"]
    return best


def summarize(runs: list[dict], strategies: list[str], budget: float, snr: dict[str, dict] | None = None,
              trained: set[str] = frozenset()) -> list[dict]:
    """One summary row per strategy (the table's columns, as numbers)."""
    rows = []
    for name in strategies:
        mine = [r for r in runs if r["strategy"] == name]
        if not mine:
            continue
        final = [r["heldout"][-1]["mean"] for r in mine]
        best = [max(h["mean"] for h in r["heldout"]) for r in mine]
        gain = [r["heldout"][-1]["mean"] - r["heldout"][0]["mean"] for r in mine]
        last = []
        for r in mine:
            window = [i["reward_mean"] for i in r["iterations"] if i["compute_start"] >= (1 - LAST_FRACTION) * budget]
            last.append(float(np.mean(window or [r["iterations"][-1]["reward_mean"]])))
        iters = [len(r["iterations"]) for r in mine]
        fe_per_it = [r["final_compute"] / len(r["iterations"]) for r in mine]
        row = {
            "strategy": name, "seeds": len(mine), "learning_rate": mine[0]["learning_rate"],
            "iterations": float(np.mean(iters)), "iterations_min": min(iters), "iterations_max": max(iters),
            "optimizer_steps": float(np.mean([r["heldout"][-1]["optimizer_steps"] for r in mine])),
            "fe_per_iteration": float(np.mean(fe_per_it)),
            "final_heldout": mean_std(final), "best_heldout": float(np.mean(best)),
            "heldout_gain": mean_std(gain), "train_reward_last": mean_std(last),
            "train_seconds": float(np.mean([r["train_seconds"] for r in mine])),
            "grad_cosine": (snr or {}).get(name, {}).get("mean_cosine", float("nan")),
        }
        g, sd = row["heldout_gain"]
        row["gain_over_spread"] = g / sd if sd > 0 else float("nan")
        if "objects_kept" in mine[0]["heldout"][0]:
            row["objects_kept"] = float(np.mean([r["heldout"][-1]["objects_kept"] for r in mine]))
            row["untrained_change"] = float(np.mean([
                np.mean([r["heldout"][-1]["attributes"][k] - r["heldout"][0]["attributes"][k]
                         for k in r["heldout"][0]["attributes"] if k not in trained]) for r in mine]))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The summary rows as a markdown table."""
    pm = lambda v: f"{v[0]:.4f} ± {v[1]:.4f}"  # noqa: E731
    watch = any("objects_kept" in r for r in rows)
    lines = [
        "| strategy | lr | iterations | optimizer steps | FE / iteration | gradient cosine | final held-out "
        "| held-out gain | gain / spread | best held-out "
        + ("| objects kept | untrained attributes Δ " if watch else "")
        + f"| train reward (last {LAST_FRACTION:.0%}) | train wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if watch else "") + "---:|---:|",
    ]
    for r in rows:
        its = (f"{r['iterations']:.0f}" if r["iterations_min"] == r["iterations_max"]
               else f"{r['iterations']:.1f} ({r['iterations_min']}-{r['iterations_max']})")
        extra = (f"| {r['objects_kept']:.2f} | {r['untrained_change']:+.4f} " if watch else "")
        lines.append(
            f"| {r['strategy']} | {r['learning_rate']:g} | {its} | {r['optimizer_steps']:.0f} "
            f"| {r['fe_per_iteration']:.0f} | {r['grad_cosine']:+.3f} | {pm(r['final_heldout'])} "
            f"| {r['heldout_gain'][0]:+.4f} ± {r['heldout_gain'][1]:.4f} | {r['gain_over_spread']:+.1f} "
            f"| {r['best_heldout']:.4f} {extra}| {pm(r['train_reward_last'])} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict], strategies: list[str], budget: float, path: Path, title: str,
         trained: set[str] = frozenset()) -> None:
    """Four panels: smoothed training reward, held-out reward, and the attributes the reward does
    not score against compute; held-out reward against optimizer steps. Seed mean per strategy
    with a min..max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = compute_grid(budget)
    max_steps = max(r["heldout"][-1]["optimizer_steps"] for r in runs) or 1
    step_grid = np.linspace(0.0, max_steps, GRID_POINTS)
    width = max(1, int(round(SMOOTH_FRACTION * (GRID_POINTS - 1))))
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (a_train, a_held), (a_steps, a_other) = axes
    watched = False
    for name in strategies:
        mine = [r for r in runs if r["strategy"] == name]
        if not mine:
            continue
        panels = [(a_train, grid, np.stack([moving_average(training_curve(r, grid), width) for r in mine])),
                  (a_held, grid, np.stack([heldout_curve(r, grid) for r in mine])),
                  (a_steps, step_grid, np.stack([steps_curve(r, step_grid) for r in mine]))]
        other = [untrained_curve(r, grid, trained) for r in mine]
        if all(o is not None for o in other):
            panels.append((a_other, grid, np.stack(other)))
            watched = True
        for ax, xs, ys in panels:
            line, = ax.plot(xs, ys.mean(0), label=f"{name} (lr {mine[0]['learning_rate']:g}, n={len(mine)})")
            ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.12, linewidth=0)
    a_train.set_title(f"training reward (moving average over {SMOOTH_FRACTION:.0%} of budget)")
    a_held.set_title(f"held-out reward (ODE samples, seed {EVAL_SEED})")
    a_steps.set_title("held-out reward against optimizer steps")
    a_other.set_title("held-out: mean probability of the attributes the reward does not score")
    compute_label = "compute (transformer forward-equivalents: rows, backward = 2)"
    for ax, xlabel in ((a_train, compute_label), (a_held, compute_label), (a_steps, "optimizer steps"),
                       (a_other, compute_label)):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("reward" if ax is not a_other else "probability")
        ax.grid(alpha=0.3)
    for ax in (a_train, a_held, a_other):
        ax.set_xlim(0, budget)
    if not watched:
        a_other.text(0.5, 0.5, "not measured: the toy world's attributes are read\non the toy model's videos only",
                     ha="center", va="center", transform=a_other.transAxes)
    a_held.legend(title="mean over seeds, band = min..max", fontsize=7, title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main ----
def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (every option spelled out)."""
    parts = ["python", "-m", "bench.alignment", "--preset", args.preset, "--model", args.model,
             "--reward", args.reward, "--strategies", ",".join(args.strategies),
             "--seeds", ",".join(map(str, args.seeds)), "--lrs", ",".join(f"{x:g}" for x in args.lrs),
             "--sweep-seed", str(args.sweep_seed), "--budget", f"{args.budget:g}",
             "--eval-every", f"{args.eval_every:g}", "--prompts", args.prompts, "--fix", args.fix,
             "--train-prompts", str(args.train_prompts), "--val-prompts", str(args.val_prompts),
             "--test-prompts", str(args.test_prompts), "--snr-batches", str(args.snr_batches),
             "--jobs", str(args.jobs), "--threads", str(args.threads), "--out", str(args.out)]
    for item in args.set:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.alignment", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--reduced", action="store_true",
                        help=f"the reduced setting (about 22 minutes on 2 cores): {' '.join(REDUCED)}; "
                             "options given explicitly still win")
    parser.add_argument("--signal", action="store_true",
                        help=f"the setting with gradient signal (a few minutes on 2 cores): {' '.join(SIGNAL)}; "
                             "options given explicitly still win (--set items are added after its own)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help="base config of every arm")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="any value of the config field model ('tiny', a model folder, ...)")
    parser.add_argument("--reward", default=DEFAULT_REWARD,
                        help="reward name, comma-separated names, or JSON rewards list (config field rewards)")
    parser.add_argument("--strategies", default=",".join(ARMS), help=f"arms to run, from: {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0,1,2", help="config seeds of the main runs, one run per arm and seed")
    parser.add_argument("--lrs", default=DEFAULT_LRS,
                        help="learning rates of the sweep (one value: no sweep, every arm at it)")
    parser.add_argument("--sweep-seed", type=int, default=100, help="config seed of the sweep's runs")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="compute per run, in FE")
    parser.add_argument("--eval-every", type=float, default=None,
                        help="held-out evaluation every this many FE (default budget/8; 0 = start and end only)")
    parser.add_argument("--prompts", default="toy", choices=["toy", "preset"],
                        help="toy: toy-world captions with the --fix attributes; preset: the preset's prompts")
    parser.add_argument("--fix", default="size=small", help="attributes every toy caption asks for, a=b,c=d")
    parser.add_argument("--train-prompts", type=int, default=32, help="training prompts")
    parser.add_argument("--val-prompts", type=int, default=16, help="validation prompts (the sweep's evaluation)")
    parser.add_argument("--test-prompts", type=int, default=32, help="held-out test prompts (the main runs' evaluation)")
    parser.add_argument("--snr-batches", type=int, default=6,
                        help="independent batches per arm for the gradient cosine at the base model (0 = off)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (1 = run in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (0 = torch's default)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config field for every arm (applied after the arm's own fields); repeatable")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = [flag for flag in SETTINGS if flag in argv]
    if len(chosen) > 1:
        parser.error(f"{' and '.join(chosen)}: choose one setting")
    if chosen:
        given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
        defaults = SETTINGS[chosen[0]]
        argv = [*(x for k, v in zip(defaults[::2], defaults[1::2]) if k == "--set" or k not in given
                  for x in (k, v)), *argv]
    args = parser.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in args.strategies if s not in ARMS]
    if unknown or not args.strategies:
        parser.error(f"--strategies: unknown {unknown}; choose from {', '.join(ARMS)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        args.lrs = sorted(float(x) for x in args.lrs.split(",") if x.strip())
    except ValueError:
        parser.error(f"--seeds {args.seeds!r} / --lrs {args.lrs!r}: expected comma-separated numbers")
    if not args.seeds or not args.lrs:
        parser.error("--seeds and --lrs: give at least one value each")
    if args.budget <= 0:
        parser.error("--budget must be > 0")
    if args.eval_every is None:
        args.eval_every = args.budget / 8
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.test_prompts < 1 or (len(args.lrs) > 1 and args.val_prompts < 1):
        parser.error("--test-prompts must be >= 1, and --val-prompts too when --lrs sweeps")
    try:
        args.overrides = parse_set_items(args.set)
    except UserError as exc:
        parser.error(str(exc))
    return args


class Plan:
    """What every run of one invocation shares: the base config values, the ``--set`` overrides,
    the prompt sets and the watch reward; ``task`` makes one run's task."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.base, self.extra = base_values(args), args.overrides
        self.base_cfg = FlashGRPOConfig.from_dict({**self.base, **self.extra}, preset=args.preset)
        self.sets = prompt_sets(args, self.base_cfg)
        # What the videos show, read by the toy world: only meaningful for the model that draws it.
        self.watch = "toy_caption" if args.prompts == "toy" and args.model == DEFAULT_MODEL else ""

    def task(self, arm: str, seed: int, lr: float, phase: str, eval_set: str, **more) -> dict:
        """The task of one run (``run_arm``, or ``gradient_snr`` with ``phase="snr"`` and
        ``batches=``): ``arm`` at ``seed`` and ``lr``, evaluated on the ``eval_set`` prompts."""
        args = self.args
        cfg = arm_config(args.preset, {**self.base, "prompts": self.sets["train"]}, arm, seed, self.extra, lr)
        config = cfg.to_dict()
        if phase == "snr":
            config["updates_per_iteration"] = 1  # one gradient of the whole batch
        return {"arm": arm, "seed": seed, "config": config, "base_seed": self.base_cfg.seed, "phase": phase,
                "train_prompts": self.sets["train"], "eval_prompts": self.sets[eval_set], "watch": self.watch,
                "budget": args.budget, "eval_every": args.eval_every, "threads": args.threads,
                "run_dir": str(Path(args.out) / "runs" / f"{phase}-{arm}-lr{lr:g}-seed{seed}"), **more}


def main(argv: list[str] | None = None) -> dict:
    """Sweep, measure gradients, run every (strategy, seed); write ``curves.json``,
    ``alignment.png`` and ``alignment.md`` into ``--out``, print the table; returns what
    ``curves.json`` holds."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = Plan(args)
    base, sets, task = plan.base, plan.sets, plan.task
    trained = trained_attributes(base["rewards"])
    command = command_line(args)
    t0 = time.perf_counter()

    sweep, best = [], {arm: args.lrs[0] for arm in args.strategies}
    if len(args.lrs) > 1:
        tasks = [task(a, args.sweep_seed, lr, "sweep", "val") for a in args.strategies for lr in args.lrs]
        print(f"sweep: {len(tasks)} runs ({len(args.strategies)} strategies x lr {args.lrs}), seed "
              f"{args.sweep_seed}, {len(sets['val'])} validation prompts", flush=True)
        sweep = run_all(tasks, args.jobs, args.threads)
        best = best_learning_rates(sweep, args.strategies)
        print("best learning rates: " + ", ".join(f"{a} {lr:g}" for a, lr in best.items()), flush=True)
    snr = {}
    if args.snr_batches > 0:
        tasks = [task(a, 0, best[a], "snr", "test", batches=args.snr_batches) for a in args.strategies]
        print(f"gradient cosine: {args.snr_batches} batches per arm at the base model", flush=True)
        snr = {r["strategy"]: r for r in run_all(tasks, args.jobs, args.threads)}
    tasks = [task(a, seed, best[a], "main", "test") for a in args.strategies for seed in args.seeds]
    print(f"main: {len(tasks)} runs ({len(args.strategies)} strategies x {len(args.seeds)} seeds), budget "
          f"{args.budget:g} FE each, {len(sets['test'])} held-out prompts, {args.jobs} jobs x {args.threads} "
          "threads", flush=True)
    runs = run_all(tasks, args.jobs, args.threads)
    rows = summarize(runs, args.strategies, args.budget, snr, trained)
    table = markdown_table(rows)

    settings = {
        "preset": args.preset, "model": args.model, "rewards": base["rewards"], "strategies": args.strategies,
        "seeds": args.seeds, "lrs": args.lrs, "sweep_seed": args.sweep_seed, "best_learning_rates": best,
        "budget": args.budget, "eval_every": args.eval_every, "prompts": sets, "watch": plan.watch,
        "trained_attributes": sorted(trained), "eval_prompts": len(sets["test"]), "eval_seed": EVAL_SEED,
        "base_seed": plan.base_cfg.seed, "set": plan.extra, "jobs": args.jobs, "threads": args.threads, "command": command,
        "unit": f"FE: transformer forward rows (CFG = 2 rows); rows with gradients count 1 + {BACKWARD_FE}",
        "base_config": plan.base_cfg.to_dict(), "wall_seconds": time.perf_counter() - t0,
    }
    result = {"settings": settings, "arms": {a: ARMS[a] for a in args.strategies}, "sweep": sweep,
              "gradients": snr, "runs": runs, "summary": rows}
    (out / "curves.json").write_text(json.dumps(result, indent=1))
    title = (f"{args.preset}, model {args.model}, reward {args.reward}; budget {args.budget:g} FE, "
             f"{len(args.seeds)} seeds, {len(sets['test'])} held-out prompts")
    plot(runs, args.strategies, args.budget, out / "alignment.png", title, trained)
    sweep_md = ""
    if sweep:
        sweep_md = "\n\nLearning-rate sweep (seed {}, final validation reward on {} prompts):\n\n{}".format(
            args.sweep_seed, len(sets["val"]), sweep_table(sweep, args.strategies, args.lrs))
    md = (f"# Equal-compute alignment ({title})\n\n"
          f"Compute unit FE = one transformer forward of one video row (CFG = 2 rows; rows with "
          f"gradients count {1 + BACKWARD_FE}). Mean ± sample std over seeds {args.seeds}; gain / spread = "
          f"mean gain / its std. Wall time of the whole benchmark: {settings['wall_seconds'] / 60:.1f} min."
          f"\n\n{table}{sweep_md}\n\nReproduce: `{command}`\n")
    (out / "alignment.md").write_text(md)
    print(f"\n{table}{sweep_md}\n\nreproduce: {command}\nwrote {out / 'curves.json'}, {out / 'alignment.png'}, "
          f"{out / 'alignment.md'}")
    return result


def sweep_table(sweep: list[dict], strategies: list[str], lrs: list[float]) -> str:
    """Final validation reward per arm (rows) and learning rate (columns); the best one in bold."""
    best = best_learning_rates(sweep, strategies)
    lines = ["| strategy | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---:|" * len(lrs)]
    for name in strategies:
        cells = []
        for lr in lrs:
            r = next((r for r in sweep if r["strategy"] == name and r["learning_rate"] == lr), None)
            if r is None:
                cells.append("")
                continue
            gain = r["heldout"][-1]["mean"] - r["heldout"][0]["mean"]
            text = f"{r['heldout'][-1]['mean']:.4f} ({gain:+.4f})"
            cells.append(f"**{text}**" if lr == best.get(name) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
    sys.exit(0)
