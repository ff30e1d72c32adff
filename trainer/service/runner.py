"""Where the jobs of the nodes and of the CLI run: one interface, two runners.

The front ends (the node types, the headless runner) need three jobs: train a LoRA, sample a
prompt group as a rollout does, score videos with their group advantages. ``Runner`` is that
interface, with typed results:

* ``LocalRunner`` runs the jobs in this process and keeps the loaded pipeline warm between them.
  The backend trainer process serves every job with one (``trainer.service.backend``);
  ``python -m trainer.run --in-process`` uses one directly.
* ``BackendRunner`` sends every job (train, sample and score alike) to the backend trainer
  process, started on demand with the requested number of processes (``trainer.service.client``),
  so no heavy work runs in ComfyUI's or the CLI's process.

Which one is used is decided once, by the entry point: ``make_runner(gpus, in_process)``, called
by the host the nodes run in (``trainer.graph.host``). Nothing below that decision knows or asks
where it runs.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from ..algo.grpo import group_advantages
from ..engine.config import FlashGRPOConfig
from ..engine.distributed import Dist
from ..engine.models import load_pipeline
from ..engine.recipe import FlashGRPORecipe, RunResult, pipeline_parts, resolve_device_and_dtype
from ..errors import UserError
from ..rewards import as_uint8, build_reward_set
from . import client as client_lib

JobAbandoned = client_lib.JobAbandoned

__all__ = ["BackendRunner", "JobAbandoned", "LocalRunner", "RunCancelled", "RunResult", "Runner", "SampleResult", "ScoreResult",
           "make_runner"]


class RunCancelled(UserError):
    """The user stopped a run; its checkpoint is on disk and it can be resumed."""

    def __init__(self, result: RunResult):
        self.result = result
        super().__init__(
            f"run cancelled after {result.iterations_done} iterations; checkpoint and LoRA saved in "
            f"{result.run_dir}. Resume with --resume (headless) or resume=true and the same run_name."
        )


@dataclass
class SampleResult:
    """A sampled prompt group: ``videos`` float ``[P*G, T, H, W, 3]`` in 0..1 (prompt-major; None
    where they went elsewhere: ``LocalRunner.sample_videos``), ``steps`` (the SDE step ``k`` of each
    prompt's group, or None), ``prompts`` (one per video)."""

    videos: torch.Tensor | None
    steps: list[int] | None
    prompts: list[str]
    seed: int


@dataclass
class ScoreResult:
    """Scores ``[N]`` of a reward set, their group advantages ``[N]`` and ``has_signal`` ``[N]``
    (the group's rewards differ), and each reward's own scores in ``details``."""

    scores: torch.Tensor
    advantages: torch.Tensor
    has_signal: torch.Tensor
    details: dict[str, torch.Tensor] = field(default_factory=dict)


class Runner(Protocol):
    """The three jobs, wherever they run."""

    def train(self, cfg: FlashGRPOConfig, resume: bool = False,
              should_stop: Callable[[], bool] = lambda: False,
              on_event: Callable[[dict], None] = lambda e: None) -> RunResult:
        """Train ``cfg`` to the end (or until ``should_stop``); raise ``RunCancelled`` if stopped.
        ``on_event`` receives every event of the run (``trainer.engine.runlog``), as it happens."""
        ...

    def sample(self, cfg: FlashGRPOConfig, prompts: list[str], iteration: int = 0,
               should_stop: Callable[[], bool] = lambda: False, lora: dict | None = None) -> SampleResult:
        """Iso-temporal group sampling: ``cfg.group_size`` videos per prompt, exactly as the
        training rollout of ``iteration`` draws them (step plan and noise from ``cfg.seed``).
        ``lora``: ``{"path": aligned LoRA file (absolute), "strength": float}`` to sample with a
        trained LoRA (strength 0 = the base model). ``should_stop``: the backend runner stops
        waiting and raises ``JobAbandoned``; the local runner runs to the end."""
        ...

    def score(self, reward_specs: list, videos, prompts: list[str], group_size: int,
              std_mode: str = "group", clip: float = 5.0, should_stop: Callable[[], bool] = lambda: False) -> ScoreResult:
        """Score videos (uint8 or float ``[N, T, H, W, 3]``, ``N = groups * group_size``,
        group-major) with a reward set and compute their group advantages (``should_stop`` as
        for ``sample``)."""
        ...

    def close(self) -> None:
        """Release what the runner holds (a backend it started)."""
        ...


# ---------------------------------------------------------------------------------- local ----
class LocalRunner:
    """Runs the jobs in this process, on one CPU/GPU or as one rank of the backend's process group.

    The loaded pipeline stays warm between jobs (one model at a time); ``model_loads`` counts loads.
    """

    def __init__(self):
        self._pipelines: dict[tuple, object] = {}
        self.model_loads = 0

    def warm_pipeline(self, cfg: FlashGRPOConfig):
        """The pipeline for ``cfg``'s model, loaded once and kept. The engine takes its sigma grid
        from ``cfg.shift``, so one loaded pipeline serves any shift. On several processes this
        rank loads what ``pipeline_parts`` says it needs."""
        _, dtype = resolve_device_and_dtype(cfg)
        parts = pipeline_parts(cfg, Dist())
        key = (cfg.model, str(dtype), cfg.seed if cfg.model == "tiny" else None, tuple(sorted(parts.items())))
        if key not in self._pipelines:
            self._pipelines.clear()  # keep one model in memory
            self._pipelines[key] = load_pipeline(cfg.model, shift=cfg.shift, dtype=dtype, seed=cfg.seed, **parts)
            self.model_loads += 1
        return self._pipelines[key]

    def _after_run(self, recipe: FlashGRPORecipe) -> None:
        if not recipe.reusable_model:  # sharded in place (FSDP) or compiled: the next job loads afresh
            self.drop_warm_pipeline()

    def drop_warm_pipeline(self) -> None:
        self._pipelines.clear()

    def release(self, policy: str) -> None:
        """After a job: ``keep`` the warm model where it is, or (``offload``, ``shutdown``) move it to
        the CPU and return the CUDA allocator's cached blocks, so another process (ComfyUI) can use
        the GPU. The next job moves the model back (the recipe places it on its device)."""
        if policy == "keep":
            return
        for pipe in self._pipelines.values():
            for name in ("transformer", "vae", "text_encoder"):
                module = getattr(pipe, name, None)
                if module is not None:
                    module.to("cpu")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def train(self, cfg, resume=False, should_stop=lambda: False, on_event=lambda e: None) -> RunResult:
        run_dir = Path(cfg.output_dir) / cfg.run_name if cfg.run_name else None
        recipe = FlashGRPORecipe(cfg, run_dir=run_dir, resume=resume, pipeline=self.warm_pipeline(cfg))
        try:
            result = recipe.setup().train(should_stop=should_stop, on_event=on_event)
        finally:
            self._after_run(recipe)
        if result.cancelled:
            raise RunCancelled(result)
        return result

    def sample(self, cfg, prompts, iteration=0, should_stop=lambda: False, lora=None) -> SampleResult:
        parts: list[torch.Tensor] = []
        out = self.sample_videos(cfg, prompts, iteration, parts.append, lora=lora)
        out.videos = torch.cat(parts).float() / 255.0 if parts else None
        return out

    def sample_videos(self, cfg: FlashGRPOConfig, prompts: list[str], iteration: int,
                      consume: Callable[[torch.Tensor], None], lora: dict | None = None) -> SampleResult:
        """``sample`` with the videos as uint8 ``[n, T, H, W, 3]`` chunks passed to ``consume`` in
        global sample order, on rank 0 only (the result's ``videos`` is None). Each process decodes
        its own groups (rank order is prompt order); rank 0 hands its own on chunk by chunk as it
        decodes them, then every other rank's share as it arrives (``Dist.gather_to_main``)."""
        prompts = list(prompts)
        cfg = FlashGRPOConfig.from_dict({**cfg.to_dict(), "prompts": prompts, "prompt_file": "",
                                         "eval_prompts": 0, "prompts_per_iteration": len(prompts)})
        lora_file = (str(lora["path"]), float(lora.get("strength", 1.0))) if lora else None
        recipe = FlashGRPORecipe(cfg, pipeline=self.warm_pipeline(cfg), lora_file=lora_file)
        try:
            batch = recipe.setup(training=False).rollout_phase(iteration, prompts_global=prompts)
            if recipe.dist.is_main:
                for chunk in recipe.decode_chunks(batch.result.latents):
                    consume(chunk)
                recipe.dist.gather_to_main(None, consume)
            else:
                recipe.dist.gather_to_main(recipe.decode(batch.result.latents), consume)
        finally:
            self._after_run(recipe)
        return SampleResult(videos=None, steps=batch.plan.group_steps,
                            prompts=[p for p in prompts for _ in range(cfg.group_size)], seed=cfg.seed)

    def score(self, reward_specs, videos, prompts, group_size, std_mode="group", clip=5.0,
              should_stop=lambda: False) -> ScoreResult:
        reward = build_reward_set(reward_specs)
        out = reward(videos, list(prompts))
        n = out.scores.shape[0]
        if group_size < 1 or n % group_size:
            raise UserError(f"{n} videos cannot be split into groups of {group_size}: give a multiple of the group size.")
        groups = torch.arange(n // group_size).repeat_interleave(group_size)
        adv, signal = group_advantages(out.scores, groups, std_mode, clip)
        return ScoreResult(scores=out.scores, advantages=adv, has_signal=signal, details=dict(out.details))

    def close(self) -> None:
        self.drop_warm_pipeline()


# -------------------------------------------------------------------------------- backend ----
class BackendRunner:
    """Sends every job to the backend trainer process with ``gpus`` processes.

    The backend is found or started on first use (``client.connect``) and reconnected after a
    failure. ``client``: an already connected ``BackendClient`` to use instead.
    """

    def __init__(self, gpus: int = 1, client: client_lib.BackendClient | None = None, detached: bool = False):
        self.gpus = gpus
        self._client = client
        self.detached = detached  # a backend this runner starts outlives this process

    def connection(self) -> client_lib.BackendClient:
        """The backend client (reconnects when the backend died or has another process count)."""
        c = self._client
        if c is None or c.process is not None and c.process.poll() is not None:
            self._client = client_lib.connect(self.gpus, detached=self.detached)
        else:
            try:
                if c.health().get("world_size") != self.gpus:
                    self._client = client_lib.connect(self.gpus, detached=self.detached)
            except client_lib.BackendError:
                self._client = client_lib.connect(self.gpus, detached=self.detached)
        return self._client

    def train(self, cfg, resume=False, should_stop=lambda: False, on_event=lambda e: None) -> RunResult:
        # the backend runs in another folder: paths go as the user meant them, absolute
        out = self.connection().run_job("train", {"config": cfg.with_absolute_paths().to_dict(), "resume": bool(resume)},
                                        on_event=on_event, should_stop=should_stop)
        result = RunResult(Path(out["run_dir"]), Path(out["lora_path"]) if out.get("lora_path") else None,
                           out["iterations_done"], out["cancelled"], out.get("summary", {}))
        if result.cancelled:
            raise RunCancelled(result)
        return result

    def sample(self, cfg, prompts, iteration=0, should_stop=lambda: False, lora=None) -> SampleResult:
        client = self.connection()
        job = {"config": cfg.with_absolute_paths().to_dict(), "prompts": list(prompts),
               "iteration": int(iteration), "transport": client.transport()}
        if lora:
            job["lora"] = {"path": str(Path(lora["path"]).absolute()), "strength": float(lora.get("strength", 1.0))}
        out = client.run_job("sample", job, should_stop=should_stop)
        videos = client.take_videos(out["videos"]).float() / 255.0  # travels as uint8
        return SampleResult(videos=videos, steps=out["steps"], prompts=out["prompts"], seed=out["seed"])

    def score(self, reward_specs, videos, prompts, group_size, std_mode="group", clip=5.0,
              should_stop=lambda: False) -> ScoreResult:
        client = self.connection()
        ref = client.put_videos(as_uint8(videos))
        try:
            out = client.run_job("score", {
                "rewards": reward_specs, "videos": ref, "prompts": list(prompts),
                "group_size": group_size, "std_mode": std_mode, "clip": clip}, should_stop=should_stop)
        finally:
            client.discard_videos(ref)  # the backend deletes it after the job; this covers a refused one
        return ScoreResult(scores=torch.tensor(out["scores"]), advantages=torch.tensor(out["advantages"]),
                           has_signal=torch.tensor(out["has_signal"]),
                           details={k: torch.tensor(v) for k, v in out["details"].items()})

    def close(self) -> None:
        """Shut down the backend if this runner started it (a user-started or shared one stays)."""
        if self._client is not None and self._client.process is not None:
            self._client.shutdown()
        self._client = None


def make_runner(gpus: int = 1, in_process: bool = False, detached: bool = False) -> Runner:
    """The runner for jobs on ``gpus`` processes: the backend (``detached``: one that outlives
    this process), or this process (one process only)."""
    if in_process:
        if gpus != 1:
            raise UserError(f"gpus={gpus}: in-process jobs use one process; multi-GPU runs go through the backend.")
        return LocalRunner()
    return BackendRunner(gpus, detached=detached)
