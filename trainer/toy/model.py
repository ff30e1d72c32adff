"""Pretrain the toy Wan model: a small text-to-video Wan2.1 that follows toy-world captions.

``python -m trainer.toy.model`` writes ``trainer/assets/toy_wan``, a diffusers ``WanPipeline``
folder (``model_index.json``, ``transformer/``, ``text_encoder/``, ``tokenizer/``, ``vae/``,
``scheduler/``), loaded by ``trainer.engine.models.load_pipeline("toy")`` through the same
``WanPipeline.from_pretrained`` path as a real ``Wan2.1-T2V-1.3B-Diffusers`` folder. Steps:

1. **VAE** (``train_toy_vae``): Wan's causal 3D VAE with two spatial downsampling stages instead
   of three (``TOY_VAE_CONFIG``): a 9x64x64 clip becomes latents ``[4, 3, 16, 16]``, 4x4 pixels
   per latent and Wan's 4x temporal compression. It starts as an exact block-colour codec
   (``trainer.toy.vae.structured_init``) and is fine-tuned as a VAE on toy-world clips and generic
   synthetic scenes. ``--vae DIR`` reuses a trained one instead.
2. **Data**: ``--clips`` captioned clips of ``trainer.toy.world.generate`` (9 frames, 64x64),
   encoded once to normalised VAE latents ``(mean(z) - latents_mean) / latents_std``.
3. **Tokenizer**: one T5 (unigram) piece per toy word (``build_tokenizer``).
4. **Flow matching**: a random-initialised ``UMT5EncoderModel`` and ``WanTransformer3DModel``
   (``TOY_CONFIG``) are trained jointly with Wan's rectified-flow objective:
   ``x_s = (1 - s) x_0 + s e``, the transformer predicts ``v = e - x_0`` at timestep ``1000 s``,
   with ``s = shift u / (1 + (shift - 1) u)``, ``u ~ U(0, 1)`` and ``shift = 3`` (the sampler's
   time shift, so training sees the noise levels sampling visits). Prompts are encoded by the
   pipeline's own ``_get_t5_prompt_embeds`` (cut at the prompt's length, zero-padded), exactly as
   ``trainer.engine.recipe`` encodes them, with gradients. 10 % of captions are dropped to ``""`` so
   classifier-free guidance has an unconditional model. AdamW, warm-up then cosine decay, EMA of
   the weights (the EMA is what ships). The squared error is weighted ``1 + fg_weight`` on the
   latent cells of the object (``foreground_mask``) and 1 elsewhere: the object covers 2-12 % of
   a clip, so with a plain mean the loss is mostly background, and the model learned colours and
   layout but not motion (direction at chance after 4000 steps).
5. **Motion phase** (``--motion-steps``): the first phase (``--steps``) learns looks and layout;
   its objects move along the asked axis but about as often one way as the other, so on average
   they stay put. A Wan transformer knows positions only through rotary attention (relative offsets), so
   which end of a path comes first must be learned from content, and the first phase's loss barely
   asks for it. The second phase trains on, from the first phase's EMA weights, with an extra
   weight ``motion_weight`` on the object's path in every latent frame (``motion_mask``): the
   cells where a model that draws the object at both ends of its path is wrong. From scratch the
   same weight did not help (the looks come first); after the first phase it teaches direction.
   ``--from DIR`` starts the second phase from an existing toy model folder.
6. **Report**: caption-following rates per attribute: deterministic ODE samples of held-out
   captions (the engine's own sampler, ``FlashGRPORecipe.sample``) read by
   ``trainer.toy.world.read_attributes``, against chance ``1 / choices``, and how far the objects
   move along the asked direction (``motion_shown``); written to ``toy_wan/report.json``.
   ``--report-only`` measures an existing folder again without training.

Deterministic for ``--seed`` and ``--threads`` on one machine and torch build
(``torch.use_deterministic_algorithms``, private generators for the data, and the global generator,
which the text encoder's dropout draws from, seeded at the start of each phase). Float reductions
differ between CPUs, so a rebuild elsewhere gives close but not bit-identical weights; that is why
the folder is shipped rather than rebuilt at load time. About 38 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..algo.sde import time_shift
from ..engine.models import TOY_MODEL_DIR as DEFAULT_OUT
from . import world as toy_world

log = logging.getLogger(__name__)

TOY_CONFIG = {
    "transformer": dict(
        patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=32, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=512, num_layers=4, rope_max_seq_len=32,
    ),
    "text_encoder": dict(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    ),
}

TOY_VAE_CONFIG = dict(
    base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[True, True],
    scale_factor_spatial=4, scale_factor_temporal=4, latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
)
"""The toy VAE: ``AutoencoderKLWan`` with two downsampling stages (4x space, 4x time)."""

MAX_SEQUENCE_LENGTH = 32
"""Text tokens per prompt for the toy model (captions are about 18 tokens)."""


def toy_vocabulary() -> list[str]:
    """Every word a toy-world caption can use, sorted."""
    return sorted(set(toy_world.CAPTION_WORDS))


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


def vae_training_clips(n: int, seed: int) -> torch.Tensor:
    """The toy VAE's training data: half toy-world clips, half generic synthetic scenes."""
    from .vae import synthetic_videos

    world = toy_world.generate((n + 1) // 2, seed=seed)[0]
    return torch.cat([world, synthetic_videos(n // 2, seed=seed)])


def train_toy_vae(seed: int = 0, steps: int = 300, threads: int = 2):
    """``AutoencoderKLWan(**TOY_VAE_CONFIG)`` from the block-colour codec, fine-tuned ``steps`` steps.

    ``trainer.toy.train_tiny_vae`` does the work (crops of 32x32, the last tenth on whole clips,
    latent statistics stored in the config); about 2.5 minutes on 2 CPU cores.
    """
    from .vae import train_tiny_vae

    return train_tiny_vae(steps=steps, seed=seed, full_steps=steps // 10, threads=threads,
                          config=TOY_VAE_CONFIG, data=vae_training_clips)


def encode_clips(vae, n: int, seed: int, batch_size: int = 32):
    """``(latents [n, 4, 3, 16, 16] normalised, captions)`` of ``n`` toy-world clips."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    latents, captions = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            videos, _, caps = toy_world.generate(min(batch_size, n - lo), seed=seed * 1_000_003 + lo)
            latents.append((vae.encode(videos).latent_dist.mean - mean) / std)
            captions += caps
            if (lo // batch_size) % 32 == 31:
                log.info("encoded %d/%d clips  %.0fs", lo + batch_size, n, time.perf_counter() - start)
    return torch.cat(latents), captions


FOREGROUND_THRESHOLD = 0.5
"""A latent cell is the object's when its normalised latent lies this far (L2 over channels) from
the clip's background latent."""


def foreground_mask(x0: torch.Tensor) -> torch.Tensor:
    """``[n, 1, f, h, w]`` 1.0 where normalised latents ``x0 [n, c, f, h, w]`` show the object: farther
    than ``FOREGROUND_THRESHOLD`` from the background latent (per clip and latent frame, the median
    of the border cells; a toy-world background is one colour)."""
    border = torch.cat([x0[..., 0, :], x0[..., -1, :], x0[..., 1:-1, 0], x0[..., 1:-1, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    return ((x0 - background).norm(dim=1, keepdim=True) > FOREGROUND_THRESHOLD).float()


def motion_mask(x0: torch.Tensor) -> torch.Tensor:
    """``[n, 1, f, h, w]`` 1.0, in every latent frame, on the cells of the object's path: covered
    (``foreground_mask``) in some latent frame but not in all. In a frame where the object has not
    arrived or has already left, these are the cells a model that does not know which way time
    runs gets wrong: it draws the object at both ends of its path."""
    fg = foreground_mask(x0)
    return (fg.amax(dim=2, keepdim=True) - fg.amin(dim=2, keepdim=True)).expand_as(fg)


def train(pipe, latents: torch.Tensor, captions: list[str], steps: int, batch_size: int = 64,
          lr: float = 2e-3, shift: float = 3.0, drop: float = 0.1, ema_decay: float = 0.995,
          fg_weight: float = 10.0, motion_weight: float = 0.0, seed: int = 0, log_every: int = 100,
          on_eval=None, eval_every: int = 0) -> dict:
    """Flow-matching training of ``pipe.transformer`` and ``pipe.text_encoder`` in place.

    Returns the EMA state dicts ``{"transformer": ..., "text_encoder": ...}`` (not yet loaded).
    The squared error is weighted ``1 + fg_weight`` on the object's latent cells
    (``foreground_mask``) plus ``motion_weight`` on its path (``motion_mask``), normalised by the
    mean weight. ``on_eval(step, ema)`` is called every
    ``eval_every`` steps (0 = never) with the global RNG state saved and restored around it, so
    evaluating does not change what is trained.
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
        weight = 1.0 + fg_weight * foreground_mask(x0)
        if motion_weight:
            weight = weight + motion_weight * motion_mask(x0)
        loss = ((pred - (noise - x0)).square() * weight).mean() / weight.mean()
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
        if on_eval is not None and eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            with torch.random.fork_rng(devices=[]):  # the text encoder's dropout draws from it
                on_eval(step + 1, ema)
    for m in modules.values():
        m.eval()
    return ema


def build_untrained(seed: int, vae):
    """A ``WanPipeline``: the toy tokenizer, random text encoder and transformer, and ``vae``
    (an ``AutoencoderKLWan`` or the folder of one)."""
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from ..engine.models import make_scheduler

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TOY_CONFIG["text_encoder"]))
        transformer = WanTransformer3DModel(**TOY_CONFIG["transformer"])
    if not isinstance(vae, torch.nn.Module):
        vae = AutoencoderKLWan.from_pretrained(str(vae), local_files_only=True)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae.eval(), transformer=transformer,
                       scheduler=make_scheduler(3.0))


def caption_following(model: str, n: int = 96, seed: int = 12345, guidance_scale: float = 4.5,
                      steps: int = 20) -> dict:
    """Per-attribute rate at which ODE samples of ``n`` fresh captions show the asked choice.

    Samples go through the engine (``FlashGRPORecipe.sample``: the same sampler, text encoding
    and decoding as training rollouts); ``read_attributes`` reads them. Returns
    ``{"rates": {attr: rate}, "chance": {attr: 1/choices}, "all": rate all seven right, "motion":
    toy_world.motion_shown (how far objects move along the asked direction), ...}``.
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
    measured = toy_world.measure(videos)
    read = toy_world.read_attributes(videos, measured)
    ok = {a: [r[a] == t[a] for r, t in zip(read, attrs)] for a in toy_world.ATTRIBUTES}
    return {
        "rates": {a: sum(v) / n for a, v in ok.items()},
        "chance": {a: 1 / len(toy_world.CHOICES[a]) for a in toy_world.ATTRIBUTES},
        "all": sum(all(ok[a][i] for a in ok) for i in range(n)) / n,
        "motion": toy_world.motion_shown(measured, attrs),
        "samples": n, "guidance_scale": guidance_scale, "sampling_steps": steps,
    }


def _format_rates(report: dict) -> str:
    return ", ".join(f"{a} {report['rates'][a]:.2f}" for a in toy_world.ATTRIBUTES) + f"; all {report['all']:.2f}"


def _log_report(report: dict) -> None:
    log.info("caption following (chance): %s", ", ".join(
        f"{a} {report['rates'][a]:.2f} ({report['chance'][a]:.2f})" for a in toy_world.ATTRIBUTES))
    log.info("motion along the asked direction (asked): %s", ", ".join(
        f"{s} {m['along']:+.3f} ({m['asked']:.3f}), any direction {m['magnitude']:.3f}"
        for s, m in report["motion"].items()))
    log.info("all seven right: %.2f", report["all"])


def _report_again(folder: Path, samples: int) -> None:
    """Measure the toy model in ``folder`` again; its report.json keeps how it was trained."""
    from ..fileio import atomic_write_bytes

    path = folder / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(caption_following(str(folder), n=samples))
    atomic_write_bytes(path, (json.dumps(report, indent=1) + "\n").encode())
    _log_report(report)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output diffusers folder")
    parser.add_argument("--clips", type=int, default=4096, help="captioned training clips")
    parser.add_argument("--steps", type=int, default=6000, help="optimiser steps of the first phase (looks and layout)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--fg-weight", type=float, default=10.0,
                        help="extra loss weight on the object's latent cells (foreground_mask)")
    parser.add_argument("--motion-steps", type=int, default=3000,
                        help="optimiser steps of the second phase, which adds --motion-weight (0 = no second phase)")
    parser.add_argument("--motion-weight", type=float, default=20.0,
                        help="second phase: extra loss weight on the object's path in every frame (motion_mask)")
    parser.add_argument("--motion-batch-size", type=int, default=32)
    parser.add_argument("--motion-lr", type=float, default=1e-3)
    parser.add_argument("--from", dest="start", type=Path, default=None,
                        help="skip the VAE and the first phase: start the second phase from this toy model folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for determinism)")
    parser.add_argument("--vae", type=Path, default=None, help="reuse this trained toy VAE folder instead of training one")
    parser.add_argument("--vae-steps", type=int, default=300, help="fine-tuning steps of the toy VAE")
    parser.add_argument("--report-samples", type=int, default=96, help="held-out captions for the caption-following report")
    parser.add_argument("--eval-every", type=int, default=0, help="log caption following every this many steps (0 = only at the end)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: measure the model in --out again and update its report.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()

    def need_model_folder(flag: str, folder: Path) -> None:
        if not (folder / "model_index.json").is_file():
            parser.error(f"{flag}: {folder} is not a toy model folder (no model_index.json); "
                         "name one, or leave the flag out to train one from scratch")

    if args.report_only:
        need_model_folder("--report-only", args.out)
        _report_again(args.out, args.report_samples)
        return

    record = dict(clips=args.clips, seed=args.seed, threads=args.threads, fg_weight=args.fg_weight)
    if args.start is not None:
        need_model_folder("--from", args.start)
        from diffusers import WanTransformer3DModel
        from transformers import UMT5EncoderModel

        pipe = build_untrained(args.seed, args.start / "vae")  # the same tokenizer and config as a full run
        for name, cls in (("transformer", WanTransformer3DModel), ("text_encoder", UMT5EncoderModel)):
            trained = cls.from_pretrained(str(args.start / name), local_files_only=True)
            getattr(pipe, name).load_state_dict(trained.state_dict())
        earlier = json.loads((args.start / "report.json").read_text()) if (args.start / "report.json").is_file() else {}
        earlier = earlier.get("first_phase", earlier)  # reports before the motion phase kept these at the top
        record["first_phase"] = {**{k: earlier[k] for k in ("train_steps", "batch_size", "lr", "train_seconds",
                                                            "vae_steps") if k in earlier}, "from": str(args.start)}
    else:
        if args.vae is not None:
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan.from_pretrained(str(args.vae), local_files_only=True)
        else:
            vae = train_toy_vae(seed=args.seed, steps=args.vae_steps, threads=args.threads)
            torch.set_num_threads(args.threads)
        log.info("VAE ready in %.0fs", time.perf_counter() - start)
        pipe = build_untrained(args.seed, vae)
        record["first_phase"] = dict(train_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                     vae_steps=args.vae_steps)
    latents, captions = encode_clips(pipe.vae, args.clips, args.seed)
    log.info("encoded %d clips %s in %.0fs", len(captions), tuple(latents.shape[1:]), time.perf_counter() - start)

    def evaluate(step: int, ema: dict) -> None:
        live = {k: {n: p.detach().clone() for n, p in m.state_dict().items()}
                for k, m in (("transformer", pipe.transformer), ("text_encoder", pipe.text_encoder))}
        with tempfile.TemporaryDirectory() as tmp:
            pipe.transformer.load_state_dict(ema["transformer"])
            pipe.text_encoder.load_state_dict(ema["text_encoder"])
            pipe.save_pretrained(tmp, safe_serialization=True)
            pipe.transformer.load_state_dict(live["transformer"])
            pipe.text_encoder.load_state_dict(live["text_encoder"])
            report = caption_following(tmp, n=48, steps=10)
        pipe.transformer.train()
        pipe.text_encoder.train()
        log.info("step %d caption following: %s", step, _format_rates(report))

    phases = []
    if args.start is None:
        phases.append(dict(name="first", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           motion_weight=0.0, seed=args.seed))
    if args.motion_steps:
        phases.append(dict(name="motion", steps=args.motion_steps, batch_size=args.motion_batch_size,
                           lr=args.motion_lr, motion_weight=args.motion_weight, seed=args.seed + 1))
    for phase in phases:
        log.info("training %s", phase)
        # the text encoder's dropout draws from the global generator: seeded here, the same draws
        # whatever ran before (the VAE's training, --vae, --from); torch seeds it at random at start-up
        torch.manual_seed(phase["seed"])
        ema = train(pipe, latents, captions, phase["steps"], batch_size=phase["batch_size"], lr=phase["lr"],
                    seed=phase["seed"], fg_weight=args.fg_weight, motion_weight=phase["motion_weight"],
                    on_eval=evaluate, eval_every=args.eval_every)
        pipe.transformer.load_state_dict(ema["transformer"])
        pipe.text_encoder.load_state_dict(ema["text_encoder"])
        if phase["name"] == "first":  # from the start, VAE included
            record["first_phase"]["train_seconds"] = round(time.perf_counter() - start)
    train_seconds = time.perf_counter() - start
    record.update(motion_steps=args.motion_steps, motion_batch_size=args.motion_batch_size, motion_lr=args.motion_lr,
                  motion_weight=args.motion_weight, train_seconds=round(train_seconds))

    tmp = args.out.parent / f".{args.out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    report = caption_following(str(tmp), n=args.report_samples)
    report.update(record)
    (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.replace(args.out)
    _log_report(report)
    log.info("saved %s in %.0fs", args.out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
