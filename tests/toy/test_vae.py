"""Tests for trainer/toy/vae.py and the shipped trained tiny VAE (trainer/assets/tiny_vae).

What the RL demo needs from the tiny model's VAE is a decoder whose pixels follow the latents:
moving a normalised latent channel by one standard deviation must move the decoded brightness
clearly (the random-initialised VAE moves it by ~0.001). These tests pin that, the reconstruction
quality of the shipped weights, the latent normalisation stored in its config, and the synthetic
data. All on real models, no mocks; held-out data uses seeds never seen in training (training
batches use positive seeds, these tests -2000 onwards). About 5-10 s on 2 CPU cores.
"""

from __future__ import annotations

import json

import pytest
import torch

from trainer.engine.models import TINY_CONFIG, build_tiny_pipeline
from trainer.toy import vae as toy

# Measured on the shipped weights (trainer/assets/tiny_vae, 200 steps from the structured start):
# held-out MSE ~0.016-0.023 on 9x64x64 clips in -1..1 (random-initialised VAE: ~0.34); one-std
# shifts of channels 0-2 move the mean brightness (0..1 scale) by ~0.07-0.10 each (random VAE:
# <= 0.006, channel 3 of the shipped VAE: ~0.003, its decoder barely uses it).
MSE_LIMIT = 0.035
SENSITIVITY_MIN = 0.02


@pytest.fixture(scope="module")
def shipped_vae():
    """The shipped trained VAE, loaded the way ``build_tiny_pipeline`` loads it."""
    from diffusers import AutoencoderKLWan

    assert (toy.DEFAULT_OUT / "config.json").is_file(), "run: python -m trainer.toy.vae"
    return AutoencoderKLWan.from_pretrained(str(toy.DEFAULT_OUT), local_files_only=True).eval()


@pytest.fixture(scope="module")
def random_vae():
    """A random-initialised VAE of the same architecture (what the tiny model used before)."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoencoderKLWan(**TINY_CONFIG["vae"]).eval()


@pytest.fixture(scope="module")
def held_out():
    return toy.synthetic_videos(4, seed=-2000)


def _normalised(vae, videos):
    """``(z - latents_mean) / latents_std`` of the encoder means, as the pipeline normalises."""
    z = toy.encoder_means(vae, videos)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return (z - mean) / std


def _decode_normalised(vae, latents):
    """Decode normalised latents like ``trainer.engine.recipe`` does; videos in 0..1."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(latents * std + mean).sample
    return ((video + 1.0) / 2.0).clamp(0, 1)


def _brightness_shifts(vae, videos):
    """Per latent channel: |change of mean decoded brightness| when that channel moves by +1 std."""
    n = _normalised(vae, videos)
    base = _decode_normalised(vae, n).mean().item()
    shifts = []
    for c in range(n.shape[1]):
        moved = n.clone()
        moved[:, c] += 1.0
        shifts.append(abs(_decode_normalised(vae, moved).mean().item() - base))
    return shifts


def test_shipped_vae_reconstructs_far_better_than_random(shipped_vae, random_vae, held_out):
    mse = (toy.reconstruct(shipped_vae, held_out) - held_out).square().mean().item()
    random_mse = (toy.reconstruct(random_vae, held_out) - held_out).square().mean().item()
    assert mse < random_mse / 4, (mse, random_mse)
    assert mse < MSE_LIMIT, mse


def test_decoder_brightness_follows_normalised_latents(shipped_vae, random_vae, held_out):
    videos = toy.synthetic_videos(2, frames=5, seed=-2002)
    shipped = _brightness_shifts(shipped_vae, videos)
    random = _brightness_shifts(random_vae, videos)
    assert max(shipped) >= SENSITIVITY_MIN, shipped
    # Channels 0-2 carry the block colours: each one alone must move brightness.
    assert sum(s >= SENSITIVITY_MIN for s in shipped) >= 3, shipped
    assert max(shipped) >= 10 * max(random), (shipped, random)


def test_normalised_latents_have_unit_scale(shipped_vae):
    n = _normalised(shipped_vae, toy.synthetic_videos(16, seed=-2001))
    per_channel = n.transpose(0, 1).reshape(n.shape[1], -1)
    std = per_channel.std(dim=1)
    assert ((std >= 0.5) & (std <= 2.0)).all(), std
    assert per_channel.mean(dim=1).abs().max() < 0.5, per_channel.mean(dim=1)


def test_shipped_config_matches_tiny_config_and_pipeline_uses_it(shipped_vae):
    shipped = json.loads((toy.DEFAULT_OUT / "config.json").read_text())
    for key, value in TINY_CONFIG["vae"].items():
        if key not in ("latents_mean", "latents_std"):
            assert shipped[key] == value, key
    assert len(shipped["latents_mean"]) == len(shipped["latents_std"]) == TINY_CONFIG["vae"]["z_dim"]
    assert shipped["latents_std"] != [1.0] * 4  # real statistics, not the placeholders
    weights = toy.DEFAULT_OUT / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 500_000
    pipe = build_tiny_pipeline(seed=0)
    assert list(pipe.vae.config.latents_std) == shipped["latents_std"]
    for name, p in shipped_vae.state_dict().items():
        assert torch.equal(p, pipe.vae.state_dict()[name]), name


def test_structured_init_is_a_working_codec(random_vae, held_out):
    """The hand-set start of training (block colours) already reconstructs colours."""
    from diffusers import AutoencoderKLWan

    vae = toy.structured_init(AutoencoderKLWan(**TINY_CONFIG["vae"])).eval()
    videos = held_out[:2]
    mse = (toy.reconstruct(vae, videos) - videos).square().mean().item()
    assert mse < MSE_LIMIT, mse
    z = toy.encoder_means(vae, videos)
    block_rgb = torch.nn.functional.avg_pool3d(videos[:, :, :1], (1, 8, 8))  # frame 0, 8x8 blocks
    assert torch.allclose(z[:, :3, :1], block_rgb, atol=0.03)


def test_train_tiny_vae_is_deterministic_and_stores_latent_stats():
    kwargs = dict(steps=2, full_steps=0, batch_size=1, stats_videos=1, log_every=0)
    threads = torch.get_num_threads()
    a = toy.train_tiny_vae(**kwargs)
    b = toy.train_tiny_vae(**kwargs)
    assert torch.get_num_threads() == threads  # restored
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name
    assert a.config.latents_mean == b.config.latents_mean
    assert len(a.config.latents_std) == 4 and min(a.config.latents_std) > 0


def test_synthetic_videos_deterministic_and_in_range():
    a = toy.synthetic_videos(6, frames=9, height=64, width=48, seed=3)
    b = toy.synthetic_videos(6, frames=9, height=64, width=48, seed=3)
    c = toy.synthetic_videos(6, frames=9, height=64, width=48, seed=4)
    assert a.shape == (6, 3, 9, 64, 48) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= -1.0 and a.max() <= 1.0
    # Scenes vary: dark and bright backgrounds, and shapes that move between frames.
    many = toy.synthetic_videos(64, frames=5, height=32, width=32, seed=0)
    corner = many[:, :, 0, 0, 0].mean(dim=1)  # mostly background colour
    assert corner.min() < -0.5 and corner.max() > 0.5
    assert (many[:, :, 0] != many[:, :, -1]).any(dim=(1, 2, 3)).float().mean() > 0.5
