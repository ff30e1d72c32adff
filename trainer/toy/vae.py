"""Synthetic toy videos and the trained tiny Wan VAE shipped with the built-in ``tiny`` model.

Why this exists: the tiny model (``trainer.engine.models.build_tiny_pipeline``) used to decode with a
randomly initialised ``AutoencoderKLWan``. Such a decoder barely reacts to its latents (shifting a
latent channel by +3 moved the decoded mean brightness by about 0.001), so no pixel reward
(brightness, colour, ...) could be moved by RL training of the transformer. This module trains
the same tiny architecture (``TINY_CONFIG["vae"]``) as a real VAE on simple synthetic scenes, so
the decoder maps latents to colours and shapes and the demo's reward can rise visibly.

Pieces:

* ``synthetic_videos``: solid backgrounds of a random colour (dark to bright) with one or two
  coloured squares or discs moving linearly; ``[n, 3, frames, H, W]`` in -1..1, the diffusers VAE
  layout. Deterministic for a seed.
* ``structured_init``: hand-set weights that make the VAE an exact block-colour codec (below).
* ``train_tiny_vae``: starts from ``structured_init`` and trains encoder and decoder as a VAE
  (reconstruction MSE + a small KL term) with Adam on fresh synthetic batches, then stores the per-channel ``latents_mean`` / ``latents_std`` of
  the encoder means in the VAE config, the way diffusers' ``WanPipeline`` (and
  ``trainer.engine.recipe``) normalise: the transformer works on ``(z - mean) / std`` and decoding uses
  ``z = latents * std + mean``.
* CLI: ``python -m trainer.toy.vae --out trainer/assets/tiny_vae --steps N`` trains and writes the
  folder with ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``,
  262 kB). The shipped folder was produced with the defaults (200 steps: ~100 s on 2 CPU cores;
  held-out MSE 0.0229 on 32 clips, vs 0.0236 at the structured start, 0.0235 for the ideal
  blocky codec and 0.34 for the random-initialised VAE). Rerunning reproduced it bit for bit.

Why a structured start: trained from its random initialisation, this tiny Wan VAE (8 channels,
RMS norms that only keep each pixel's channel direction, 4-channel bottlenecks after every
upsampler) does not learn in a CPU budget of minutes: it sits on a constant output for hundreds
of Adam steps, falls into a one-bit "dark or bright" code, and jumps back to a constant output
whenever the encoder crosses a cliff of the normalisations (measured: overfitting a single batch
of 8 clips still ended near MSE 0.1-0.4 after 150-200 steps at lr 3e-4..1e-2). So
``structured_init`` first sets the weights by hand to an exact "block colour" codec - latent
channels 0-2 are the mean RGB of each 8x8 pixel block over the frames of its latent chunk
(frame 0 | frames 1-4 | frames 5-8), channel 3 their mean (luminance), and the decoder paints each
block back in its colour - and the VAE training then starts from that working autoencoder
and sharpens it a little (see the figures above). The trick that keeps every
RMS norm away from its singular point is a constant channel of size ``k`` in the residual stream
(a bias of the first conv): the colour then only tilts the normalised direction slightly, and a
small norm ``gamma`` keeps the SiLU of the head in its nearly linear range.

Training cost: the Wan VAE runs frame chunks sequentially (causal cache), so full 9-frame 64x64
clips cost ~0.2 s per clip per step on 2 CPU cores. Most steps therefore use 9-frame 32x32 crops
of 64x64 scenes (same pixel scale and all three latent chunks, 4x cheaper); the last
``full_steps`` steps use whole 9-frame 64x64 clips, so the mid-block attention also sees the
full 8x8 latent grid.

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

from ..engine.models import TINY_CONFIG

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "tiny_vae"
"""Where the shipped trained tiny VAE lives (read by ``trainer.engine.models.build_tiny_pipeline``)."""


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


def _identity_taps(conv, tap: tuple, n: int, scale: float = 1.0) -> None:
    """Zero ``conv`` (weight and bias), then ``weight[c, c][tap] = scale`` for channels c < n."""
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()
    for c in range(n):
        conv.weight[(c, c) + tuple(tap)] = scale


def structured_init(vae, k: float = 10.0, gamma: float = 0.05, logvar: float = -6.0):
    """Set a ``TINY_CONFIG["vae"]``-shaped ``AutoencoderKLWan`` to an exact block-colour codec.

    In place; returns ``vae``. Written for ``TINY_CONFIG["vae"]`` (three downsampling stages, 8x8
    blocks) and equally exact for the toy model's two-stage VAE (``trainer.toy.model.TOY_VAE_CONFIG``,
    4x4 blocks): every stage is set the same way. Encoder: latent channels 0-2 = mean RGB of each 8x8 block over the
    frames of its latent chunk (frame 0, frames 1-4, frames 5-8), channel 3 = their mean, posterior
    log-variance ``logvar`` everywhere. Decoder: every pixel of a block and chunk gets the block's
    RGB from channels 0-2 (channel 3 unused at first). Held-out MSE 0.0236 on 32 clips of
    ``synthetic_videos``, the ideal blocky codec's 0.0235. How, layer by layer (``C`` = 8 channels):

    * every residual branch's second conv and every attention ``proj`` are zeroed, so all residual
      blocks and attention blocks start as identities (and are trained from there, Fixup-style);
    * the first conv of each side copies RGB (encoder) / latent channels 0-2 (decoder) through its
      current-frame centre tap and puts ``k`` into channel 3 via its bias, so the residual stream is
      ``[r, g, b, k, 0, ...]``: the RMS norms never see a near-zero vector;
    * encoder downsamplers average 2x2 pixels (taps (0..1, 0..1) of the stride-2 conv, 0.25 each)
      and, for the temporal ones, the last two frames of each stride-2 window (0.5 each), which with
      the chunked causal cache gives exactly the per-chunk frame means;
    * decoder upsamplers copy channels 0-3 through the centre tap after nearest upsampling, and the
      temporal ones copy the current frame into both new frames;
    * both heads: ``norm_out`` (gamma = ``gamma``) makes ``u = sqrt(C) * gamma * h / |h|`` with
      ``|h| ~ k``, so ``silu(u) ~ u / 2`` (|u| <= 0.03 for colours), and the output conv's centre
      tap ``2 k / (sqrt(C) * gamma)`` undoes that scale; ``quant_conv``/``post_quant_conv`` are
      identities.
    """
    z_dim = vae.config.z_dim
    enc, dec = vae.encoder, vae.decoder
    head = 2.0 * k / (math.sqrt(enc.norm_out.gamma.numel()) * gamma)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith(("conv2.weight", "conv2.bias")) or ".proj." in name:
                p.zero_()
        # Encoder.
        _identity_taps(enc.conv_in, (2, 1, 1), 3)
        enc.conv_in.bias[3] = k
        for block in enc.down_blocks:
            if not hasattr(block, "resample"):
                continue  # residual block: already an identity
            conv = block.resample[1]
            conv.weight.zero_()
            conv.bias.zero_()
            for c in range(conv.in_channels):
                conv.weight[c, c, :2, :2] = 0.25
            if hasattr(block, "time_conv"):
                _identity_taps(block.time_conv, (1, 0, 0), block.time_conv.in_channels, 0.5)
                for c in range(block.time_conv.in_channels):
                    block.time_conv.weight[c, c, 2, 0, 0] = 0.5
        enc.norm_out.gamma.fill_(gamma)
        _identity_taps(enc.conv_out, (2, 1, 1), 3, head)
        for c in range(3):
            enc.conv_out.weight[3, c, 2, 1, 1] = head / 3
        enc.conv_out.bias[z_dim:] = logvar
        _identity_taps(vae.quant_conv, (0, 0, 0), 2 * z_dim)
        # Decoder.
        _identity_taps(vae.post_quant_conv, (0, 0, 0), z_dim)
        _identity_taps(dec.conv_in, (2, 1, 1), 3)
        dec.conv_in.bias[3] = k
        for up_block in dec.up_blocks:
            for resnet in up_block.resnets:
                if not isinstance(resnet.conv_shortcut, torch.nn.Identity):
                    _identity_taps(resnet.conv_shortcut, (0, 0, 0), resnet.conv_shortcut.in_channels)
            if up_block.upsamplers is None:
                continue
            up = up_block.upsamplers[0]
            _identity_taps(up.resample[1], (1, 1), up.resample[1].out_channels)
            if hasattr(up, "time_conv"):
                n = up.time_conv.in_channels  # outputs [frame A channels | frame B channels]
                _identity_taps(up.time_conv, (2, 0, 0), n)
                for c in range(n):
                    up.time_conv.weight[n + c, c, 2, 0, 0] = 1.0
        dec.norm_out.gamma.fill_(gamma)
        _identity_taps(dec.conv_out, (2, 1, 1), 3, head)
    return vae


def train_tiny_vae(
    steps: int = 200,
    seed: int = 0,
    log_every: int = 25,
    batch_size: int = 8,
    crop: int = 32,
    full_steps: int = 20,
    full_batch_size: int = 4,
    lr: float = 3e-4,
    kl_weight: float = 1e-4,
    stats_videos: int = 64,
    threads: int = 2,
    config: dict | None = None,
    data=None,
):
    """Build ``AutoencoderKLWan(**config)`` (default ``TINY_CONFIG["vae"]``), train it as a VAE on
    clips from ``data(n, seed=...)`` (default ``synthetic_videos``), return it in eval mode.

    Start: ``torch.manual_seed(seed)`` weights, then ``structured_init`` (block-colour codec).
    Steps ``0 .. steps - full_steps - 1`` use ``batch_size`` random ``crop`` x ``crop`` windows of
    fresh 9-frame 64x64 clips; the last ``full_steps`` steps use ``full_batch_size`` whole clips.
    Step ``i`` draws ``synthetic_videos(seed=seed * 1_000_003 + i + 1)`` (positive seeds; held-out
    sets use negative ones: ``-1 - seed`` for the latent statistics, ``-1000 - seed`` for the
    reported MSE, ``-2000`` onwards in the tests).

    Loss: per-pixel reconstruction MSE of ``vae.decode(z)``, ``z`` sampled from
    ``vae.encode(x).latent_dist`` (reparameterised), plus ``kl_weight`` times the per-element KL
    to N(0, I) (about what a Gaussian decoder with sigma ~0.1 implies at this 144x compression; it
    keeps the codes bounded and the decoder smooth around them). Adam, cosine decay from ``lr``
    to ``lr / 20``. A higher ``lr`` (1e-3) first knocks the codec off (held-out MSE up ~15 %)
    before it recovers; 3e-4 improves steadily but slowly: the structured start is already close
    to what 4 latent channels per 8x8x4 block allow, so training mostly sharpens edges a little.

    Afterwards the per-channel mean and std of the encoder means over ``stats_videos`` held-out
    clips are stored with ``register_to_config(latents_mean=..., latents_std=...)``, so
    normalised latents ``(z - mean) / std`` have unit variance per channel (diffusers'
    ``WanPipeline`` and ``trainer.engine.recipe`` decode ``latents * std + mean``).

    Runs with ``torch.set_num_threads(threads)`` and deterministic algorithms (both restored on
    return); the global RNG is forked, so the caller's random state is untouched.
    """
    from diffusers import AutoencoderKLWan

    data = data or synthetic_videos
    if not 0 <= full_steps <= steps:
        raise ValueError(f"full_steps must be within 0..steps, got {full_steps} of {steps}")
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**(config or TINY_CONFIG["vae"]))
        structured_init(vae)
        if log_every:
            val = data(8, seed=-1000 - seed)
            mse = (reconstruct(vae.eval(), val) - val).square().mean().item()
            log.info("structured init: held-out MSE %.4f (8 clips)", mse)
        vae.train()
        opt = torch.optim.Adam(vae.parameters(), lr=lr)
        start = time.perf_counter()
        for step in range(steps):
            batch_seed = seed * 1_000_003 + step + 1
            g = torch.Generator().manual_seed(batch_seed)
            full = step >= steps - full_steps
            if full:
                x = data(full_batch_size, seed=batch_seed)
            else:
                x = _random_crops(data(batch_size, seed=batch_seed), crop, g)
            for group in opt.param_groups:
                group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            dist = vae.encode(x).latent_dist
            z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
            mse = (vae.decode(z).sample - x).square().mean()
            kl = 0.5 * (dist.mean.square() + dist.var - 1.0 - dist.logvar).mean()
            opt.zero_grad(set_to_none=True)
            (mse + kl_weight * kl).backward()
            opt.step()
            if log_every and (step % log_every == 0 or step == steps - 1):
                log.info(
                    "step %d/%d  batch mse %.4f  kl %.3f  %s  %.0fs", step + 1, steps, mse.item(),
                    kl.item(), "full" if full else "crops", time.perf_counter() - start,
                )
        vae.eval()
        means = encoder_means(vae, data(stats_videos, seed=-1 - seed))
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
    parser.add_argument("--steps", type=int, default=200, help="total optimiser steps")
    parser.add_argument("--full-steps", type=int, default=20, help="final steps on whole 9x64x64 clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
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
