"""The pack's node types, defined once for ComfyUI and for the headless runner.

Classic ComfyUI node classes (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``, tooltips). They
import nothing from ComfyUI: what differs between hosts (progress, interrupt, folders) goes
through ``trainer.host.current()``. ComfyUI registers them from ``nodes/``; ``python -m
trainer.run`` executes workflows made of them.

Custom socket types:

* ``FLASH_MODEL``: which Wan model to train (a dict: ``model``, ``device``, ``dtype``, ``gpus``).
* ``FLASH_PROMPTS``: the prompt set (``prompts``, ``eval_prompts``).
* ``FLASH_REWARD``: a list of reward specs ``{"name", "weight", "args"}``, summed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import host
from .config import PRESETS, STRATEGIES, FlashGRPOConfig
from .errors import UserError
from .models import TINY_MODEL
from .rewards import available_rewards, build_reward_set

CATEGORY = "Flash-GRPO"
MODEL_ENV = "FLASH_GRPO_MODEL"


def _check_model(model: str) -> None:
    """Fail early (before any heavy work) when a model folder is missing or malformed."""
    if model == TINY_MODEL:
        return
    path = Path(os.path.expanduser(model))
    if not path.is_dir():
        raise UserError(
            f"model folder not found: {path}\n"
            f"Download Wan2.1-T2V-1.3B-Diffusers (or 14B) to a local folder and point at it: the "
            f"workflow's model input, `--model PATH` of trainer.run, or the {MODEL_ENV} environment "
            "variable. Use model 'tiny' for the built-in test model."
        )
    missing = [n for n in ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer") if not (path / n).exists()]
    if missing:
        raise UserError(
            f"{path} is not a diffusers Wan folder: missing {', '.join(missing)} (expected the "
            "layout of Wan2.1-T2V-1.3B-Diffusers)."
        )


class FlashGRPOModelSource:
    """Which Wan2.1 text-to-video model to align, and on what hardware."""

    DESCRIPTION = "Selects the Wan2.1 T2V model the Flash-GRPO trainer aligns."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("STRING", {"default": TINY_MODEL, "tooltip":
                "'tiny' for the built-in test model, or the path of a local diffusers Wan2.1 T2V "
                "folder (e.g. Wan2.1-T2V-1.3B-Diffusers). Headless, --model or FLASH_GRPO_MODEL override it."}),
            "device": (["auto", "cpu", "cuda"], {"default": "auto", "tooltip": "auto = CUDA when available."}),
            "dtype": (["auto", "bfloat16", "float32"], {"default": "auto", "tooltip":
                "Weights/autocast dtype; auto = bfloat16 on CUDA, float32 on CPU. SDE math is always float32."}),
            "gpus": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "GPUs (processes) the training backend uses."}),
        }}

    RETURN_TYPES = ("FLASH_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "select"
    CATEGORY = CATEGORY

    def select(self, model, device, dtype, gpus):
        model = model.strip()
        _check_model(model)
        return ({"model": model, "device": device, "dtype": dtype, "gpus": int(gpus)},)


class FlashGRPOPrompts:
    """The prompts to align on, typed or from a text file, with a held-out split."""

    DESCRIPTION = "Training prompts (one per line) and how many are held out for before/after evaluation."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                "One prompt per line; blank lines and lines starting with # are skipped. Empty = the "
                "prompt file, or the built-in demo prompts when both are empty."}),
            "prompt_file": ("STRING", {"default": "", "tooltip":
                "Optional text file with one prompt per line (in ComfyUI: a name inside the input folder)."}),
            "eval_prompts": ("INT", {"default": 2, "min": 0, "max": 1000, "tooltip":
                "Prompts held out from training for before/after videos and evaluation reward."}),
        }}

    RETURN_TYPES = ("FLASH_PROMPTS",)
    RETURN_NAMES = ("prompts",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, prompts, prompt_file, eval_prompts):
        lines = [line.strip() for line in prompts.splitlines()]
        typed = [line for line in lines if line and not line.startswith("#")]
        file = str(host.current().input_file(prompt_file)) if prompt_file.strip() else ""
        return ({"prompts": typed, "prompt_file": file, "eval_prompts": int(eval_prompts)},)


class FlashGRPOReward:
    """One reward with its weight; chain several to sum them."""

    DESCRIPTION = "Adds a reward to the reward set (weighted sum of everything chained into it)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reward": (available_rewards(), {"tooltip": "A registered reward (see the README's reward list)."}),
                "weight": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.05, "tooltip":
                    "Weight of this reward in the sum."}),
                "args": ("STRING", {"default": "{}", "tooltip":
                    "Reward arguments as JSON, e.g. {\"rgb\": [255, 0, 0]} for color or {\"every\": 4}."}),
            },
            "optional": {
                "previous": ("FLASH_REWARD", {"tooltip": "Rewards to add this one to."}),
            },
        }

    RETURN_TYPES = ("FLASH_REWARD",)
    RETURN_NAMES = ("reward",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, reward, weight, args, previous=None):
        try:
            parsed = json.loads(args or "{}")
        except json.JSONDecodeError as e:
            raise UserError(f"reward {reward}: args is not valid JSON ({e}); write e.g. {{\"every\": 4}}") from None
        specs = list(previous or []) + [{"name": reward, "weight": float(weight), "args": parsed}]
        build_reward_set(specs)  # validate names and arguments now, not after loading the model
        return (specs,)


class FlashGRPOTrainer:
    """Runs Flash-GRPO LoRA training and outputs the aligned LoRA."""

    DESCRIPTION = ("Trains a LoRA with Flash-GRPO (or a baseline strategy) toward the reward. Writes a run "
                   "directory with checkpoints, events, sample videos, a reward curve and the LoRA.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("FLASH_MODEL", {"tooltip": "From Flash-GRPO Model Source."}),
                "prompts": ("FLASH_PROMPTS", {"tooltip": "From Flash-GRPO Prompts."}),
                "reward": ("FLASH_REWARD", {"tooltip": "From Flash-GRPO Reward (chain several to sum)."}),
                "preset": (list(PRESETS), {"default": "tiny_demo", "tooltip":
                    "Base values for every setting not on this node (resolution, steps, CFG, ...)."}),
                "strategy": (list(STRATEGIES), {"default": "flash", "tooltip":
                    "flash = Flash-GRPO (one SDE step per prompt); flow_grpo = full trajectory; dance = "
                    "DanceGRPO; mixgrpo = sliding window."}),
                "iterations": ("INT", {"default": 30, "min": 1, "max": 100000, "tooltip": "Training iterations."}),
                "prompts_per_iteration": ("INT", {"default": 2, "min": 1, "max": 1024, "tooltip":
                    "Prompts per iteration (over all GPUs)."}),
                "group_size": ("INT", {"default": 4, "min": 2, "max": 64, "tooltip": "Videos sampled per prompt."}),
                "learning_rate": ("FLOAT", {"default": 3e-3, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False,
                                            "tooltip": "AdamW learning rate of the LoRA."}),
                "lora_rank": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "LoRA rank (alpha = 2 x rank)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": True,
                                 "tooltip": "Seed of the whole run (plans, noise, prompt order)."}),
                "run_name": ("STRING", {"default": "", "tooltip":
                    "Run directory name; empty = strategy + time. Reuse a name with resume to continue."}),
                "resume": ("BOOLEAN", {"default": False, "tooltip":
                    "Continue the run named run_name from its last checkpoint."}),
            },
            "optional": {
                "config_overrides": ("STRING", {"multiline": True, "default": "{}", "tooltip":
                    "Any other config field as JSON, e.g. {\"kl_beta\": 0.004, \"sampling_steps\": 20}."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("lora_name", "run_dir", "metrics")
    OUTPUT_NODE = True
    FUNCTION = "train"
    CATEGORY = CATEGORY

    def train(self, model, prompts, reward, preset, strategy, iterations, prompts_per_iteration,
              group_size, learning_rate, lora_rank, seed, run_name, resume, config_overrides="{}",
              unique_id=None):
        try:
            overrides = json.loads(config_overrides or "{}")
        except json.JSONDecodeError as e:
            raise UserError(f"config_overrides is not valid JSON: {e}") from None
        if not isinstance(overrides, dict):
            raise UserError("config_overrides must be a JSON object like {\"kl_beta\": 0.004}")
        values = {
            "model": model["model"], "device": model["device"], "dtype": model["dtype"],
            "prompts": prompts["prompts"], "prompt_file": prompts["prompt_file"],
            "eval_prompts": prompts["eval_prompts"], "rewards": reward, "strategy": strategy,
            "iterations": iterations, "prompts_per_iteration": prompts_per_iteration,
            "group_size": group_size, "learning_rate": learning_rate, "lora_rank": lora_rank,
            "lora_alpha": 2.0 * lora_rank, "seed": seed, "run_name": run_name,
        }
        values.update(overrides)
        cfg = FlashGRPOConfig.from_dict(values, preset=preset)
        if resume and not cfg.run_name:
            raise UserError("resume needs the run_name of the run to continue.")
        h = host.current()
        cfg.output_dir = str(h.runs_dir(cfg.output_dir))
        from .jobs import run_training

        result = run_training(cfg, resume=resume, gpus=model["gpus"],
                              should_stop=h.interrupted,
                              on_event=lambda e: h.progress(unique_id, e.get("iteration", 0) + 1, cfg.iterations, e)
                              if e.get("event") == "iteration" else None)
        lora_name = h.publish_lora(result.lora_path) if result.lora_path else ""
        metrics = json.dumps(result.summary, sort_keys=True)
        return {"ui": {"text": [f"{result.iterations_done}/{cfg.iterations} iterations, LoRA {lora_name}"]},
                "result": (lora_name, str(result.run_dir), metrics)}


NODE_CLASS_MAPPINGS = {
    "FlashGRPOModelSource": FlashGRPOModelSource,
    "FlashGRPOPrompts": FlashGRPOPrompts,
    "FlashGRPOReward": FlashGRPOReward,
    "FlashGRPOTrainer": FlashGRPOTrainer,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "FlashGRPOModelSource": "Flash-GRPO Model Source",
    "FlashGRPOPrompts": "Flash-GRPO Prompts",
    "FlashGRPOReward": "Flash-GRPO Reward",
    "FlashGRPOTrainer": "Flash-GRPO Trainer",
}
