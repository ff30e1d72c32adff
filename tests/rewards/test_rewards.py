"""Numerical tests of the reward interface, registry, weighted sums and weight-free rewards."""

import math

import pytest
import torch

from trainer.errors import UserError
from trainer.rewards import (
    Reward,
    RewardOutput,
    WeightedSum,
    as_float,
    as_uint8,
    available_rewards,
    build_reward,
    build_reward_set,
    jpeg_sizes_kb,
)

SIMPLE = ["brightness", "color", "jpeg_compressibility", "jpeg_incompressibility", "temporal_flickering"]


def constant_video(rgb, n=1, t=3, h=16, w=16):
    """uint8 [n, t, h, w, 3] filled with one colour."""
    return torch.tensor(rgb, dtype=torch.uint8).expand(n, t, h, w, 3).contiguous()


def noise_video(n=2, t=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, t, h, w, 3), generator=g, dtype=torch.uint8)


def test_registry_lists_simple_rewards():
    assert set(SIMPLE) <= set(available_rewards())
    assert available_rewards() == sorted(available_rewards())
    for name in SIMPLE:
        reward = build_reward(name)
        assert isinstance(reward, Reward) and reward.name == name


# ---------------------------------------------------------------- temporal flickering

def test_flickering_constant_is_one_and_alternating_is_zero():
    flicker = build_reward("temporal_flickering")
    static = constant_video([10, 200, 30], t=5)
    frames = [torch.zeros(8, 8, 3, dtype=torch.uint8), torch.full((8, 8, 3), 255, dtype=torch.uint8)]
    alternating = torch.stack([frames[i % 2] for i in range(6)]).unsqueeze(0)
    assert flicker(static, [""]).scores.tolist() == [1.0]
    assert flicker(alternating, [""]).scores.tolist() == [0.0]


def test_flickering_matches_formula_and_single_frame():
    flicker = build_reward("temporal_flickering")
    video = noise_video(n=2, t=4)
    x = video.double()
    expected = (255 - (x[:, 1:] - x[:, :-1]).abs().mean(dim=(2, 3, 4)).mean(dim=1)) / 255
    out = flicker(video, ["a", "b"])
    assert out.scores.dtype == torch.float32 and out.scores.shape == (2,)
    torch.testing.assert_close(out.scores.double(), expected, atol=1e-6, rtol=0)
    assert flicker(noise_video(n=1, t=1), None).scores.tolist() == [1.0]


# ---------------------------------------------------------------- brightness and colour

def test_brightness():
    bright = build_reward("brightness")
    assert bright(constant_video([128, 128, 128]), [""]).scores.item() == pytest.approx(128 / 255, abs=1e-6)
    expected = (0.299 * 255 + 0.587 * 0 + 0.114 * 0) / 255
    assert bright(constant_video([255, 0, 0]), [""]).scores.item() == pytest.approx(expected, abs=1e-6)
    # Half black, half white frames -> 0.5.
    video = torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8)
    video[:, :, :2] = 255
    assert bright(video, [""]).scores.item() == pytest.approx(0.5, abs=1e-6)


def test_color():
    red = build_reward("color")  # default target red
    assert red(constant_video([255, 0, 0]), [""]).scores.tolist() == [1.0]
    green_score = red(constant_video([0, 255, 0]), [""]).scores.item()
    assert green_score == pytest.approx(1 - math.sqrt(2 * 255**2) / (255 * math.sqrt(3)), abs=1e-6)
    cyan_score = red(constant_video([0, 255, 255]), [""]).scores.item()
    assert cyan_score == pytest.approx(0.0, abs=1e-6)
    blue = build_reward("color", rgb=[0, 0, 255])
    assert blue(constant_video([0, 0, 255]), [""]).scores.tolist() == [1.0]
    with pytest.raises(UserError, match="rgb"):
        build_reward("color", rgb=[255, 0])
    with pytest.raises(UserError, match="rgb"):
        build_reward("color", rgb=[300, 0, 0])


# ---------------------------------------------------------------- JPEG

def test_jpeg_sizes_and_sign():
    flat = constant_video([90, 90, 90], n=1, t=2, h=32, w=32)
    noise = noise_video(n=1, t=2, h=32, w=32)
    videos = torch.cat([flat, noise])
    incompress = build_reward("jpeg_incompressibility")(videos, ["", ""]).scores
    compress = build_reward("jpeg_compressibility")(videos, ["", ""]).scores
    assert incompress[1] > 2 * incompress[0] > 0
    torch.testing.assert_close(compress, -incompress / 500)
    assert compress[0] > compress[1]
    # Deterministic, and equal to the size of a single encoded frame for a constant video.
    assert build_reward("jpeg_incompressibility")(videos, None).scores.tolist() == incompress.tolist()
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(flat[0, 0].numpy()).save(buffer, format="JPEG", quality=95)
    assert incompress[0].item() == pytest.approx(buffer.tell() / 1000, rel=1e-6)


def test_jpeg_every_uses_subset_of_frames():
    flat = constant_video([0, 0, 0], t=1, h=32, w=32)
    noise = noise_video(n=1, t=1, h=32, w=32)
    video = torch.cat([flat, noise, flat, noise], dim=1)  # frames: flat, noise, flat, noise
    every2 = build_reward("jpeg_incompressibility", every=2)(video, [""]).scores
    torch.testing.assert_close(every2, jpeg_sizes_kb(flat))
    with pytest.raises(UserError, match="every"):
        build_reward("jpeg_compressibility", every=0)


# ---------------------------------------------------------------- inputs

@pytest.mark.parametrize("name", SIMPLE)
def test_uint8_float_numpy_and_list_inputs_agree(name):
    reward = build_reward(name)
    video = noise_video(n=2, t=3, h=16, w=16, seed=1)
    prompts = ["p", "q"]
    ref = reward(video, prompts).scores
    as_float_scores = reward(video.float() / 255, prompts).scores
    assert torch.allclose(ref, as_float_scores, atol=1 / 255, rtol=0)
    assert reward(video.numpy(), prompts).scores.tolist() == ref.tolist()
    assert reward(list(video), prompts).scores.tolist() == ref.tolist()
    assert reward([v.numpy() for v in video], prompts).scores.tolist() == ref.tolist()


def test_ragged_list_is_scored_video_by_video():
    flicker = build_reward("temporal_flickering")
    a, b = noise_video(n=1, t=3, seed=2)[0], noise_video(n=1, t=5, seed=3)[0]
    out = flicker([a, b], ["a", "b"])
    expected = torch.cat([flicker(a[None], ["a"]).scores, flicker(b[None], ["b"]).scores])
    assert out.scores.tolist() == expected.tolist()


def test_batch_size_splits_calls():
    class CountingBrightness(Reward):
        input_format = "float"
        batch_size = 2

        def __init__(self):
            self.calls = []

        def score(self, videos, prompts):
            self.calls.append((videos.shape[0], list(prompts)))
            return videos.mean(dim=(1, 2, 3, 4))

    reward = CountingBrightness()
    video = noise_video(n=5, t=1, h=4, w=4)
    out = reward(video, list("abcde"))
    assert [c[0] for c in reward.calls] == [2, 2, 1]
    assert [c[1] for c in reward.calls] == [["a", "b"], ["c", "d"], ["e"]]
    torch.testing.assert_close(out.scores, (video.float() / 255).mean(dim=(1, 2, 3, 4)))
    assert out.details == {}


def test_conversion_helpers():
    video = noise_video(n=2, t=2, h=4, w=4)
    f = as_float(video)
    assert f.dtype == torch.float32 and float(f.max()) <= 1.0
    assert torch.equal(as_uint8(f), video)
    assert torch.equal(as_uint8(video.numpy()), video)
    assert torch.equal(as_uint8(list(video)), video)
    with pytest.raises(ValueError, match="different shapes"):
        as_uint8([video[0], video[1, :1]])


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 4, 4, 3, dtype=torch.uint8), r"\[N, T, H, W, 3\]"),  # missing batch dim
        (torch.zeros(1, 2, 3, 4, 4, dtype=torch.uint8), r"\[N, T, H, W, 3\]"),  # channels first
        (torch.zeros(1, 2, 4, 4, 3, dtype=torch.int64), "dtype"),
        (torch.full((1, 2, 4, 4, 3), 200.0), "0..255"),  # float in 0..255
        (torch.full((1, 2, 4, 4, 3), -1.0), "-1..1"),
        ([torch.zeros(4, 4, 3, dtype=torch.uint8)], r"\[T, H, W, 3\]"),
        ("not a video", "torch.Tensor"),
    ],
)
def test_bad_videos_give_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match) as info:
        build_reward("brightness")(bad, None)
    assert isinstance(info.value, UserError)


def test_prompt_count_must_match():
    with pytest.raises(UserError, match="2 videos but 1 prompts"):
        build_reward("brightness")(noise_video(n=2, t=1, h=4, w=4), ["only one"])


# ---------------------------------------------------------------- registry errors

def test_unknown_name_lists_available_and_suggests():
    with pytest.raises(UserError) as info:
        build_reward("jpeg_compresibility")
    message = str(info.value)
    for name in SIMPLE:
        assert name in message
    assert "Did you mean 'jpeg_compressibility'" in message


def test_unknown_argument_names_it_and_the_accepted_ones():
    with pytest.raises(UserError) as info:
        build_reward("color", colour=[1, 2, 3])
    assert "'colour'" in str(info.value) and "rgb" in str(info.value)
    with pytest.raises(UserError, match="accepted arguments: none"):
        build_reward("brightness", gamma=2.2)


# ---------------------------------------------------------------- weighted sums

def test_weighted_sum_matches_hand_computation():
    videos = torch.cat([constant_video([255, 0, 0], t=3, h=32, w=32), noise_video(n=1, t=3, h=32, w=32)])
    prompts = ["red", "noise"]
    reward = build_reward_set([
        {"name": "brightness", "weight": 2.0},
        "temporal_flickering",
        {"name": "color", "weight": -0.5, "args": {"rgb": [0, 255, 0]}},
        {"name": "jpeg_compressibility", "weight": 3},
    ])
    assert isinstance(reward, WeightedSum)
    out = reward(videos, prompts)
    parts = {
        "brightness": build_reward("brightness")(videos, prompts).scores,
        "temporal_flickering": build_reward("temporal_flickering")(videos, prompts).scores,
        "color": build_reward("color", rgb=[0, 255, 0])(videos, prompts).scores,
        "jpeg_compressibility": build_reward("jpeg_compressibility")(videos, prompts).scores,
    }
    expected = 2.0 * parts["brightness"] + parts["temporal_flickering"] - 0.5 * parts["color"] \
        + 3 * parts["jpeg_compressibility"]
    assert out.scores.dtype == torch.float32 and out.scores.shape == (2,)
    torch.testing.assert_close(out.scores, expected, atol=1e-6, rtol=1e-6)
    assert set(out.details) == set(parts)
    for name, value in parts.items():
        assert out.details[name].tolist() == value.tolist()


def test_single_spec_and_nested_details():
    class TwoParts(Reward):
        name = "two_parts"

        def score(self, videos, prompts):
            m = videos.mean(dim=(1, 2, 3, 4))
            return RewardOutput(m, {"a": m, "b": 1 - m})

    video = noise_video(n=2, t=1, h=4, w=4)
    inner = WeightedSum([("two", 0.5, TwoParts())])
    outer = WeightedSum([("sum", 2.0, inner), ("bright", 1.0, build_reward("brightness"))])
    out = outer(video, None)
    m = (video.float() / 255).mean(dim=(1, 2, 3, 4))
    assert set(out.details) == {"sum", "sum/two", "sum/two/a", "sum/two/b", "bright"}
    torch.testing.assert_close(out.details["sum/two/b"], 1 - m)
    single = build_reward_set("brightness")
    assert isinstance(single, WeightedSum)
    one = single(video, None)
    assert set(one.details) == {"brightness"} and one.scores.tolist() == one.details["brightness"].tolist()
    twice = build_reward_set(["color", {"name": "color", "args": {"rgb": [0, 0, 255]}}])
    assert set(twice(video, None).details) == {"color", "color#2"}


@pytest.mark.parametrize(
    "specs, match",
    [
        ([], "empty"),
        ([{"weight": 1.0}], "no 'name'"),
        ([{"name": "brightness", "weight": "high"}], "finite number"),
        ([{"name": "brightness", "weight": float("nan")}], "finite number"),
        ([{"name": "brightness", "args": [1]}], "'args'"),
        ([{"name": "brightness", "wieght": 2}], "unknown key"),
        (["brightnes"], "Did you mean 'brightness'"),
        ([42], "must be a name or a dict"),
    ],
)
def test_bad_specs_give_user_errors(specs, match):
    with pytest.raises(UserError, match=match):
        build_reward_set(specs)


def test_check_reward_set_validates_specs_without_building_the_rewards(tmp_path):
    from trainer.rewards import check_reward_set

    missing = str(tmp_path / "no_such_clip")
    spec = [{"name": "clip_score", "weight": 1.0, "args": {"path": missing, "every": 4}},
            {"name": "brightness", "weight": 0.5}]
    assert check_reward_set(spec) is None  # the model folder is never opened
    with pytest.raises(UserError, match="not found|does not exist|no_such_clip"):
        build_reward_set(spec)
    with pytest.raises(UserError, match="does not take argument 'pth'"):
        check_reward_set([{"name": "clip_score", "args": {"pth": missing}}])
    with pytest.raises(UserError, match="needs argument"):
        check_reward_set([{"name": "clip_score"}])
    with pytest.raises(UserError, match="Unknown reward"):
        check_reward_set(["brightnes"])
    with pytest.raises(UserError, match="appears twice"):
        check_reward_set(["brightness", {"name": "color", "label": "brightness"}])
    with pytest.raises(UserError, match="import path"):
        check_reward_set(["os.system"])
