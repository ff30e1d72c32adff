"""Presets: partial configs applied on top of ``FlashGRPOConfig``'s defaults (``--preset NAME``).

Kept apart from ``trainer.engine.config`` so that the config does not depend on the toy world
(the ``toy_demo`` preset draws its prompts from ``trainer.toy.world``).
"""

from __future__ import annotations

from typing import Any

from ..toy import world as toy_world

_FLASH_GRPO_1_3B = dict(
    height=480, width=832, num_frames=81, sampling_steps=20, eval_sampling_steps=50, shift=3.0,
    guidance_scale=4.5, strategy="flash", iso_temporal=True, rectification=True,
    noise_schedule="flash", window_start=0, window_end=10, lora_rank=16, lora_alpha=32.0,
    learning_rate=1e-4, weight_decay=1e-4, max_grad_norm=1.0, clip_range=1e-3,
    advantage_clip=5.0, kl_beta=0.0, group_size=8, prompts_per_iteration=8, ema_decay=0.9,
    ema_update_every=8, lora_init="gaussian", advantage_std="global", updates_per_iteration=2,
    drop_zero_advantage=True,
    dtype="bfloat16", device="cuda", iterations=300, micro_batch_size=2, rollout_batch_size=2,
    decode_batch_size=1, vae_tiling=True, gradient_checkpointing=True, checkpoint_every=10,
    rewards=[{"name": "brightness", "weight": 1.0}],
)
"""Flash-GRPO's published recipe for Wan2.1-T2V-1.3B (Flash-GRPO, arXiv 2605.15980): 20 UniPC flow
steps, shift 3, k uniform over the first 10 steps, LoRA r16/alpha 32 with Gaussian A, AdamW 1e-4,
G = 8; as its code runs it: advantages over the batch's std after each prompt's mean, 2 optimizer
steps per rollout (so the 1e-3 ratio clip acts on the second), zero-advantage samples not trained,
EMA min((1 + s) / (10 + s), 0.9) every 8 optimizer steps."""

PRESETS: dict[str, dict[str, Any]] = {
    "flash_grpo_wan2.1_1.3b": _FLASH_GRPO_1_3B,
    # The same recipe on one 24 GB card: 49 frames instead of 81 at 480x832 (bench.memory_plan
    # plans 13.9 GiB at its peak, the text encoder's visit at setup, and 11.9 GiB for the update),
    # one trajectory per rollout forward, one transition per update forward, tiled VAE decoding.
    "flash_grpo_wan2.1_1.3b_24gb": {**_FLASH_GRPO_1_3B, "num_frames": 49, "micro_batch_size": 1,
                                    "rollout_batch_size": 1},
    # Flow-GRPO's Wan recipe (Flow-GRPO, arXiv 2505.05470): full-trajectory SDE with
    # s(t) = a sqrt(t / (1 - t)), a = 0.7, the first 99% of the steps trained, KL beta 0.004.
    "flow_grpo_wan2.1_1.3b": dict(
        height=240, width=416, num_frames=33, sampling_steps=20, eval_sampling_steps=50, shift=3.0,
        guidance_scale=4.5, strategy="flow_grpo", noise_schedule="flow_grpo", noise_level=0.7,
        timestep_fraction=0.99, clip_range=1e-3, kl_beta=0.004, lora_rank=32, lora_alpha=64.0,
        group_size=8, prompts_per_iteration=8, dtype="bfloat16", device="cuda", micro_batch_size=2,
        rollout_batch_size=2, decode_batch_size=1, vae_tiling=True,
    ),
    # The built-in random tiny model on CPU: the fast tests and smoke runs.
    "tiny_demo": dict(
        model="tiny", device="cpu", dtype="float32", height=64, width=64, num_frames=9,
        sampling_steps=10, eval_sampling_steps=10, group_size=4, prompts_per_iteration=2,
        lora_rank=4, lora_alpha=8.0, learning_rate=2e-2, clip_range=0.2, iterations=30,
        max_sequence_length=32, ema_decay=0.0, lora_init="kaiming",
    ),
    # The pretrained toy model (trainer/assets/toy_wan) on CPU: the README's demo recipe (the demo
    # workflow gives its own prompts and reward) and the base of bench.alignment. 4 prompts x 8
    # videos per iteration; 4 optimizer steps per rollout (the update is cheap next to sampling and
    # decoding); advantages over the batch's std; KL to the LoRA-disabled model against drift
    # (without it the demo recolours or loses its objects: README, "Two commands"). Tuned with
    # peft's Kaiming-uniform LoRA init (lr 3e-3), kept.
    "toy_demo": dict(
        model="toy", prompts=toy_world.captions(64, seed=1), eval_prompts=16,
        rewards=[{"name": "toy_position", "weight": 1.0}], device="cpu", dtype="float32", height=64,
        width=64, num_frames=9, sampling_steps=10, eval_sampling_steps=10, group_size=8,
        prompts_per_iteration=4, lora_rank=4, lora_alpha=8.0, learning_rate=3e-3, clip_range=0.2,
        iterations=40, max_sequence_length=32, ema_decay=0.0, shared_noise=True, kl_beta=0.05,
        advantage_std="global", updates_per_iteration=4, lora_init="kaiming",
    ),
}
