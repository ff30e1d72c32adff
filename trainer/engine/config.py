"""The one training config: ``FlashGRPOConfig``.

One dataclass, every field with a default and a help text (TRL style). The CLI flags of
``python -m trainer.train`` and the JSON stored with every checkpoint and in the LoRA metadata are
generated from it. ``validate()`` names the field and the allowed values of anything wrong.

Presets (``PRESETS``) are partial dicts applied on top of the defaults.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..algo.sde import NOISE_SCHEDULES as NOISE_SCHEDULE_NAMES
from ..errors import UserError
from .models import TINY_MODEL, TOY_MODEL
from .presets import PRESETS
from .strategies import DEFAULT_STRATEGY, STRATEGIES, get_strategy

NOISE_SCHEDULES = ("auto", *NOISE_SCHEDULE_NAMES)
CPU_MICRO_BATCH = 8  # transitions per update forward on CPU when micro_batch_size is 0 (auto)


def _strategy_help() -> dict[str, str]:
    """Help texts of the fields whose choices or ``auto``/``null`` defaults come from the strategies."""
    names = list(STRATEGIES)
    on = lambda attr: [n for n in names if getattr(STRATEGIES[n], attr)]  # noqa: E731
    off = lambda attr: [n for n in names if not getattr(STRATEGIES[n], attr)]  # noqa: E731
    return {
        "strategy": "; ".join(f"{s.name}: {s.summary}" for s in STRATEGIES.values()) + ".",
        "noise": ", ".join(f"{s.name}->{s.noise_schedule}" for s in STRATEGIES.values()),
        "rectification": f"on for {', '.join(on('rectification'))}, off for {', '.join(off('rectification'))}",
        "shared_noise": f"on for {', '.join(on('shared_noise'))}, off otherwise",
    }


_HELP = _strategy_help()


def did_you_mean(name: str, names: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``names``, or nothing when none is close."""
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _f(default, help: str, choices: tuple | None = None, **kw):
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class FlashGRPOConfig:
    """Everything a Flash-GRPO run needs. Defaults are a small CPU-friendly run on the tiny model;
    ``PRESETS["flash_grpo_wan2.1_1.3b"]`` is the paper's recipe."""

    # --- model --------------------------------------------------------------------------------
    model: str = _f("tiny", "'tiny' (built-in random-initialised test model), 'toy' (the shipped "
                    "pretrained toy-world model) or a local diffusers Wan2.1 T2V folder (layout of "
                    "Wan2.1-T2V-1.3B-Diffusers).")
    device: str = _f("auto", "Where to run: auto (cuda if available), cpu or cuda.", ("auto", "cpu", "cuda"))
    dtype: str = _f("auto", "Transformer weights/autocast dtype: auto (bfloat16 on CUDA, float32 on "
                    "CPU), float32 or bfloat16. SDE math is always float32.",
                    ("auto", "float32", "bfloat16"))
    parallel: str = _f("ddp", "How several processes share the model: ddp (a full copy per GPU, LoRA "
                       "gradients all-reduced; 1.3B) or fsdp (weights fully sharded, bf16 compute; "
                       "needed for 14B). Ignored on one process.", ("ddp", "fsdp"))
    gradient_checkpointing: bool = _f(True, "Recompute transformer blocks in the backward pass (CUDA only).")
    attention_backend: str = _f("native", "Attention kernel of the transformer, one of diffusers' attention backends: "
                                "native (torch SDPA, which picks its kernel), _native_flash, _native_efficient, "
                                "_native_cudnn, _native_math (SDPA restricted to one kernel), flash (flash-attn "
                                "package), _flash_3 (FlashAttention 3), sage (SageAttention). A backend whose "
                                "package or GPU is missing is refused at setup.",
                                ("native", "_native_flash", "_native_efficient", "_native_cudnn", "_native_math",
                                 "flash", "_flash_3", "sage"))
    compile_blocks: bool = _f(False, "torch.compile each transformer block (in place, after the LoRA, before the "
                              "DDP/FSDP wrapping), meant to speed up GPU runs (not measured yet). The first calls of "
                              "each shape compile (minutes). Needs triton on CUDA and a C++ compiler on the CPU; "
                              "refused at setup where it cannot run.")
    vae_tiling: bool = _f(False, "Decode with diffusers' VAE tiling (enable_tiling): bounded GPU memory for "
                          "large frames; on CUDA the VAE also runs in the transformer's dtype.")
    # --- LoRA ---------------------------------------------------------------------------------
    lora_rank: int = _f(16, "LoRA rank r.")
    lora_alpha: float = _f(32.0, "LoRA alpha (scale alpha/r).")
    lora_ffn: bool = _f(False, "Also put LoRA on the feed-forward layers (attention projections always).")
    lora_init: str = _f("gaussian", "Init of LoRA A (B starts at 0): gaussian (N(0, (1/r)^2), as the Flow-GRPO and "
                        "Flash-GRPO codes do) or kaiming (peft's default Kaiming-uniform, about 4x smaller "
                        "on Wan 1.3B: the same learning rate then trains about 4x slower).", ("gaussian", "kaiming"))
    # --- sampling -----------------------------------------------------------------------------
    height: int = _f(64, "Video height in pixels (multiple of 16).")
    width: int = _f(64, "Video width in pixels (multiple of 16).")
    num_frames: int = _f(9, "Frames per video (4n+1).")
    sampling_steps: int = _f(10, "Sampling steps T of the rollout.")
    eval_sampling_steps: int = _f(10, "Sampling steps of the before/after sample videos.")
    shift: float = _f(3.0, "Time shift of the sigma grid (Wan2.1 480p recipes: 3).")
    guidance_scale: float = _f(4.5, "Classifier-free guidance scale, identical in rollout and training (1 = off).")
    negative_prompt: str = _f("", "Negative prompt for classifier-free guidance.")
    max_sequence_length: int = _f(512, "Text tokens per prompt (Wan: 512).")
    # --- strategy -----------------------------------------------------------------------------
    strategy: str = _f(DEFAULT_STRATEGY, _HELP["strategy"], tuple(STRATEGIES))
    iso_temporal: bool = _f(True, "flash: all samples of a prompt's group share the SDE step k. "
                            "Off = each sample draws its own k (ablation).")
    rectification: bool | None = _f(None, "Weight each trained transition by 1/K(t), normalised to mean 1 "
                                    "over the global batch (temporal gradient rectification). null = the "
                                    f"strategy's default ({_HELP['rectification']}, as published); false with "
                                    "flash = ablation.")
    noise_schedule: str = _f("auto", f"SDE noise scale s(t); auto = the strategy's own ({_HELP['noise']}).",
                             NOISE_SCHEDULES)
    noise_level: float | None = _f(None, "Noise level of the schedule (flash: multiplier, 1.0; "
                                   "flow_grpo: a, 0.7; dance: eta, 0.3). null = the schedule's default.")
    window_start: int = _f(0, "flash: first step index k may take.")
    window_end: int | None = _f(None, "flash: k is drawn uniformly from [window_start, window_end); "
                                "null = half of sampling_steps.")
    timestep_fraction: float = _f(0.99, "flow_grpo: train on the first fraction of each trajectory's steps.")
    dance_train_fraction: float = _f(0.6, "dance: fraction of steps trained, drawn at random per iteration.")
    dance_best_of_n: int = _f(0, "dance: if > 0 (even, <= group_size), train only the n/2 best and the n/2 "
                              "worst samples of each group (DanceGRPO's best-of-n); the others get advantage 0.")
    mix_window_size: int = _f(4, "mixgrpo: width W of the SDE/training window.")
    mix_shift_every: int = _f(25, "mixgrpo: move the window one step toward clean every this many iterations; "
                              "its start runs to sampling_steps - 2 (the last windows shorter), then rolls back.")
    ode_tail_steps: int = _f(0, "Cheaper rollouts: after a sample's last SDE step, finish its trajectory in this "
                             "many steps of a second-order multistep flow solver (Adams-Bashforth 2 in sigma, one "
                             "velocity per step) instead of one Euler step per remaining grid step; those steps "
                             "only make the video that is scored. 0 = off. Evaluation samples keep the full grid.")
    shared_noise: bool | None = _f(None, "Share the initial noise inside a group; with flash the ODE "
                                   "prefix before k is then computed once per group. null = strategy "
                                   f"default ({_HELP['shared_noise']}).")
    # --- GRPO ---------------------------------------------------------------------------------
    prompts_per_iteration: int = _f(2, "Prompts B per iteration (global, over all processes).")
    group_size: int = _f(4, "Videos G sampled per prompt.")
    advantage_std: str = _f("group", "Normalise advantages by each group's std or the global batch's.", ("group", "global"))
    advantage_clip: float = _f(5.0, "Clip advantages to +-this.")
    clip_range: float = _f(1e-3, "PPO ratio clip epsilon.")
    kl_beta: float = _f(0.0, "Weight of the KL to the LoRA-disabled model (0 = off, saves a forward).")
    drop_zero_advantage: bool = _f(True, "Leave transitions whose advantage is exactly 0 (groups without signal, "
                                   "samples a best-of-n filter dropped) out of the loss and of the update's "
                                   "compute, as the reference codes do.")
    # --- optimisation -------------------------------------------------------------------------
    iterations: int = _f(20, "Training iterations (one rollout + one update each).")
    learning_rate: float = _f(1e-4, "AdamW learning rate.")
    weight_decay: float = _f(1e-4, "AdamW weight decay.")
    adam_betas: list = _f([0.9, 0.999], "AdamW betas.")
    max_grad_norm: float = _f(1.0, "Gradient-norm clip (0 = off).")
    updates_per_iteration: int = _f(1, "Optimizer steps per iteration (the batch is split into this many minibatches).")
    micro_batch_size: int = _f(0, "Transitions per forward/backward in the update (each is 2 rows with CFG). "
                               "0 = auto: 8 on CPU (larger batches of gradient rows slow a CPU down more "
                               "than they save), 1 on CUDA.")
    rollout_batch_size: int = _f(0, "Trajectories per transformer forward in the rollout and when sampling "
                                 "(each is 2 rows with CFG). 0 = auto: all at once on CPU, 1 on CUDA.")
    decode_batch_size: int = _f(1, "Videos per VAE decode. Each chunk is turned into uint8 and scored before "
                                "the next is decoded: only scores are kept (videos only for the held-out prompts).")
    ema_decay: float = _f(0.9, "EMA decay of the LoRA weights (0 = off); at optimizer step s the decay is "
                          "min((1 + s) / (10 + s), ema_decay). The exported LoRA is the EMA when on.")
    ema_update_every: int = _f(1, "Update the EMA every this many optimizer steps (the reference codes: 8).")
    # --- rewards ------------------------------------------------------------------------------
    rewards: list = _f([{"name": "brightness", "weight": 1.0}],
                       "Rewards as [{name, weight, args}], summed with their weights.")
    # --- data ---------------------------------------------------------------------------------
    prompts: list = _f([], "Training prompts (used when prompt_file is empty).")
    prompt_file: str = _f("", "Text file with one prompt per line (blank lines and # comments skipped).")
    eval_prompts: int = _f(2, "Prompts held out for evaluation and before/after videos.")
    eval_samples: int = _f(1, "ODE samples per held-out prompt, each from its own initial noise: a prompt's "
                           "held-out score is their mean (one sample's score flips with small changes of "
                           "the model); the videos show the first.")
    # --- run ----------------------------------------------------------------------------------
    seed: int = _f(0, "Seed of everything: model init (tiny), LoRA init, prompt order, steps k, noise, minibatches "
                  "(streams of trainer.seeding).")
    output_dir: str = _f("runs", "Folder that receives one run directory per run.")
    run_name: str = _f("", "Run directory name (empty = strategy + timestamp).")
    checkpoint_every: int = _f(5, "Write a checkpoint every this many iterations (and at the end / on cancel).")
    sample_videos: bool = _f(True, "Write before/after mp4s of the held-out prompts.")
    fps: int = _f(16, "Frames per second of written videos.")
    preview_every: int = _f(0, "Every this many iterations sample the first held-out prompts, write them as "
                            "samples/preview_NNNNN.webp and emit a preview event (shown on the trainer node "
                            "while it trains); 0 = off.")

    # ------------------------------------------------------------------------------------------
    def strategy_impl(self):
        """The ``Strategy`` object of ``strategy`` (``trainer.engine.strategies.STRATEGIES``)."""
        return get_strategy(self.strategy)

    def resolved_noise_schedule(self) -> str:
        return self.strategy_impl().noise_schedule if self.noise_schedule == "auto" else self.noise_schedule

    def resolved_shared_noise(self) -> bool:
        return self.strategy_impl().shared_noise if self.shared_noise is None else bool(self.shared_noise)

    def resolved_rectification(self) -> bool:
        return self.strategy_impl().rectification if self.rectification is None else bool(self.rectification)

    def resolved_batch(self, name: str, cuda: bool) -> int:
        """``rollout_batch_size`` or ``micro_batch_size`` with 0 (auto) resolved: 1 on CUDA; on
        CPU all rows of a rollout step at once (0) and ``CPU_MICRO_BATCH`` transitions per update
        forward. (All of a flow_grpo minibatch in one forward made its update 2x slower than its
        pass count on CPU: ``bench.iteration``.)"""
        value = getattr(self, name)
        if value:
            return value
        if cuda:
            return 1
        return CPU_MICRO_BATCH if name == "micro_batch_size" else 0

    def resolved_window(self) -> tuple[int, int]:
        end = self.sampling_steps // 2 if self.window_end is None else self.window_end
        return self.window_start, max(end, self.window_start + 1)

    def validate(self) -> "FlashGRPOConfig":
        """Check every field; raise ``UserError`` naming the field and what is allowed."""
        problems = []
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                problems.append(f"{f.name}={value!r}: allowed values are {', '.join(map(str, choices))}")

        def need(cond, msg):
            if not cond:
                problems.append(msg)

        need(self.height % 16 == 0 and self.height > 0, f"height={self.height}: must be a positive multiple of 16")
        need(self.width % 16 == 0 and self.width > 0, f"width={self.width}: must be a positive multiple of 16")
        need(self.num_frames >= 1 and (self.num_frames - 1) % 4 == 0, f"num_frames={self.num_frames}: must be 4n+1 (1, 5, 9, ..., 81)")
        need(self.sampling_steps >= 2, f"sampling_steps={self.sampling_steps}: must be >= 2")
        need(self.eval_sampling_steps >= 1, f"eval_sampling_steps={self.eval_sampling_steps}: must be >= 1")
        need(self.shift > 0, f"shift={self.shift}: must be > 0")
        need(self.lora_rank >= 1, f"lora_rank={self.lora_rank}: must be >= 1")
        need(self.group_size >= 2, f"group_size={self.group_size}: must be >= 2 (advantages compare samples of a group)")
        need(self.prompts_per_iteration >= 1, f"prompts_per_iteration={self.prompts_per_iteration}: must be >= 1")
        need(self.iterations >= 1, f"iterations={self.iterations}: must be >= 1")
        need(self.updates_per_iteration >= 1, f"updates_per_iteration={self.updates_per_iteration}: must be >= 1")
        need(self.micro_batch_size >= 0, f"micro_batch_size={self.micro_batch_size}: must be >= 0")
        need(self.rollout_batch_size >= 0, f"rollout_batch_size={self.rollout_batch_size}: must be >= 0")
        need(self.ode_tail_steps >= 0, f"ode_tail_steps={self.ode_tail_steps}: must be >= 0 (0 = off)")
        need(self.decode_batch_size >= 1, f"decode_batch_size={self.decode_batch_size}: must be >= 1")
        need(0.0 <= self.ema_decay < 1.0, f"ema_decay={self.ema_decay}: must be in [0, 1)")
        need(self.ema_update_every >= 1, f"ema_update_every={self.ema_update_every}: must be >= 1")
        need(self.clip_range > 0, f"clip_range={self.clip_range}: must be > 0")
        need(self.advantage_clip > 0, f"advantage_clip={self.advantage_clip}: must be > 0")
        need(self.kl_beta >= 0, f"kl_beta={self.kl_beta}: must be >= 0")
        need(self.learning_rate > 0, f"learning_rate={self.learning_rate}: must be > 0")
        need(self.noise_level is None or self.noise_level > 0, f"noise_level={self.noise_level}: must be > 0 or null")
        need(0 < self.timestep_fraction <= 1, f"timestep_fraction={self.timestep_fraction}: must be in (0, 1]")
        need(0 < self.dance_train_fraction <= 1, f"dance_train_fraction={self.dance_train_fraction}: must be in (0, 1]")
        need(self.dance_best_of_n == 0 or (self.dance_best_of_n % 2 == 0 and 2 <= self.dance_best_of_n <= self.group_size),
             f"dance_best_of_n={self.dance_best_of_n}: must be 0 (off) or an even number in [2, group_size "
             f"({self.group_size})]: the n/2 best and n/2 worst samples of each group are trained")
        if self.strategy == "mixgrpo":  # its own fields, checked only where they apply
            need(1 <= self.mix_window_size <= self.sampling_steps,
                 f"mix_window_size={self.mix_window_size}: must be in [1, sampling_steps ({self.sampling_steps})]")
            need(self.mix_shift_every >= 1, f"mix_shift_every={self.mix_shift_every}: must be >= 1")
        need(self.max_sequence_length >= 1, f"max_sequence_length={self.max_sequence_length}: must be >= 1")
        need(self.checkpoint_every >= 1, f"checkpoint_every={self.checkpoint_every}: must be >= 1")
        need(self.preview_every >= 0, f"preview_every={self.preview_every}: must be >= 0 (0 = off)")
        need(self.eval_prompts >= 0, f"eval_prompts={self.eval_prompts}: must be >= 0")
        need(self.eval_samples >= 1, f"eval_samples={self.eval_samples}: must be >= 1")
        need(isinstance(self.adam_betas, (list, tuple)) and len(self.adam_betas) == 2
             and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.adam_betas),
             f"adam_betas={self.adam_betas}: must be a list of two numbers in [0, 1), e.g. [0.9, 0.999]")
        need(self.weight_decay >= 0, f"weight_decay={self.weight_decay}: must be >= 0")
        need(isinstance(self.prompts, list) and all(isinstance(p, str) for p in self.prompts),
             f"prompts={self.prompts!r}: must be a list of strings (one prompt each)")
        start, end = self.window_start, (self.sampling_steps // 2 if self.window_end is None else self.window_end)
        need(0 <= start < end <= self.sampling_steps,
             f"window_start={start}, window_end={end}: need 0 <= window_start < window_end <= sampling_steps ({self.sampling_steps})")
        need(isinstance(self.rewards, list) and len(self.rewards) > 0, "rewards: give at least one reward, e.g. [{\"name\": \"brightness\"}]")
        if problems:
            raise UserError("invalid config:\n  - " + "\n  - ".join(problems))
        return self

    def with_absolute_paths(self, base: str | Path | None = None) -> "FlashGRPOConfig":
        """A copy whose paths (``prompt_file``, ``output_dir``, a ``model`` folder or file) are
        absolute: ``~`` expanded, a relative path joined to ``base`` (default: the working
        directory). Clients apply it before a config leaves the user's process, so the backend
        reads and writes where the user expects."""
        base = Path.cwd() if base is None else Path(base)

        def absolute(path: str) -> str:
            return os.path.abspath(os.path.join(base, os.path.expanduser(path)))

        changes = {"output_dir": absolute(self.output_dir)}
        if self.prompt_file:
            changes["prompt_file"] = absolute(self.prompt_file)
        if self.model not in (TINY_MODEL, TOY_MODEL):
            changes["model"] = absolute(self.model)
        return dataclasses.replace(self, **changes)

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], preset: str | None = None) -> "FlashGRPOConfig":
        """Build from a dict (a preset's values first, then ``data``); unknown keys are errors."""
        values: dict[str, Any] = {}
        if preset:
            if preset not in PRESETS:
                raise UserError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
            values.update(copy.deepcopy(PRESETS[preset]))  # a config never shares a preset's lists
        names = cls.field_names()
        for key, value in data.items():
            if key not in names:
                raise UserError(f"unknown config field {key!r}{did_you_mean(key, names)}. Fields: {', '.join(names)}")
            values[key] = value
        cfg = cls(**values)
        cfg._coerce_types()
        return cfg.validate()

    def _coerce_types(self) -> None:
        """Convert strings/ints from CLI or JSON to each field's declared type, or name the field."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            try:
                if value is None:
                    if default is not None and "None" not in str(f.type):
                        raise ValueError("null is not allowed")
                    continue
                if isinstance(default, bool) or f.type in ("bool", "bool | None"):
                    if isinstance(value, str):
                        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                            raise ValueError("expected true or false")
                        value = value.lower() in ("true", "1", "yes")
                    value = bool(value)
                elif f.type in ("int", "int | None"):
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError("expected an integer")
                    value = int(value)
                elif f.type in ("float", "float | None"):
                    value = float(value)
                elif f.type == "str":
                    if not isinstance(value, str):
                        raise ValueError("expected a string")
                elif f.type == "list":
                    if isinstance(value, str):
                        value = json.loads(value)
                    if not isinstance(value, list):
                        raise ValueError("expected a list")
            except (TypeError, ValueError) as e:
                raise UserError(f"config field {f.name}={value!r}: {e} ({f.metadata['help']})") from None
            setattr(self, f.name, value)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--field`` flag per config field, with its help text (values parsed later)."""
    for f in dataclasses.fields(FlashGRPOConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar=f.type.upper().split()[0],
            help=f"{f.metadata['help']} (default: {json.dumps(default)}"
                 + (f"; one of {', '.join(choices)})" if choices else ")"),
        )


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line (``None`` = not given)."""
    out = {}
    for name in FlashGRPOConfig.field_names():
        value = getattr(args, name, None)
        if value is not None:
            out[name] = None if value == "null" else value
    return out


def parse_set_items(items: list[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` items as config overrides; values are JSON when they parse (numbers,
    true, null, lists), else strings (``from_dict`` coerces them). ``UserError`` names a bad item."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: write FIELD=VALUE, e.g. --set iterations=10")
        key, value = item.split("=", 1)
        names = FlashGRPOConfig.field_names()
        if key not in names:
            raise UserError(f"--set {key}: not a config field{did_you_mean(key, names)}. Fields: {', '.join(names)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def markdown_reference() -> str:
    """The config reference table of the README (``python -m trainer.engine.config``)."""
    lines = ["| field | default | help |", "|---|---|---|"]
    for f in dataclasses.fields(FlashGRPOConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata["help"].replace("|", "\\|")
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" One of: {', '.join(f'`{c}`' for c in choices)}."
        lines.append(f"| `{f.name}` | `{json.dumps(default)}` | {help_text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_reference())
