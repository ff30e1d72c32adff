"""The GPU check: what one CUDA card does with the real-size Wan2.1 1.3B recipe, in minutes.

    make gpu-check                       # = python -m bench.gpu_check --json bench/out/gpu_check.json
    python -m bench.gpu_check --dry-run  # the same code on the CPU with tiny configs (plumbing only)

Meant for one H100/H200 in under 8 minutes. Everything is built from the configs the project
ships (``trainer/configs/wan2.1_t2v_1.3b``) with random weights, allocated on the GPU in bf16
(keep-in-fp32 modules in float32, LoRA r16 in float32, gradient checkpointing on), so no download
is needed. For each case (the paper's size, 480x832x81, and the ``flash_grpo_wan2.1_1.3b_24gb``
preset's size) it measures, after one warm-up, the median of ``--steps`` repeats:

* **rollout step**: one guided velocity (``predict_velocity``, 2 rows: cond and uncond);
* **update, micro-batch 1 and 2**: forward with gradients, SDE log-probability, clipped
  surrogate, backward through the LoRA, grad clip, AdamW step (``bench.scale.measure``);
* **VAE decode** of one video (``AutoencoderKLWan`` from the shipped config, bf16) with and
  without ``enable_tiling``, straight to uint8 as the recipe does (``vae_to_uint8``); one timed
  decode after the warm-up;
* seconds and peak memory (allocated and reserved by the caching allocator) of each, MFU of the
  transformer phases (analytic FLOPs of ``bench.scale.wan_flops`` over the card's bf16 peak).

Once, at the paper's size: the attention kernels of ``torch.nn.attention.sdpa_kernel``
(flash, memory-efficient, cuDNN; the math kernel is skipped above 8k tokens, its N^2 score
matrix would not fit) on one self-attention call of the 1.3B shape, as ratios to the default
choice measured in the same run; and ``|ratio - 1|`` of the clipped surrogate's importance ratio
before the first update in bf16: ``log p_old`` from a no-grad rollout step in eval mode,
``log p`` recomputed with gradients in train mode with checkpointing, as the recipe's first
update does (it is exactly 1 in float32; bf16 rounding of the two passes is what this shows).

Last, one real recipe iteration end to end (``end_to_end``: the 24 GB preset's settings with a
full-size transformer, 2 videos of one prompt). An out-of-memory phase is reported as such and
the others still run. Without CUDA (and without
``--dry-run``) it refuses with exit status 2 and says why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench import memory_plan as mp  # noqa: E402
from bench import scale  # noqa: E402

GIB = mp.GIB
MATH_MAX_TOKENS = 8192
"""The math SDPA kernel materialises the N x N scores; above this many tokens it is skipped."""

NO_CUDA = ("bench.gpu_check needs a CUDA GPU (torch.cuda.is_available() is False here): nothing "
           "was measured. Run it on an H100/H200 with `make gpu-check`, or check its plumbing on "
           "the CPU with `python -m bench.gpu_check --dry-run`.")


def cases(dry_run: bool) -> list[dict]:
    """What to measure: the paper's size and the 24 GB preset's (tiny sizes in a dry run)."""
    from trainer.engine.config import FlashGRPOConfig

    if dry_run:
        from trainer.engine.models import TINY_CONFIG

        config = {**TINY_CONFIG["transformer"], "patch_size": list(TINY_CONFIG["transformer"]["patch_size"])}
        vae = dict(TINY_CONFIG["vae"])
        return [dict(name="tiny 5x32x32", config=config, vae=vae, frames=5, height=32, width=32, tiling=True),
                dict(name="tiny 9x32x48", config=config, vae=vae, frames=9, height=32, width=48, tiling=True)]
    small = FlashGRPOConfig.from_dict({}, preset="flash_grpo_wan2.1_1.3b_24gb")
    config, vae = mp.load_config("1.3b"), mp.load_config("1.3b", "vae")
    return [dict(name="1.3B 480x832x81", config=config, vae=vae, frames=81, height=480, width=832, tiling=True),
            dict(name=f"1.3B 24gb preset {small.height}x{small.width}x{small.num_frames}", config=config,
                 vae=vae, frames=small.num_frames, height=small.height, width=small.width,
                 tiling=small.vae_tiling)]


def _cuda_peak(out: dict, key: str, device: torch.device) -> None:
    if device.type == "cuda":
        out[f"{key}_peak_bytes"] = torch.cuda.max_memory_allocated()
        out[f"{key}_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def vae_decode(vae_config: dict, frames: int, height: int, width: int, device: torch.device,
               dtype: torch.dtype, steps: int) -> dict:
    """Seconds and peak memory of decoding one video to uint8, with and without tiling."""
    from diffusers import AutoencoderKLWan

    from trainer.engine.recipe import vae_to_uint8

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vae = AutoencoderKLWan(**vae_config).eval()
    finally:
        torch.set_default_dtype(previous)
    z = torch.randn(1, vae_config["z_dim"], (frames - 1) // 4 + 1, height // 8, width // 8,
                    generator=torch.Generator().manual_seed(0)).to(device, dtype)
    timer = scale._Timer(device)
    out = {}
    for tiled in (True, False):
        key = "tiled" if tiled else "untiled"
        (vae.enable_tiling if tiled else vae.disable_tiling)()
        _reset(device)
        try:
            with torch.no_grad():
                out[f"{key}_s"] = timer(lambda: vae_to_uint8(vae.decode(z, return_dict=False)[0]), steps)
        except torch.OutOfMemoryError as exc:
            out[f"{key}_s"] = None
            out[f"{key}_error"] = "out of memory: " + str(exc).split("\n")[0]
        _cuda_peak(out, key, device)
    vae = None  # free the weights before the next phase
    _reset(device)
    return out


def sdpa_kernels(config: dict, tokens: int, device: torch.device, dtype: torch.dtype, steps: int) -> dict:
    """One self-attention call (2 rows, the model's heads) per SDPA backend: seconds and the ratio
    to the default choice."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, tokens, head_dim, generator=g).to(device, dtype) for _ in range(3))
    timer = scale._Timer(device)
    backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "math": SDPBackend.MATH}
    out = {"tokens": tokens, "heads": heads, "head_dim": head_dim, "seconds": {}, "errors": {}}
    for name, backend in backends.items():
        if name == "math" and tokens > MATH_MAX_TOKENS:
            out["errors"][name] = f"skipped: {tokens} tokens > {MATH_MAX_TOKENS} (N^2 scores)"
            continue
        try:
            with sdpa_kernel(backend) if backend is not None else _nullcontext():
                out["seconds"][name] = timer(lambda: F.scaled_dot_product_attention(q, k, v), steps)
        except (RuntimeError, torch.OutOfMemoryError) as exc:  # backend unavailable for this shape/device
            out["errors"][name] = str(exc).split("\n")[0][:200]
    base = out["seconds"].get("default")
    out["ratio_to_default"] = {n: s / base for n, s in out["seconds"].items() if base}
    return out


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def ratio_before_first_update(config: dict, latent: tuple, device: torch.device, dtype: torch.dtype,
                              text_len: int) -> dict:
    """``max |exp(log p - log p_old) - 1|`` of one transition before any optimizer step."""
    from trainer.algo import sde as sde_math
    from trainer.engine.rollout import Conditioning, predict_velocity

    model = scale.build_transformer(config, device, dtype, lora_rank=16, checkpointing=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn((1, *latent), generator=g).to(device)
    text = (1, text_len, config["text_dim"])
    cond = Conditioning(torch.randn(text, generator=g).to(device, dtype),
                        torch.randn(text, generator=g).to(device, dtype), guidance_scale=4.5)
    sigmas = sde_math.sigma_grid(20, 3.0).float()
    k = 4
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    std = sde_math.noise_std("flash", sigma, sigmas)
    with torch.no_grad():
        v = predict_velocity(model, x, sigma, cond, 0, dtype)
        x_next, logp_old, _ = sde_math.sde_step(x, v, sigma, sigma_next, std,
                                                noise=torch.randn(x.shape, generator=g).to(device))
    model.train()
    v = predict_velocity(model, x, sigma, cond, 0, dtype)
    logp = sde_math.sde_log_prob(x_next, sde_math.sde_mean(x, v, sigma, sigma_next, std), sigma, sigma_next, std)
    dev = float((torch.exp(logp.detach() - logp_old) - 1).abs().max())
    del model, v
    _reset(device)
    return {"max_abs_ratio_minus_1": dev, "dtype": str(dtype).replace("torch.", "")}


def end_to_end(dry_run: bool, device: torch.device, dtype: torch.dtype) -> dict:
    """One real ``FlashGRPORecipe`` iteration (rollout, chunked decode to uint8, reward, update)
    with the 24 GB preset's settings and a full-size 1.3B transformer with random weights, the
    real VAE architecture (random weights) and a one-layer UMT5 of the real width (the text
    encoder's size does not matter after setup); 2 videos of one prompt. A dry run uses the tiny
    model at 9x64x64."""
    import tempfile

    from diffusers import AutoencoderKLWan, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from trainer.engine.config import FlashGRPOConfig
    from trainer.engine.models import _tiny_tokenizer, build_tiny_pipeline, make_scheduler
    from trainer.engine.recipe import FlashGRPORecipe

    with tempfile.TemporaryDirectory() as tmp:
        common = dict(prompts_per_iteration=1, group_size=2, eval_prompts=0, sample_videos=False, iterations=1,
                      output_dir=tmp, run_name="e2e", prompts=["a red fox runs through snow"])
        if dry_run:
            cfg = FlashGRPOConfig.from_dict(common, preset="tiny_demo")
            pipe = build_tiny_pipeline()
        else:
            cfg = FlashGRPOConfig.from_dict(common, preset="flash_grpo_wan2.1_1.3b_24gb")
            tokenizer = _tiny_tokenizer()
            torch.manual_seed(0)
            text_encoder = UMT5EncoderModel(UMT5Config(
                vocab_size=len(tokenizer), d_model=mp.UMT5_XXL["d_model"], d_kv=64, d_ff=256, num_layers=1,
                num_heads=4, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")).eval()
            pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder,
                               vae=AutoencoderKLWan(**mp.load_config("1.3b", "vae")).eval(),
                               transformer=scale.build_transformer(mp.load_config("1.3b"), device, dtype,
                                                                   lora_rank=0, checkpointing=False),
                               scheduler=make_scheduler(cfg.shift))
        _reset(device)
        t0 = time.perf_counter()
        recipe = FlashGRPORecipe(cfg, pipeline=pipe).setup()
        setup_s = time.perf_counter() - t0
        event = recipe.run_iteration(0)
        out = {"settings": {k: getattr(cfg, k) for k in ("height", "width", "num_frames", "sampling_steps",
                                                         "group_size", "micro_batch_size", "rollout_batch_size",
                                                         "decode_batch_size", "vae_tiling")},
               "setup_s": setup_s, "seconds": event["seconds"], "loss": event["loss"],
               "ratio_max_dev": event["ratio_max_dev"], "reward_mean": event["reward_mean"]}
        _cuda_peak(out, "iteration", device)
        recipe = pipe = None
    _reset(device)
    return out


def run(dry_run: bool, steps: int, text_len: int) -> dict:
    cuda = not dry_run
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:
        torch.set_num_threads(1)
        text_len = min(text_len, 16)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU dry run ({torch.get_num_threads()} thread)"
    peak = scale.peak_tflops(name) if cuda else None
    result = {"device": {"name": name, "peak_tflops": peak, "dtype": str(dtype).replace("torch.", ""),
                         "torch": torch.__version__}, "dry_run": dry_run, "steps": steps, "cases": []}
    t_start = time.perf_counter()
    for i, case in enumerate(cases(dry_run)):
        t0 = time.perf_counter()
        config = case["config"]
        latent = mp.latent_shape(config, case["frames"], case["height"], case["width"])
        entry = {k: case[k] for k in ("name", "frames", "height", "width", "tiling")}
        entry["latent"], entry["tokens"] = list(latent), mp.num_tokens(config, latent)
        for micro in (1, 2):
            m = scale.measure(config, latent, device, dtype, batch=micro, steps=steps, text_len=text_len)
            rows = dict(rows=2 * micro, text_len=text_len, lora_rank=16)
            flops = {"rollout": scale.wan_flops(config, latent, checkpointing=False, **rows),
                     "update": scale.wan_flops(config, latent, checkpointing=True, **rows)}
            entry[f"micro_batch_{micro}"] = {"measured": m, "utilisation": scale.utilisation(flops, m, peak),
                                             "flops": {k: v["model"] for k, v in flops.items()}}
        entry["vae_decode"] = vae_decode(case["vae"], case["frames"], case["height"], case["width"], device,
                                         dtype, 1)  # one timed decode after the warm-up: they take seconds
        if i == 0:
            entry["sdpa"] = sdpa_kernels(config, entry["tokens"], device, dtype, steps)
            entry["ratio_check"] = ratio_before_first_update(config, latent, device, dtype, text_len)
        entry["seconds"] = time.perf_counter() - t0
        result["cases"].append(entry)
    t0 = time.perf_counter()
    try:
        result["end_to_end"] = end_to_end(dry_run, device, dtype)
    except torch.OutOfMemoryError as exc:
        result["end_to_end"] = {"error": "out of memory: " + str(exc).split("\n")[0]}
    result["end_to_end"]["wall_s"] = time.perf_counter() - t0
    result["seconds"] = time.perf_counter() - t_start
    return result


def _s(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _gib(x) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def table(result: dict) -> str:
    """The measurements as markdown: one row per case and phase."""
    lines = [f"Device: {result['device']['name']} (bf16 peak {result['device']['peak_tflops'] or '?'} TFLOPS), "
             f"{result['device']['dtype']}, median of {result['steps']} after a warm-up.", "",
             "| case | phase | seconds | peak allocated GiB | peak reserved GiB | MFU |", "|---|---|---:|---:|---:|---:|"]
    for c in result["cases"]:
        m1, m2 = c["micro_batch_1"], c["micro_batch_2"]
        rows = [("rollout step (2 rows)", m1["measured"].get("rollout_step_s"), m1["measured"], "rollout",
                 m1["utilisation"]["rollout_mfu"]),
                ("update, micro-batch 1", m1["measured"].get("update_s"), m1["measured"], "update",
                 m1["utilisation"]["update_mfu"]),
                ("update, micro-batch 2", m2["measured"].get("update_s"), m2["measured"], "update",
                 m2["utilisation"]["update_mfu"])]
        for label, secs, m, key, mfu in rows:
            lines.append(f"| {c['name']} | {label} | {_s(secs)} | {_gib(m.get(f'{key}_peak_bytes'))} | "
                         f"{_gib(m.get(f'{key}_peak_reserved_bytes'))} | {_pct(mfu)} |")
        vae = c["vae_decode"]
        for key in ("tiled", "untiled"):
            lines.append(f"| {c['name']} | VAE decode, 1 video, {key} | {_s(vae.get(f'{key}_s'))} | "
                         f"{_gib(vae.get(f'{key}_peak_bytes'))} | {_gib(vae.get(f'{key}_peak_reserved_bytes'))} | |")
    first = result["cases"][0]
    sd = first["sdpa"]
    lines += ["", f"SDPA on one self-attention call ({sd['tokens']} tokens, {sd['heads']} heads x {sd['head_dim']}):", "",
              "| kernel | seconds | x default |", "|---|---:|---:|"]
    for name in ("default", "flash", "efficient", "cudnn", "math"):
        if name in sd["seconds"]:
            lines.append(f"| {name} | {_s(sd['seconds'][name])} | {sd['ratio_to_default'].get(name, 0):.2f} |")
        else:
            lines.append(f"| {name} | - | {sd['errors'].get(name, '')} |")
    rc = first["ratio_check"]
    lines += ["", f"|ratio - 1| before the first update ({rc['dtype']}): {rc['max_abs_ratio_minus_1']:.2e}"]
    e2e = result["end_to_end"]
    if "error" in e2e:
        lines.append(f"End-to-end recipe iteration: {e2e['error']}")
    else:
        sec = e2e["seconds"]
        lines.append(f"End-to-end recipe iteration ({e2e['settings']}): setup {e2e['setup_s']:.1f} s, rollout "
                     f"{sec['rollout']:.1f} s, decode + reward {sec['reward']:.1f} s, update {sec['update']:.1f} s, "
                     f"|ratio - 1| {e2e['ratio_max_dev']:.2e}, peak reserved "
                     f"{_gib(e2e.get('iteration_peak_reserved_bytes'))} GiB.")
    lines.append(f"Total: {result['seconds']:.0f} s.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU: checks the plumbing only")
    ap.add_argument("--steps", type=int, default=2, help="timed repeats per phase after one warm-up")
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--json", default="", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    result = run(args.dry_run, args.steps, args.text_len)
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
