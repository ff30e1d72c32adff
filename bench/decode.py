"""VAE decode time on this machine: Wan's VAE with its stock RMS norms against the sum-of-squares
form the engine uses on CPU (``trainer.engine.models.use_cpu_vae_norms``), measured in one run.

    python -m bench.decode [--model toy] [--videos 32] [--batch 8] [--repeats 3]

Prints seconds per decode of ``--videos`` random latents (``--batch`` per call, as the recipe's
``decode_batch_size``), the ratio, and the largest pixel difference between the two (float
rounding: about 1e-6 of the -1..1 range).
"""

from __future__ import annotations

import argparse
import time

import torch

from trainer.engine.models import load_pipeline, use_cpu_vae_norms


def decode_seconds(vae, latents: torch.Tensor, batch: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Best of ``repeats`` wall times of decoding ``latents`` ``batch`` at a time, and the videos."""
    best, videos = float("inf"), None
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            videos = torch.cat([vae.decode(z, return_dict=False)[0] for z in latents.split(batch)])
            best = min(best, time.perf_counter() - start)
    return best, videos


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toy", help="toy, tiny or a local Wan diffusers folder")
    ap.add_argument("--videos", type=int, default=32, help="videos per decode (the demo's 4 prompts x 8)")
    ap.add_argument("--batch", type=int, default=8, help="videos per VAE call (decode_batch_size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=3, help="latent frames")
    ap.add_argument("--size", type=int, default=16, help="latent height and width")
    args = ap.parse_args(argv)
    vae = load_pipeline(args.model, text_encoder=False).vae.float().eval()
    latents = torch.randn(args.videos, vae.config.z_dim, args.frames, args.size, args.size,
                          generator=torch.Generator().manual_seed(0))
    count = use_cpu_vae_norms(vae, False)
    stock, a = decode_seconds(vae, latents, args.batch, args.repeats)
    use_cpu_vae_norms(vae, True)
    fast, b = decode_seconds(vae, latents, args.batch, args.repeats)
    print(f"model {args.model}: {count} RMS norms, {args.videos} videos, latents {list(latents.shape[1:])}, "
          f"batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"stock F.normalize   {stock:.4f} s\nsum of squares      {fast:.4f} s\n"
          f"ratio (stock / sum of squares) {stock / fast:.2f}; largest pixel difference {float((a - b).abs().max()):.2e}")


if __name__ == "__main__":
    main()
