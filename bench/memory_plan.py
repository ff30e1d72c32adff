"""GPU memory plan for Flash-GRPO LoRA training of Wan2.1-T2V 1.3B and 14B, on 1 and 8 GPUs.

    python -m bench.memory_plan [--frames 81 --height 480 --width 832] [--micro-batch 1]
                                [--text-len 512] [--lora-rank 16] [--gpu-gib 78] [--json PATH]

Prints a markdown table (GiB per GPU) with one column per setup: each model on 1 GPU, on 8 GPUs
with DDP (``parallel=ddp``: a full copy of the model per GPU) and on 8 GPUs with FSDP full
sharding (``parallel=fsdp``). ``python -m bench.scale`` prints the same table.

Where the numbers come from
---------------------------
Parameter counts are never typed in by hand. The transformer and the VAE are built from the
configs the project ships (``trainer/configs/wan2.1_t2v_*/{transformer,vae}/config.json``) on the
meta device (``with torch.device("meta"): WanTransformer3DModel(**config)``: shapes only, nothing
allocated), and their parameters are counted. The text encoder is transformers'
``UMT5EncoderModel`` built the same way from UMT5-XXL's config (``UMT5_XXL`` below, the values of
google/umt5-xxl, which Wan2.1's ``text_encoder/config.json`` repeats). The LoRA size is counted
from the same meta transformer: ``r * (in + out)`` for every Linear that ``trainer.engine.lora.add_lora``
targets (attention projections of every block; also the FFN with ``lora_ffn``).

Bytes follow the engine (``trainer/engine/recipe.py``, ``trainer/engine/models.py``):

* base transformer weights in bf16, except the modules diffusers keeps in float32 when loading
  with ``torch_dtype=bfloat16`` (``WanTransformer3DModel._keep_in_fp32_modules``: rope,
  time_embedder, scale_shift_table, norms);
* LoRA parameters, their gradients, AdamW's two moments and the EMA copy of the LoRA: float32
  (``_setup_lora`` casts the LoRA to float32; ``ema_decay`` 0.9 in the reference recipe);
* DDP keeps gradient buckets as large as the gradients;
* the VAE in the transformer's dtype (bf16) on CUDA (``FlashGRPORecipe._setup_model``), on the
  GPU for the whole run;
* the UMT5-XXL text encoder in bf16, on the GPU only while the run's prompts are encoded at setup
  (``FlashGRPORecipe._setup_text``), then on the CPU; embeddings are cached unpadded on the CPU.
  On several GPUs only rank 0 has a text encoder (it broadcasts the embeddings), so the "text
  encoding" phase is rank 0's, the largest of the ranks.

Sharding: DDP holds every byte above on every GPU. FSDP full shard (``_setup_parallel``: each LoRA
layer, each block and the root wrapped by ``fully_shard``) holds ``1/N`` of the weights, LoRA,
gradients and optimizer states, plus the parameters that are all-gathered while they are used:
two blocks at a time (the block computing and the next one, which FSDP2 prefetches) and the root
module's own parameters (patch embedding, condition embedder, output head), gathered for the
whole forward/backward. The text encoder and the VAE are not sharded by the engine.

Activations (one transformer call of the update, with gradient checkpointing)
-----------------------------------------------------------------------------
A trained transition goes through the transformer as ``rows = 2 * micro_batch`` rows
(classifier-free guidance: cond and uncond in one batch, ``trainer.engine.rollout.predict_velocity``),
``N = F' * H' * W'`` video tokens per row (latent frames/height/width over the patch size) and
``L = 512`` text tokens. With checkpointing, autograd keeps

1. every block's input: ``rows * N * d * 2`` bytes per block (bf16 hidden states);
2. during the backward of one block, that block's recomputed saved tensors. Counted from what
   autograd saves in a Wan block under bf16 autocast with a peft LoRA on the attention
   projections and frozen base weights (frozen Linears keep no input; the numbers below were
   read off ``torch.autograd.graph.saved_tensors_hooks`` on a small real block and are checked
   again by ``tests/test_scale_bench.py``), per row and token:

   - six float32 copies of ``[N, d]`` that the norms keep (norm1, norm2, norm3 inputs; the
     RMSNorm inputs of q and k in self-attention and of q in cross-attention): 6 * 4d bytes;
   - the bf16 input of each of the 6 token-side LoRA layers (attn1 q, k, v, o; attn2 q, o; peft's
     dtype cast makes each its own copy): 6 * 2d;
   - SDPA's q, k, v, out in self-attention and q, out in cross-attention: 6 * 2d;
   - the FFN's hidden ``[N, ffn_dim]`` before the GELU: 2f;
   - LoRA's rank-r intermediates: 6 * 2r;

   so ``N * (48 d + 2 f + 12 r)`` bytes per row, plus on the text side (cross-attention k, v: LoRA
   inputs, RMSNorm float32 copy, SDPA k and v) ``L * (12 d + 4 r)`` per row, plus the rotary
   tables (``N * head_dim * 4`` bytes) and bf16 casts of the block's LoRA weights;
3. the gradient tensors alive while one block runs backward (estimate: ``rows * N * (16 d + 2 f)``
   bytes: the float32 residual gradient, dq/dk/dv and the FFN hidden's gradient).

The rollout (no gradients) needs only the working set of one block: estimated as
``rows * N * (4 f + 12 d)`` bytes with ``rows = 2 * rollout_batch_size`` (the FFN hidden and its
GELU in bf16, a few float32 residual copies). VAE decoding happens with no transformer activations
alive; its working set is estimated as 6 feature maps (in the VAE's dtype) of the VAE's widest
full-resolution stage for one 4-frame chunk (the Wan VAE decodes a latent frame at a time), over
the whole frame or, with ``vae_tiling``, over one tile of diffusers' ``AutoencoderKLWan`` (256x256
pixels), plus the decoded videos of one ``decode_batch_size`` chunk and their uint8 copy: a rough
figure (one 480x832x81 video decoded in float32 without tiling was measured at about 8 GB, twice
what this formula gives; the GPU check measures it).

Host RAM (``host_plan``, per process): rank 0 loads the pipeline into host RAM (transformer in
bf16, the VAE in float32, the text encoder in bf16) until it is moved to the GPU; afterwards the
text encoder stays there, with the embedding cache (at most ``max_sequence_length`` rows of 4096
bf16 per prompt), one decoded chunk as uint8 plus a reward's float32 copy of it, and the held-out
videos (uint8, before and after). Every other rank of a machine (``recipe.pipeline_parts``) reads
no text encoder (rank 0 broadcasts the embeddings, which it caches too) and, with FSDP, no
transformer weights either: it builds the transformer on the meta device and receives its shards
from rank 0, one tensor at a time, straight onto its GPU. With DDP it reads its own transformer
copy. A machine of N GPUs holds rank 0 and N - 1 others. Python, torch and the CUDA context (a
few GiB) come on top.

The per-GPU peak is the largest of three phases on top of what stays resident (weights, LoRA,
gradients, optimizer states, EMA, VAE): text encoding (plus the text encoder), rollout/decoding
and the update (plus gathered blocks and checkpointed activations). "Fits" compares it with
``--gpu-gib`` (78 GiB: what an 80 GB H100 leaves to tensors after the CUDA context).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path

import torch

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "trainer" / "configs"
"""The diffusers configs shipped with the project."""

MODELS = {"1.3b": "wan2.1_t2v_1.3b", "14b": "wan2.1_t2v_14b"}
"""``--model`` value -> folder under ``trainer/configs``."""

UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
)
"""google/umt5-xxl (Wan2.1's text encoder, ``text_encoder/config.json`` of the Diffusers repos)."""

GIB = 1024**3
BF16, FP32 = 2, 4


# ------------------------------------------------------------------------------ configs ----
def load_config(model: str, component: str = "transformer") -> dict:
    """The shipped diffusers config of ``model`` ("1.3b" or "14b") without ``_`` keys."""
    path = CONFIGS_DIR / MODELS[model] / component / "config.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def latent_shape(config: dict, frames: int, height: int, width: int,
                 temporal: int = 4, spatial: int = 8) -> tuple[int, int, int, int]:
    """``(C, F', H', W')`` of one latent video (Wan VAE: 4x in time, 8x in space)."""
    return (config["in_channels"], (frames - 1) // temporal + 1, height // spatial, width // spatial)


def num_tokens(config: dict, latent: tuple[int, ...]) -> int:
    """Video tokens per row after the transformer's patch embedding."""
    pt, ph, pw = config["patch_size"]
    return (latent[1] // pt) * (latent[2] // ph) * (latent[3] // pw)


def inner_dim(config: dict) -> int:
    return config["num_attention_heads"] * config["attention_head_dim"]


# ------------------------------------------------------------------------ meta modules ----
def meta_transformer(config: dict) -> torch.nn.Module:
    """``WanTransformer3DModel(**config)`` on the meta device: shapes only, no memory."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        return WanTransformer3DModel(**config)


def keeps_fp32(name: str, keep_modules) -> bool:
    """Whether diffusers keeps parameter ``name`` in float32 when loading in bf16 (its rule:
    a module name of ``_keep_in_fp32_modules`` is one of the dotted parts of the name)."""
    return any(m in name.split(".") for m in (keep_modules or ()))


def lora_targets(module: torch.nn.Module, include_ffn: bool = False) -> list[tuple[str, torch.nn.Linear]]:
    """The Linears ``trainer.engine.lora.add_lora`` puts LoRA on, found by the same regex."""
    from trainer.engine.lora import target_regex

    pattern = re.compile(target_regex(include_ffn))
    return [(n, m) for n, m in module.named_modules() if pattern.fullmatch(n)]


def transformer_summary(config: dict, lora_rank: int = 16, lora_ffn: bool = False) -> dict:
    """Parameter counts and bf16 bytes of the transformer built from ``config`` on meta.

    Returns ``params``, ``weight_bytes`` (bf16, float32 where diffusers keeps float32),
    ``block_params`` / ``block_bytes`` (one block), ``root_params`` / ``root_bytes`` (outside the
    blocks: what FSDP's root unit gathers), ``lora_params``.
    """
    model = meta_transformer(config)
    keep = getattr(model, "_keep_in_fp32_modules", None)
    params = weight_bytes = root_params = root_bytes = 0
    for name, p in model.named_parameters():
        nbytes = p.numel() * (FP32 if keeps_fp32(name, keep) else BF16)
        params += p.numel()
        weight_bytes += nbytes
        if not name.startswith("blocks."):
            root_params += p.numel()
            root_bytes += nbytes
    block = model.blocks[0]
    block_params = sum(p.numel() for p in block.parameters())
    block_bytes = sum(p.numel() * (FP32 if keeps_fp32(f"blocks.0.{n}", keep) else BF16)
                      for n, p in block.named_parameters())
    lora = sum(lora_rank * (m.in_features + m.out_features) for _, m in lora_targets(model, lora_ffn))
    return dict(params=params, weight_bytes=weight_bytes, block_params=block_params,
                block_bytes=block_bytes, root_params=root_params, root_bytes=root_bytes,
                lora_params=lora, num_layers=config["num_layers"])


@functools.lru_cache(maxsize=None)
def model_counts(model: str, lora_rank: int = 16, lora_ffn: bool = False) -> dict:
    """``transformer_summary`` of a shipped model ("1.3b"/"14b"), computed once per process."""
    return transformer_summary(load_config(model), lora_rank, lora_ffn)


@functools.lru_cache(maxsize=None)
def text_encoder_params() -> int:
    """Parameters of the UMT5-XXL encoder (transformers ``UMT5EncoderModel`` on meta)."""
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
    return sum(p.numel() for p in model.parameters())  # named_parameters de-duplicates tied weights


@functools.lru_cache(maxsize=None)
def vae_summary(model: str) -> dict:
    """Parameters of the shipped ``AutoencoderKLWan`` config (meta) and its widest full-res width."""
    from diffusers import AutoencoderKLWan

    config = load_config(model, "vae")
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    return {"params": sum(p.numel() for p in vae.parameters()),
            "full_res_channels": config["base_dim"] * config["dim_mult"][0]}


# ------------------------------------------------------------------------- activations ----
def activation_bytes(config: dict, latent: tuple[int, ...], rows: int = 2, text_len: int = 512,
                     lora_rank: int = 16) -> dict:
    """Activation estimates (bytes) for one transformer call of ``rows`` rows (module docstring).

    ``checkpoint_inputs``: every block's saved bf16 input; ``block_saved``: one block's saved
    tensors when it is recomputed in the backward; ``backward_transient``: gradients alive in one
    block's backward; ``rollout_transient``: one block's working set without gradients.
    """
    d, f, r = inner_dim(config), config["ffn_dim"], lora_rank
    n = num_tokens(config, latent)
    per_row = n * (48 * d + 2 * f + 12 * r) + text_len * (12 * d + 4 * r)
    rope = n * config["attention_head_dim"] * FP32
    lora_casts = 8 * r * 2 * d * BF16  # bf16 copies of a block's 8 LoRA A/B pairs under autocast
    return {
        "tokens": n,
        "checkpoint_inputs": config["num_layers"] * rows * n * d * BF16,
        "block_saved": rows * per_row + rope + lora_casts,
        "backward_transient": rows * n * (16 * d + 2 * f),
        "rollout_transient": rows * n * (4 * f + 12 * d),
    }


VAE_TILE = 256
"""Pixels per side of one tile of diffusers' ``AutoencoderKLWan.enable_tiling`` (its default)."""


def vae_decode_bytes(vae: dict, height: int, width: int, chunk_frames: int = 4, maps: int = 6,
                     dtype_bytes: int = FP32, tiling: bool = False) -> int:
    """Rough VAE decode working set: ``maps`` full-resolution feature maps of one chunk, over the
    frame or one tile."""
    if tiling:
        height, width = min(height, VAE_TILE), min(width, VAE_TILE)
    return maps * chunk_frames * height * width * vae["full_res_channels"] * dtype_bytes


# ------------------------------------------------------------------------------- plan ----
def plan(model: str, gpus: int, parallel: str, frames: int = 81, height: int = 480, width: int = 832,
         micro_batch: int = 1, text_len: int = 512, lora_rank: int = 16, lora_ffn: bool = False,
         ema: bool = True, gpu_gib: float = 78.0, rollout_batch: int = 1, decode_batch: int = 1,
         vae_tiling: bool = False, vae_bytes: int = BF16) -> dict:
    """Per-GPU bytes of every item for ``model`` on ``gpus`` GPUs with ``parallel`` ("ddp"/"fsdp").

    One GPU is the same for both (the engine wraps nothing on one process). Returns a dict with
    ``items`` (name -> bytes), the phase peaks, ``peak``, ``fits`` and the counts used.
    """
    config = load_config(model)
    tf, vae, te_params = model_counts(model, lora_rank, lora_ffn), vae_summary(model), text_encoder_params()
    latent = latent_shape(config, frames, height, width)
    act = activation_bytes(config, latent, 2 * micro_batch, text_len, lora_rank)
    rollout_act = activation_bytes(config, latent, 2 * rollout_batch, text_len, lora_rank)
    decoded = decode_batch * 3 * frames * height * width * (vae_bytes + 1)  # VAE output + its uint8 copy
    shard = gpus if (parallel == "fsdp" and gpus > 1) else 1
    lora = tf["lora_params"] * FP32
    items = {
        "base weights (bf16)": tf["weight_bytes"] / shard,
        "LoRA params (fp32)": lora / shard,
        "LoRA grads (fp32)": lora / shard,
        "DDP grad buckets": lora if (parallel == "ddp" and gpus > 1) else 0,
        "AdamW states (fp32, 2x)": 2 * lora / shard,
        "EMA of LoRA (fp32)": lora / shard if ema else 0,
        "VAE weights": vae["params"] * vae_bytes,
        "text encoder (bf16, encoding only)": te_params * BF16,
        "gathered params (FSDP: 2 blocks + root)": (2 * tf["block_bytes"] + tf["root_bytes"]) if shard > 1 else 0,
        "checkpointed block inputs": act["checkpoint_inputs"],
        "one block recomputed": act["block_saved"],
        "backward transient": act["backward_transient"],
        "rollout working set": rollout_act["rollout_transient"],
        "VAE decode working set (rough)": vae_decode_bytes(vae, height, width, dtype_bytes=vae_bytes,
                                                           tiling=vae_tiling) + decoded,
    }
    resident = sum(items[k] for k in ("base weights (bf16)", "LoRA params (fp32)", "LoRA grads (fp32)",
                                      "DDP grad buckets", "AdamW states (fp32, 2x)", "EMA of LoRA (fp32)",
                                      "VAE weights"))
    gathered = items["gathered params (FSDP: 2 blocks + root)"]
    phases = {
        "text encoding": resident + items["text encoder (bf16, encoding only)"],
        "rollout / decode": resident + max(gathered + items["rollout working set"],
                                           items["VAE decode working set (rough)"]),
        "update": resident + gathered + items["checkpointed block inputs"] + items["one block recomputed"]
        + items["backward transient"],
    }
    peak = max(phases.values())
    return {
        "model": model, "gpus": gpus, "parallel": parallel if gpus > 1 else "single",
        "items": items, "phases": phases, "peak": peak, "fits": peak <= gpu_gib * GIB,
        "gpu_gib": gpu_gib, "params": tf["params"], "lora_params": tf["lora_params"],
        "text_encoder_params": te_params, "vae_params": vae["params"], "tokens": act["tokens"],
        "rows": 2 * micro_batch, "latent": list(latent),
        "settings": dict(frames=frames, height=height, width=width, micro_batch=micro_batch,
                         text_len=text_len, lora_rank=lora_rank, lora_ffn=lora_ffn, ema=ema,
                         rollout_batch=rollout_batch, decode_batch=decode_batch, vae_tiling=vae_tiling),
    }


def host_plan(model: str, frames: int = 81, height: int = 480, width: int = 832, text_len: int = 512,
              prompts: int = 1000, decode_batch: int = 1, eval_prompts: int = 2, processes: int = 1) -> dict:
    """Host RAM of rank 0 (``items``, ``phases``, ``peak``), of another rank with DDP and with FSDP
    (``other``: their items and peaks), and of a machine running ``processes`` ranks
    (``machine_peak``: rank 0 and ``processes - 1`` others, per ``parallel``)."""
    tf, vae, te_params = model_counts(model), vae_summary(model), text_encoder_params()
    video = 3 * frames * height * width  # one uint8 video
    items = {
        "transformer while loading (bf16)": tf["weight_bytes"],
        "VAE while loading (fp32)": vae["params"] * FP32,
        "text encoder (bf16, stays on the CPU)": te_params * BF16,
        f"embedding cache ({prompts} prompts, <= {text_len} tokens)": prompts * text_len * UMT5_XXL["d_model"] * BF16,
        "decoded chunk (uint8) + a reward's float32 copy": decode_batch * video * (1 + FP32),
        f"held-out videos (uint8, {eval_prompts} before + after)": 2 * eval_prompts * video,
    }

    def peaks(its: dict) -> dict:
        keys = list(its)
        return {"loading": sum(its[k] for k in keys[:3]), "training": sum(its[k] for k in keys[2:])}

    phases = peaks(items)
    no_text = {**items, "text encoder (bf16, stays on the CPU)": 0}
    other = {"ddp": no_text, "fsdp": {**no_text, "transformer while loading (bf16)": 0}}
    other_peak = {k: max(peaks(v).values()) for k, v in other.items()}
    peak = max(phases.values())
    return {"items": items, "phases": phases, "peak": peak, "other": {"items": other, "peak": other_peak},
            "processes": processes,
            "machine_peak": {k: peak + (processes - 1) * v for k, v in other_peak.items()}}


PRESET_GPU_GIB = {"flash_grpo_wan2.1_1.3b": 78.0, "flow_grpo_wan2.1_1.3b": 78.0,
                  "flash_grpo_wan2.1_1.3b_24gb": 22.0}
"""Memory each CUDA preset may use per GPU: an 80 GB card leaves about 78 GiB to tensors, a 24 GB
card about 22 GiB."""


def preset_plans(prompts: int = 1000) -> list[dict]:
    """``plan`` (1 GPU) and ``host_plan`` with each CUDA preset's own settings."""
    from trainer.engine.config import FlashGRPOConfig
    from trainer.engine.presets import PRESETS

    out = []
    for name, budget in PRESET_GPU_GIB.items():
        cfg = FlashGRPOConfig.from_dict({}, preset=name)
        assert PRESETS[name].get("device") == "cuda", name
        size = dict(frames=cfg.num_frames, height=cfg.height, width=cfg.width)
        p = plan("1.3b", 1, "ddp", **size, micro_batch=cfg.resolved_batch("micro_batch_size", True),
                 text_len=cfg.max_sequence_length, lora_rank=cfg.lora_rank, lora_ffn=cfg.lora_ffn,
                 ema=cfg.ema_decay > 0, gpu_gib=budget,
                 rollout_batch=cfg.resolved_batch("rollout_batch_size", True),
                 decode_batch=cfg.decode_batch_size, vae_tiling=cfg.vae_tiling)
        p["preset"] = name
        p["host"] = host_plan("1.3b", **size, text_len=cfg.max_sequence_length, prompts=prompts,
                              decode_batch=cfg.decode_batch_size, eval_prompts=cfg.eval_prompts, processes=8)
        out.append(p)
    return out


def preset_table(plans: list[dict]) -> str:
    """GPU and host GiB of each CUDA preset, one column per preset."""
    def gib(x):
        return "-" if x == 0 else f"{x / GIB:.2f}"

    lines = ["| GiB | " + " | ".join(f"`{p['preset']}`" for p in plans) + " |", "|---|" + "---:|" * len(plans)]
    keys = ("frames", "height", "width", "micro_batch", "rollout_batch", "decode_batch", "vae_tiling")
    lines.append("| settings | " + " | ".join(
        ", ".join(f"{k}={p['settings'][k]}" for k in keys) for p in plans) + " |")
    for phase in plans[0]["phases"]:
        lines.append(f"| GPU peak: {phase} | " + " | ".join(gib(p["phases"][phase]) for p in plans) + " |")
    lines.append("| **GPU peak** | " + " | ".join(f"**{p['peak'] / GIB:.1f}**" for p in plans) + " |")
    lines.append("| GPU budget | " + " | ".join(f"{p['gpu_gib']:g}" for p in plans) + " |")
    lines.append("| fits? | " + " | ".join(verdict(p) for p in plans) + " |")
    for item in plans[0]["host"]["items"]:
        lines.append(f"| host: {item} | " + " | ".join(gib(p["host"]["items"][item]) for p in plans) + " |")
    for phase in plans[0]["host"]["phases"]:
        lines.append(f"| host peak: {phase} | " + " | ".join(gib(p["host"]["phases"][phase]) for p in plans) + " |")
    lines.append("| **host peak, rank 0** | " + " | ".join(f"**{p['host']['peak'] / GIB:.1f}**" for p in plans) + " |")
    for par in ("ddp", "fsdp"):
        lines.append(f"| host peak, another rank ({par.upper()}) | " + " | ".join(
            f"{p['host']['other']['peak'][par] / GIB:.1f}" for p in plans) + " |")
    for par in ("ddp", "fsdp"):
        lines.append(f"| host peak, 8 processes on one machine ({par.upper()}) | " + " | ".join(
            f"{p['host']['machine_peak'][par] / GIB:.1f}" for p in plans) + " |")
    return "\n".join(lines)


SETUPS = [(1, "ddp"), (8, "ddp"), (8, "fsdp")]
"""(GPUs, parallel) columns of the table, for each model."""


def all_plans(**kw) -> list[dict]:
    """``plan`` for each model and each of ``SETUPS``."""
    return [plan(m, g, p, **kw) for m in MODELS for g, p in SETUPS]


def verdict(p: dict) -> str:
    """"yes", "tight (x GiB spare)" when within 10% of the budget (inside the estimate's error),
    or "**no** (x GiB over)"."""
    spare = p["gpu_gib"] - p["peak"] / GIB
    if spare < 0:
        return f"**no** ({-spare:.1f} over)"
    return f"tight ({spare:.1f} spare)" if spare < 0.1 * p["gpu_gib"] else "yes"


def markdown_table(plans: list[dict]) -> str:
    """The plans as one markdown table, GiB per GPU, plus the counts it rests on."""
    def head(p):
        name = {"1.3b": "1.3B", "14b": "14B"}[p["model"]]
        return f"{name} 1 GPU" if p["gpus"] == 1 else f"{name} {p['gpus']}x {p['parallel'].upper()}"

    def gib(x):
        return "-" if x == 0 else f"{x / GIB:.2f}"

    lines = ["| GiB per GPU | " + " | ".join(head(p) for p in plans) + " |",
             "|---|" + "---:|" * len(plans)]
    for item in plans[0]["items"]:
        lines.append(f"| {item} | " + " | ".join(gib(p["items"][item]) for p in plans) + " |")
    for phase in plans[0]["phases"]:
        lines.append(f"| peak: {phase} | " + " | ".join(gib(p["phases"][phase]) for p in plans) + " |")
    lines.append("| **per-GPU peak** | " + " | ".join(f"**{p['peak'] / GIB:.1f}**" for p in plans) + " |")
    lines.append(f"| fits {plans[0]['gpu_gib']:g} GiB (80 GB card)? | " + " | ".join(verdict(p) for p in plans) + " |")
    s = plans[0]["settings"]
    by_model = {p["model"]: p for p in plans}
    counts = "; ".join(
        f"{m}: transformer {p['params'] / 1e9:.3f}B params, LoRA {p['lora_params'] / 1e6:.2f}M"
        for m, p in by_model.items())
    lines.append("")
    lines.append(
        f"{s['frames']} frames at {s['height']}x{s['width']} -> latents {plans[0]['latent'][1:]} x "
        f"{plans[0]['latent'][0]} channels, {plans[0]['tokens']} video tokens + {s['text_len']} text tokens "
        f"per row, {plans[0]['rows']} rows per transformer call (CFG, {s['micro_batch']} transition(s)). "
        f"LoRA r{s['lora_rank']} on attention{' and FFN' if s['lora_ffn'] else ''}. "
        f"Counts from meta-device builds: {counts}; UMT5-XXL encoder {plans[0]['text_encoder_params'] / 1e9:.2f}B; "
        f"VAE {plans[0]['vae_params'] / 1e6:.1f}M.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--micro-batch", type=int, default=1, help="transitions per transformer call (micro_batch_size)")
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lora-ffn", action="store_true")
    ap.add_argument("--gpu-gib", type=float, default=78.0, help="memory a GPU leaves to tensors")
    ap.add_argument("--json", default="", help="also write the plans as JSON here")
    args = ap.parse_args(argv)
    plans = all_plans(frames=args.frames, height=args.height, width=args.width, micro_batch=args.micro_batch,
                      text_len=args.text_len, lora_rank=args.lora_rank, lora_ffn=args.lora_ffn,
                      gpu_gib=args.gpu_gib)
    print(markdown_table(plans))
    presets = preset_plans()
    print("\nCUDA presets (1 GPU, each with its own size and batch settings; host RAM per process):\n")
    print(preset_table(presets))
    if args.json:
        Path(args.json).write_text(json.dumps({"setups": plans, "presets": presets}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
