"""The Flash-GRPO training recipe: one readable loop, setup in small ``_setup_*`` steps.

    recipe = FlashGRPORecipe(cfg)
    recipe.setup()            # model, LoRA, optimizer, rewards, prompts, run directory, resume
    result = recipe.train()   # iterations: plan -> rollout -> decode + reward -> advantages -> update

One iteration (Flash-GRPO, arXiv 2605.15980; the baselines differ only in their ``Strategy``):

1. ``Strategy.plan``: which (sample, step) pairs are SDE steps and which are trained. For
   ``flash`` each prompt's group gets one step ``k`` from the window, identical on every process.
2. ``rollout``: ODE steps everywhere but the SDE steps; keeps ``x_k``, ``x_{k+1}``, ``log p_old``.
3. Decode the final latents, score them, gather rewards of the global batch, group advantages
   ``A = (r - mean_g) / (std_g + eps)``, then the strategy's advantage filter.
4. Update: recompute ``log p`` with the same guided velocity; loss per transition
   ``c * max(-A r, -A clip(r, 1 - eps, 1 + eps))`` with ``r = exp(log p - log p_old)`` and the
   rectification weight ``c = (1/K(t)) / mean(1/K)`` (1 without rectification), optional KL,
   AdamW step, EMA of the LoRA.

All randomness (plans, initial and SDE noise, prompt order, minibatch order, LoRA init) follows
the one rule of ``trainer.seeding``: a stream named by ``(seed, purpose, iteration, sample, step)``.
A resumed run therefore repeats exactly what an uninterrupted one does, and a run on N processes
draws the same numbers as on one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from .. import seeding, settings
from ..algo import sde as sde_math
from ..algo.grpo import clipped_surrogate, ema_decay_at, group_advantages, kl_to_reference
from ..errors import UserError
from ..rewards import build_reward_set
from ..rewards.base import RewardOutput, as_uint8
from . import lora as lora_lib
from .checkpoint import load_checkpoint, save_checkpoint
from .config import FlashGRPOConfig
from .data import DEFAULT_PROMPTS, PromptSet, read_prompt_file
from .distributed import Dist
from .models import COMFY_MODEL_SUFFIX, load_pipeline, use_cpu_vae_norms, weights_hash
from .rollout import Conditioning, RolloutResult, rollout, transition_log_prob
from .runlog import (
    EventLog,
    atomic_write_bytes,
    atomic_write_json,
    plot_reward_curve,
    write_animation,
    write_before_after,
    write_mp4,
)
from .strategies import StepPlan

log = logging.getLogger(__name__)


PREVIEW_PROMPTS = 4
"""Held-out prompts in a preview (``preview_every``) and in the animated before/after WebP."""


class Cancelled(Exception):
    """Raised inside an iteration when ``should_stop`` turned true; the iteration is discarded."""


def sample_noise(seed: int, iteration: int, sample: int, step: int, shape: tuple,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise of a global sample: the stream ``(seed, "noise", iteration, sample,
    step)`` of ``trainer.seeding`` (``step = -1``: the initial noise), drawn on ``device``."""
    return seeding.normal(shape, seed, "noise", iteration, sample, step, device=device)


def _as_uint8(videos: torch.Tensor):
    """Videos (uint8, or float in 0..1) on CPU as a uint8 numpy array, for mp4 and PNG files."""
    return as_uint8(videos).numpy()


def vae_to_uint8(video: torch.Tensor, frames_per_slice: int = 16) -> torch.Tensor:
    """VAE output ``[n, 3, T, H, W]`` in -1..1 (any dtype) as uint8 ``[n, T, H, W, 3]`` on the same
    device: ``round(255 * clamp((x + 1) / 2, 0, 1))`` in float32, ``frames_per_slice`` frames at a
    time so that no float32 copy of the whole video exists."""
    n, _, T, H, W = video.shape
    out = torch.empty((n, T, H, W, 3), dtype=torch.uint8, device=video.device)
    for t in range(0, T, frames_per_slice):
        x = video[:, :, t:t + frames_per_slice].float().permute(0, 2, 3, 4, 1)
        out[:, t:t + frames_per_slice] = ((x + 1.0) / 2.0).clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return out


def pipeline_parts(cfg: FlashGRPOConfig, dist: Dist) -> dict[str, bool]:
    """What this process loads (``load_pipeline``'s switches). On several processes rank 0 alone
    reads the text encoder (it encodes every prompt and broadcasts the embeddings) and, with
    FSDP, the transformer's weights (the other ranks build it on the meta device and receive
    their shards from rank 0)."""
    other = dist.enabled and not dist.is_main
    return {"text_encoder": not other, "transformer_weights": not (other and cfg.parallel == "fsdp")}


def resolve_device_and_dtype(cfg: FlashGRPOConfig) -> tuple[bool, torch.dtype]:
    """``(use_cuda, dtype)`` for ``cfg.device`` / ``cfg.dtype`` ("auto": CUDA and bfloat16 when a GPU is visible)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use device=auto or cpu.")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.dtype == "auto":
        return use_cuda, torch.bfloat16 if use_cuda else torch.float32
    return use_cuda, {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]


@dataclass
class IterationBatch:
    """What the rollout phase of an iteration hands to the reward and update phases."""

    prompts_global: list[str]  # the B prompts of the iteration (all processes)
    prompts: list[str]  # this process's prompt per sample
    local_samples: torch.Tensor  # global sample id of each local sample
    plan: "StepPlan"
    conditioning: Conditioning
    result: RolloutResult


@dataclass
class UpdateStats:
    """Sums over the trained transitions of one update, per process; summed across processes by
    field name (``all_reduce_sum``), then divided by the global transition count (``means``).

    ``ratio_max_dev`` is a maximum and stays this process's own (it is not summed).
    """

    loss: float = 0.0
    clip_frac: float = 0.0
    approx_kl: float = 0.0
    kl: float = 0.0
    ratio_mean: float = 0.0
    transitions: float = 0.0
    ratio_max_dev: float = 0.0

    SUMMED = ("loss", "clip_frac", "approx_kl", "kl", "ratio_mean", "transitions")

    def all_reduce_sum(self, dist: Dist, device: torch.device) -> "UpdateStats":
        summed = dist.all_reduce_sum(torch.tensor([getattr(self, k) for k in self.SUMMED],
                                                  dtype=torch.float64, device=device)).cpu()
        return UpdateStats(**{k: float(v) for k, v in zip(self.SUMMED, summed)}, ratio_max_dev=self.ratio_max_dev)

    def means(self) -> dict[str, float]:
        """Per-transition means of the summed fields, and ``ratio_max_dev``."""
        m = max(self.transitions, 1.0)
        return {**{k: getattr(self, k) / m for k in self.SUMMED if k != "transitions"},
                "ratio_max_dev": self.ratio_max_dev}


@dataclass
class RunResult:
    run_dir: Path
    lora_path: Path | None
    iterations_done: int
    cancelled: bool
    summary: dict = field(default_factory=dict)


class FlashGRPORecipe:
    """Builds every component from a ``FlashGRPOConfig`` and runs the training loop."""

    def __init__(self, cfg: FlashGRPOConfig, run_dir: str | Path | None = None, resume: bool = False,
                 pipeline=None, lora_file: tuple[str, float] | None = None):
        """``lora_file``: ``(path, strength)`` of an aligned LoRA file that replaces the fresh LoRA
        (sampling with a trained LoRA; ``strength`` scales its ``B``, 0 leaves the fresh LoRA)."""
        self.cfg = cfg.validate()
        self._lora_file = lora_file
        self.dist = Dist()
        self._requested_run_dir = run_dir
        self._resume = resume
        self._pipeline = pipeline  # an already loaded pipeline (warm backend), else load from cfg
        self.start_iteration = 0
        self.optimizer_steps = 0  # taken so far (the EMA's schedule counts them)
        self._stepped = False

    # ------------------------------------------------------------------------------ setup ----
    def setup(self, training: bool = True) -> "FlashGRPORecipe":
        """Build every component; ``training=False`` stops after what sampling needs (no
        optimizer, no run directory)."""
        self._setup_device()
        self._setup_model()
        self._setup_lora()
        self._setup_compile()
        self._setup_parallel()
        self._setup_rewards()
        self._setup_data()
        self._setup_text()
        self._setup_schedule()
        if training:
            self._setup_optimizer()
            self._setup_run_dir()
            if self._resume:
                self._load_checkpoint()
            self._write_run_config()  # only now, once the start or resume checks have passed
        return self

    def _setup_device(self) -> None:
        use_cuda, self.dtype = resolve_device_and_dtype(self.cfg)
        if use_cuda and self.dist.enabled:
            torch.cuda.set_device(self.dist.local_rank)
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")

    @property
    def _fsdp(self) -> bool:
        return self.dist.enabled and self.cfg.parallel == "fsdp"

    @property
    def reusable_model(self) -> bool:
        """Whether the pipeline can serve another run: not once FSDP has sharded its transformer
        in place or its blocks were compiled."""
        return not (self._fsdp or self.cfg.compile_blocks)

    def _setup_model(self) -> None:
        cfg = self.cfg
        pipe = self._pipeline or load_pipeline(cfg.model, shift=cfg.shift, dtype=self.dtype, seed=cfg.seed,
                                               **pipeline_parts(cfg, self.dist))
        self.pipe = pipe
        self.transformer = pipe.transformer
        if self.dist.enabled:  # rank 0's hash (the other ranks may hold no weights)
            self.base_model_hash = self.dist.broadcast_bytes(
                weights_hash(self.transformer).encode() if self.dist.is_main else None).decode()
        else:
            self.base_model_hash = weights_hash(self.transformer)
        if self._fsdp:
            self._match_main_tensors()
        self.transformer.requires_grad_(False)
        if not self._fsdp:
            # FSDP moves each unit to the GPU as it shards it (``_setup_parallel``), so a rank
            # never holds the whole unsharded transformer on its GPU.
            self.transformer.to(self.device)
        # On CUDA the VAE decodes in the transformer's dtype (a float32 Wan VAE needs about 8 GB for
        # one 480x832x81 video); on CPU it stays float32.
        vae_dtype = self.dtype if self.device.type == "cuda" else torch.float32
        pipe.vae.to(self.device).eval()
        if pipe.vae.dtype != vae_dtype:
            pipe.vae.to(vae_dtype)
        use_cpu_vae_norms(pipe.vae, self.device.type == "cpu")
        if cfg.vae_tiling and hasattr(pipe.vae, "enable_tiling"):
            pipe.vae.enable_tiling()
        elif hasattr(pipe.vae, "disable_tiling"):
            pipe.vae.disable_tiling()  # a warm pipeline keeps the previous run's setting otherwise
        self._set_attention_backend(cfg.attention_backend)
        cuda = self.device.type == "cuda"
        self.rollout_batch = cfg.resolved_batch("rollout_batch_size", cuda)
        self.micro_batch = cfg.resolved_batch("micro_batch_size", cuda)
        self.latent_shape = (
            self.transformer.config.in_channels,
            (cfg.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
            cfg.height // pipe.vae_scale_factor_spatial,
            cfg.width // pipe.vae_scale_factor_spatial,
        )
        if self.device.type == "cuda" and cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self._embeddings: dict[str, torch.Tensor] = {}
        self._samples: dict[str, tuple] = {}  # tag -> held-out (uint8 videos [N,T,H,W,3], scores), for the sheet

    def _set_attention_backend(self, name: str) -> None:
        """diffusers' attention backend ``name`` on every attention layer (skipped when already in
        effect, so the default costs nothing); ``UserError`` when its package or device is missing."""
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        # a layer without its own backend uses diffusers' process-wide active one
        current = self.transformer.blocks[0].attn1.processor._attention_backend
        current = current or _AttentionBackendRegistry.get_active_backend()[0]
        if getattr(current, "value", current) == name:
            return
        try:
            self.transformer.set_attention_backend(name)
        except (RuntimeError, ValueError, ImportError) as exc:
            raise UserError(f"attention_backend={name!r} cannot be used here: {exc}") from exc

    def _match_main_tensors(self) -> None:
        """FSDP on several processes: give this rank's transformer (on the meta device, or loaded)
        rank 0's tensor dtypes, and check that it has rank 0's names and shapes (rank 0 sends them
        as JSON). The values follow in ``_load_from_main``, once the model is sharded."""
        # plain names: a warm model that had a LoRA keeps peft's wrappers (``to_q.base_layer.weight``)
        tensors = {n.replace(".base_layer.", "."): t for n, t in self._named_tensors() if "lora_" not in n}
        spec = {n: [list(t.shape), str(t.dtype).removeprefix("torch.")] for n, t in tensors.items()}
        main = json.loads(self.dist.broadcast_bytes(json.dumps(spec).encode() if self.dist.is_main else None))

        def match():
            if spec.keys() != main.keys():
                raise UserError(f"rank {self.dist.rank}'s transformer has other tensors than rank 0's: "
                                f"{sorted(spec.keys() ^ main.keys())[:3]}; every rank must load the same model.")
            for name, (shape, dtype) in main.items():
                if spec[name][0] != shape:
                    raise UserError(f"rank {self.dist.rank}'s transformer tensor {name} has shape {spec[name][0]}, "
                                    f"rank 0's {shape}; every rank must load the same model.")
                tensors[name].data = tensors[name].data.to(getattr(torch, dtype))

        self._on_every_process(match, "matching its transformer to rank 0's")

    def _setup_lora(self) -> None:
        cfg = self.cfg
        if lora_lib.has_lora(self.transformer):  # a warm pipeline from an earlier run: start afresh
            lora_lib.remove_lora(self.transformer)
        if self._lora_file is not None and self._lora_file[1] != 0:
            path, strength = self._lora_file
            lora_lib.apply_aligned_lora(self.transformer, path)  # the file's rank and alpha
            with torch.no_grad():
                for name, p in lora_lib.lora_parameters(self.transformer):
                    if ".lora_B." in name:
                        p.mul_(float(strength))  # delta W = strength * (alpha / r) * B A
        else:
            lora_lib.add_lora(self.transformer, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                              include_ffn=cfg.lora_ffn, init_seed=seeding.derive_seed(cfg.seed, "lora_init"),
                              init=cfg.lora_init)
        self.lora_params = [p for _, p in lora_lib.lora_parameters(self.transformer)]
        for p in self.lora_params:
            p.data = p.data.float()
        self.ema = (
            {n: p.detach().clone() for n, p in lora_lib.lora_parameters(self.transformer)}
            if cfg.ema_decay > 0 else None
        )

    def _setup_compile(self) -> None:
        """``compile_blocks``: compile each transformer block in place (``nn.Module.compile``), after
        the LoRA and before the DDP/FSDP wrapping; refused where torch.compile cannot run."""
        if not self.cfg.compile_blocks:
            return
        import importlib.util
        import shutil

        import torch._dynamo

        backend, cxx = settings.compile_backend(), os.environ.get("CXX", "g++")  # inductor's compiler on the CPU
        problem = None
        if not torch._dynamo.is_dynamo_supported():
            problem = "torch.compile does not support this Python or platform"
        elif backend == "inductor" and self.device.type == "cpu" and not shutil.which(cxx):
            problem = f"torch.compile needs a C++ compiler on the CPU ({cxx} not found)"
        elif backend == "inductor" and self.device.type == "cuda" and importlib.util.find_spec("triton") is None:
            problem = "torch.compile needs the triton package on CUDA"
        if problem:
            raise UserError(f"compile_blocks=true cannot be used here: {problem}. Set compile_blocks=false.")
        for block in self.transformer.blocks:
            block.compile(backend=backend)

    def _setup_parallel(self) -> None:
        """Wrap the transformer for several processes: DDP, or FSDP full sharding.

        ``self.model`` is what forward passes go through; ``self.transformer`` stays the plain
        module (LoRA toggling, config). With FSDP the LoRA layers are sharded as their own groups
        (they are float32 while the base weights may be bfloat16).
        """
        self.model = self.transformer
        if not self.dist.enabled:
            return
        if self.cfg.parallel == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            # rank 0's weights (and LoRA init), kept past the sharding: the other ranks' come from them
            full = {n: t.detach() for n, t in self._named_tensors()} if self.dist.is_main else None
            mp = MixedPrecisionPolicy(
                param_dtype=self.dtype if self.device.type == "cuda" else None, reduce_dtype=torch.float32
            )
            for name, module in self.transformer.named_modules():
                if name.endswith((".lora_A.default", ".lora_B.default")):
                    fully_shard(module, mp_policy=mp)
            for block in self.transformer.blocks:
                fully_shard(block, mp_policy=mp)
            fully_shard(self.transformer, mp_policy=mp)
            self._load_from_main(full)
            del full
            self.lora_params = [p for _, p in lora_lib.lora_parameters(self.transformer)]
            if self.ema is not None:
                self.ema = {n: p.detach().clone() for n, p in lora_lib.lora_parameters(self.transformer)}
        else:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # No buffer broadcast: it would be a collective on every forward through the wrapper
            # (the update's; rollouts use the plain module and make different numbers of calls).
            self.model = DDP(self.transformer, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                             broadcast_buffers=False)

    def _named_tensors(self):
        yield from self.transformer.named_parameters()
        yield from self.transformer.named_buffers()

    @torch.no_grad()
    def _load_from_main(self, full: dict[str, torch.Tensor] | None) -> None:
        """Fill the sharded transformer with rank 0's tensors (``full``, None on the other ranks):
        one tensor at a time, rank 0 broadcasts it whole and every rank keeps its own shard. A rank
        on the meta device first gets empty shards (``to_empty``): it never holds all the weights."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if any(t.is_meta for _, t in self._named_tensors()):
            self.transformer.to_empty(device=self.device)
        for name, tensor in self._named_tensors():
            whole = (full[name].to(self.device) if full is not None
                     else torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device))
            self.dist.broadcast_(whole)
            if isinstance(tensor, DTensor):
                shard = distribute_tensor(whole, tensor.device_mesh, tensor.placements, src_data_rank=None)
                tensor.to_local().copy_(shard.to_local())
            else:
                tensor.copy_(whole)
            del whole

    def _max_over_ranks(self, calls: int) -> int:
        """The largest ``calls`` of any rank (a collective); the FSDP rollout pads its forward calls
        to it so that the all-gathers match on every rank."""
        return int(self.dist.all_reduce_max(torch.tensor(calls, device=self.device)))

    def _no_grad_sync(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an optimizer step."""
        if self.dist.enabled and settings.grad_sync_disabled() and self.cfg.parallel == "ddp":
            return self.model.no_sync()  # negative control for tests: ranks drift apart
        if not self.dist.enabled or last:
            return contextlib.nullcontext()
        if self.cfg.parallel == "fsdp":
            @contextlib.contextmanager
            def fsdp_no_sync():
                self.transformer.set_requires_gradient_sync(False)
                try:
                    yield
                finally:
                    self.transformer.set_requires_gradient_sync(True)
            return fsdp_no_sync()
        return self.model.no_sync()

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(
            self.lora_params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
            betas=tuple(cfg.adam_betas),
        )

    def _setup_rewards(self) -> None:
        self.reward_fn = build_reward_set(self.cfg.rewards)

    def _setup_data(self) -> None:
        cfg = self.cfg
        if cfg.prompt_file:
            prompts = read_prompt_file(cfg.prompt_file)
        else:
            prompts = list(cfg.prompts) or DEFAULT_PROMPTS
        self.prompts = PromptSet.build(prompts, cfg.eval_prompts, cfg.seed)
        if cfg.prompts_per_iteration % self.dist.world_size:
            raise UserError(
                f"prompts_per_iteration={cfg.prompts_per_iteration} must be divisible by the "
                f"number of processes ({self.dist.world_size})."
            )

    def _setup_schedule(self) -> None:
        cfg = self.cfg
        self.sigmas = sde_math.sigma_grid(cfg.sampling_steps, cfg.shift).float()
        self.schedule = cfg.resolved_noise_schedule()
        self.stds = sde_math.noise_std(self.schedule, self.sigmas[:-1], self.sigmas, cfg.noise_level)
        self.grad_scales = sde_math.grad_scale(self.sigmas[:-1], self.sigmas[1:], self.stds)
        self.strategy = cfg.strategy_impl()
        self.rectify = cfg.resolved_rectification()

    def _setup_run_dir(self) -> None:
        cfg = self.cfg
        if self._requested_run_dir is not None:
            self.run_dir = Path(self._requested_run_dir)
        else:
            name = cfg.run_name or f"{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
            self.run_dir = Path(cfg.output_dir) / name
        self.run_dir = self.run_dir.absolute()
        self.run_name = self.run_dir.name
        self.events = EventLog(self.run_dir / "events.jsonl")
        self.checkpoint_path = self.run_dir / "checkpoints" / "latest.pt"
        self.last_checkpoint: int | None = None  # iterations of the checkpoint on disk from this process
        for folder in (self.run_dir, *self.run_dir.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise UserError(f"{folder} is a file, so the run directory {self.run_dir} cannot be made in it. "
                                    "Set output_dir to a folder (or a path that does not exist yet).")
                break
        if not self._resume and self.checkpoint_path.exists():
            raise UserError(
                f"{self.run_dir} already holds a run. Resume it with --resume, or choose "
                "another run_name / output_dir."
            )

    def _write_run_config(self) -> None:
        if self.dist.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                if not self._resume:  # a failed start left no checkpoint: its events go with it
                    self.events.path.unlink(missing_ok=True)
                atomic_write_json(self.run_dir / "config.json", self.cfg.to_dict())
            except OSError as e:
                raise UserError(f"cannot write the run directory {self.run_dir} ({e.strerror or e}). Set output_dir "
                                "to a folder you can write.") from None

    def _load_checkpoint(self) -> None:
        if not self.checkpoint_path.exists():
            raise UserError(
                f"nothing to resume: no checkpoint at {self.checkpoint_path}. Start the run "
                "without --resume, or point --resume at the run directory of an earlier run."
            )
        state = load_checkpoint(self.checkpoint_path)
        try:
            saved = FlashGRPOConfig.from_dict(json.loads(state["config"]))
        except (ValueError, TypeError, UserError) as e:
            raise UserError(f"cannot resume: the config stored in {self.checkpoint_path} is not readable ({e}).") from None
        ignore = {"iterations", "output_dir", "run_name", "checkpoint_every", "sample_videos", "fps", "preview_every"}
        diff = [k for k in saved.field_names() if k not in ignore and getattr(saved, k) != getattr(self.cfg, k)]
        if diff:
            raise UserError(
                "cannot resume: the config differs from the checkpoint's in "
                + ", ".join(f"{k} ({getattr(saved, k)!r} -> {getattr(self.cfg, k)!r})" for k in diff)
                + f". To continue the run, resume it with its own config, kept unchanged in "
                f"{self.run_dir / 'config.json'} (python -m trainer.train --config {self.run_dir / 'config.json'} "
                f"--resume {self.run_dir}); to train with the new values, start a new run (another run_name)."
            )
        if state["base_model_hash"] != self.base_model_hash:
            raise UserError("cannot resume: the checkpoint was trained on other base-model weights.")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        lora_lib.load_lora_state_dict(self.transformer, state["lora"])
        set_optimizer_state_dict(self.transformer, self.optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        if self.ema is not None:
            for name, value in state["ema"].items():
                target = self.ema[name]
                value = value.to(device=self.device, dtype=target.dtype)
                if hasattr(target, "device_mesh"):
                    from torch.distributed.tensor import distribute_tensor

                    value = distribute_tensor(value, target.device_mesh, target.placements)
                target.copy_(value)
        torch.set_rng_state(state["torch_rng"])
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self.start_iteration = self.last_checkpoint = int(state["iteration"])
        if self.dist.is_main:
            self.events.truncate_after(self.start_iteration - 1)

    def _setup_text(self) -> None:
        """Encode every prompt of the run (training, held-out, negative) once, then leave the text
        encoder on the CPU: on CUDA it visits the GPU only for this one batch. On several processes
        rank 0 encodes and broadcasts the unpadded embeddings (token counts first, then the rows of
        64 prompts at a time): the other ranks need no text encoder."""
        prompts = sorted({*self.prompts.train, *self.prompts.eval, self.cfg.negative_prompt})
        if not self.dist.enabled:
            self._encode(prompts)
            return
        if self.dist.is_main:
            self._encode(prompts)
            rows = [self._embeddings[p] for p in prompts]
            lengths = torch.tensor([r.shape[0] for r in rows] + [rows[0].shape[-1]], dtype=torch.long)
        else:
            lengths = torch.zeros(len(prompts) + 1, dtype=torch.long)
        self.dist.broadcast_host_(lengths)
        *counts, width = lengths.tolist()
        for lo in range(0, len(prompts), 64):
            part, sizes = prompts[lo:lo + 64], counts[lo:lo + 64]
            flat = (torch.cat(rows[lo:lo + 64]) if self.dist.is_main
                    else torch.empty((sum(sizes), width), dtype=self.dtype))
            self.dist.broadcast_host_(flat)
            if not self.dist.is_main:  # views into this part's rows
                self._embeddings.update(zip(part, flat.split(sizes)))

    # ------------------------------------------------------------------------ components ----
    def embed(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings ``[n, L, D]``: each prompt's embedding cut at its token count, zero-padded
        to ``max_sequence_length`` (as diffusers' ``WanPipeline.encode_prompt`` does).

        The cache keeps the unpadded rows (``[tokens, D]`` per prompt, in the model dtype, on CPU);
        prompts not seen at setup are encoded on demand, the encoder moving to the GPU and back.
        """
        self._encode(prompts)
        L = self.cfg.max_sequence_length
        out = torch.zeros((len(prompts), L, self._embeddings[prompts[0]].shape[-1]), dtype=self.dtype)
        for i, p in enumerate(prompts):
            out[i, : self._embeddings[p].shape[0]] = self._embeddings[p]
        return out.to(self.device)

    def _encode(self, prompts: list[str]) -> None:
        """Put the prompts that are not cached yet into the cache (this process's text encoder)."""
        missing = sorted({p for p in prompts if p not in self._embeddings})
        if not missing:
            return
        pipe, L = self.pipe, self.cfg.max_sequence_length
        te = pipe.text_encoder
        if te is None:
            raise UserError(f"rank {self.dist.rank} has no text encoder, and {missing[0]!r} was not encoded at setup: "
                            "on several processes only the prompts of the config are encoded (by rank 0).")
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        with torch.no_grad():
            te.to(self.device)
            for lo in range(0, len(missing), 16):  # bounded batches: 16 padded [L, D] at a time
                part = missing[lo:lo + 16]
                emb, _ = pipe.encode_prompt(part, do_classifier_free_guidance=False,
                                            max_sequence_length=L, device=self.device)
                lengths = pipe.tokenizer([prompt_clean(p) for p in part], padding="max_length", max_length=L,
                                         truncation=True, return_tensors="pt").attention_mask.sum(dim=1)
                for p, e, n in zip(part, emb, lengths.tolist()):
                    self._embeddings[p] = e[:n].detach().to("cpu", self.dtype).clone()
            if self.device.type == "cuda":
                te.to("cpu")

    def conditioning(self, prompts: list[str]) -> Conditioning:
        cond = self.embed(prompts)
        uncond = None
        if self.cfg.guidance_scale != 1.0:
            uncond = self.embed([self.cfg.negative_prompt]).expand_as(cond)
        return Conditioning(cond, uncond, self.cfg.guidance_scale)

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor):
        """Yield uint8 videos ``[n, T, H, W, 3]`` on CPU, ``decode_batch_size`` at a time, for
        latents ``[N, C, F, h, w]``; each chunk is decoded only when the previous one was taken."""
        self._require_finite(latents, "the sampled latents",
                             "guidance_scale, shift, noise_level, learning_rate (a diverged LoRA), dtype")
        vae = self.pipe.vae
        mean = torch.tensor(vae.config.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
        for z in latents.split(self.cfg.decode_batch_size):
            z = z.float() * std + mean
            video = vae.decode(z.to(vae.dtype), return_dict=False)[0]  # [n, 3, T, H, W] in -1..1
            # NaN would become black pixels in uint8: stop instead (this process's own videos)
            self._require_finite(video, "the decoded videos", "dtype, vae_tiling (or a VAE file with broken weights)",
                                 collective=False)
            yield vae_to_uint8(video).cpu()
            del video

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[N, C, F, h, w]`` to uint8 videos ``[N, T, H, W, 3]`` on CPU (all kept)."""
        return torch.cat(list(self.decode_chunks(latents)))

    def score_latents(self, latents: torch.Tensor, prompts: list[str]) -> RewardOutput:
        """Decode and score chunk by chunk: only the scores are kept, never all the videos."""
        outputs, start = [], 0
        for videos in self.decode_chunks(latents):
            outputs.append(self.reward_fn(videos, prompts[start:start + videos.shape[0]]))
            start += videos.shape[0]
        return RewardOutput.concat(outputs)

    def _on_every_process(self, step: Callable, what: str):
        """Run a step that may fail on one process only (a reward server, a reward model) and
        agree on the outcome, so that all processes raise together instead of the others
        waiting for it in the next collective. Returns ``step()``."""
        try:
            out, error = step(), None
        except Exception as e:  # noqa: BLE001 - re-raised below, on every process
            out, error = None, e
        failed = self.dist.all_reduce_sum(torch.tensor([0.0 if error is None else 1.0], device=self.device))
        if float(failed) == 0:
            return out
        # every process learns the first failure's message (UTF-8 bytes in a tensor, never pickled)
        size = 2048
        text = b"" if error is None else (str(error) if isinstance(error, UserError) else
                                          f"{type(error).__name__}: {error}").encode()[:size] or b"?"
        buf = torch.zeros(size, dtype=torch.uint8)
        if text:
            buf[:len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        messages = self.dist.all_gather_cat(buf.to(self.device)).cpu().view(-1, size)
        if error is not None:
            raise error
        rank = next(r for r in range(messages.shape[0]) if messages[r, 0] != 0)
        message = bytes(messages[rank].tolist()).rstrip(b"\0").decode(errors="replace")
        raise UserError(f"process {rank} failed while {what}: {message}")

    def _require_finite(self, values: torch.Tensor, what: str, causes: str, collective: bool = True) -> None:
        """Stop with a ``UserError`` naming ``what`` and the config fields that can cause it when
        ``values`` holds NaN or Inf. ``collective``: every process calls this at the same point
        and all of them stop together, even when only one process holds such values."""
        bad = torch.tensor([0.0 if torch.isfinite(values).all() else 1.0], device=self.device)
        if collective:
            bad = self.dist.all_reduce_sum(bad)
        if float(bad) > 0:
            fields = {k: getattr(self.cfg, k) for k in re.findall(r"\w+", causes) if k in FlashGRPOConfig.field_names()}
            raise UserError(f"numerical failure: {what} hold NaN or Inf values. Fields that can cause this: {causes}; "
                            f"now {', '.join(f'{k}={v!r}' for k, v in fields.items())}. Lower the value that is too "
                            "large (or use dtype=float32) and start a new run.")

    @contextlib.contextmanager
    def ema_weights(self):
        """Temporarily put the EMA weights into the LoRA (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        params = dict(lora_lib.lora_parameters(self.transformer))
        backup = {n: p.detach().clone() for n, p in params.items()}
        try:
            for n, p in params.items():
                p.data.copy_(self.ema[n])
            yield
        finally:
            for n, p in params.items():
                p.data.copy_(backup[n])

    @torch.no_grad()
    def sample(self, prompts: list[str], steps: int | None = None, seed: int | None = None,
               lora: bool = True, draw: int = 0) -> torch.Tensor:
        """Deterministic ODE samples (one per prompt) as float videos ``[n, T, H, W, 3]`` in 0..1
        (decoded to uint8 chunk by chunk, then divided by 255). ``draw``: which initial noise (the
        noise streams of iterations -1, -2, ...: never a training iteration's)."""
        steps = steps or self.cfg.eval_sampling_steps
        seed = self.cfg.seed if seed is None else seed
        sigmas = sde_math.sigma_grid(steps, self.cfg.shift).float()
        n = len(prompts)
        plan = StepPlan(sde=torch.zeros(n, steps, dtype=torch.bool),
                        train=torch.zeros(n, steps, dtype=torch.bool), group_steps=None)
        ctx = contextlib.nullcontext() if lora else lora_lib.lora_disabled(self.transformer)
        with ctx:
            res = rollout(
                self.transformer, plan, sigmas, torch.zeros(steps), self.conditioning(prompts),
                self.latent_shape, lambda i, j, shape: sample_noise(seed, -1 - draw, i, j, shape, self.device),
                device=self.device, dtype=self.dtype, chunk=self.rollout_batch,
            )
        return self.decode(res.latents).float() / 255.0

    # ------------------------------------------------------------------------- iteration ----
    def _local_slots(self) -> range:
        per_rank = self.cfg.prompts_per_iteration // self.dist.world_size
        return range(self.dist.rank * per_rank, (self.dist.rank + 1) * per_rank)

    def rollout_phase(self, it: int, prompts_global: list[str] | None = None) -> "IterationBatch":
        """Plan and roll out iteration ``it`` for this process's prompts (no gradients).

        ``prompts_global`` replaces the iteration's training prompts (group sampling for a node).
        """
        cfg = self.cfg
        G, B = cfg.group_size, cfg.prompts_per_iteration
        prompts_global = prompts_global or self.prompts.batch(it, B)
        slots = self._local_slots()
        local_samples = torch.tensor([b * G + g for b in slots for g in range(G)])
        plan = self.strategy.plan(cfg, it, B, G)
        plan.sde, plan.train = plan.sde[local_samples], plan.train[local_samples]
        prompts = [prompts_global[b] for b in slots for _ in range(G)]
        conditioning = self.conditioning(prompts)
        groups = torch.arange(len(slots)).repeat_interleave(G) if cfg.resolved_shared_noise() else None

        def noise_fn(i, step, shape):
            gid = int(local_samples[i])
            if step < 0 and groups is not None:
                gid = gid - gid % G  # shared initial noise: the group's first sample's
            return sample_noise(cfg.seed, it, gid, step, shape, self.device)

        self.transformer.eval()
        # No-grad passes go through the plain module: with DDP that skips the wrapper (no
        # collective at all); with FSDP it is the sharded module itself, whose all-gathers need
        # the same number of calls on every rank (``sync_calls``).
        fsdp = self.dist.enabled and cfg.parallel == "fsdp"
        result = rollout(
            self.transformer, plan, self.sigmas, self.stds, conditioning, self.latent_shape, noise_fn,
            groups=groups, device=self.device, dtype=self.dtype, chunk=self.rollout_batch,
            sync_calls=self._max_over_ranks if fsdp else None, tail_steps=cfg.ode_tail_steps,
        )
        return IterationBatch(prompts_global, prompts, local_samples, plan, conditioning, result)

    def run_iteration(self, it: int, should_stop: Callable[[], bool] = lambda: False) -> dict:
        """One full iteration; returns its metrics (the event written to events.jsonl)."""
        cfg = self.cfg
        G, B = cfg.group_size, cfg.prompts_per_iteration
        t0 = time.perf_counter()
        self._stepped = False  # set by the first optimizer step of this iteration
        batch = self.rollout_phase(it)
        prompts_global, prompts, local_samples = batch.prompts_global, batch.prompts, batch.local_samples
        plan, conditioning, result = batch.plan, batch.conditioning, batch.result
        t1 = time.perf_counter()
        if should_stop():
            raise Cancelled()

        scored = self._on_every_process(lambda: self.score_latents(result.latents, prompts), "scoring its videos")
        rewards_global = self.dist.all_gather_cat(scored.scores.to(self.device)).cpu()
        self._require_finite(rewards_global, "the rewards", "the reward's args (or a reward server's answers)",
                             collective=False)  # gathered: the same on every process
        details_global = {k: self.dist.all_gather_cat(v.to(self.device)).cpu() for k, v in scored.details.items()}
        group_ids = torch.arange(B).repeat_interleave(G)
        adv_global, signal = group_advantages(rewards_global, group_ids, cfg.advantage_std, cfg.advantage_clip)
        advantages = self.strategy.filter_advantages(cfg, adv_global[local_samples], rewards_global[local_samples], G)
        t2 = time.perf_counter()
        if should_stop():
            raise Cancelled()

        stats = self.update(result, advantages, conditioning, it)
        t3 = time.perf_counter()

        event = {
            "event": "iteration",
            "iteration": it,
            "strategy": cfg.strategy,
            "prompts": prompts_global,
            "reward_mean": float(rewards_global.mean()),
            "reward_std": float(rewards_global.std(unbiased=False)),
            "rewards": {k: {"mean": float(v.mean()), "std": float(v.std(unbiased=False))} for k, v in details_global.items()},
            "groups_with_signal": int(signal.view(B, G)[:, 0].sum()),
            "steps": plan.group_steps,
            "transitions": int(self.dist.all_reduce_sum(torch.tensor(result.trans_step.numel(), device=self.device))),
            "forward_rows": result.forward_rows,
            **stats,
            "seconds": {"rollout": t1 - t0, "reward": t2 - t1, "update": t3 - t2, "total": t3 - t0},
        }
        return event

    def update(self, result: RolloutResult, advantages: torch.Tensor, conditioning: Conditioning, it: int) -> dict:
        """Clipped-surrogate update on the trained transitions; returns loss/clip/KL/grad statistics.

        Each trained transition ``i`` contributes ``c_i * max(-A_i r_i, -A_i clip(r_i, 1-eps, 1+eps))``
        (+ ``kl_beta * KL_i``) with ``r_i = exp(log p - log p_old)``, averaged over the global batch;
        ``c_i`` is the rectification weight ``(1/K_i) / mean(1/K)`` (``sde.rectification_weights``,
        the mean over every process's transitions) or 1 without rectification. With
        ``drop_zero_advantage`` the transitions whose advantage is exactly 0 are left out (of the
        loss, of the means and of the compute). The transitions are split into
        ``updates_per_iteration`` minibatches, one optimizer step each; the EMA follows every
        ``ema_update_every`` optimizer steps.
        """
        cfg = self.cfg
        adv = advantages[result.trans_sample]
        index = (adv != 0).nonzero().flatten() if cfg.drop_zero_advantage else torch.arange(adv.numel())
        M = index.numel()
        # DDP and FSDP need the same forward/backward calls on every process: a process with fewer
        # transitions pads with zero-weight copies (``active`` = 0).
        padded = int(self.dist.all_reduce_max(torch.tensor(M, device=self.device))) if self.dist.enabled else M
        active = torch.ones(padded)
        if padded > M:
            fill = index[:1] if M else torch.zeros(1, dtype=torch.long)
            index = torch.cat([index, fill.repeat(padded - M)])
            active[M:] = 0.0
        steps = result.trans_step[index]
        if self.rectify:
            inv_k = active / self.grad_scales[steps]
            total_inv_k = self.dist.all_reduce_sum(torch.stack([inv_k.sum(), active.sum()]).to(self.device)).cpu()
            weights = sde_math.rectification_weights(self.grad_scales[steps],
                                                     total_inv_k[0] / total_inv_k[1].clamp(min=1.0)) * active
        else:
            weights = active.clone()
        order = torch.randperm(padded, generator=seeding.generator(cfg.seed, "minibatch", it))
        minibatches = [mb for mb in order.chunk(cfg.updates_per_iteration) if mb.numel() > 0]
        totals = UpdateStats(transitions=float(M))
        grad_norms = []
        self.transformer.train()
        # DDP/FSDP average gradients over processes; the loss is a mean over the global batch.
        grad_scale = float(self.dist.world_size)
        for mb in minibatches:
            n_global = float(self.dist.all_reduce_sum(active[mb].sum().to(self.device)))
            if n_global == 0:  # the same on every process: nothing to learn from this minibatch
                continue
            self.optimizer.zero_grad(set_to_none=True)
            micro = self.micro_batch or mb.numel()
            chunks = list(mb.split(micro))
            for ci, chunk in enumerate(chunks):
                rows, on = index[chunk], active[chunk]
                with self._no_grad_sync(last=ci == len(chunks) - 1):
                    logp, mean, ref_mean = transition_log_prob(
                        self.model, result, rows, self.sigmas, self.stds, conditioning, self.dtype,
                        with_reference=cfg.kl_beta > 0,
                        reference_context=lambda: lora_lib.lora_disabled(self.transformer),
                    )
                    out = clipped_surrogate(
                        logp, result.log_prob[rows], adv[rows].to(logp.device), cfg.clip_range,
                        weights[chunk].to(logp.device),
                    )
                    loss_terms = out.loss
                    if ref_mean is not None:
                        t = steps[chunk]
                        step_std = self.stds[t] * torch.sqrt(self.sigmas[t] - self.sigmas[t + 1])
                        kl = kl_to_reference(mean, ref_mean, step_std.to(mean.device)) * on.to(mean.device)
                        loss_terms = loss_terms + cfg.kl_beta * kl
                        totals.kl += float(kl.detach().sum())
                    (loss_terms.sum() * grad_scale / n_global).backward()
                on = on.to(out.ratio.device)
                totals.loss += float(loss_terms.detach().sum())
                totals.clip_frac += float((out.clipped.float() * on).sum())
                totals.approx_kl += float((out.approx_kl * on).sum())
                totals.ratio_mean += float((out.ratio * on).sum())
                totals.ratio_max_dev = max(totals.ratio_max_dev, float(((out.ratio - 1).abs() * on).max()))
            norm = torch.nn.utils.clip_grad_norm_(
                self.lora_params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            )
            grad_norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
            self._require_finite(torch.tensor([totals.loss, grad_norms[-1]]), "the loss or its gradients",
                                 "learning_rate, clip_range, advantage_clip, kl_beta, max_grad_norm")
            self._stepped = True
            self.optimizer.step()
            self._after_optimizer_step()
        self.transformer.eval()
        stats = totals.all_reduce_sum(self.dist, self.device).means()
        unique_steps = sorted(set(steps[:M].tolist()))
        return {
            **stats,
            "grad_norm": grad_norms[-1] if grad_norms else 0.0,
            "optimizer_steps": len(grad_norms),
            "rect_weights": {str(s): float(weights[:M][steps[:M] == s][0]) for s in unique_steps},
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _after_optimizer_step(self) -> None:
        """Count the step; every ``ema_update_every`` steps move the EMA toward the LoRA with the
        decay ``min((1 + s) / (10 + s), ema_decay)`` of step ``s`` (``grpo.ema_decay_at``)."""
        self.optimizer_steps += 1
        if self.ema is None or self.optimizer_steps % self.cfg.ema_update_every:
            return
        decay = ema_decay_at(self.optimizer_steps - 1, self.cfg.ema_decay)
        with torch.no_grad():
            for n, p in lora_lib.lora_parameters(self.transformer):
                self.ema[n].mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    # ----------------------------------------------------------------------- checkpoints ----
    def save_checkpoint(self, iterations_done: int) -> None:
        """Atomically write everything a resume needs. Called on every process (sharded state is
        gathered); rank 0 writes. Saved unsharded, so a resume may use any number of processes."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optim_state = get_optimizer_state_dict(self.transformer, self.optimizer, options=options)
        lora_sd = lora_lib.lora_state_dict(self.transformer)
        ema = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
               for k, v in (self.ema or {}).items()}
        if not self.dist.is_main:
            return
        save_checkpoint(self.checkpoint_path, {
            "iteration": iterations_done,
            "lora": lora_sd,
            "optimizer": optim_state,
            "ema": ema,
            "torch_rng": torch.get_rng_state(),
            "optimizer_steps": self.optimizer_steps,
            "config": self.cfg.to_json(),
            "base_model_hash": self.base_model_hash,
            "world_size": self.dist.world_size,
        })

    def lora_metadata(self, iterations_done: int) -> dict:
        cfg = self.cfg
        return {
            "base_model": cfg.model if cfg.model == "tiny" else Path(cfg.model).name.removesuffix(COMFY_MODEL_SUFFIX),
            "base_model_hash": self.base_model_hash,
            "base_model_arch": json.dumps({k: self.transformer.config[k] for k in (
                "num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "text_dim")}),
            "strategy": cfg.strategy,
            "rewards": cfg.rewards,
            "iterations": iterations_done,
            "weights": "ema" if self.ema is not None else "final",
            "trainer": "flash-grpo",
            "config": cfg.to_dict(),
        }

    def export_lora(self, iterations_done: int) -> Path:
        """Write the aligned LoRA (EMA weights when EMA is on) into the run directory."""
        path = self.run_dir / "lora" / f"{self.run_name}.safetensors"
        with self.ema_weights():
            sd = lora_lib.lora_state_dict(self.transformer)  # a collective when sharded
        if self.dist.is_main:
            lora_lib.save_aligned_lora(
                path, self.transformer, self.cfg.lora_rank, self.cfg.lora_alpha,
                self.lora_metadata(iterations_done), state_dict=sd,
            )
        return path

    def _checkpoint_after_failure(self, done: int) -> str:
        """After iteration ``done`` failed: checkpoint the state after the last completed
        iteration if the weights still hold it; say what is on disk and what to do.

        Nothing is written when no iteration completed (a rerun under the same name starts
        afresh) or when an optimizer step of the failed iteration already changed the weights
        (the last checkpoint written stays the consistent one)."""
        if done > self.start_iteration and not self._stepped:
            self.save_checkpoint(done)
            self.last_checkpoint = done
        if self.last_checkpoint is None:
            return ("The run stopped before its first iteration completed; no checkpoint was written, so start it "
                    "again (same run_name) once the cause is fixed.")
        lost = "" if self.last_checkpoint == done else (
            f" (iterations {self.last_checkpoint + 1}..{done} are not in it: the failed iteration had already "
            "stepped the optimizer)")
        return (f"The run stopped after {done} iterations; its checkpoint at iteration {self.last_checkpoint} is in "
                f"{self.checkpoint_path}{lost}. Fix the cause, then resume with --resume (resume=true).")

    # ------------------------------------------------------------------------------ loop ----
    def scored_draws(self, prompts: list[str], draws: int, lora: bool = True) -> Iterator[tuple[torch.Tensor, RewardOutput]]:
        """ODE samples of ``prompts`` from initial noises ``draw = 0 .. draws-1`` and their reward
        output, one draw at a time (each draw's videos can be dropped before the next is made)."""
        for draw in range(draws):
            videos = self.sample(prompts, lora=lora, draw=draw)
            yield videos, self.reward_fn(videos, prompts)

    def _evaluate(self, prompts: list[str], lora: bool = True):
        """The first sample's videos and reward output, and each prompt's mean score over
        ``eval_samples`` samples."""
        draws = self.scored_draws(prompts, self.cfg.eval_samples, lora)
        videos, scored = next(draws)
        return videos, scored, torch.stack([scored.scores] + [later.scores for _, later in draws]).mean(0)

    def _write_samples(self, tag: str) -> dict:
        """Before/after videos of the held-out prompts, and their reward.

        ``"after"`` also writes ``samples/before_after.png``, both side by side (the "before"
        videos are the base model's, sampled again when a resumed run no longer holds them).
        """
        if not self.prompts.eval:
            return {}
        with self.ema_weights() if tag == "after" else contextlib.nullcontext():
            videos, scored, scores = self._evaluate(self.prompts.eval)
        if self.cfg.sample_videos:
            self._samples[tag] = (_as_uint8(videos), scores.tolist())  # uint8: 4x less kept in memory
            if tag == "after" and "before" not in self._samples:
                base, _, base_scores = self._evaluate(self.prompts.eval, lora=False)  # on every rank: FSDP gathers
                self._samples["before"] = (_as_uint8(base), base_scores.tolist())
        if self.dist.is_main and self.cfg.sample_videos:
            for i, v in enumerate(self._samples[tag][0]):
                write_mp4(self.run_dir / "samples" / f"{tag}_{i:02d}.mp4", v, fps=self.cfg.fps)
            if tag == "after":
                (v0, s0), (v1, s1) = self._samples["before"], self._samples["after"]
                write_before_after(self.run_dir / "samples" / "before_after.png", self.prompts.eval, v0, v1, s0, s1)
                n = min(len(v0), PREVIEW_PROMPTS)  # the same videos, animated: before (top), after
                write_animation(self.run_dir / "samples" / "before_after.webp", [v0[:n], v1[:n]], fps=self.cfg.fps)
        out = {"eval_reward_mean": float(scores.mean()), "eval_rewards": scores.tolist(),
               "eval_samples": self.cfg.eval_samples}
        if scored.readings is not None:
            out["eval_readings"] = scored.readings  # the first sample's, the one the videos show
        return out

    def _write_preview(self, done: int) -> dict | None:
        """Held-out samples after ``done`` iterations (``preview_every``), on every process (FSDP
        gathers weights): the first ``PREVIEW_PROMPTS`` held-out prompts sampled as the "after"
        videos are (EMA weights when EMA is on), scored, written as ``samples/preview_NNNNN.webp``
        (animated) and ``.png`` (its middle frame). Returns the ``preview`` event (rank 0)."""
        prompts = self.prompts.eval[:PREVIEW_PROMPTS]
        with self.ema_weights():
            videos = self.sample(prompts)
        scores = self.reward_fn(videos, prompts).scores
        if not self.dist.is_main:
            return None
        import io

        from PIL import Image

        path = self.run_dir / "samples" / f"preview_{done:05d}.webp"
        still = write_animation(path, [_as_uint8(videos)], fps=self.cfg.fps)
        buf = io.BytesIO()
        Image.fromarray(still).save(buf, format="PNG")
        atomic_write_bytes(path.with_suffix(".png"), buf.getvalue())
        return {"event": "preview", "iteration": done - 1, "iterations_done": done, "path": str(path),
                "frame": str(path.with_suffix(".png")), "prompts": prompts,
                "eval_reward_mean": float(scores.mean()), "eval_rewards": scores.tolist()}

    def held_out_table(self, before: dict, after: dict) -> list[dict]:
        """Per held-out prompt: its score before and after training (and what the reward read)."""
        rows = []
        for i, prompt in enumerate(self.prompts.eval):
            row = {"prompt": prompt}
            for tag, res in (("before", before), ("after", after)):
                if i < len(res.get("eval_rewards", [])):
                    row[tag] = res["eval_rewards"][i]
                if i < len(res.get("eval_readings") or []):
                    row[f"{tag}_readings"] = res["eval_readings"][i]
            if "before" in row and "after" in row:
                row["gain"] = row["after"] - row["before"]
            rows.append(row)
        return rows

    def train(self, should_stop: Callable[[], bool] = lambda: False,
              on_event: Callable[[dict], None] = lambda e: None) -> RunResult:
        """Run iterations ``start_iteration .. iterations-1``; checkpoint, export, plot."""
        cfg = self.cfg
        emit = (lambda e: (self.events.write(e), on_event(e))) if self.dist.is_main else (lambda e: None)
        if self.start_iteration == 0:
            before = self._write_samples("before")
            emit({"event": "start", "run_dir": str(self.run_dir), "iterations": cfg.iterations,
                  "strategy": cfg.strategy, "before": before, "base_model_hash": self.base_model_hash})
        else:
            emit({"event": "resume", "iteration": self.start_iteration, "run_dir": str(self.run_dir)})
        done = self.start_iteration
        cancelled = False
        for it in range(self.start_iteration, cfg.iterations):
            if should_stop():
                cancelled = True
                break
            try:
                event = self.run_iteration(it, should_stop)
            except Cancelled:
                cancelled = True
                break
            except Exception as e:  # e.g. a reward server that stays down: keep the work done so far
                kept = self._checkpoint_after_failure(done)
                if self.dist.is_main:
                    self.events.write({"event": "error", "iteration": done, "error": f"{type(e).__name__}: {e}"})
                if isinstance(e, UserError):
                    raise UserError(f"{e}\n{kept}") from e
                raise
            done = it + 1
            emit(event)
            if done % cfg.checkpoint_every == 0 and done < cfg.iterations:
                self.save_checkpoint(done)
                self.last_checkpoint = done
            if cfg.preview_every and done % cfg.preview_every == 0 and done < cfg.iterations and self.prompts.eval:
                preview = self._write_preview(done)
                if preview is not None:
                    emit(preview)
        self.save_checkpoint(done)
        self.last_checkpoint = done
        lora_path = self.export_lora(done)
        summary = {"iterations_done": done, "cancelled": cancelled, "lora": str(lora_path)}
        if not cancelled:
            summary["after"] = self._write_samples("after")
        if self.dist.is_main:
            events = self.events.read()
            plot_reward_curve(events, self.run_dir / "reward_curve.png")
            its = [e for e in events if e.get("event") == "iteration"]
            if its:
                # the first and the last fifth: one iteration's mean is a few prompts at one step k
                k = max(1, len(its) // 5)
                summary["reward_first"] = sum(e["reward_mean"] for e in its[:k]) / k
                summary["reward_last"] = sum(e["reward_mean"] for e in its[-k:]) / k
                summary["reward_iterations"] = k
            start = next((e for e in events if e.get("event") == "start"), {})
            summary["before"] = start.get("before", {})
            if self.prompts.eval:
                summary["held_out"] = self.held_out_table(summary["before"], summary.get("after", {}))
            atomic_write_json(self.run_dir / "summary.json", summary)
            emit({"event": "cancelled" if cancelled else "done", "iteration": done, **summary})
        return RunResult(self.run_dir, lora_path, done, cancelled, summary)




