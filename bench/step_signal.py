"""How much of one SDE step's group signal reaches the LoRA gradient: the one-step GRPO estimator's
signal-to-noise ratio at a model's state, split into its two factors.

    python -m bench.step_signal --model toy --reward brightness --guidance 1,4.5

Flash-GRPO trains one SDE step per sample: from a state ``x_k`` shared by a group (shared initial
noise, ODE up to step ``k``), each sample takes ``x_{k+1} = mu_theta(x_k) + s eps_i`` and its
log-probability gradient is ``J^T eps_i / s`` with ``J = d mu / d theta`` (the LoRA's). Weighted by
advantages ``A_i``, the batch gradient is ``J^T sum_i A_i eps_i / s``. Where the reward is close to
linear in the step noise, ``R_i ~ R + s g . eps_i`` (``g`` its gradient at ``x_{k+1}``), the
expected gradient points along ``J^T g`` and the rest is noise spread over all of ``J``, so that
per sample::

    SNR^2 = corr^2 * rho / D
    corr = correlation over samples of R_i with its linear prediction s g . eps_i
    rho  = |J^T g_hat|^2 / E_z |J^T z|^2   (g_hat, z unit vectors; z uniformly random)
    D    = elements of one latent video

``corr`` says how much of the group's reward spread one step explains linearly; ``rho`` how much
more the LoRA's gradient feels the reward's direction than an arbitrary one. A batch of ``N``
samples has ``SNR^2 = N`` times that, and two independent batches' gradients meet at a cosine
of about ``N SNR^2 / (1 + N SNR^2)`` (what ``bench.alignment --snr-batches`` measures on whole
training iterations). This prints both factors per seed (a fresh initial noise each) and the
predicted cosine for a batch of ``--batch`` samples, for each ``--guidance`` scale.

The reward is recomputed differentiably from the decoded float video (no uint8 rounding):
``brightness`` or a toy-world attribute whose reading is a continuous function of the pixels
(``toy_size``, ``toy_shape``, ``toy_position``, ``toy_colour``, ``toy_background``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import numpy as np
import torch

from trainer.algo import sde as sde_math
from trainer.engine import lora as lora_lib
from trainer.engine.config import FlashGRPOConfig, parse_set_items
from trainer.engine.recipe import FlashGRPORecipe, sample_noise
from trainer.engine.rollout import predict_velocity
from trainer.errors import UserError
from trainer.rewards.simple import Brightness
from trainer.toy import world as toy_world

REWARDS = ("brightness", "toy_size", "toy_shape", "toy_position", "toy_colour", "toy_background")
DEFAULT_PROMPT = "a small cyan square in the center moves rightward fast on a gray background"


def _reward_fn(name: str, prompt: str):
    """float video ``[n, 3, T, H, W]`` in 0..1 -> reward ``[n]``, differentiable."""
    if name == "brightness":  # the reward itself: its float path is differentiable
        return lambda video: Brightness().score(video.permute(0, 2, 3, 4, 1), [prompt] * len(video)).scores
    attr = name.removeprefix("toy_")
    asked = toy_world.parse_caption(prompt).get(attr)
    if asked is None:
        raise UserError(f"--reward {name}: the prompt {prompt!r} states no {attr}")
    k = toy_world.CHOICES[attr].index(asked)
    return lambda video: toy_world.attribute_probs(toy_world.measure(video.permute(0, 2, 3, 4, 1)))[attr][:, k]


def direction_gain(jt_norm2, direction: torch.Tensor, probes: torch.Tensor) -> float:
    """``rho = |J^T d|^2 / mean_z |J^T z|^2`` over unit vectors: ``d`` along ``direction`` and ``z``
    along each of ``probes`` (random Gaussian draws are uniform directions); ``jt_norm2(u)`` gives
    ``|J^T u|^2``. 1 for a direction the LoRA feels no more than an arbitrary one."""
    return jt_norm2(direction / direction.norm()) / float(np.mean([jt_norm2(z / z.norm()) for z in probes]))


def measure(cfg: FlashGRPOConfig, reward: str, prompt: str, k: int, seeds: int, samples: int,
            probes: int = 6) -> list[dict]:
    """``corr``, ``rho`` and the per-sample ``snr2`` at step ``k`` for ``seeds`` initial noises."""
    with tempfile.TemporaryDirectory() as tmp:
        recipe = FlashGRPORecipe(cfg, run_dir=tmp).setup(training=True)
    tr, vae = recipe.transformer, recipe.pipe.vae
    cond = recipe.conditioning([prompt])
    sig, std, T = recipe.sigmas.float(), recipe.stds, len(recipe.sigmas) - 1
    if not 0 <= k < T - 1:
        raise UserError(f"--k {k}: must be in 0..{T - 2} (the step must leave at least one step to finish)")
    lat_mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    lat_std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    score = _reward_fn(reward, prompt)
    params = [p for p in tr.parameters() if p.requires_grad]

    def velocity(x, j):
        return predict_velocity(tr, x, sig[j], cond.rows(torch.zeros(x.shape[0], dtype=torch.long)))

    def finish(x, start):
        for j in range(start, T):
            x = sde_math.ode_step(x, velocity(x, j), sig[j], sig[j + 1])
        video = vae.decode(x * lat_std + lat_mean, return_dict=False)[0]
        return score(((video + 1) / 2).clamp(0, 1))

    rows = []
    for seed in range(seeds):
        x = sample_noise(cfg.seed + seed, 0, 0, -1, recipe.latent_shape)[None]
        with torch.no_grad(), lora_lib.lora_disabled(tr):
            for j in range(k):
                x = sde_math.ode_step(x, velocity(x, j), sig[j], sig[j + 1])
            mu = sde_math.sde_mean(x, velocity(x, k), sig[k], sig[k + 1], std[k])
        step = float(std[k] * (sig[k] - sig[k + 1]).abs().sqrt())
        gen = torch.Generator().manual_seed(1000 + seed)
        with lora_lib.lora_disabled(tr):
            at = mu.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(finish(at, k + 1).sum(), at)
            eps = torch.randn(samples, *recipe.latent_shape, generator=gen)
            with torch.no_grad():
                r = torch.cat([finish(mu + step * e, k + 1) for e in eps.split(8)])
        linear = step * eps.flatten(1) @ g.flatten()
        corr = float(np.corrcoef(r.numpy(), linear.numpy())[0, 1]) if r.std() > 0 else float("nan")

        def jt_norm2(u, x=x):
            """|J^T u|^2 for the LoRA's J = d mu / d theta at x_k."""
            mean = sde_math.sde_mean(x, velocity(x, k), sig[k], sig[k + 1], std[k])
            grads = torch.autograd.grad((mean * u).sum(), params)
            return float(sum(q.square().sum() for q in grads))

        rho = direction_gain(jt_norm2, g, torch.randn(probes, 1, *recipe.latent_shape, generator=gen))
        rows.append({"seed": seed, "reward": float(r.mean()), "reward_std": float(r.std()), "corr": corr,
                     "rho": rho, "snr2": corr * corr * rho / g.numel()})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.step_signal", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toy", help="toy, tiny or a local Wan folder")
    ap.add_argument("--preset", default="toy_demo")
    ap.add_argument("--reward", default="brightness", choices=REWARDS)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--guidance", default="1,4.5", help="comma-separated guidance scales, one measurement each")
    ap.add_argument("--k", type=int, default=2, help="the SDE step (grid index)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=24, help="step noises per seed for corr")
    ap.add_argument("--batch", type=int, default=32, help="batch size of the predicted cosine")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        base = {"model": args.model, "prompts": [args.prompt], "eval_prompts": 0, "sample_videos": False,
                "rewards": [{"name": "brightness"}], "noise_level": 2.0, "lora_init": "gaussian",
                **parse_set_items(args.set)}
        print(f"model {args.model}, reward {args.reward}, step k={args.k}, prompt {args.prompt!r}")
        print("| guidance | corr | rho | SNR^2 per sample | predicted cosine (batch of "
              f"{args.batch}) | reward std |\n|---:|---:|---:|---:|---:|---:|")
        for w in [float(v) for v in args.guidance.split(",")]:
            cfg = FlashGRPOConfig.from_dict({**base, "guidance_scale": w}, preset=args.preset)
            rows = measure(cfg, args.reward, args.prompt, args.k, args.seeds, args.samples)
            mean = {key: float(np.mean([row[key] for row in rows])) for key in ("corr", "rho", "snr2", "reward_std")}
            nsnr = args.batch * mean["snr2"]
            print(f"| {w:g} | {mean['corr']:.2f} | {mean['rho']:.1f} | {mean['snr2']:.5f} | "
                  f"{nsnr / (1 + nsnr):.2f} | {mean['reward_std']:.4f} |", flush=True)
            print("  per seed: " + json.dumps([{k: round(v, 5) for k, v in row.items()} for row in rows]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
