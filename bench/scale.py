"""Scale on paper and on GPU: seconds, peak memory and FLOP utilisation of the full-size Wan2.1.

    python -m bench.scale --model 1.3b|14b [--frames 81 --height 480 --width 832] [--batch 1]
                          [--steps 3] [--device cuda] [--peak-tflops T] [--json PATH]
    python -m bench.scale --device cpu --tiny-test --json out.json    # CI / tests

What it measures (CUDA)
-----------------------
The transformer is built from the shipped config (``trainer/configs/wan2.1_t2v_<model>/``) with
random weights, really allocated on the GPU: bf16, except the modules diffusers keeps in float32
when loading in bf16 (``_keep_in_fp32_modules``). The recipe's LoRA goes on with
``trainer.engine.lora.add_lora`` (r16, alpha 32, attention projections), cast to float32 like
``FlashGRPORecipe._setup_lora`` does, and gradient checkpointing is on (the recipe's default on
CUDA; ``--no-checkpointing`` turns it off). Latents: ``[16, (frames-1)/4+1, height/8, width/8]``
(81x480x832 -> ``[16, 21, 60, 104]``, 32760 video tokens), text embeddings of 512 tokens. Then,
each warmed up once and timed ``--steps`` times (median):

* **rollout step**: one guided velocity, ``trainer.engine.rollout.predict_velocity`` under ``no_grad``,
  bf16 autocast: cond and uncond rows in one call, so ``2 * batch`` rows;
* **update**: one trained transition as ``FlashGRPORecipe.update`` does it: the guided velocity
  with gradients, ``sde_mean`` / ``sde_log_prob`` of the stored ``x_{k+1}``, the clipped
  surrogate, backward through the LoRA (recomputing checkpointed blocks), grad-norm clip and an
  AdamW step;
* **peak memory** per phase: ``torch.cuda.max_memory_allocated`` (reset before each phase);
  includes the weights. An out-of-memory phase is reported as such, the others still run.

FLOPs are counted analytically (``wan_flops``) from the config and the shapes, matmul-like work
only (as ``torch.utils.flop_counter.FlopCounterMode`` counts: Linear, conv, attention; no
elementwise ops), 2 FLOPs per multiply-add:

* Linear ``2 * tokens * in * out``; the patch embedding (a conv with stride = kernel) likewise;
* self-attention ``4 * N^2 * d`` per block (``QK^T`` and ``PV``), cross-attention
  ``4 * N * L * d`` with ``L = 512`` text tokens plus the k/v projections of the text tokens;
  the text and time embedders; the output projection; the LoRA (``2 * T * r * (in + out)``).
* Backward: only LoRA weights train. A frozen Linear whose input needs a gradient costs its
  input gradient (1x its forward); one whose input needs none (the patch embedding, the text/time
  embedders, cross-attention k/v of the text, self-attention q/k/v of the first block) costs
  nothing; attention costs 2x its forward (dS, dV, dQ, dK); a LoRA layer costs its two weight
  gradients plus the gradient through its rank-r middle (and its input gradient when needed).
  So the backward lies between 1x the forward (Linear-bound) and 2x (attention-bound): about
  1.5x at 81x480x832, where self-attention is half of the forward; full fine-tuning would be 2x.
  (``FlopCounterMode`` counts a CUDA flash-attention backward as 2.5x its forward, because the
  kernel recomputes the scores; that recomputation is hardware work, not model FLOPs.)
* Checkpointing recomputes every block's forward once in the backward.

``MFU`` divides the model FLOPs (forward + backward, no recomputation) by the measured time and
the card's dense bf16 peak (``PEAK_TFLOPS``, by device name; ``--peak-tflops`` otherwise);
``HFU`` counts the recomputed forward as well. The rollout step has no backward: MFU = HFU.

Without CUDA the script says so, prints the FLOP counts and the memory plan
(``bench.memory_plan``) and exits 0. ``--device cpu --tiny-test`` runs the same measurement code
on the built-in tiny Wan config at 5x32x32 on the CPU (float32, one thread), which is what
``tests/test_scale_bench.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench import memory_plan as mp  # noqa: E402

PEAK_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("4090", 165.0),
]
"""Dense bf16 tensor-core peak (TFLOPS) by a substring of ``torch.cuda.get_device_name()``; the
first match wins (so "H100 PCIe" before the SXM "H100")."""

PRESET_ITERATION = dict(videos=64, steps=20, transitions=64)
"""One iteration of Flash-GRPO's Wan2.1-1.3B recipe (arXiv 2605.15980): B = 8 prompts x G = 8
videos, T = 20 sampling steps, one trained SDE step per video."""

TINY = dict(frames=5, height=32, width=32)
"""Resolution of ``--tiny-test`` (latents [4, 2, 4, 4] with the tiny config: 8 tokens)."""


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak from ``PEAK_TFLOPS``, or None when the name is unknown."""
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


# ------------------------------------------------------------------------------ FLOPs ----
def _linear(tokens: int, fin: int, fout: int, input_grad: bool) -> tuple[int, int]:
    """(forward, backward) FLOPs of a frozen Linear: the backward is the input gradient only."""
    fwd = 2 * tokens * fin * fout
    return fwd, fwd if input_grad else 0


def _lora(tokens: int, fin: int, fout: int, r: int, input_grad: bool) -> tuple[int, int]:
    """(forward, backward) of a LoRA branch ``y = (x A^T) B^T``, both factors trained.

    Backward: ``dB = dy^T h`` and ``dh = dy B`` (``2 T r out`` each), ``dA = dh^T x``
    (``2 T r in``), and ``dx = dh A`` (``2 T r in``) only when the input needs a gradient.
    """
    fwd = 2 * tokens * r * (fin + fout)
    bwd = 4 * tokens * r * fout + 2 * tokens * r * fin + (2 * tokens * r * fin if input_grad else 0)
    return fwd, bwd


def wan_flops(config: dict, latent: tuple[int, ...], rows: int = 2, text_len: int = 512,
              lora_rank: int = 16, lora_ffn: bool = False, checkpointing: bool = True) -> dict:
    """Analytic FLOPs of one ``WanTransformer3DModel`` call on ``rows`` rows (module docstring).

    ``latent`` is ``(C, F', H', W')``; ``lora_rank`` 0 means no LoRA. Returns ``forward``,
    ``backward`` (LoRA-only training), ``recompute`` (checkpointed blocks, 0 without),
    ``model`` (forward + backward), ``hardware`` (model + recompute) and ``parts`` (forward by
    component). All totals are for all ``rows``.
    """
    d, f, r, L = mp.inner_dim(config), config["ffn_dim"], lora_rank, text_len
    n = mp.num_tokens(config, latent)
    patch = 1
    for p in config["patch_size"]:
        patch *= p
    parts = {k: [0, 0] for k in ("embed", "self_attn_proj", "self_attn_core", "cross_attn_proj",
                                 "cross_attn_core", "ffn", "lora", "proj_out")}

    def add(part, pair):
        parts[part][0] += pair[0]
        parts[part][1] += pair[1]

    def lora(tokens, fin, fout, input_grad):
        if r > 0:
            add("lora", _lora(tokens, fin, fout, r, input_grad))

    # Embeddings: nothing upstream needs a gradient.
    add("embed", (2 * n * config["in_channels"] * patch * d, 0))  # patch embedding (conv)
    fd = config["freq_dim"]
    add("embed", (2 * (fd * d + d * d + d * 6 * d), 0))  # time embedder (2 Linears) + time_proj
    add("embed", (2 * L * (config["text_dim"] * d + d * d), 0))  # text embedder (2 Linears)
    block_fwd = 0
    for b in range(config["num_layers"]):
        before = sum(v[0] for v in parts.values())
        x_grad = b > 0  # block 0's input comes from the patch embedding: no gradient needed
        for _ in range(3):  # attn1 q, k, v
            add("self_attn_proj", _linear(n, d, d, x_grad))
            lora(n, d, d, x_grad)
        add("self_attn_core", (4 * n * n * d, 8 * n * n * d))
        add("self_attn_proj", _linear(n, d, d, True))  # attn1 out
        lora(n, d, d, True)
        for _ in range(2):  # attn2 q, out
            add("cross_attn_proj", _linear(n, d, d, True))
            lora(n, d, d, True)
        for _ in range(2):  # attn2 k, v on the text tokens (no gradient into the text)
            add("cross_attn_proj", _linear(L, d, d, False))
            lora(L, d, d, False)
        add("cross_attn_core", (4 * n * L * d, 8 * n * L * d))
        add("ffn", _linear(n, d, f, True))
        add("ffn", _linear(n, f, d, True))
        if lora_ffn:
            lora(n, d, f, True)
            lora(n, f, d, True)
        block_fwd += sum(v[0] for v in parts.values()) - before
    add("proj_out", _linear(n, d, config["out_channels"] * patch, True))
    forward = rows * sum(v[0] for v in parts.values())
    backward = rows * sum(v[1] for v in parts.values())
    recompute = rows * block_fwd if checkpointing else 0
    return {
        "forward": forward, "backward": backward, "recompute": recompute,
        "model": forward + backward, "hardware": forward + backward + recompute,
        "parts": {k: rows * v[0] for k, v in parts.items()}, "tokens": n, "rows": rows,
    }


# ------------------------------------------------------------------------ measurement ----
def build_transformer(config: dict, device: torch.device, dtype: torch.dtype, lora_rank: int,
                      checkpointing: bool, seed: int = 0):
    """Random-weight ``WanTransformer3DModel`` allocated on ``device``, with the recipe's LoRA.

    Built directly in ``dtype`` (a 14B model in float32 would not fit one GPU), then the
    parameters diffusers keeps in float32 are cast back, and the LoRA is float32.
    """
    from diffusers import WanTransformer3DModel

    from trainer.engine import lora as lora_lib

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    keep = getattr(model, "_keep_in_fp32_modules", None)
    for name, p in model.named_parameters():
        if mp.keeps_fp32(name, keep):
            p.data = p.data.float()
    model.requires_grad_(False)
    if lora_rank:  # 0: the plain model (a recipe puts its own LoRA on)
        lora_lib.add_lora(model, rank=lora_rank, alpha=2 * lora_rank, init_seed=seed)
        for _, p in lora_lib.lora_parameters(model):
            p.data = p.data.float()
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model.eval()


class _Timer:
    """Wall-clock seconds with CUDA synchronisation around the timed call."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, steps: int) -> float:
        fn()  # warm-up (kernels, allocator, cuDNN/SDPA selection)
        times = []
        for _ in range(max(steps, 1)):
            if self.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if self.cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return float(statistics.median(times))


def measure(config: dict, latent: tuple[int, ...], device: torch.device, dtype: torch.dtype,
            batch: int = 1, steps: int = 3, text_len: int = 512, lora_rank: int = 16,
            checkpointing: bool = True) -> dict:
    """Time one rollout step and one update (module docstring); peak memory on CUDA.

    Returns seconds (``rollout_step_s``, ``update_s``; None when out of memory), peak bytes per
    phase on CUDA (``*_peak_bytes`` allocated, ``*_peak_reserved_bytes`` reserved by the caching
    allocator), ``weights_bytes`` and ``errors`` (phase -> message).
    """
    from trainer.algo import sde as sde_math
    from trainer.algo.grpo import clipped_surrogate
    from trainer.engine import lora as lora_lib
    from trainer.engine.rollout import Conditioning, predict_velocity

    cuda = device.type == "cuda"
    out: dict = {"errors": {}}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = build_transformer(config, device, dtype, lora_rank, checkpointing)
    if cuda:
        torch.cuda.synchronize()
        out["weights_bytes"] = torch.cuda.memory_allocated()
    params = [p for _, p in lora_lib.lora_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)

    g = torch.Generator().manual_seed(1)
    x = torch.randn((batch, *latent), generator=g).to(device)
    text = (batch, text_len, config["text_dim"])
    cond = Conditioning(torch.randn(text, generator=g).to(device, dtype),
                        torch.randn(text, generator=g).to(device, dtype), guidance_scale=4.5)
    sigmas = sde_math.sigma_grid(20, 3.0).float()
    k = 4  # a step inside the Flash-GRPO window (first 10 of 20)
    sigma, sigma_next = sigmas[k], sigmas[k + 1]
    std = sde_math.noise_std("flash", sigma, sigmas)
    timer = _Timer(device)

    def rollout_step():
        with torch.no_grad():
            return predict_velocity(model, x, sigma, cond, 0, dtype)

    def phase(name, fn):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            seconds = timer(fn, steps)
        except torch.OutOfMemoryError as exc:
            out["errors"][name] = "out of memory: " + str(exc).split("\n")[0]
            seconds = None
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            out[f"{name}_peak_bytes"] = torch.cuda.max_memory_allocated()
            out[f"{name}_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
            torch.cuda.empty_cache()
        return seconds

    out["rollout_step_s"] = phase("rollout", rollout_step)

    # The stored transition of the update: x_{k+1} and log p_old from an SDE step.
    with torch.no_grad():
        v = rollout_step() if "rollout" not in out["errors"] else torch.zeros_like(x)
        x_next, logp_old, _ = sde_math.sde_step(x, v, sigma, sigma_next, std,
                                                noise=torch.randn(x.shape, generator=g).to(device))
        del v
    advantage = torch.ones(batch, device=device)

    def update():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        v = predict_velocity(model, x, sigma, cond, 0, dtype)
        mean = sde_math.sde_mean(x, v, sigma, sigma_next, std)
        logp = sde_math.sde_log_prob(x_next, mean, sigma, sigma_next, std)
        loss = clipped_surrogate(logp, logp_old, advantage, 1e-3).loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        model.eval()

    out["update_s"] = phase("update", update)
    if cuda:
        out["peak_bytes"] = max(out.get("rollout_peak_bytes", 0), out.get("update_peak_bytes", 0))
    else:
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = optimizer = None  # drop the weights (the closures above hold them too) before emptying the cache
    if cuda:
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- report ----
def utilisation(flops: dict, measured: dict, peak: float | None) -> dict:
    """Achieved TFLOP/s, MFU and HFU of both phases (None where a time or the peak is missing)."""
    def rate(f, s):
        return f / s / 1e12 if s else None

    def frac(f, s):
        return f / s / (peak * 1e12) if (s and peak) else None

    t_roll, t_upd = measured.get("rollout_step_s"), measured.get("update_s")
    return {
        "rollout_tflops_per_s": rate(flops["rollout"]["forward"], t_roll),
        "rollout_mfu": frac(flops["rollout"]["forward"], t_roll),
        "update_tflops_per_s": rate(flops["update"]["model"], t_upd),
        "update_mfu": frac(flops["update"]["model"], t_upd),
        "update_hfu": frac(flops["update"]["hardware"], t_upd),
    }


def preset_iteration_seconds(measured: dict, batch: int) -> float | None:
    """GPU-seconds of the transformer work of one preset iteration at the measured speeds:
    ``(videos * T * t_rollout_step + transitions * t_update) / batch``."""
    t_roll, t_upd = measured.get("rollout_step_s"), measured.get("update_s")
    if not (t_roll and t_upd):
        return None
    it = PRESET_ITERATION
    return (it["videos"] * it["steps"] * t_roll + it["transitions"] * t_upd) / batch


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _tflop(flops: float) -> str:
    """FLOPs as TFLOP: thousands separators for big counts, 3 significant digits for small ones."""
    t = flops / 1e12
    return f"{t:,.1f}" if t >= 1 else f"{t:.3g}"


def flops_table(flops: dict) -> str:
    """Markdown table of the analytic counts (TFLOP) and the forward's breakdown."""
    r, u = flops["rollout"], flops["update"]
    lines = [
        "| analytic count | TFLOP |", "|---|---:|",
        f"| rollout step: guided forward ({r['rows']} rows, no grad) | {_tflop(r['forward'])} |",
        f"| update: forward | {_tflop(u['forward'])} |",
        f"| update: backward (LoRA only) | {_tflop(u['backward'])} |",
        f"| update: recomputed forward (checkpointing) | {_tflop(u['recompute'])} |",
        f"| update: model FLOPs (fwd + bwd) | {_tflop(u['model'])} |",
        f"| update: hardware FLOPs (+ recompute) | {_tflop(u['hardware'])} |",
    ]
    total = r["forward"]
    lines.append("")
    lines.append("| forward by part | share |")
    lines.append("|---|---:|")
    for k, v in r["parts"].items():
        lines.append(f"| {k} | {100 * v / total:.1f}% |")
    return "\n".join(lines)


def measured_table(flops: dict, measured: dict, util: dict, device_name: str, peak: float | None) -> str:
    """Markdown table of the measurements."""
    gib = mp.GIB

    def mem(key):
        return _fmt(measured[key] / gib if measured.get(key) is not None else None, ".1f")

    def pct(x):
        return _fmt(None if x is None else 100 * x, ".1f")

    lines = [
        f"Device: {device_name} (dense bf16 peak: {_fmt(peak, '.0f', 'unknown')} TFLOPS)",
        "",
        "| phase | seconds | TFLOP | TFLOP/s | MFU % | HFU % | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| rollout step (guided fwd) | {_fmt(measured.get('rollout_step_s'), '.3f', 'OOM')} | "
        f"{_tflop(flops['rollout']['forward'])} | {_fmt(util['rollout_tflops_per_s'], '.4g')} | "
        f"{pct(util['rollout_mfu'])} | {pct(util['rollout_mfu'])} | {mem('rollout_peak_bytes')} |",
        f"| update (fwd+bwd, 1 transition) | {_fmt(measured.get('update_s'), '.3f', 'OOM')} | "
        f"{_tflop(flops['update']['model'])} | {_fmt(util['update_tflops_per_s'], '.4g')} | "
        f"{pct(util['update_mfu'])} | {pct(util['update_hfu'])} | {mem('update_peak_bytes')} |",
    ]
    if measured.get("weights_bytes") is not None:
        lines.append(f"\nWeights + LoRA after build: {measured['weights_bytes'] / gib:.1f} GiB; "
                     f"peak over both phases: {mem('peak_bytes')} GiB.")
    for phase, err in measured.get("errors", {}).items():
        lines.append(f"\n{phase}: {err}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(mp.MODELS), default="1.3b")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--batch", type=int, default=1, help="videos per transformer call (x2 rows for CFG)")
    ap.add_argument("--steps", type=int, default=3, help="timed repeats per phase (after one warm-up)")
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of an unlisted device")
    ap.add_argument("--tiny-test", action="store_true", help="built-in tiny config at 5x32x32 (CPU test)")
    ap.add_argument("--no-plan", action="store_true", help="skip the memory plan")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads with --device cpu")
    ap.add_argument("--json", default="", help="write everything as JSON here")
    args = ap.parse_args(argv)

    checkpointing = not args.no_checkpointing
    if args.tiny_test:
        from trainer.engine.models import TINY_CONFIG

        config, name = dict(TINY_CONFIG["transformer"]), "tiny"
        config["patch_size"] = list(config["patch_size"])
        frames, height, width = TINY["frames"], TINY["height"], TINY["width"]
    else:
        config, name = mp.load_config(args.model), args.model
        frames, height, width = args.frames, args.height, args.width
    latent = mp.latent_shape(config, frames, height, width)
    rows = 2 * args.batch
    common = dict(rows=rows, text_len=args.text_len, lora_rank=args.lora_rank)
    flops = {
        "rollout": wan_flops(config, latent, checkpointing=False, **common),
        "update": wan_flops(config, latent, checkpointing=checkpointing, **common),
    }
    print(f"Wan2.1 {name}: {frames} frames at {height}x{width} -> latents {list(latent)}, "
          f"{flops['rollout']['tokens']} video tokens + {args.text_len} text tokens, {rows} rows per call "
          f"(CFG, batch {args.batch}), LoRA r{args.lora_rank} on attention, "
          f"gradient checkpointing {'on' if checkpointing else 'off'}.\n")
    print(flops_table(flops))

    result = {
        "model": name, "config": config, "latent": list(latent), "tokens": flops["rollout"]["tokens"],
        "rows": rows, "flops": flops,
        "settings": dict(frames=frames, height=height, width=width, batch=args.batch, steps=args.steps,
                         text_len=args.text_len, lora_rank=args.lora_rank, device=args.device,
                         checkpointing=checkpointing),
        "device": None, "measured": None, "utilisation": None, "memory_plan": None,
    }

    if args.device == "cuda" and not torch.cuda.is_available():
        print("\nCUDA is not available on this machine: nothing was measured. The analytic FLOP counts "
              "above and the memory plan (unless --no-plan) are all this run reports. Run on a GPU for timings, "
              "or pass --device cpu --tiny-test to exercise the measurement code on the CPU.")
    else:
        device = torch.device(args.device)
        if device.type == "cuda":
            device_name = torch.cuda.get_device_name(device)
            dtype = torch.bfloat16
        else:
            torch.set_num_threads(max(args.threads, 1))
            device_name = f"CPU ({torch.get_num_threads()} torch thread(s))"
            dtype = torch.float32  # the recipe's CPU dtype
        peak = args.peak_tflops or (peak_tflops(device_name) if device.type == "cuda" else None)
        measured = measure(config, latent, device, dtype, batch=args.batch, steps=args.steps,
                           text_len=args.text_len, lora_rank=args.lora_rank, checkpointing=checkpointing)
        util = utilisation(flops, measured, peak)
        result.update(device={"name": device_name, "type": device.type, "peak_tflops": peak,
                              "dtype": str(dtype).replace("torch.", "")},
                      measured=measured, utilisation=util)
        print()
        print(measured_table(flops, measured, util, device_name, peak))
        it = preset_iteration_seconds(measured, args.batch)
        result["preset_iteration_gpu_seconds"] = it
        if it is not None and not args.tiny_test:
            print(f"\nTransformer work of one preset iteration ({PRESET_ITERATION['videos']} videos x "
                  f"{PRESET_ITERATION['steps']} steps + {PRESET_ITERATION['transitions']} updates, "
                  f"no VAE/reward) at these speeds: {it / 60:.1f} GPU-minutes.")

    if not (args.no_plan or args.tiny_test):
        plans = mp.all_plans(frames=frames, height=height, width=width, micro_batch=args.batch,
                             text_len=args.text_len, lora_rank=args.lora_rank)
        result["memory_plan"] = plans
        print("\nMemory plan (bench.memory_plan; estimates, see its docstring):\n")
        print(mp.markdown_table(plans))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
