"""Numerical tests of the weight-free ``motion`` and ``subject_consistency`` rewards."""

import math

import numpy as np
import pytest
import torch

from trainer.errors import UserError
from trainer.rewards import build_reward, build_reward_set
from trainer.rewards.motion import clamped_cosine, histogram_features, pixel_features


def moving_square(t=9, h=64, w=64, side=8, step=2, top=10):
    """uint8 [1, t, h, w, 3]: a white side x side square on black moving `step` px right per frame."""
    video = torch.zeros(1, t, h, w, 3, dtype=torch.uint8)
    for i in range(t):
        video[0, i, top:top + side, step * i:step * i + side] = 255
    return video


def static_video(n=2, t=5, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (n, 1, h, w, 3), generator=g, dtype=torch.uint8)
    return frame.expand(n, t, h, w, 3).contiguous()


# ---------------------------------------------------------------- motion

def test_motion_static_is_zero_and_alternating_is_one():
    motion = build_reward("motion")
    out = motion(static_video(), ["", ""])
    assert out.scores.tolist() == [0.0, 0.0] and out.details["peak"].tolist() == [0.0, 0.0]
    frames = [torch.zeros(4, 4, 3, dtype=torch.uint8), torch.full((4, 4, 3), 255, dtype=torch.uint8)]
    alternating = torch.stack([frames[i % 2] for i in range(5)]).unsqueeze(0)
    assert motion(alternating, [""]).scores.tolist() == [1.0]


def test_motion_of_moving_square_is_exact():
    # Each step uncovers 2 columns and covers 2 columns of an 8-px-tall square: 2 * 8 * 2 = 32 pixels
    # change by 255 in all channels, out of 64 * 64 pixels -> 32 / 4096 = 2**-7 per pair, every pair.
    out = build_reward("motion")(moving_square(), ["a square"])
    assert out.scores.tolist() == [32 / 4096]
    assert out.details["peak"].tolist() == [32 / 4096]
    # A pause (repeated frame) halves that pair: mean over 2 pairs = (1/128 + 0) / 2.
    video = moving_square(t=2)
    paused = torch.cat([video, video[:, -1:]], dim=1)
    assert build_reward("motion")(paused, [""]).scores.tolist() == [32 / 4096 / 2]


def test_motion_is_one_minus_flickering_and_float_input():
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (3, 4, 8, 8, 3), generator=g, dtype=torch.uint8)
    motion = build_reward("motion")(video, None).scores.double()
    flicker = build_reward("temporal_flickering")(video, None).scores.double()
    assert torch.allclose(motion, 1 - flicker, atol=1e-6)
    assert torch.equal(build_reward("motion")(video.float() / 255, None).scores, motion.float())


def test_motion_single_frame_is_zero():
    assert build_reward("motion")(static_video(n=1, t=1), [""]).scores.tolist() == [0.0]


# ---------------------------------------------------------------- subject consistency

@pytest.mark.parametrize("features", ["pixels", "histogram"])
def test_consistency_static_is_one(features):
    reward = build_reward("subject_consistency", features=features)
    out = reward(static_video(n=2, t=4), ["", ""])
    assert out.scores.tolist() == [1.0, 1.0]
    assert out.details["to_first"].tolist() == [1.0, 1.0] and out.details["to_previous"].tolist() == [1.0, 1.0]
    assert reward(static_video(n=1, t=1), [""]).scores.tolist() == [1.0]


def reference_consistency(video, feature_fn):
    """VBench's formula with plain numpy, for one uint8 video [T, H, W, 3]."""
    feats = [feature_fn(video[t:t + 1])[0].numpy() for t in range(video.shape[0])]

    def cos(a, b):
        return max(0.0, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))

    sims = [(cos(feats[t], feats[0]) + cos(feats[t], feats[t - 1])) / 2 for t in range(1, len(feats))]
    return sum(sims) / len(sims)


def test_consistency_pixels_matches_formula_on_moving_square():
    video = moving_square()
    out = build_reward("subject_consistency", size=16)(video, [""])
    expected = reference_consistency(video[0], lambda f: pixel_features(f, 16))
    assert out.scores.item() == pytest.approx(expected, abs=1e-6)
    assert 0.9 < out.scores.item() < 1.0
    assert out.scores.item() == pytest.approx(
        (out.details["to_first"].item() + out.details["to_previous"].item()) / 2, abs=1e-6)


def test_consistency_pixel_features_exact():
    # 4x4 frame, left half black, right half white, pooled to 2x2 -> [-1, 1] per row, per channel.
    frame = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    frame[:, :, 2:] = 255
    feats = pixel_features(frame, size=2)
    assert feats.shape == (1, 12)
    assert feats.view(3, 2, 2).tolist() == [[[-1.0, 1.0], [-1.0, 1.0]]] * 3


def test_consistency_black_to_white_is_zero_with_pixels_and_histogram():
    video = torch.zeros(1, 2, 8, 8, 3, dtype=torch.uint8)
    video[0, 1] = 255
    assert build_reward("subject_consistency")(video, [""]).scores.tolist() == [0.0]
    assert build_reward("subject_consistency", features="histogram")(video, [""]).scores.tolist() == [0.0]


def test_histogram_features_exact_and_motion_invariant():
    frame = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    frame[0, 0, 0] = torch.tensor([255, 16, 15], dtype=torch.uint8)  # bins 15, 1, 0 with 16 bins
    feats = histogram_features(frame, bins=16).view(3, 16)
    assert feats[0, 0].item() == 0.75 and feats[0, 15].item() == 0.25
    assert feats[1, 0].item() == 0.75 and feats[1, 1].item() == 0.25
    assert feats[2, 0].item() == 1.0
    assert torch.allclose(feats.sum(dim=1), torch.ones(3, dtype=torch.float64))
    # A square moving on a uniform background keeps its colour histogram: consistency 1.
    out = build_reward("subject_consistency", features="histogram")(moving_square(), [""])
    assert out.scores.tolist() == [1.0]


def test_clamped_cosine_zero_vector_rules():
    zero, one = torch.zeros(1, 3), torch.ones(1, 3)
    assert clamped_cosine(zero, zero).tolist() == [1.0]
    assert clamped_cosine(zero, one).tolist() == [0.0]
    assert clamped_cosine(one, -one).tolist() == [0.0]
    assert clamped_cosine(one, 2 * one).item() == pytest.approx(1.0)
    assert clamped_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item() == pytest.approx(
        1 / math.sqrt(2))


def test_bad_arguments_and_reward_set():
    with pytest.raises(UserError, match="pixels"):
        build_reward("subject_consistency", features="dino")
    with pytest.raises(UserError, match="bins"):
        build_reward("subject_consistency", features="histogram", bins=300)
    with pytest.raises(UserError, match="size"):
        build_reward("subject_consistency", size=0)
    reward = build_reward_set(["motion", "subject_consistency"])
    out = reward(moving_square(), ["x"])
    assert set(out.details) == {"motion", "motion/peak", "subject_consistency",
                                "subject_consistency/to_first", "subject_consistency/to_previous"}


def test_bench_rewards_runs_in_process(capsys):
    from bench.rewards import main

    result = main(["--only", "motion,subject_consistency,remote", "--videos", "2", "--frames", "3",
                   "--size", "16", "--repeats", "1"])
    rows = result["rewards"]
    assert rows["motion"]["videos_per_s"] > 0 and rows["subject_consistency"]["calls"] == 1
    assert "url" in rows["remote"]["skipped"]
    out = capsys.readouterr().out
    assert "videos/s" in out and "skipped remote" in out
