"""Pretrain the toy Wan model: a small text-to-video Wan2.1 that follows toy-world captions.

``python -m trainer.toy.model`` writes ``trainer/assets/toy_wan``, a diffusers ``WanPipeline``
folder (``model_index.json``, ``transformer/``, ``text_encoder/``, ``tokenizer/``, ``vae/``,
``scheduler/``), loaded by ``trainer.engine.models.load_pipeline("toy")`` through the same
``WanPipeline.from_pretrained`` path as a real ``Wan2.1-T2V-1.3B-Diffusers`` folder. Steps:

1. **VAE**: the trained tiny VAE of ``trainer.toy.vae`` (``python -m trainer.toy.vae`` rebuilds it bit
   for bit; it is copied from ``trainer/assets/tiny_vae``, or retrained with ``--train-vae``).
2. **Data**: ``--clips`` captioned clips of ``trainer.toy.world.generate`` (9 frames, 64x64),
   encoded once to normalised VAE latents ``(mean(z) - latents_mean) / latents_std``
   ``[4, 3, 8, 8]``.
3. **Tokenizer**: a sentencepiece unigram model trained on the toy vocabulary (every word one
   piece), saved as a T5 tokenizer.
4. **Flow matching**: a random-initialised ``UMT5EncoderModel`` and ``WanTransformer3DModel``
   (``TOY_CONFIG``) are trained jointly, Wan's rectified-flow objective:
   ``x_s = (1 - s) x_0 + s e``, the transformer predicts ``v = e - x_0`` at timestep ``1000 s``,
   with ``s = shift u / (1 + (shift - 1) u)``, ``u ~ U(0, 1)`` and ``shift = 3`` (the sampler's
   time shift, so training sees the noise levels sampling visits). Prompts are encoded by the
   pipeline's own ``_get_t5_prompt_embeds`` (cut at the prompt's length, zero-padded), exactly as
   ``trainer.engine.recipe`` encodes them, with gradients. 10 % of captions are dropped to ``""`` so
   classifier-free guidance has an unconditional model. AdamW, cosine decay, EMA of the weights
   (the EMA is what ships).
5. **Report**: caption-following rates per attribute: deterministic ODE samples of held-out
   captions (the engine's own sampler, ``FlashGRPORecipe.sample``) read by
   ``trainer.toy.world.read_attributes``, against chance ``1 / choices``; written to
   ``toy_wan/report.json``.

Deterministic for ``--seed`` and ``--threads`` on one machine and torch build
(``torch.use_deterministic_algorithms``, private generators); other CPUs may differ in the last
bits, which is why the folder is shipped rather than rebuilt at load time.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch

from ..algo.sde import time_shift
from ..engine.models import TOY_MODEL_DIR as DEFAULT_OUT
from . import world as toy_world
from .vae import DEFAULT_OUT as TINY_VAE  # the trained tiny VAE, shared with the built-in tiny model

log = logging.getLogger(__name__)

TOY_CONFIG = {
    "transformer": dict(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=256, num_layers=4, rope_max_seq_len=32,
    ),
    "text_encoder": dict(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    ),
}
MAX_SEQUENCE_LENGTH = 32
"""Text tokens per prompt for the toy model (captions are about 18 tokens)."""


def toy_vocabulary() -> list[str]:
    """Every word a toy-world caption can use, sorted."""
    words = {"a", "on", "in", "the", "moves", "slowly", "background"}
    for choices in toy_world.CHOICES.values():
        words.update(choices)
    return sorted(words)


def build_tokenizer():
    """A T5 (unigram) tokenizer with one piece per toy word, and single letters for anything else.

    Word pieces score -1 and letters -10, so the unigram segmentation always takes whole words;
    other text still tokenizes (letter by letter) instead of becoming ``<unk>``.
    """
    from transformers import T5Tokenizer

    letters = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,'-"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -5.0)]
    vocab += [("\u2581" + w, -1.0) for w in toy_vocabulary()]
    vocab += [(c, -10.0) for c in letters]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def encode_clips(vae, n: int, seed: int, batch_size: int = 32):
    """``(latents [n, 4, 3, 8, 8] normalised, captions)`` of ``n`` toy-world clips."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    latents, captions = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            videos, _, caps = toy_world.generate(min(batch_size, n - lo), seed=seed * 1_000_003 + lo)
            latents.append((vae.encode(videos).latent_dist.mean - mean) / std)
            captions += caps
            if (lo // batch_size) % 16 == 15:
                log.info("encoded %d/%d clips  %.0fs", lo + batch_size, n, time.perf_counter() - start)
    return torch.cat(latents), captions


def train(pipe, latents: torch.Tensor, captions: list[str], steps: int, batch_size: int = 64,
          lr: float = 2e-3, shift: float = 3.0, drop: float = 0.1, ema_decay: float = 0.995,
          seed: int = 0, log_every: int = 100) -> dict:
    """Flow-matching training of ``pipe.transformer`` and ``pipe.text_encoder`` in place.

    Returns the EMA state dicts ``{"transformer": ..., "text_encoder": ...}`` (not yet loaded).
    """
    g = torch.Generator().manual_seed(seed)
    modules = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = {k: {n: p.detach().clone() for n, p in m.state_dict().items()} for k, m in modules.items()}
    for m in modules.values():
        m.train()
    n = latents.shape[0]
    start, running = time.perf_counter(), None
    warmup = max(steps // 20, 1)
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x0 = latents[idx]
        keep = torch.rand(batch_size, generator=g) >= drop
        prompts = [captions[i] if k else "" for i, k in zip(idx.tolist(), keep.tolist())]
        noise = torch.randn(x0.shape, generator=g)
        sigma = time_shift(torch.rand(batch_size, generator=g), shift)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        emb = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=MAX_SEQUENCE_LENGTH, device=torch.device("cpu"))
        pred = pipe.transformer(xt, timestep=sigma * 1000, encoder_hidden_states=emb, return_dict=False)[0]
        loss = (pred - (noise - x0)).square().mean()
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for k, m in modules.items():
                for name, p in m.state_dict().items():
                    if p.is_floating_point():
                        ema[k][name].lerp_(p, 1 - ema_decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if log_every and (step % log_every == 0 or step == steps - 1):
            log.info("step %d/%d  loss %.4f  %.0fs", step + 1, steps, running, time.perf_counter() - start)
    for m in modules.values():
        m.eval()
    return ema


def build_untrained(seed: int, vae_dir: Path):
    """A ``WanPipeline`` with the toy tokenizer, random text encoder/transformer and the trained VAE."""
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from ..engine.models import make_scheduler

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TOY_CONFIG["text_encoder"]))
        transformer = WanTransformer3DModel(**TOY_CONFIG["transformer"])
    vae = AutoencoderKLWan.from_pretrained(str(vae_dir), local_files_only=True).eval()
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=make_scheduler(3.0))


def caption_following(model: str, n: int = 96, seed: int = 12345, guidance_scale: float = 4.5,
                      steps: int = 20) -> dict:
    """Per-attribute rate at which ODE samples of ``n`` fresh captions show the asked choice.

    Samples go through the engine (``FlashGRPORecipe.sample``: the same sampler, text encoding
    and decoding as training rollouts); ``read_attributes`` reads them. Returns
    ``{"rates": {attr: rate}, "chance": {attr: 1/choices}, "all": rate all seven right, ...}``.
    """
    from ..engine.config import FlashGRPOConfig
    from ..engine.recipe import FlashGRPORecipe

    g = torch.Generator().manual_seed(seed)
    attrs = toy_world.random_attributes(n, g)
    captions = [toy_world.caption(a) for a in attrs]
    cfg = FlashGRPOConfig.from_dict(
        dict(model=model, guidance_scale=guidance_scale, eval_sampling_steps=steps), preset="toy_demo")
    recipe = FlashGRPORecipe(cfg).setup(training=False)
    videos = torch.cat([recipe.sample(captions[lo:lo + 32], seed=seed) for lo in range(0, n, 32)])
    read = toy_world.read_attributes(videos)
    ok = {a: [r[a] == t[a] for r, t in zip(read, attrs)] for a in toy_world.ATTRIBUTES}
    return {
        "rates": {a: sum(v) / n for a, v in ok.items()},
        "chance": {a: 1 / len(toy_world.CHOICES[a]) for a in toy_world.ATTRIBUTES},
        "all": sum(all(ok[a][i] for a in ok) for i in range(n)) / n,
        "samples": n, "guidance_scale": guidance_scale, "sampling_steps": steps,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output diffusers folder")
    parser.add_argument("--clips", type=int, default=4096, help="captioned training clips")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for determinism)")
    parser.add_argument("--train-vae", action="store_true", help="retrain the VAE (python -m trainer.toy.vae) instead of copying the shipped one")
    parser.add_argument("--report-samples", type=int, default=96, help="held-out captions for the caption-following report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()

    vae_dir = TINY_VAE
    if args.train_vae:
        from .vae import train_tiny_vae

        vae_dir = args.out.parent / f".{args.out.name}.vae"
        train_tiny_vae(seed=args.seed, threads=args.threads).save_pretrained(str(vae_dir), safe_serialization=True)
    pipe = build_untrained(args.seed, vae_dir)
    latents, captions = encode_clips(pipe.vae, args.clips, args.seed)
    log.info("encoded %d clips %s in %.0fs", len(captions), tuple(latents.shape[1:]), time.perf_counter() - start)
    ema = train(pipe, latents, captions, args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    pipe.transformer.load_state_dict(ema["transformer"])
    pipe.text_encoder.load_state_dict(ema["text_encoder"])
    train_seconds = time.perf_counter() - start

    tmp = args.out.parent / f".{args.out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    report = caption_following(str(tmp), n=args.report_samples)
    report.update(train_seconds=round(train_seconds), clips=args.clips, train_steps=args.steps, seed=args.seed,
                  batch_size=args.batch_size, lr=args.lr, threads=args.threads)
    (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.replace(args.out)
    if args.train_vae:
        shutil.rmtree(vae_dir, ignore_errors=True)
    log.info("caption following (chance): %s", ", ".join(
        f"{a} {report['rates'][a]:.2f} ({report['chance'][a]:.2f})" for a in toy_world.ATTRIBUTES))
    log.info("all seven right: %.2f; saved %s in %.0fs", report["all"], args.out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
