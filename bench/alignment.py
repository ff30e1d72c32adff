"""Equal-compute alignment benchmark: reward against transformer compute, per GRPO strategy.

    python -m bench.alignment [--preset NAME] [--model M] [--reward SPEC] [--strategies a,b,...]
                              [--seeds 0,1,2] [--budget N] [--eval-every N] [--eval-prompts K]
                              [--jobs J] [--threads T] [--out DIR] [--set key=value ...]

    # the README's figures: toy model, exact position reward, 7 arms x 3 seeds (~18 min, 2 cores)
    python -m bench.alignment
    # a quick look on the random tiny model
    python -m bench.alignment --preset tiny_demo --model tiny --reward brightness --budget 2000

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
``--eval-prompts``, ``sample_videos=false``; so learning rate, LoRA rank, group size, prompts per
iteration, sampling steps, guidance, KL weight, EMA... are identical. Each arm then sets only the
fields that define its strategy (``ARMS``: strategy, the noise schedule and level the strategy
publishes - as the ``flow_grpo_wan2.1_1.3b`` preset does for flow_grpo - iso-temporal grouping,
rectification, shared initial noise); ``--set key=value`` is applied last, to every arm.

* ``flash``: Flash-GRPO (one SDE step k per prompt from the window, iso-temporal grouping,
  1/K(t) rectification, flash noise schedule).
* ``flash_no_iso`` / ``flash_no_rect``: the two ablations (each sample draws its own k /
  rectification off).
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
weights (built/loaded with the base config's seed), the held-out prompt split (drawn with the base
config's seed) and the held-out sampling noise (``EVAL_SEED``).

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

# The defaults: the pretrained toy model on the toy_demo preset's 64 captions (16 held out), with
# the exact position reward.
DEFAULT_PRESET = "toy_demo"
DEFAULT_MODEL = "toy"
DEFAULT_REWARD = "toy_position"
DEFAULT_BUDGET = 12_000  # FE per run: ~58 flash iterations (208 FE each), ~20 flow_grpo (592)
DEFAULT_OUT = "bench/results/alignment"

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
    "flow_grpo": {"strategy": "flow_grpo", "rectification": False, "noise_schedule": "flow_grpo",
                  "noise_level": 0.7, "timestep_fraction": 0.99, "shared_noise": None},
    "dance": {"strategy": "dance", "rectification": False, "noise_schedule": "dance",
              "noise_level": None, "shared_noise": True},
    "mixgrpo": {"strategy": "mixgrpo", "rectification": False, "noise_schedule": "flow_grpo",
                "noise_level": None, "shared_noise": None},
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
    values = {"model": args.model, "rewards": parse_reward_spec(args.reward), "sample_videos": False}
    if args.eval_prompts is not None:
        values["eval_prompts"] = args.eval_prompts
    return values


def arm_config(preset: str, base: dict, arm: str, seed: int, extra: dict) -> FlashGRPOConfig:
    """The config of one run: preset, shared ``base``, the arm's overrides, ``--set``, seed."""
    return FlashGRPOConfig.from_dict({**base, **ARMS[arm], **extra, "seed": seed}, preset=preset)


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


def evaluate_heldout(recipe) -> list[float]:
    """Reward of deterministic ODE samples of the held-out prompts (EMA weights when EMA is on)."""
    with recipe.ema_weights():
        videos = recipe.sample(recipe.prompts.eval, seed=EVAL_SEED)
    return recipe.reward_fn(videos, recipe.prompts.eval).scores.tolist()


def run_arm(task: dict) -> dict:
    """Train one (arm, seed) until ``task["budget"]`` FE are spent; return its raw series.

    ``task``: ``arm``, ``seed``, ``config`` (a ``FlashGRPOConfig`` dict), ``base_seed`` (base
    weights and held-out split), ``budget``, ``eval_every``, ``run_dir``, ``threads``. Runs in the
    calling process (a worker of ``run_all`` or the main process with ``--jobs 1``).
    """
    from trainer.engine.models import load_pipeline
    from trainer.engine.recipe import FlashGRPORecipe, resolve_device_and_dtype

    if task.get("threads", 0) > 0:
        torch.set_num_threads(task["threads"])
    t_start = time.perf_counter()
    cfg = FlashGRPOConfig.from_dict(task["config"])
    budget, eval_every = float(task["budget"]), float(task["eval_every"])
    run_dir = Path(task["run_dir"])
    if run_dir.exists():
        shutil.rmtree(run_dir)  # every run starts afresh

    # Same base weights for every run: the base config's seed, not the run's.
    _, dtype = resolve_device_and_dtype(cfg)
    pipe = load_pipeline(cfg.model, shift=cfg.shift, dtype=dtype, seed=task["base_seed"])
    recipe = FlashGRPORecipe(cfg, run_dir=run_dir, pipeline=pipe).setup(training=True)
    # Same held-out prompts for every run (split with the base seed); training order from the run's seed.
    prompts = read_prompt_file(cfg.prompt_file) if cfg.prompt_file else (list(cfg.prompts) or DEFAULT_PROMPTS)
    split = PromptSet.build(prompts, cfg.eval_prompts, task["base_seed"])
    recipe.prompts = PromptSet(train=split.train, eval=split.eval, seed=cfg.seed)
    if not recipe.prompts.eval:
        raise SystemExit("no held-out prompts: use --eval-prompts K with K >= 1")

    counter = ComputeCounter(recipe.transformer)
    iterations, heldout = [], []
    eval_seconds = 0.0

    def evaluate(compute: float, done: int) -> None:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        scores = evaluate_heldout(recipe)
        eval_seconds += time.perf_counter() - t0
        heldout.append({"compute": compute, "iterations": done, "mean": float(np.mean(scores)),
                        "scores": scores})

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
        "strategy": task["arm"], "seed": task["seed"], "run_dir": str(run_dir), "config": cfg.to_dict(),
        "iterations": iterations, "heldout": heldout, "final_compute": compute,
        "train_seconds": sum(r["seconds"] for r in iterations), "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - t_start,
    }


def _init_worker(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def run_all(tasks: list[dict], jobs: int, threads: int) -> list[dict]:
    """Run every task; ``jobs`` > 1 uses that many spawned worker processes (one run each at a
    time), ``jobs`` = 1 runs them one after the other in this process. Prints a line per run."""
    def report(r: dict) -> dict:
        h = r["heldout"]
        print(f"  {r['strategy']:<14} seed {r['seed']}: {len(r['iterations'])} iterations, "
              f"{r['final_compute']:.0f} FE, held-out {h[0]['mean']:.4f} -> {h[-1]['mean']:.4f}, "
              f"{r['total_seconds']:.1f} s", flush=True)
        return r

    if jobs <= 1:
        return [report(run_arm(t)) for t in tasks]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(jobs, len(tasks)), initializer=_init_worker, initargs=(threads,)) as pool:
        return [report(r) for r in pool.imap_unordered(run_arm, tasks)]


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


def summarize(runs: list[dict], strategies: list[str], budget: float) -> list[dict]:
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
        rows.append({
            "strategy": name, "seeds": len(mine),
            "iterations": float(np.mean(iters)), "iterations_min": min(iters), "iterations_max": max(iters),
            "fe_per_iteration": float(np.mean(fe_per_it)),
            "final_heldout": mean_std(final), "best_heldout": float(np.mean(best)),
            "heldout_gain": mean_std(gain), "train_reward_last": mean_std(last),
            "train_seconds": float(np.mean([r["train_seconds"] for r in mine])),
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The summary rows as a markdown table."""
    pm = lambda v: f"{v[0]:.4f} ± {v[1]:.4f}"  # noqa: E731
    lines = [
        "| strategy | iterations | FE / iteration | final held-out | best held-out | held-out gain "
        f"| train reward (last {LAST_FRACTION:.0%}) | train wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        its = (f"{r['iterations']:.0f}" if r["iterations_min"] == r["iterations_max"]
               else f"{r['iterations']:.1f} ({r['iterations_min']}-{r['iterations_max']})")
        lines.append(
            f"| {r['strategy']} | {its} | {r['fe_per_iteration']:.0f} | {pm(r['final_heldout'])} "
            f"| {r['best_heldout']:.4f} | {r['heldout_gain'][0]:+.4f} ± {r['heldout_gain'][1]:.4f} "
            f"| {pm(r['train_reward_last'])} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict], strategies: list[str], budget: float, path: Path, title: str) -> None:
    """Two panels: smoothed training reward and held-out reward against compute; seed mean per
    strategy with a min..max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = compute_grid(budget)
    width = max(1, int(round(SMOOTH_FRACTION * (GRID_POINTS - 1))))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in strategies:
        mine = [r for r in runs if r["strategy"] == name]
        if not mine:
            continue
        train = np.stack([moving_average(training_curve(r, grid), width) for r in mine])
        held = np.stack([heldout_curve(r, grid) for r in mine])
        for ax, ys in ((axes[0], train), (axes[1], held)):
            line, = ax.plot(grid, ys.mean(0), label=f"{name} (n={len(mine)})")
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15, linewidth=0)
    axes[0].set_title(f"training reward (moving average over {SMOOTH_FRACTION:.0%} of budget)")
    axes[1].set_title(f"held-out reward (ODE samples, seed {EVAL_SEED})")
    for ax in axes:
        ax.set_xlabel("compute (transformer forward-equivalents: rows, backward = 2)")
        ax.set_ylabel("reward")
        ax.set_xlim(0, budget)
        ax.grid(alpha=0.3)
    axes[1].legend(title="mean over seeds, band = min..max", fontsize=8, title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ main ----
def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (every option spelled out)."""
    parts = ["python", "-m", "bench.alignment", "--preset", args.preset, "--model", args.model,
             "--reward", args.reward, "--strategies", ",".join(args.strategies),
             "--seeds", ",".join(map(str, args.seeds)), "--budget", f"{args.budget:g}",
             "--eval-every", f"{args.eval_every:g}", "--jobs", str(args.jobs), "--threads", str(args.threads),
             "--out", str(args.out)]
    if args.eval_prompts is not None:
        parts += ["--eval-prompts", str(args.eval_prompts)]
    for item in args.set:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.alignment", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help="base config of every arm")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="any value of the config field model ('tiny', a model folder, ...)")
    parser.add_argument("--reward", default=DEFAULT_REWARD,
                        help="reward name, comma-separated names, or JSON rewards list (config field rewards)")
    parser.add_argument("--strategies", default=",".join(ARMS), help=f"arms to run, from: {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0,1,2", help="config seeds, one run per arm and seed")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="compute per run, in FE")
    parser.add_argument("--eval-every", type=float, default=None,
                        help="held-out evaluation every this many FE (default budget/10; 0 = start and end only)")
    parser.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (1 = run in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (0 = torch's default)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config field for every arm (applied after the arm's own fields); repeatable")
    args = parser.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in args.strategies if s not in ARMS]
    if unknown or not args.strategies:
        parser.error(f"--strategies: unknown {unknown}; choose from {', '.join(ARMS)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    if not args.seeds:
        parser.error("--seeds: give at least one seed")
    if args.budget <= 0:
        parser.error("--budget must be > 0")
    if args.eval_every is None:
        args.eval_every = args.budget / 10
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    try:
        args.overrides = parse_set_items(args.set)
    except UserError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run every (strategy, seed), write ``curves.json``, ``alignment.png`` and ``alignment.md``
    into ``--out``, print the table; returns what ``curves.json`` holds."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base, extra = base_values(args), args.overrides
    base_cfg = FlashGRPOConfig.from_dict({**base, **extra}, preset=args.preset)
    tasks = []
    for arm in args.strategies:
        for seed in args.seeds:
            cfg = arm_config(args.preset, base, arm, seed, extra)  # validates before any run starts
            tasks.append({"arm": arm, "seed": seed, "config": cfg.to_dict(), "base_seed": base_cfg.seed,
                          "budget": args.budget, "eval_every": args.eval_every, "threads": args.threads,
                          "run_dir": str(out / "runs" / f"{arm}-seed{seed}")})
    command = command_line(args)
    print(f"{len(tasks)} runs ({len(args.strategies)} strategies x {len(args.seeds)} seeds), budget "
          f"{args.budget:g} FE each, {args.jobs} jobs x {args.threads} threads", flush=True)
    t0 = time.perf_counter()
    runs = run_all(tasks, args.jobs, args.threads)
    order = {(a, s): i for i, (a, s) in enumerate((t["arm"], t["seed"]) for t in tasks)}
    runs.sort(key=lambda r: order[(r["strategy"], r["seed"])])
    rows = summarize(runs, args.strategies, args.budget)
    table = markdown_table(rows)

    settings = {
        "preset": args.preset, "model": args.model, "rewards": base["rewards"], "strategies": args.strategies,
        "seeds": args.seeds, "budget": args.budget, "eval_every": args.eval_every,
        "eval_prompts": base_cfg.eval_prompts, "eval_seed": EVAL_SEED, "base_seed": base_cfg.seed,
        "set": extra, "jobs": args.jobs, "threads": args.threads, "command": command,
        "unit": f"FE: transformer forward rows (CFG = 2 rows); rows with gradients count 1 + {BACKWARD_FE}",
        "base_config": base_cfg.to_dict(), "wall_seconds": time.perf_counter() - t0,
    }
    result = {"settings": settings, "arms": {a: ARMS[a] for a in args.strategies}, "runs": runs, "summary": rows}
    (out / "curves.json").write_text(json.dumps(result, indent=1))
    title = (f"{args.preset}, model {args.model}, reward {args.reward}; budget {args.budget:g} FE, "
             f"{len(args.seeds)} seeds")
    plot(runs, args.strategies, args.budget, out / "alignment.png", title)
    md = (f"# Equal-compute alignment ({title})\n\n"
          f"Compute unit FE = one transformer forward of one video row (CFG = 2 rows; rows with "
          f"gradients count {1 + BACKWARD_FE}). Mean ± sample std over seeds {args.seeds}.\n\n"
          f"{table}\n\nReproduce: `{command}`\n")
    (out / "alignment.md").write_text(md)
    print(f"\n{table}\n\nreproduce: {command}\nwrote {out / 'curves.json'}, {out / 'alignment.png'}, "
          f"{out / 'alignment.md'}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
