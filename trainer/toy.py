"""Synthetic toy videos and the trained tiny Wan VAE shipped with the built-in ``tiny`` model.

Why this exists: the tiny model (``trainer.models.build_tiny_pipeline``) used to decode with a
randomly initialised ``AutoencoderKLWan``. Such a decoder barely reacts to its latents (shifting a
latent channel by +3 moved the decoded mean brightness by about 0.001), so no pixel reward
(brightness, colour, ...) could be moved by RL training of the transformer. This module trains
the same tiny architecture (``TINY_CONFIG["vae"]``) as a real VAE on simple synthetic scenes, so
the decoder maps latents to colours and shapes and the demo's reward can rise visibly.

Pieces:

* ``synthetic_videos``: solid backgrounds of a random colour (dark to bright) with one or two
  coloured squares or discs moving linearly; ``[n, 3, frames, H, W]`` in -1..1, the diffusers VAE
  layout. Deterministic for a seed.
* ``train_tiny_vae``: trains encoder and decoder (reconstruction MSE + a small KL term) with Adam
  on fresh synthetic batches, then stores the per-channel ``latents_mean`` / ``latents_std`` of
  the encoder means in the VAE config, the way diffusers' ``WanPipeline`` (and
  ``trainer.recipe``) normalise: the transformer works on ``(z - mean) / std`` and decoding uses
  ``z = latents * std + mean``.
* CLI: ``python -m trainer.toy --out trainer/assets/tiny_vae --steps N`` trains and writes the
  folder with ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``,
  about 250 kB). The shipped folder was produced with the defaults below.

Training cost: the Wan VAE runs frame chunks sequentially (causal cache), so full 9-frame 64x64
clips cost ~0.2 s per clip per step on 2 CPU cores. Most steps therefore use 5-frame 32x32 crops
of 64x64 scenes (the first causal frame plus one 4-frame chunk; same pixel scale as the full
clips, about 8x cheaper); the last ``full_steps`` steps fine-tune on whole 9-frame 64x64 clips so
the second temporal chunk and the full-frame attention in the mid block are seen too.

Determinism: ``torch.manual_seed`` for the weights, a private ``torch.Generator`` per batch for
data and reparameterisation noise, ``torch.use_deterministic_algorithms(True)`` during training
and an explicit thread count (``torch.set_num_threads(threads)``, 2 by default, since float
reductions may split differently for a different thread count). The same seed, steps and thread
count give the same weights on the same machine and torch build; other CPUs or builds may differ
in the last bits, which is why the trained folder is shipped rather than rebuilt at load time.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch

from .models import TINY_CONFIG

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).parent / "assets" / "tiny_vae"
"""Where the shipped trained tiny VAE lives (read by ``trainer.models.build_tiny_pipeline``)."""


def synthetic_videos(n: int, frames: int = 9, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` simple synthetic clips as float ``[n, 3, frames, height, width]`` in -1..1.

    Each clip: a solid background of a random colour (an overall level uniform in -1..1 plus a
    per-channel tint of up to +-0.5, clamped, so near-black and near-white backgrounds occur),
    and one or two shapes, each a square or a disc with its own random colour (uniform in -1..1
    per channel), a half-size of 8..30 % of the shorter side, a random start centre anywhere in
    the frame and a constant velocity of up to 5 % of the width/height per frame (shapes may
    leave the frame). The second shape, when present, is drawn over the first.

    Deterministic for ``seed`` (a private ``torch.Generator``; the global RNG is untouched).
    Sizes and speeds are relative to the frame, so a 64x64 clip and a 32x32 clip look alike.
    """
    g = torch.Generator().manual_seed(int(seed))
    level = torch.rand(n, 1, generator=g) * 2 - 1
    tint = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.5
    background = (level + tint).clamp(-1, 1)  # [n, 3]

    max_shapes = 2
    present = torch.ones(n, max_shapes, dtype=torch.bool)
    present[:, 1] = torch.rand(n, generator=g) < 0.5  # one or two shapes
    is_disc = torch.rand(n, max_shapes, generator=g) < 0.5
    colour = torch.rand(n, max_shapes, 3, generator=g) * 2 - 1
    side = min(height, width)
    half = (0.08 + 0.22 * torch.rand(n, max_shapes, generator=g)) * side  # half-size in pixels
    start_x = torch.rand(n, max_shapes, generator=g) * width
    start_y = torch.rand(n, max_shapes, generator=g) * height
    vel_x = (torch.rand(n, max_shapes, generator=g) * 2 - 1) * 0.05 * width
    vel_y = (torch.rand(n, max_shapes, generator=g) * 2 - 1) * 0.05 * height

    t = torch.arange(frames, dtype=torch.float32)
    ys = torch.arange(height, dtype=torch.float32) + 0.5  # pixel centres
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    video = background.view(n, 3, 1, 1, 1).expand(n, 3, frames, height, width).clone()
    for s in range(max_shapes):
        cx = start_x[:, s, None] + vel_x[:, s, None] * t  # [n, frames]
        cy = start_y[:, s, None] + vel_y[:, s, None] * t
        dx = xs.view(1, 1, 1, width) - cx.view(n, frames, 1, 1)  # [n, frames, 1, W]
        dy = ys.view(1, 1, height, 1) - cy.view(n, frames, 1, 1)  # [n, frames, H, 1]
        r = half[:, s].view(n, 1, 1, 1)
        square = (dx.abs() <= r) & (dy.abs() <= r)
        disc = dx.square() + dy.square() <= r.square()
        mask = torch.where(is_disc[:, s].view(n, 1, 1, 1), disc, square)  # [n, frames, H, W]
        mask = mask & present[:, s].view(n, 1, 1, 1)
        video = torch.where(mask.unsqueeze(1), colour[:, s].view(n, 3, 1, 1, 1), video)
    return video


def _random_crops(videos: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` spatial window of each clip (one offset per clip)."""
    n, _, _, height, width = videos.shape
    top = torch.randint(0, height - size + 1, (n,), generator=g).tolist()
    left = torch.randint(0, width - size + 1, (n,), generator=g).tolist()
    return torch.stack([v[:, :, y:y + size, x:x + size] for v, y, x in zip(videos, top, left)])


def reconstruct(vae, videos: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Decode the encoder means of ``videos`` (no sampling), in chunks; no gradients."""
    out = []
    with torch.no_grad():
        for x in videos.split(batch_size):
            z = vae.encode(x).latent_dist.mean
            out.append(vae.decode(z).sample)
    return torch.cat(out)


def encoder_means(vae, videos: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Encoder means ``[n, z_dim, f, h, w]`` of ``videos`` (raw, unnormalised), no gradients."""
    with torch.no_grad():
        return torch.cat([vae.encode(x).latent_dist.mean for x in videos.split(batch_size)])


def train_tiny_vae(
    steps: int = 700,
    seed: int = 0,
    log_every: int = 50,
    batch_size: int = 16,
    crop: int = 32,
    crop_frames: int = 5,
    full_steps: int = 40,
    full_batch_size: int = 4,
    lr: float = 3e-3,
    kl_weight: float = 1e-4,
    stats_videos: int = 64,
    threads: int = 2,
):
    """Train ``AutoencoderKLWan(**TINY_CONFIG["vae"])`` on synthetic clips; return it in eval mode.

    Steps ``0 .. steps - full_steps - 1`` use ``batch_size`` random ``crop`` x ``crop`` windows of
    the first ``crop_frames`` frames of fresh 64x64 clips; the last ``full_steps`` steps use
    ``full_batch_size`` whole 9-frame 64x64 clips. Each step draws a new batch from
    ``synthetic_videos(seed=seed * 1_000_003 + step + 1)`` (never the held-out seeds used for
    statistics and tests, which are negative offsets of ``seed``).

    Loss: per-pixel reconstruction MSE of ``vae.decode(z)`` with ``z`` sampled from
    ``vae.encode(x).latent_dist`` (reparameterised) plus ``kl_weight`` times the per-element KL
    to N(0, I) (about what a Gaussian decoder with sigma ~0.1 implies at this 144x compression;
    it keeps the latent scale bounded and the decoder smooth around the codes). Adam with a
    cosine learning-rate decay from ``lr`` to ``lr / 20`` and gradient-norm clipping at 1.

    Afterwards the per-channel mean and std of the encoder means over ``stats_videos`` held-out
    9-frame 64x64 clips (seed ``-1 - seed``) are written to the config with
    ``register_to_config(latents_mean=..., latents_std=...)``, so normalised latents
    ``(z - mean) / std`` have unit variance per channel.

    Runs with ``torch.set_num_threads(threads)`` and deterministic algorithms (both restored on
    return); the global RNG is forked, so callers' random state is untouched.
    """
    from diffusers import AutoencoderKLWan

    if not 0 <= full_steps <= steps:
        raise ValueError(f"full_steps must be within 0..steps, got {full_steps} of {steps}")
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**TINY_CONFIG["vae"])
        vae.train()
        opt = torch.optim.Adam(vae.parameters(), lr=lr)
        start = time.perf_counter()
        for step in range(steps):
            g = torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
            if step < steps - full_steps:
                clips = synthetic_videos(batch_size, frames=crop_frames, seed=seed * 1_000_003 + step + 1)
                x = _random_crops(clips, crop, g)
            else:
                x = synthetic_videos(full_batch_size, frames=9, seed=seed * 1_000_003 + step + 1)
            for group in opt.param_groups:
                group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
            dist = vae.encode(x).latent_dist
            z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
            recon = vae.decode(z).sample
            mse = (recon - x).square().mean()
            kl = 0.5 * (dist.mean.square() + dist.var - 1.0 - dist.logvar).mean()
            loss = mse + kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            if log_every and (step % log_every == 0 or step == steps - 1):
                log.info(
                    "step %d/%d  mse %.4f  kl %.3f  %s  %.0fs", step + 1, steps, mse.item(), kl.item(),
                    "crops" if step < steps - full_steps else "full", time.perf_counter() - start,
                )
        vae.eval()
        held_out = synthetic_videos(stats_videos, seed=-1 - seed)
        means = encoder_means(vae, held_out)
        per_channel = means.transpose(0, 1).reshape(means.shape[1], -1)
        latents_mean = [round(v, 6) for v in per_channel.mean(dim=1).tolist()]
        latents_std = [round(v, 6) for v in per_channel.std(dim=1).tolist()]
        vae.register_to_config(latents_mean=latents_mean, latents_std=latents_std)
        log.info("latents_mean %s  latents_std %s", latents_mean, latents_std)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)
    return vae


def main(argv: list[str] | None = None) -> None:
    """CLI: train the tiny VAE and ``save_pretrained`` it to ``--out``; report held-out MSE."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (save_pretrained)")
    parser.add_argument("--steps", type=int, default=700, help="total optimiser steps")
    parser.add_argument("--full-steps", type=int, default=40, help="final steps on whole 9x64x64 clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for determinism)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    start = time.perf_counter()
    vae = train_tiny_vae(
        steps=args.steps, seed=args.seed, log_every=args.log_every, full_steps=args.full_steps,
        threads=args.threads,
    )
    elapsed = time.perf_counter() - start
    test = synthetic_videos(32, seed=-1000 - args.seed)
    mse = (reconstruct(vae, test) - test).square().mean().item()
    log.info("trained in %.0fs; held-out MSE %.4f (9x64x64, encoder means)", elapsed, mse)
    args.out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(str(args.out), safe_serialization=True)
    log.info("saved %s", args.out)


if __name__ == "__main__":
    main()
