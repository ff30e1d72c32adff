"""Model rewards loaded from local weights: CLIP score, PickScore, HPSv2, LAION aesthetic, VideoAlign.

Every model is a tiny random-initialised model of the real architecture, saved in the file format
the real weights use (transformers ``save_pretrained`` folders, ``torch.save`` state dicts, open_clip
state dicts under ``"state_dict"``, safetensors, VideoAlign's LoRA + non-LoRA checkpoint), and
loaded through ``build_reward(name, path=...)`` exactly as a user's weights are. Scores are checked
against independent computations (transformers' own processors and forwards, a minimal open_clip
implementation written here, peft's LoRA), preprocessing against hand computations, and bad paths
or mismatched files against the UserError they must raise.
"""

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.errors import UserError
from trainer.rewards import build_reward
from trainer.rewards.frames import FrameReward, aggregate_frame_scores, frame_indices
from trainer.rewards.models import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImagePreprocess,
    center_crop_offset,
    clip_tokenizer_from_bpe,
    shortest_edge_size,
)

transformers = pytest.importorskip("transformers")

PROMPTS = ["a red fox in the snow", "a city at night, neon lights"]
CUSTOM_MEAN = (0.5, 0.4, 0.3)
CUSTOM_STD = (0.2, 0.25, 0.3)


# ----------------------------------------------------------------------------------------------
# Tiny models in the real file formats
# ----------------------------------------------------------------------------------------------

def byte_chars():
    """CLIP's 256 byte symbols in vocabulary order: printable bytes as themselves, then the rest as
    chr(256 + n) (written independently of the library's copy; "a</w>" gets id 320 as in CLIP)."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


MERGES = [("r", "e"), ("d</w>", "x"), ("o", "x</w>"), ("t", "h"), ("th", "e</w>"), ("i", "n</w>")]


def write_clip_tokenizer(folder: Path):
    """A tiny CLIP BPE tokenizer (OpenAI layout: bytes, bytes</w>, merges, then the two specials)."""
    chars = byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    return len(tokens)


def write_bpe_gz(file: Path):
    with gzip.open(file, "wt", encoding="utf-8") as f:
        f.write("bpe header line\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")


def tiny_clip(vocab: int, projection_dim=16, seed=0):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=vocab - 1,
                         bos_token_id=vocab - 2, pad_token_id=vocab - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=14),
        projection_dim=projection_dim, logit_scale_init_value=math.log(50.0))
    model = CLIPModel(config).eval()
    with torch.no_grad():  # random init of a tiny model gives near-zero embeddings; spread them out
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model


def write_processor_config(folder: Path, mean=CUSTOM_MEAN, std=CUSTOM_STD):
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 28},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 28, "width": 28}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(mean), "image_std": list(std),
        "do_convert_rgb": True}))


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    """``model``: CLIPModel + tokenizer + processor config; ``bare``: the CLIPModel only (a
    PickScore_v1-like folder); ``processor``: tokenizer + processor config only."""
    root = tmp_path_factory.mktemp("clip")
    vocab = write_clip_tokenizer(root / "processor")
    write_processor_config(root / "processor")
    model = tiny_clip(vocab)
    model.save_pretrained(root / "bare")
    model.save_pretrained(root / "model")
    write_clip_tokenizer(root / "model")
    write_processor_config(root / "model")
    return {k: root / k for k in ("model", "bare", "processor")}


def video(n=2, t=4, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, t, h, w, 3), generator=g, dtype=torch.uint8)


def reference_processor(folder):
    """transformers' own (PIL) CLIP image processor, the one PickScore/CLIPScore ran."""
    try:
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # transformers 4.x: the slow CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as cls
    return cls.from_pretrained(str(folder))


def reference_frame_scores(model, tokenizer, processor, frames, prompts):
    """``logits_per_image`` diagonal of ``CLIPModel.forward`` for frames ``[B,H,W,3]``."""
    pixels = processor(images=[f.numpy() for f in frames], return_tensors="pt")["pixel_values"]
    text = tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.diagonal()


# ----------------------------------------------------------------------------------------------
# Frame handling
# ----------------------------------------------------------------------------------------------

class FrameIndex(FrameReward):
    """Scores each frame by its value (frames are constant images t * 10), recording batches."""

    name = "frame_index_test"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.batches = []

    def score_frames(self, frames, prompts):
        self.batches.append(len(frames))
        return frames[:, 0, 0, 0].float()


def ramp_video(n=2, t=10):
    values = torch.arange(t, dtype=torch.uint8).mul(10)
    vids = values.view(1, t, 1, 1, 1).expand(n, t, 4, 4, 3).clone()
    vids[1] = vids[1].flip(0)  # second video: decreasing
    return vids


def test_aggregation_top_p_min_every():
    vids = ramp_video()  # frame scores 0, 10, ..., 90 (video 1 reversed)
    assert torch.equal(FrameIndex()(vids).scores, torch.tensor([45.0, 45.0]))
    # top_p 0.3 of 10 frames: int(10 * 0.3) = 3 best frames -> (90 + 80 + 70) / 3 = 80
    assert torch.equal(FrameIndex(aggregate="top_p", top_p=0.3)(vids).scores, torch.tensor([80.0, 80.0]))
    assert torch.equal(FrameIndex(aggregate="min")(vids).scores, torch.tensor([0.0, 0.0]))
    # every 3: frames 0, 3, 6, 9 -> scores 0, 30, 60, 90 (video 1: 90, 60, 30, 0)
    assert frame_indices(10, 3) == [0, 3, 6, 9]
    assert torch.equal(FrameIndex(every=3)(vids).scores, torch.tensor([45.0, 45.0]))
    assert torch.equal(FrameIndex(every=3, aggregate="top_p", top_p=0.5)(vids).scores, torch.tensor([75.0, 75.0]))
    # top_p keeps at least one frame (Flash-GRPO's int(l * 0.3) would be 0 for 3 frames)
    # every 4: frames 0, 4, 8 -> video 0: 0, 40, 80; video 1: 90, 50, 10
    assert torch.equal(FrameIndex(every=4, aggregate="top_p")(vids).scores, torch.tensor([80.0, 90.0]))
    x = torch.tensor([[1.0, 5.0, 3.0, 2.0]])
    assert aggregate_frame_scores(x, "top_p", 0.5).item() == 4.0
    assert aggregate_frame_scores(x, "min").item() == 1.0


def test_frames_are_batched_across_videos():
    reward = FrameIndex(batch_size=3)
    out = reward(ramp_video(n=2, t=4))
    assert reward.batches == [3, 3, 2]  # 8 frames of two videos, 3 per forward
    assert torch.equal(out.scores, torch.tensor([15.0, 15.0]))


@pytest.mark.parametrize("kwargs, message", [
    ({"every": 0}, "'every'"), ({"aggregate": "max"}, "aggregate"), ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"batch_size": 0}, "'batch_size'"),
])
def test_frame_arguments_are_checked(kwargs, message):
    with pytest.raises(UserError, match=message):
        FrameIndex(**kwargs)


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------

def test_resize_and_crop_rules():
    assert shortest_edge_size(480, 832, 224) == (224, 388)  # int(224 * 832 / 480) = 388
    assert shortest_edge_size(832, 480, 224) == (388, 224)
    # transformers floors (H - crop) / 2, torchvision rounds half to even: differ when H - crop = 3 mod 4
    assert center_crop_offset(31, 28, "floor") == 1 and center_crop_offset(31, 28, "round") == 2
    assert center_crop_offset(33, 28, "floor") == 2 and center_crop_offset(33, 28, "round") == 2


@pytest.mark.parametrize("mode", ["pil", "tensor"])
def test_constant_frame_gives_normalised_constants(mode):
    rgb = torch.tensor([200, 100, 30], dtype=torch.uint8)
    frames = rgb.expand(1, 50, 70, 3).contiguous()
    out = ImagePreprocess(28, 28, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, mode, "round")(frames)
    assert out.shape == (1, 3, 28, 28)
    expected = (rgb.double() / 255 - torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float64)) / torch.tensor(
        OPENAI_CLIP_STD, dtype=torch.float64)
    assert torch.allclose(out.double(), expected.view(1, 3, 1, 1).expand_as(out), atol=1e-5)


@pytest.mark.parametrize("rule", ["floor", "round"])
def test_crop_offset_is_applied(rule):
    frame = torch.zeros(1, 28, 31, 3, dtype=torch.uint8)
    frame[0, :, :, 0] = torch.arange(31, dtype=torch.uint8) * 8  # red = 8 * column
    out = ImagePreprocess(None, 28, (0, 0, 0), (1, 1, 1), "pil", rule)(frame)
    first_column = 1 if rule == "floor" else 2
    assert out[0, 0, 0, 0].item() == pytest.approx(first_column * 8 / 255)


def test_clip_preprocessing_equals_transformers_processor(clip_dirs):
    from trainer.rewards.models import clip_processor_preprocess

    ours = clip_processor_preprocess(clip_dirs["processor"], 28)
    assert ours.mean == CUSTOM_MEAN and ours.std == CUSTOM_STD and ours.crop_rule == "floor"
    processor = reference_processor(clip_dirs["processor"])
    # 28 x 31 exercises the crop offset rule, 37 x 53 the resize of both edges.
    for h, w in ((28, 31), (37, 53), (64, 40)):
        frames = video(n=1, t=3, h=h, w=w, seed=h)[0]
        expected = processor(images=[f.numpy() for f in frames], return_tensors="pt")["pixel_values"]
        assert torch.allclose(ours(frames), expected, atol=1e-6), (h, w)


# ----------------------------------------------------------------------------------------------
# clip_score and pickscore
# ----------------------------------------------------------------------------------------------

def test_pickscore_equals_clipmodel_forward(clip_dirs):
    from transformers import CLIPModel, CLIPTokenizer

    reward = build_reward("pickscore", path=str(clip_dirs["bare"]), processor_path=str(clip_dirs["processor"]),
                          device="cpu", batch_size=3)
    vids = video()
    out = reward(vids, PROMPTS)
    assert out.scores.shape == (2,) and out.scores.dtype == torch.float32 and torch.isfinite(out.scores).all()

    model = CLIPModel.from_pretrained(clip_dirs["bare"]).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dirs["processor"])
    processor = reference_processor(clip_dirs["processor"])
    frames = vids.reshape(-1, 40, 48, 3)
    per_frame = reference_frame_scores(model, tokenizer, processor, frames, [p for p in PROMPTS for _ in range(4)])
    assert torch.allclose(reward.frame_scores(vids, PROMPTS), per_frame.view(2, 4), atol=1e-4)
    assert torch.allclose(out.scores, per_frame.view(2, 4).mean(dim=1), atol=1e-4)
    assert per_frame.abs().max() > 1.0  # a non-trivial score (logit_scale = 50)
    assert len(reward.text_cache) == 2  # text features cached per prompt

    top = build_reward("pickscore", path=str(clip_dirs["bare"]), processor_path=str(clip_dirs["processor"]),
                       device="cpu", aggregate="top_p", top_p=0.5, every=2)(vids, PROMPTS)
    expected_top = per_frame.view(2, 4)[:, ::2].max(dim=1).values  # 2 frames, top 50% = the best one
    assert torch.allclose(top.scores, expected_top, atol=1e-4)


def test_clip_score_is_100_cos_clamped(clip_dirs):
    from transformers import CLIPModel, CLIPTokenizer

    reward = build_reward("clip_score", path=str(clip_dirs["model"]), device="cpu", aggregate="min")
    vids = video(seed=3)
    out = reward(vids, PROMPTS)
    model = CLIPModel.from_pretrained(clip_dirs["model"]).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dirs["model"])
    processor = reference_processor(clip_dirs["model"])
    logits = reference_frame_scores(model, tokenizer, processor, vids.reshape(-1, 40, 48, 3),
                                    [p for p in PROMPTS for _ in range(4)])
    cos = logits / model.logit_scale.exp()
    expected = (100 * cos).clamp(min=0).view(2, 4).min(dim=1).values
    assert torch.allclose(out.scores, expected, atol=1e-3)


def test_float_videos_score_like_their_uint8_rounding(clip_dirs):
    reward = build_reward("clip_score", path=str(clip_dirs["model"]), device="cpu")
    vids = video(n=1, seed=5)
    assert torch.allclose(reward(vids.float() / 255, PROMPTS[:1]).scores, reward(vids, PROMPTS[:1]).scores)


def test_clip_path_errors(clip_dirs, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_reward("clip_score", path=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json in"):
        build_reward("clip_score", path=str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(UserError, match="'siglip' model; expected a transformers CLIPModel"):
        build_reward("clip_score", path=str(other))
    (other / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(UserError, match="no weights in"):
        build_reward("clip_score", path=str(other))
    # PickScore_v1's folder has no tokenizer: the error says to pass the ViT-H-14 processor folder
    with pytest.raises(UserError, match="no tokenizer files.*CLIP-ViT-H-14"):
        build_reward("pickscore", path=str(clip_dirs["bare"]), device="cpu")
    with pytest.raises(UserError, match="needs argument"):
        build_reward("pickscore")


def test_clip_weights_that_do_not_fit_the_config_are_refused(clip_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((clip_dirs["bare"] / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(clip_dirs["bare"] / "model.safetensors"))
    tensors = {k: v for k, v in tensors.items() if not k.startswith("visual_projection")}
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(UserError, match="do not match its config.json.*visual_projection"):
        build_reward("clip_score", path=str(broken), device="cpu")


# ----------------------------------------------------------------------------------------------
# hpsv2: an open_clip ViT written out here as the reference
# ----------------------------------------------------------------------------------------------

class OCBlock(torch.nn.Module):
    """open_clip's ResidualAttentionBlock (same submodule names, so the same state-dict keys)."""

    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, heads)
        self.ln_2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential()
        self.mlp.add_module("c_fc", torch.nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", torch.nn.GELU())
        self.mlp.add_module("c_proj", torch.nn.Linear(4 * width, width))

    def forward(self, x, mask=None):  # x: [L, N, D] as in open_clip
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class OCTransformer(torch.nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = torch.nn.ModuleList([OCBlock(width, heads) for _ in range(layers)])

    def forward(self, x, mask=None):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class OCVisual(torch.nn.Module):
    def __init__(self, width, layers, heads, patch, image, embed_dim):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, patch, patch, bias=False)
        grid = image // patch
        self.class_embedding = torch.nn.Parameter(torch.randn(width) * 0.5)
        self.positional_embedding = torch.nn.Parameter(torch.randn(grid * grid + 1, width) * 0.5)
        self.ln_pre = torch.nn.LayerNorm(width)
        self.transformer = OCTransformer(width, layers, heads)
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(torch.randn(width, embed_dim) * width ** -0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, grid^2, D]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenClipViT(torch.nn.Module):
    """A minimal open_clip ``CLIP`` (ViT image tower, causal text tower pooled at argmax token)."""

    def __init__(self, vocab, embed_dim=16, v_width=160, v_heads=2, t_width=64, t_heads=1, context=77):
        super().__init__()
        self.visual = OCVisual(v_width, 2, v_heads, 14, 28, embed_dim)
        self.transformer = OCTransformer(t_width, 2, t_heads)
        self.token_embedding = torch.nn.Embedding(vocab, t_width)
        self.positional_embedding = torch.nn.Parameter(torch.randn(context, t_width) * 0.1)
        self.ln_final = torch.nn.LayerNorm(t_width)
        self.text_projection = torch.nn.Parameter(torch.randn(t_width, embed_dim) * t_width ** -0.5)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu(1), persistent=False)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.transpose(0, 1), self.attn_mask).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        return F.normalize(self.visual(image), dim=-1), F.normalize(self.encode_text(text), dim=-1)


def open_clip_tokens(tokenizer, prompts, context=77):
    """open_clip's ``tokenize``: [sot] + tokens + [eot], zero-padded to the context length."""
    out = torch.zeros(len(prompts), context, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids = tokenizer(p)["input_ids"][:context]
        ids[-1] = tokenizer.eos_token_id
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def hps_pixels(frames):
    """HPSv2's eval transform written out: ToTensor, Resize(28, bicubic) on the tensor,
    CenterCrop(28) with torchvision's offset rule, Normalize(OpenAI mean/std)."""
    x = frames.permute(0, 3, 1, 2).float() / 255
    h, w = x.shape[2:]
    nh, nw = (28, int(28 * w / h)) if h <= w else (int(28 * h / w), 28)
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((nh - 28) / 2.0)), int(round((nw - 28) / 2.0))
    x = x[:, :, top:top + 28, left:left + 28]
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.fixture(scope="module")
def hps_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps")
    vocab = write_clip_tokenizer(root / "tokenizer")
    write_bpe_gz(root / "bpe_simple_vocab_16e6.txt.gz")
    torch.manual_seed(1)
    model = OpenClipViT(vocab).eval()
    # HPS_v2.1_compressed.pt holds the weights under "state_dict" (fp16 in the released file)
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, root / "HPS_v2.1_compressed.pt")
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    return root, model


def test_hpsv2_equals_open_clip_forward(hps_files):
    from transformers import CLIPTokenizer

    root, model = hps_files
    reward = build_reward("hpsv2", path=str(root / "HPS_v2.1_compressed.pt"), tokenizer_path=str(root / "tokenizer"),
                          device="cpu", vision_head_width=80, text_head_width=64)
    vids = video(n=2, t=3, h=35, w=31, seed=2)  # resized to 31 x 28: torchvision crop offset 2 (not 1)
    out = reward(vids, PROMPTS)
    assert out.scores.shape == (2,) and torch.isfinite(out.scores).all()

    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    frames = vids.reshape(-1, 35, 31, 3)
    with torch.no_grad():
        image, text = model(hps_pixels(frames), open_clip_tokens(tokenizer, [p for p in PROMPTS for _ in range(3)]))
    per_frame = (image * text).sum(dim=-1).view(2, 3)  # hpsv2/img_score.py: diag(image @ text.T), no logit_scale
    assert torch.allclose(reward.frame_scores(vids, PROMPTS), per_frame, atol=1e-5)
    assert torch.allclose(out.scores, per_frame.mean(dim=1), atol=1e-5)
    assert per_frame.abs().max() > 0.05

    # the tokenizer can also come from open_clip's bpe_simple_vocab_16e6.txt.gz
    from_gz = build_reward("hpsv2", path=str(root / "HPS_v2.1_compressed.pt"),
                           tokenizer_path=str(root / "bpe_simple_vocab_16e6.txt.gz"), device="cpu")
    assert torch.allclose(from_gz(vids, PROMPTS).scores, out.scores, atol=1e-6)


def test_bpe_gz_tokenizer_equals_vocab_files(hps_files):
    from transformers import CLIPTokenizer

    root, _ = hps_files
    a = clip_tokenizer_from_bpe(root / "bpe_simple_vocab_16e6.txt.gz")
    b = CLIPTokenizer.from_pretrained(root / "tokenizer")
    assert len(a) == len(b) == 512 + len(MERGES) + 2
    text = "The red fox in the Snow, 42!"
    assert a(text)["input_ids"] == b(text)["input_ids"]
    assert a(text)["input_ids"][0] == len(a) - 2 and a(text)["input_ids"][-1] == len(a) - 1
    assert a("a")["input_ids"][1] == 320  # "a</w>", as in every CLIP vocabulary


def test_hpsv2_refuses_unsafe_or_mismatched_checkpoints(hps_files, tmp_path):
    import argparse

    root, model = hps_files
    tok = str(root / "tokenizer")
    # A checkpoint that needs arbitrary unpickling (here an argparse.Namespace) is refused.
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "unsafe.pt")
    with pytest.raises(UserError, match="weights_only=True"):
        build_reward("hpsv2", path=str(tmp_path / "unsafe.pt"), tokenizer_path=tok, device="cpu")
    # An aesthetic MLP is not an open_clip model.
    torch.save({"layers.0.weight": torch.zeros(2, 2)}, tmp_path / "mlp.pth")
    with pytest.raises(UserError, match="not an open_clip ViT CLIP state dict: missing visual.conv1.weight"):
        build_reward("hpsv2", path=str(tmp_path / "mlp.pth"), tokenizer_path=tok, device="cpu")
    # Extra unknown keys (e.g. another open_clip variant) are named.
    sd = dict(model.state_dict(), **{"visual.attn_pool.query": torch.zeros(3)})
    torch.save({"state_dict": sd}, tmp_path / "variant.pt")
    with pytest.raises(UserError, match="visual.attn_pool.query"):
        build_reward("hpsv2", path=str(tmp_path / "variant.pt"), tokenizer_path=tok, device="cpu")
    with pytest.raises(UserError, match="is a folder"):
        build_reward("hpsv2", path=str(tmp_path), tokenizer_path=tok, device="cpu")
    with pytest.raises(UserError, match="tokenizer_path .* does not exist"):
        build_reward("hpsv2", path=str(root / "HPS_v2.1_compressed.pt"), tokenizer_path=str(tmp_path / "x"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt"):
        build_reward("hpsv2", path=str(tmp_path / "junk.pt"), tokenizer_path=tok, device="cpu")


# ----------------------------------------------------------------------------------------------
# aesthetic
# ----------------------------------------------------------------------------------------------

class AestheticMLP(torch.nn.Module):
    """improved-aesthetic-predictor's MLP (simple_inference.py), for its state-dict key names."""

    def __init__(self, d):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(d, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_aesthetic_equals_reference(clip_dirs, tmp_path, fmt):
    from safetensors.torch import save_file
    from transformers import CLIPModel

    torch.manual_seed(2)
    mlp = AestheticMLP(16).eval()
    file = tmp_path / f"sac+logos+ava1-l14-linearMSE.{fmt}"
    if fmt == "pth":
        torch.save(mlp.state_dict(), file)
    else:
        save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, str(file))
    reward = build_reward("aesthetic", path=str(file), clip_path=str(clip_dirs["bare"]), device="cpu",
                          aggregate="top_p", top_p=0.3)
    vids = video(n=2, t=7, h=40, w=48, seed=4)  # resized to 28 x 33: both crop rules give offset 2
    out = reward(vids, PROMPTS)

    model = CLIPModel.from_pretrained(clip_dirs["bare"]).eval()
    processor = reference_processor(clip_dirs["processor"])  # OpenAI mean/std, as clip.load's transform
    processor.image_mean, processor.image_std = list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)
    pixels = processor(images=[f.numpy() for f in vids.reshape(-1, 40, 48, 3)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        per_frame = mlp(embeds).view(2, 7)
    k = int(7 * 0.3)  # 2 best frames
    expected = per_frame.topk(k, dim=1).values.mean(dim=1)
    assert torch.allclose(out.scores, expected, atol=1e-5)


def test_aesthetic_mismatches(clip_dirs, tmp_path):
    torch.save(AestheticMLP(12).state_dict(), tmp_path / "mlp12.pth")
    with pytest.raises(UserError, match="takes 12-dim embeddings.*projects to 16.*ViT-L/14"):
        build_reward("aesthetic", path=str(tmp_path / "mlp12.pth"), clip_path=str(clip_dirs["bare"]), device="cpu")
    torch.save({"fc.weight": torch.zeros(1, 16)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a LAION aesthetic MLP"):
        build_reward("aesthetic", path=str(tmp_path / "other.pth"), clip_path=str(clip_dirs["bare"]), device="cpu")
    with pytest.raises(UserError, match="clip_path .* does not exist"):
        build_reward("aesthetic", path=str(tmp_path / "other.pth"), clip_path=str(tmp_path / "none"))


# ----------------------------------------------------------------------------------------------
# videoalign
# ----------------------------------------------------------------------------------------------

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|video_pad|>", "<|image_pad|>"]
QWEN_CHAT = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
TEMPLATE_PY = '''"""A stand-in for VideoAlign's prompt_template.py."""
OTHER = "unused {text_prompt}"
DETAILED_PROMPT_WITH_SPECIAL_TOKEN = """
Rate the video for: {text_prompt}
Visual: <|VQ_reward|>
Motion: <|MQ_reward|>
Text: <|TA_reward|>
"""
'''
NORM = {"VQ_mean": 0.5, "VQ_std": 2.0, "MQ_mean": -0.25, "MQ_std": 0.5, "TA_mean": 0.0, "TA_std": 4.0}
LORA_R, LORA_ALPHA = 4, 8


def old_name(name):
    """A transformers>=4.52 Qwen2-VL parameter name as transformers 4.45 + peft saved it."""
    name = name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
    return "base_model.model." + name


def make_qwen_base(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(QWEN_SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_CHAT
    fast.save_pretrained(folder)
    ids = {t: fast.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    torch.manual_seed(3)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=280, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]}, tie_word_embeddings=True,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
        "min_pixels": 3136, "max_pixels": 12845056}))


@pytest.fixture(scope="module")
def videoalign_files(tmp_path_factory):
    """Base Qwen2-VL folder, VideoReward folder (model_config.json + checkpoint-5/-10) and the
    reference model: base + resized embeddings + non-LoRA tensors, wrapped by peft with the LoRA."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    root = tmp_path_factory.mktemp("videoalign")
    base, reward_dir, code = root / "Qwen2-VL-2B-Instruct", root / "VideoReward", root / "VideoAlign"
    make_qwen_base(base)
    code.mkdir()
    (code / "prompt_template.py").write_text(TEMPLATE_PY)
    (reward_dir / "checkpoint-10").mkdir(parents=True)
    (reward_dir / "checkpoint-5").mkdir()
    (reward_dir / "model_config.json").write_text(json.dumps({
        "data_config": {"meta_data": "x.csv", "data_dir": "/data", "fps": 2.0, "num_frames": None,
                        "max_frame_pixels": 200704, "eval_dim": ["VQ", "MQ", "TA"],
                        "prompt_template_type": "detailed_special", "sample_type": "uniform"},
        "model_config": {"model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "output_dim": 3,
                         "use_special_tokens": True, "reward_token": "special"},
        "peft_lora_config": {"lora_enable": True, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "use_rslora": False,
                             "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"]},
        "inference_config": NORM}))

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]})
    model = Qwen2VLForConditionalGeneration.from_pretrained(base).float().eval()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    torch.manual_seed(4)
    hidden = model.config.text_config.hidden_size
    non_lora = {
        "model.language_model.embed_tokens.weight": torch.randn_like(model.model.language_model.embed_tokens.weight),
        "model.visual.merger.mlp.0.weight": torch.randn_like(model.model.visual.merger.mlp[0].weight) * 0.1,
    }
    rm_head = torch.randn(3, hidden)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k, v in non_lora.items():
            params[k].copy_(v)
    targets = sorted(n for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and ".language_model." in n)
    peft_model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                  target_modules=targets)).eval()
    lora = {}
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
                key = name.replace(".default", "")  # peft's saved adapter has no adapter name
                key = key.replace("base_model.model.", "", 1)
                lora[old_name(key)] = p.detach().clone()
    saved = {old_name(k): v for k, v in non_lora.items()}
    saved["base_model.model.rm_head.weight"] = rm_head
    for step, scale in ((10, 1.0), (5, 0.0)):  # checkpoint-5: a different rm_head (all zeros)
        ckpt = reward_dir / f"checkpoint-{step}"
        save_file({k: v.contiguous() for k, v in lora.items()}, str(ckpt / "adapter_model.safetensors"))
        torch.save({**saved, "base_model.model.rm_head.weight": rm_head * scale}, ckpt / "non_lora_state_dict.pth")
        adapter_config = {"r": LORA_R, "lora_alpha": LORA_ALPHA, "use_rslora": False, "peft_type": "LORA"}
        (ckpt / "adapter_config.json").write_text(json.dumps(adapter_config))
    return {"base": base, "reward": reward_dir, "code": code, "peft_model": peft_model, "rm_head": rm_head,
            "tokenizer": tokenizer}


def videoalign_reward(files, **kwargs):
    return build_reward("videoalign", path=str(files["reward"]), base_path=str(files["base"]),
                        prompt_template_path=str(files["code"]), device="cpu", **kwargs)


def test_videoalign_preprocessing_by_hand():
    from trainer.rewards.videoalign import qwen2vl_patchify, sample_frame_indices, smart_resize

    assert smart_resize(480, 832, 28, 128 * 28 * 28, 200704) == (336, 588)  # Wan 480p at max_frame_pixels 448^2
    assert smart_resize(32, 48, 28, 128 * 28 * 28, 200704) == (280, 392)  # small frames are upscaled
    # 81 frames at 16 fps sampled at 2 fps: 81 / 16 * 2 = 10.1 -> 10 frames, linspace(0, 80, 10).round()
    assert sample_frame_indices(81, 16.0, 2.0) == [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]
    assert sample_frame_indices(9, 16.0, 2.0) == [0, 3, 5, 8]  # at least 4 frames
    # num_frames 5 rounds (half to even) to 4: linspace(0, 8, 4) = 0, 2.67, 5.33, 8
    assert sample_frame_indices(9, 16.0, None, num_frames=5) == [0, 3, 5, 8]
    # Patch order: equals transformers' Qwen2-VL image processor for a frame repeated in time.
    try:
        from transformers import Qwen2VLImageProcessorPil as cls
    except ImportError:
        from transformers import Qwen2VLImageProcessor as cls
    g = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (56, 84, 3), generator=g, dtype=torch.uint8)
    processor = cls(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    expected = processor(images=[frame.numpy()], return_tensors="pt")
    x = (frame.permute(2, 0, 1).double() / 255).float()
    x = (x - torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    patches, grid = qwen2vl_patchify(torch.stack([x, x]), 14, 2, 2)
    assert list(grid) == expected["image_grid_thw"][0].tolist() == [1, 4, 6]
    assert torch.allclose(patches, expected["pixel_values"].float(), atol=1e-6)


def test_videoalign_equals_peft_reference(videoalign_files):
    files = videoalign_files
    reward = videoalign_reward(files, video_fps=8.0, batch_size=2)
    assert reward.checkpoint.name == "checkpoint-10"  # the latest step
    vids = video(n=2, t=9, h=32, w=48, seed=6)
    out = reward(vids, PROMPTS)
    assert set(out.details) == {"VQ", "MQ", "TA"} and out.scores.shape == (2,)

    # Reference: peft LoRA (unmerged) on the base model, transformers' own M-RoPE indices.
    inputs = reward.model_inputs(vids, PROMPTS)
    ids = inputs["input_ids"]
    text = reward.tokenizer.decode(ids[0][inputs["attention_mask"][0].bool()])
    assert "Rate the video for: " + PROMPTS[0] in text and text.startswith("<|im_start|>system")
    mm_types = (ids == reward.video_token_id).long() * 2
    model = files["peft_model"].base_model.model
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=inputs["attention_mask"],
                             pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
                             mm_token_type_ids=mm_types, use_cache=False).last_hidden_state
    special = [files["tokenizer"].convert_tokens_to_ids(t) for t in ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")]
    raw = []
    for b in range(2):
        positions = [int(torch.nonzero(ids[b] == s)[0]) for s in special]
        logits = hidden[b, positions] @ files["rm_head"].T  # [3 tokens, 3 outputs]
        raw.append(logits.diagonal())
    raw = torch.stack(raw)
    mean = torch.tensor([NORM["VQ_mean"], NORM["MQ_mean"], NORM["TA_mean"]])
    std = torch.tensor([NORM["VQ_std"], NORM["MQ_std"], NORM["TA_std"]])
    norm = (raw - mean) / std
    got = torch.stack([out.details["VQ"], out.details["MQ"], out.details["TA"]], dim=1)
    assert torch.allclose(got, norm, atol=1e-4), (got, norm)
    assert torch.allclose(out.scores, norm.sum(dim=1), atol=1e-4)
    assert raw.abs().max() > 0.1

    single = videoalign_reward(files, video_fps=8.0, batch_size=1, dimension="TA", use_norm=False)
    assert torch.allclose(single(vids, PROMPTS).scores, raw[:, 2], atol=1e-4)  # padding/batching do not matter


def test_videoalign_checkpoint_step_and_errors(videoalign_files, tmp_path):
    files = videoalign_files
    old = videoalign_reward(files, checkpoint_step=5, use_norm=False)
    assert torch.allclose(old(video(n=1, t=4, h=32, w=48), PROMPTS[:1]).scores, torch.zeros(1))
    with pytest.raises(UserError, match="no checkpoint-7 .* available steps: \\[5, 10\\]"):
        videoalign_reward(files, checkpoint_step=7)
    with pytest.raises(UserError, match="no model_config.json in"):
        build_reward("videoalign", path=str(tmp_path), base_path=str(files["base"]))
    with pytest.raises(UserError, match="not a local folder; pass base_path"):
        build_reward("videoalign", path=str(files["reward"]), prompt_template_path=str(files["code"]))
    with pytest.raises(UserError, match="prompt_template_path"):
        build_reward("videoalign", path=str(files["reward"]), base_path=str(files["base"]))
    (tmp_path / "prompt_template.py").write_text("DETAILED_PROMPT = '{text_prompt}'\n")
    with pytest.raises(UserError, match="defines no string constant DETAILED_PROMPT_WITH_SPECIAL_TOKEN"):
        build_reward("videoalign", path=str(files["reward"]), base_path=str(files["base"]),
                     prompt_template_path=str(tmp_path))
    with pytest.raises(UserError, match="is not a Qwen2-VL model"):
        clip = tmp_path / "clip"
        clip.mkdir()
        (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
        build_reward("videoalign", path=str(files["reward"]), base_path=str(clip),
                     prompt_template_path=str(files["code"]))
    # A checkpoint from another base model: the embedding shape does not fit.
    bad = tmp_path / "bad"
    (bad / "checkpoint-1").mkdir(parents=True)
    (bad / "model_config.json").write_text((files["reward"] / "model_config.json").read_text())
    torch.save({"base_model.model.rm_head.weight": torch.zeros(3, 32),
                "base_model.model.model.embed_tokens.weight": torch.zeros(151660, 32)},
               bad / "checkpoint-1" / "non_lora_state_dict.pth")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(bad / "checkpoint-1" / "adapter_model.safetensors"))
    with pytest.raises(UserError, match="embed_tokens.weight has shape \\(151660, 32\\)"):
        build_reward("videoalign", path=str(bad), base_path=str(files["base"]), prompt_template_path=str(files["code"]))


def test_lora_merge_equals_peft_for_linear_and_embedding():
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from trainer.rewards.videoalign import _merge_lora

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(20, 8)
            self.proj = torch.nn.Linear(8, 6)

        def forward(self, x):
            return self.proj(self.embed_tokens(x))

    torch.manual_seed(0)
    net = Net()
    plain = Net()
    plain.load_state_dict(net.state_dict())
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["embed_tokens", "proj"], use_rslora=True)
    peft_net = get_peft_model(net, config)
    with torch.no_grad():
        for name, p in peft_net.named_parameters():
            if "lora_" in name:
                p.normal_()
    saved = get_peft_model_state_dict(peft_net)  # the adapter_model.safetensors key layout
    assert any("lora_embedding_A" in k for k in saved)
    _merge_lora(plain, saved, 2, 6 / math.sqrt(2), Path("adapter"))
    x = torch.tensor([[1, 5, 19]])
    assert torch.allclose(plain(x), peft_net(x), atol=1e-5)


def test_videoalign_last_token_full_checkpoint(videoalign_files, tmp_path):
    """The reference's other layout: ``model.pth`` with every tensor, no reward tokens
    (``reward_token: "last"``, ``output_dim: 3``) and ``prompt_template_type: "none"``."""
    from transformers import Qwen2VLForConditionalGeneration

    files = videoalign_files
    folder = tmp_path / "last"
    (folder / "checkpoint-3").mkdir(parents=True)
    config = json.loads((files["reward"] / "model_config.json").read_text())
    config["model_config"].update(use_special_tokens=False, reward_token="last", output_dim=3)
    config["data_config"].update(prompt_template_type="none", num_frames=4, fps=None)
    del config["inference_config"]
    (folder / "model_config.json").write_text(json.dumps(config))
    torch.manual_seed(7)
    head = torch.randn(3, 32)
    torch.save({"base_model.model.rm_head.weight": head}, folder / "checkpoint-3" / "model.pth")
    reward = build_reward("videoalign", path=str(folder), base_path=str(files["base"]), device="cpu", video_fps=4.0)
    vids = video(n=2, t=6, h=30, w=40, seed=8)
    out = reward(vids, ["short", "a much longer prompt than the first"])  # right padding on the first

    inputs = reward.model_inputs(vids, ["short", "a much longer prompt than the first"])
    assert inputs["video_grid_thw"][:, 0].tolist() == [2, 2]  # num_frames 4 -> 2 temporal patches
    base = Qwen2VLForConditionalGeneration.from_pretrained(files["base"]).float().eval()
    ids = inputs["input_ids"]
    with torch.no_grad():
        hidden = base.model(input_ids=ids, attention_mask=inputs["attention_mask"],
                            pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
                            mm_token_type_ids=(ids == reward.video_token_id).long() * 2).last_hidden_state
    # reference: the token before the first pad (trainer.py ``sequence_lengths``)
    pad = reward.tokenizer.pad_token_id
    last = [int((row == pad).int().argmax()) - 1 if (row == pad).any() else len(row) - 1 for row in ids]
    raw = torch.stack([hidden[b, last[b]] @ head.T for b in range(2)])
    assert torch.allclose(torch.stack([out.details[d] for d in ("VQ", "MQ", "TA")], dim=1), raw, atol=1e-4)
    assert torch.allclose(out.scores, raw.sum(dim=1), atol=1e-4)
