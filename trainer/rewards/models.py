"""CLIP-family reward models loaded from local weights, scored per frame.

No weights ship with any PyPI package and nothing is downloaded: every model is read from a local
path the user gives. All four rewards are :class:`~trainer.rewards.frames.FrameReward`\\ s and so
take the shared video arguments ``every``, ``aggregate`` (``mean`` / ``top_p`` / ``min``),
``top_p``, ``batch_size`` (frames per forward), ``device`` (``auto`` = CUDA if available) and
``dtype`` (``auto`` = bfloat16 on CUDA, float32 on CPU).

Registered names (each paragraph names the reference implementation it reproduces):

``clip_score(path, processor_path=None, ...)``
    ``path``: a transformers ``CLIPModel`` folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), e.g. ``openai/clip-vit-large-patch14``. Score per frame
    ``max(100 * cos(image_embeds, text_embeds), 0)``: torchmetrics' ``CLIPScore``
    (``torchmetrics/functional/multimodal/clip_score.py``), which uses the model's own
    ``CLIPProcessor`` for preprocessing. Typical values 20..35.

``pickscore(path, processor_path=None, ...)``
    ``path``: the ``yuvalkirstain/PickScore_v1`` CLIPModel folder; ``processor_path``: the
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` folder (its tokenizer and
    ``preprocessor_config.json``); defaults to ``path`` when that folder holds them. Score per frame
    ``logit_scale.exp() * cos(image_embeds, text_embeds)`` exactly as PickScore's README
    (yuvalkirstain/PickScore, ``README.md``, ``calc_probs``). Typical values 18..24. Flow-GRPO /
    Flash-GRPO divide this by 26 (``flow_grpo/pickscore_scorer.py``): give the reward weight
    ``1/26`` in the reward set to reproduce that.

``hpsv2(path, tokenizer_path, ...)``
    ``path``: ``HPS_v2.1_compressed.pt`` (a dict whose ``"state_dict"`` holds open_clip ViT-H-14
    weights; a bare state dict or a ``.safetensors`` file also work). The checkpoint is a pickle:
    it is read **only** with ``torch.load(path, map_location="cpu", weights_only=True)``, which
    unpickles nothing but tensors and plain containers, and refused otherwise. open_clip itself is
    not used (it imports torchvision, which does not load beside this torch build): the open_clip
    weights are converted key by key into a transformers ``CLIPModel`` (same computation: pre-norm
    ViT with exact GELU, CLS pooling, ``ln_post`` then ``proj``; text transformer with a causal
    mask pooled at the end-of-text token). ``tokenizer_path``: a folder with CLIP tokenizer files
    (any OpenAI/LAION CLIP folder: open_clip's tokenizer is OpenAI's BPE vocabulary) or open_clip's
    ``bpe_simple_vocab_16e6.txt.gz``. Score per frame = ``cos(image_features, text_features)``
    **without** ``logit_scale``: hpsv2/img_score.py (tgxs002/HPSv2) computes
    ``logits_per_image = image_features @ text_features.T`` from the L2-normalised features of
    ``model(image, text)`` and returns its diagonal. Typical values 0.2..0.35.

``aesthetic(path, clip_path, ...)``
    LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor,
    ``simple_inference.py``): ``path`` is the MLP (``sac+logos+ava1-l14-linearMSE.pth``, a state
    dict with keys ``layers.{0,2,4,6,7}.{weight,bias}``; read with ``weights_only=True``; or the
    same keys in a ``.safetensors``); ``clip_path`` is a transformers ``CLIPModel`` folder of CLIP
    ViT-L/14 (``openai/clip-vit-large-patch14``). Score per frame =
    ``MLP(image_embeds / ||image_embeds||)`` with the MLP ``768-1024-128-64-16-1`` (dropout
    between the first four linears, no activations), typical values 4..7.

Preprocessing (what the frame goes through before the model), matched to each reference:

* ``clip_score`` / ``pickscore`` -- transformers' ``CLIPImageProcessor`` (the PIL one the
  references ran): PIL bicubic resize of the uint8 frame so the shortest edge is ``size``
  (long edge ``int(size * long / short)``), center crop with offset ``(H - crop) // 2``, ``/255``,
  normalise with the processor's ``image_mean``/``image_std``. Values from the processor folder's
  ``preprocessor_config.json``; without one: ``image_size`` of the model config, bicubic and the
  OpenAI CLIP mean/std (what every CLIP processor config on the Hub holds).
* ``aesthetic`` -- OpenAI ``clip.load`` ``_transform`` (openai/CLIP ``clip/clip.py``): PIL bicubic
  resize (same size rule), torchvision ``CenterCrop`` with offset ``int(round((H - crop) / 2))``,
  ``/255``, OpenAI mean/std.
* ``hpsv2`` -- HPSv2's ``image_transform(is_train=False)`` (hpsv2/src/open_clip/transform.py):
  ``ToTensor`` first (float 0..1), then torchvision ``Resize(224, BICUBIC)`` *on the tensor*
  (``F.interpolate(mode="bicubic", antialias=True)``, torchvision >= 0.17's default, no clamp),
  torchvision ``CenterCrop`` (round rule), OpenAI mean/std (hpsv2/src/open_clip/constants.py).

The two crop rules differ by one pixel when ``H - crop`` is ``3 mod 4``; the resize sizes agree.
Known differences from the references: models run in bfloat16 on CUDA by default (the references:
fp32 for PickScore/CLIPScore, fp16 autocast for HPSv2 and OpenAI CLIP); pass ``dtype="float32"``
to match fp32 runs. Text is tokenised by transformers' CLIP tokenizer, which equals open_clip's
``SimpleTokenizer`` for ordinary prompts (open_clip additionally runs ``ftfy.fix_text`` and
``html.unescape``).

Text features depend on the prompt only and are cached per prompt (bounded LRU,
``text_cache_size`` entries; 0 disables); image features are never cached.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from .base import register_reward
from .frames import FrameReward, PromptCache, resolve_device, resolve_dtype

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ImagePreprocess",
    "shortest_edge_size",
    "center_crop_offset",
    "load_weights_file",
    "open_clip_to_transformers",
    "clip_tokenizer_from_bpe",
    "ClipScore",
    "PickScore",
    "HPSv2",
    "Aesthetic",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel RGB mean of OpenAI CLIP (openai/CLIP clip/clip.py; open_clip constants.py)."""
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel RGB std of OpenAI CLIP."""

_PIL_BICUBIC = 3  # PIL.Image.BICUBIC; also transformers' ``resample: 3``
_PIL_THREADS = 8  # threads for PIL resizing of a frame batch
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------

def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output ``(height, width)`` of a resize whose shortest edge becomes ``size``.

    The long edge becomes ``int(size * long / short)`` (truncated), the rule of both torchvision's
    ``Resize(int)`` and transformers' ``get_resize_output_image_size(default_to_square=False)``.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop_offset(length: int, crop: int, rule: str) -> int:
    """Start of a centered crop of ``crop`` pixels from ``length`` pixels.

    ``rule="floor"``: ``(length - crop) // 2`` (transformers ``center_crop``).
    ``rule="round"``: ``int(round((length - crop) / 2.0))`` (torchvision ``CenterCrop``, Python's
    round-half-to-even).
    """
    if rule == "floor":
        return (length - crop) // 2
    if rule == "round":
        return int(round((length - crop) / 2.0))
    raise ValueError(f"crop rule must be 'floor' or 'round', got {rule!r}")


class ImagePreprocess:
    """uint8 frames ``[B, H, W, 3]`` -> normalised float32 ``pixel_values [B, 3, crop, crop]``.

    ``mode="pil"``: each frame is resized by PIL (``resample``, default bicubic) as a uint8 image,
    center-cropped with ``crop_rule``, divided by 255 and normalised (CLIPImageProcessor / OpenAI
    CLIP). ``mode="tensor"``: the frames are divided by 255 first, resized as float tensors with
    ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` (torchvision's tensor
    Resize), center-cropped and normalised (HPSv2). ``size=None`` skips the resize, ``crop=None``
    the crop.
    """

    def __init__(self, size: int | None, crop: int | None, mean: Sequence[float], std: Sequence[float],
                 mode: str = "pil", crop_rule: str = "floor", resample: int = _PIL_BICUBIC):
        if mode not in ("pil", "tensor"):
            raise ValueError(f"mode must be 'pil' or 'tensor', got {mode!r}")
        self.size, self.crop, self.mode, self.crop_rule, self.resample = size, crop, mode, crop_rule, resample
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __repr__(self) -> str:
        return (f"ImagePreprocess(size={self.size}, crop={self.crop}, mode={self.mode!r}, "
                f"crop_rule={self.crop_rule!r}, mean={self.mean}, std={self.std})")

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        if self.crop is None:
            return 0, 0, height, width
        if height < self.crop or width < self.crop:
            raise UserError(f"Frames of {height}x{width} are smaller than the model's crop of {self.crop} "
                            "pixels after resizing; check the processor's 'size' and 'crop_size'.")
        top = center_crop_offset(height, self.crop, self.crop_rule)
        left = center_crop_offset(width, self.crop, self.crop_rule)
        return top, left, self.crop, self.crop

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, frames: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [B, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        if self.mode == "pil":
            return self._normalize(self._pil(frames).to(device))
        x = frames.to(device).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.size is not None:
            h, w = shortest_edge_size(int(x.shape[2]), int(x.shape[3]), self.size)
            if (h, w) != tuple(x.shape[2:]):
                x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        top, left, ch, cw = self._crop_box(int(x.shape[2]), int(x.shape[3]))
        return self._normalize(x[:, :, top:top + ch, left:left + cw])

    def _pil_one(self, array: np.ndarray) -> torch.Tensor:
        """One uint8 ``[H, W, 3]`` frame resized and cropped by PIL, uint8 ``[h, w, 3]``."""
        image = Image.fromarray(array)
        if self.size is not None:
            h, w = shortest_edge_size(image.height, image.width, self.size)
            if (h, w) != (image.height, image.width):
                image = image.resize((w, h), resample=self.resample, reducing_gap=None)
        resized = np.asarray(image)
        top, left, ch, cw = self._crop_box(resized.shape[0], resized.shape[1])
        return torch.from_numpy(np.array(resized[top:top + ch, left:left + cw]))

    def _pil(self, frames: torch.Tensor) -> torch.Tensor:
        """Resize + crop each frame with PIL; float32 ``[B, 3, h, w]`` in 0..1 on CPU.

        Frames are processed by up to 8 threads (PIL releases the GIL while resampling); the
        result does not depend on the thread count.
        """
        arrays = list(frames.cpu().numpy())
        workers = min(len(arrays), os.cpu_count() or 1, _PIL_THREADS)
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                out = list(pool.map(self._pil_one, arrays))
        else:
            out = [self._pil_one(a) for a in arrays]
        x = torch.stack(out).permute(0, 3, 1, 2)
        # transformers' rescale multiplies in float64, then casts: keep that to match to the last bit.
        return (x.to(torch.float64) * (1.0 / 255.0)).to(torch.float32)


def _size_from_config(value: Any, key: str, where: Path) -> int | None:
    """An image size from a processor config entry (int, ``{"shortest_edge": n}`` or
    ``{"height": n, "width": n}``)."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value and value["height"] == value["width"]:
            return int(value["height"])
    raise UserError(f"{where}: unsupported '{key}' {value!r}; expected an int, "
                    "{'shortest_edge': n} or a square {'height': n, 'width': n}.")


def clip_processor_preprocess(folder: Path | None, image_size: int) -> ImagePreprocess:
    """The ``CLIPImageProcessor`` pipeline of ``folder/preprocessor_config.json`` (see the module
    docstring); without that file: resize/crop to ``image_size``, bicubic, OpenAI mean/std."""
    config_file = folder / "preprocessor_config.json" if folder is not None else None
    if config_file is None or not config_file.is_file():
        return ImagePreprocess(image_size, image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "pil", "floor")
    try:
        cfg = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"Could not read {config_file}: {exc}") from None
    size = _size_from_config(cfg.get("size"), "size", config_file) if cfg.get("do_resize", True) else None
    crop = None
    if cfg.get("do_center_crop", True):
        crop = _size_from_config(cfg.get("crop_size"), "crop_size", config_file)
    if cfg.get("do_resize", True) and size is None:
        size = image_size
    if cfg.get("do_center_crop", True) and crop is None:
        crop = image_size
    if cfg.get("do_normalize", True):
        mean, std = cfg.get("image_mean", OPENAI_CLIP_MEAN), cfg.get("image_std", OPENAI_CLIP_STD)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    rescale = cfg.get("rescale_factor", 1 / 255)
    if cfg.get("do_rescale", True) is False or not math.isclose(float(rescale), 1 / 255, rel_tol=1e-6):
        raise UserError(f"{config_file}: only do_rescale with rescale_factor 1/255 is supported.")
    return ImagePreprocess(size, crop, mean, std, "pil", "floor", int(cfg.get("resample", _PIL_BICUBIC)))


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def _existing_path(path: Any, reward: str, arg: str, expect: str) -> Path:
    """``path`` as a :class:`Path` that exists, else :class:`UserError` naming the argument."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise UserError(f"Reward {reward!r} needs '{arg}': {expect}.")
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"Reward {reward!r}: '{arg}' must be a path string, got {type(path).__name__}.")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise UserError(f"Reward {reward!r}: {arg} {str(resolved)!r} does not exist; expected {expect}.")
    return resolved


def _check_clip_folder(folder: Path, reward: str, arg: str) -> None:
    """Raise :class:`UserError` unless ``folder`` looks like a transformers CLIPModel folder."""
    expect = "a transformers CLIPModel folder (config.json + model.safetensors or pytorch_model.bin)"
    if not folder.is_dir():
        raise UserError(f"Reward {reward!r}: {arg} {str(folder)!r} is a file; expected {expect}.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"Reward {reward!r}: no config.json in {folder}: expected {expect}.")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise UserError(f"Reward {reward!r}: could not read {config_file}: {exc}") from None
    if model_type != "clip":
        raise UserError(f"Reward {reward!r}: {config_file} describes a {model_type!r} model; expected a "
                        "transformers CLIPModel (model_type 'clip').")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise UserError(f"Reward {reward!r}: no weights in {folder} (looked for {', '.join(_WEIGHT_FILES)}); "
                        f"expected {expect}.")


def load_clip_model(folder: Path, reward: str, arg: str, device: torch.device, dtype: torch.dtype):
    """A transformers ``CLIPModel`` from ``folder`` in eval mode on ``device``/``dtype``.

    Refuses (``UserError``) a folder that is not a CLIPModel folder or whose weights do not fill
    every parameter of the model its ``config.json`` describes (transformers would otherwise
    initialise the missing ones at random and the reward would be noise).
    """
    from transformers import CLIPModel

    _check_clip_folder(folder, reward, arg)
    try:
        model, info = CLIPModel.from_pretrained(str(folder), output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"Reward {reward!r}: could not load the CLIPModel in {folder}: {exc}") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        problems = [str(k) for k in list(missing)[:5] + list(mismatched)[:5]]
        raise UserError(f"Reward {reward!r}: the weights in {folder} do not match its config.json "
                        f"(missing or mis-shaped: {', '.join(problems)}).")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_clip_tokenizer(folder: Path, reward: str, arg: str, hint: str):
    """The CLIP tokenizer of ``folder`` (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``)."""
    from transformers import CLIPTokenizer

    if not folder.is_dir() or not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(f"Reward {reward!r}: no tokenizer files (tokenizer.json or vocab.json + merges.txt) "
                        f"in {arg} {str(folder)!r}. {hint}")
    try:
        return CLIPTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise UserError(f"Reward {reward!r}: could not load the CLIP tokenizer in {folder}: {exc}") from None


def load_weights_file(path: Path, reward: str, arg: str) -> dict[str, Any]:
    """A ``.safetensors`` file or a pickled torch checkpoint (``.pt``/``.pth``/``.bin``) as a dict.

    Pickled checkpoints are read **only** with ``torch.load(path, map_location="cpu",
    weights_only=True)``: torch's restricted unpickler that rebuilds tensors and plain containers
    and refuses any other object (so no code in the file can run). A checkpoint that needs more
    (pickled classes, optimiser objects, ...) is refused with a :class:`UserError`; re-save its
    tensors with ``torch.save(state_dict)`` or as safetensors.
    """
    if not path.is_file():
        raise UserError(f"Reward {reward!r}: {arg} {str(path)!r} is a folder; expected a weights file "
                        "(.pt/.pth or .safetensors).")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"Reward {reward!r}: {path} is not a readable safetensors file: {exc}") from None
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"Reward {reward!r}: refusing to load {path}: it needs more than tensors to unpickle, and "
            f"pickles are only read with torch.load(weights_only=True) ({str(exc).splitlines()[0]}). "
            "Re-save its state dict with torch.save or as .safetensors."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise UserError(f"Reward {reward!r}: {path} is not a readable torch checkpoint: {exc}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"Reward {reward!r}: {path} holds a {type(loaded).__name__}, expected a dict of tensors.")
    return loaded


def _strip_prefix(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


# ----------------------------------------------------------------------------------------------
# open_clip -> transformers CLIP
# ----------------------------------------------------------------------------------------------

_OPEN_CLIP_BUFFERS = ("attn_mask", "visual.attn_mask")  # non-parameters some checkpoints carry


def _count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    if ids != set(range(len(ids))):
        raise UserError(f"open_clip checkpoint has non-contiguous blocks under {prefix!r}: {sorted(ids)[:8]}.")
    return len(ids)


def _convert_block(sd: dict[str, torch.Tensor], src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    """One open_clip ``ResidualAttentionBlock`` (``nn.MultiheadAttention`` with a packed
    ``in_proj``) as a transformers ``CLIPEncoderLayer``."""
    q, k, v = sd.pop(f"{src}.attn.in_proj_weight").chunk(3, dim=0)
    qb, kb, vb = sd.pop(f"{src}.attn.in_proj_bias").chunk(3, dim=0)
    for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
        out[f"{dst}.self_attn.{name}.weight"] = w
        out[f"{dst}.self_attn.{name}.bias"] = b
    renames = {
        "attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    }
    for old, new in renames.items():
        for p in ("weight", "bias"):
            out[f"{dst}.{new}.{p}"] = sd.pop(f"{src}.{old}.{p}")


def open_clip_to_transformers(state_dict: dict[str, torch.Tensor], vision_head_width: int = 80,
                              text_head_width: int = 64, eos_token_id: int | None = None,
                              where: str = "checkpoint"):
    """Convert an open_clip ViT ``CLIP`` state dict into ``(CLIPConfig, transformers state dict)``.

    Sizes (widths, depths, patch and image size, context length, vocabulary, embedding dim) are
    read from the tensor shapes. Head counts are not stored in the weights: they are
    ``width // head_width`` with open_clip ViT-H-14's head widths as defaults (vision 80 =
    ``model_configs/ViT-H-14.json`` ``head_width``; text 64 = width 1024 / 16 heads). Activation:
    exact GELU (open_clip's default for non-``quickgelu`` models such as ViT-H-14). Layer norms:
    eps 1e-5 (``nn.LayerNorm``'s default in open_clip). ``eos_token_id`` (the tokenizer's end of
    text id) makes the text tower pool at the first end-of-text token, which for CLIP's vocabulary
    (end of text = the largest id) is open_clip's ``text.argmax(dim=-1)``.

    Raises :class:`UserError` naming missing or unexpected keys (e.g. a ResNet or custom-text
    open_clip model, or a file that is not an open_clip checkpoint at all).
    """
    from transformers import CLIPConfig

    sd = {k: v for k, v in state_dict.items() if k not in _OPEN_CLIP_BUFFERS}
    required = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
                "token_embedding.weight", "positional_embedding", "text_projection", "logit_scale")
    missing = [k for k in required if k not in sd]
    if missing:
        raise UserError(f"{where} is not an open_clip ViT CLIP state dict: missing {', '.join(missing)}"
                        + (f" (it has e.g. {', '.join(list(sd)[:4])})" if sd else " (it is empty)") + ".")
    try:
        v_width, _, patch, _ = sd["visual.conv1.weight"].shape
        n_pos = sd["visual.positional_embedding"].shape[0]
        grid = math.isqrt(n_pos - 1)
        embed_dim = sd["visual.proj"].shape[1]
        vocab, t_width = sd["token_embedding.weight"].shape
        context = sd["positional_embedding"].shape[0]
        v_layers = _count_blocks(sd, "visual.transformer.resblocks.")
        t_layers = _count_blocks(sd, "transformer.resblocks.")
        v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        t_mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as exc:
        raise UserError(f"{where} is not an open_clip ViT CLIP state dict ({exc!r}).") from None
    if grid * grid != n_pos - 1:
        raise UserError(f"{where}: visual.positional_embedding has {n_pos} rows, not 1 + a square grid.")
    for width, head_width, tower in ((v_width, vision_head_width, "vision"), (t_width, text_head_width, "text")):
        if width % head_width:
            raise UserError(f"{where}: {tower} width {width} is not a multiple of the head width {head_width}.")

    text_config = dict(
        vocab_size=int(vocab), hidden_size=int(t_width), intermediate_size=int(t_mlp),
        num_hidden_layers=t_layers, num_attention_heads=int(t_width // text_head_width),
        max_position_embeddings=int(context), hidden_act="gelu", layer_norm_eps=1e-5,
        projection_dim=int(embed_dim),
    )
    if eos_token_id is not None:
        text_config.update(eos_token_id=int(eos_token_id), bos_token_id=int(eos_token_id) - 1,
                           pad_token_id=int(eos_token_id))
    vision_config = dict(
        hidden_size=int(v_width), intermediate_size=int(v_mlp), num_hidden_layers=v_layers,
        num_attention_heads=int(v_width // vision_head_width), image_size=int(grid * patch),
        patch_size=int(patch), hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=int(embed_dim),
    )
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=int(embed_dim))

    out: dict[str, torch.Tensor] = {
        "vision_model.embeddings.class_embedding": sd.pop("visual.class_embedding"),
        "vision_model.embeddings.position_embedding.weight": sd.pop("visual.positional_embedding"),
        "vision_model.embeddings.patch_embedding.weight": sd.pop("visual.conv1.weight"),
        "visual_projection.weight": sd.pop("visual.proj").t().contiguous(),
        "text_model.embeddings.token_embedding.weight": sd.pop("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": sd.pop("positional_embedding"),
        "text_projection.weight": sd.pop("text_projection").t().contiguous(),
        "logit_scale": sd.pop("logit_scale"),
    }
    try:
        norms = (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                 ("ln_final", "text_model.final_layer_norm"))
        for old, new in norms:
            for p in ("weight", "bias"):
                out[f"{new}.{p}"] = sd.pop(f"{old}.{p}")
        for i in range(v_layers):
            _convert_block(sd, f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}", out)
        for i in range(t_layers):
            _convert_block(sd, f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}", out)
    except KeyError as exc:
        raise UserError(f"{where} is not an open_clip ViT CLIP state dict: missing {exc.args[0]}.") from None
    if sd:
        raise UserError(f"{where} has keys this open_clip ViT CLIP conversion does not know "
                        f"({', '.join(sorted(sd)[:6])}); only standard ViT open_clip models (e.g. ViT-H-14) "
                        "are supported.")
    return config, out


def _clip_from_state_dict(config, state_dict: dict[str, torch.Tensor], where: str):
    """A ``CLIPModel(config)`` holding exactly ``state_dict`` (built on the meta device so no
    random initialisation of a billion parameters runs; the non-persistent ``position_ids``
    buffers are then recreated)."""
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(config)
    expected = set(model.state_dict())
    given = set(state_dict)
    if expected != given:
        raise UserError(f"{where}: converted weights do not fit the CLIP model (missing "
                        f"{sorted(expected - given)[:4]}, unexpected {sorted(given - expected)[:4]}).")
    for key, tensor in model.state_dict().items():
        if tuple(tensor.shape) != tuple(state_dict[key].shape):
            raise UserError(f"{where}: {key} has shape {tuple(state_dict[key].shape)}, "
                            f"expected {tuple(tensor.shape)}.")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    for module in model.modules():
        ids = module._buffers.get("position_ids")
        if ids is not None and ids.is_meta:
            module._buffers["position_ids"] = torch.arange(ids.shape[-1]).expand(ids.shape).clone()
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"uninitialised tensors after loading: {leftover[:4]}")
    return model


def _byte_symbols() -> list[str]:
    """The 256 byte symbols of GPT-2 / CLIP byte-level BPE, in CLIP's vocabulary order.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves and come
    first, in byte order; the other 68 bytes follow, in byte order, as the characters ``chr(256)``,
    ``chr(257)``, ... (``bytes_to_unicode`` of openai/CLIP ``clip/simple_tokenizer.py``, whose
    ``.values()`` order is this one).
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


_CLIP_NUM_MERGES = 49152 - 256 - 2  # OpenAI SimpleTokenizer reads merges[1 : 49152 - 256 - 2 + 1]


def clip_tokenizer_from_bpe(bpe_path: Path):
    """A transformers ``CLIPTokenizer`` from OpenAI/open_clip's ``bpe_simple_vocab_16e6.txt.gz``.

    The vocabulary is built as OpenAI's ``SimpleTokenizer`` does (openai/CLIP
    ``clip/simple_tokenizer.py``): the 256 byte characters, the same with ``</w>``, one token per
    merge (the first ``49152 - 256 - 2`` merge lines after the header), then ``<|startoftext|>`` and
    ``<|endoftext|>`` -- 49408 tokens for the real file, the layout of every HF CLIP ``vocab.json``.
    """
    from transformers import CLIPTokenizer

    try:
        lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(f"{bpe_path} is not a gzipped CLIP BPE merges file: {exc}") from None
    merges = [tuple(line.split()) for line in lines[1:1 + _CLIP_NUM_MERGES] if line.strip()]
    if not merges or any(len(m) != 2 for m in merges):
        raise UserError(f"{bpe_path} is not a CLIP BPE merges file (expected lines of two symbols).")
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
        (Path(tmp) / "merges.txt").write_text(merges_text, encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp)


# ----------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------

class _ClipFrameReward(FrameReward):
    """Shared machinery: a transformers ``CLIPModel`` (image and text towers) on one device.

    Subclasses set ``self.model``, ``self.tokenizer`` (or ``None`` for image-only rewards) and
    ``self.preprocess``, then implement :meth:`score_frames`.
    """

    def _setup(self, device: Any, dtype: Any, text_cache_size: int) -> None:
        what = f"reward {self.name!r}"
        self.device = resolve_device(device, what)
        self.dtype = resolve_dtype(dtype, self.device, what)
        if isinstance(text_cache_size, bool) or not isinstance(text_cache_size, int) or text_cache_size < 0:
            raise UserError(f"{what}: text_cache_size must be an integer >= 0, got {text_cache_size!r}.")
        self.text_cache = PromptCache(text_cache_size)

    def image_embeds(self, frames: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings (float32, not normalised) of uint8 frames ``[B, H, W, 3]``."""
        pixel_values = self.preprocess(frames, self.device).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return self.model.visual_projection(pooled).float()

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised projected text embeddings (float32) of ``prompts``; cached per prompt."""
        def compute(missing: list[str]) -> torch.Tensor:
            max_length = self.model.config.text_config.max_position_embeddings
            tokens = self.tokenizer(missing, padding=True, truncation=True, max_length=max_length,
                                    return_tensors="pt")
            pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
            return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

        return torch.stack(self.text_cache.get_many(list(prompts), compute))

    def cosine(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``cos(image, text)`` per frame, float32 ``[B]``."""
        image = F.normalize(self.image_embeds(frames), dim=-1)
        return (image * self.text_embeds(prompts)).sum(dim=-1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(device={self.device}, dtype={self.dtype}, every={self.every}, "
                f"aggregate={self.aggregate!r})")


def _processor_folder(path: Path, processor_path: Any, reward: str) -> Path:
    if processor_path is None:
        return path
    return _existing_path(processor_path, reward, "processor_path",
                          "a CLIP processor folder (tokenizer files + preprocessor_config.json)")


@register_reward("clip_score")
class ClipScore(_ClipFrameReward):
    """CLIPScore per frame: ``max(100 * cos(image, text), 0)`` (torchmetrics' definition).

    ``path``: transformers CLIPModel folder; ``processor_path``: folder with its tokenizer and
    ``preprocessor_config.json`` (default ``path``). See :mod:`trainer.rewards.models`.
    """

    EXPECT = "a transformers CLIPModel folder (config.json + model.safetensors), e.g. openai/clip-vit-large-patch14"
    PROCESSOR_HINT = "Pass processor_path=<folder of the model's CLIPProcessor>."

    def __init__(self, path: str, processor_path: str | None = None, every: int = 1, aggregate: str = "mean",
                 top_p: float = 0.3, batch_size: int = 32, device: str = "auto", dtype: str = "auto",
                 text_cache_size: int = 4096):
        super().__init__(every, aggregate, top_p, batch_size)
        self._setup(device, dtype, text_cache_size)
        folder = _existing_path(path, self.name, "path", self.EXPECT)
        proc = _processor_folder(folder, processor_path, self.name)
        self.model = load_clip_model(folder, self.name, "path", self.device, self.dtype)
        self.tokenizer = load_clip_tokenizer(proc, self.name, "processor_path" if processor_path else "path",
                                             self.PROCESSOR_HINT)
        self.preprocess = clip_processor_preprocess(proc, self.model.config.vision_config.image_size)

    def score_frames(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (100.0 * self.cosine(frames, prompts)).clamp(min=0.0)


@register_reward("pickscore")
class PickScore(ClipScore):
    """PickScore per frame: ``logit_scale.exp() * cos(image, text)`` (PickScore's README).

    ``path``: the PickScore_v1 CLIPModel folder; ``processor_path``: the
    CLIP-ViT-H-14-laion2B-s32B-b79K folder (default ``path``). See :mod:`trainer.rewards.models`.
    """

    name = "pickscore"
    EXPECT = "the PickScore_v1 transformers CLIPModel folder (config.json + model.safetensors)"
    PROCESSOR_HINT = ("PickScore uses the processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K: pass "
                      "processor_path=<that folder>.")

    def score_frames(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.model.logit_scale.float().exp() * self.cosine(frames, prompts)


@register_reward("hpsv2")
class HPSv2(_ClipFrameReward):
    """HPSv2 / HPSv2.1 per frame: ``cos(image, text)`` of the open_clip ViT-H-14 HPS model.

    ``path``: ``HPS_v2.1_compressed.pt`` (loaded with ``weights_only=True`` only) or a
    ``.safetensors`` of the same state dict; ``tokenizer_path``: a CLIP tokenizer folder or
    open_clip's ``bpe_simple_vocab_16e6.txt.gz``. ``vision_head_width``/``text_head_width``: head
    sizes of the architecture (ViT-H-14: 80 / 64; not stored in the weights). See
    :mod:`trainer.rewards.models`.
    """

    def __init__(self, path: str, tokenizer_path: str, every: int = 1, aggregate: str = "mean",
                 top_p: float = 0.3, batch_size: int = 32, device: str = "auto", dtype: str = "auto",
                 text_cache_size: int = 4096, vision_head_width: int = 80, text_head_width: int = 64):
        super().__init__(every, aggregate, top_p, batch_size)
        self._setup(device, dtype, text_cache_size)
        file = _existing_path(path, self.name, "path", "the HPSv2 checkpoint file HPS_v2.1_compressed.pt")
        tok_path = _existing_path(tokenizer_path, self.name, "tokenizer_path",
                                  "a CLIP tokenizer folder (vocab.json + merges.txt or tokenizer.json) or "
                                  "open_clip's bpe_simple_vocab_16e6.txt.gz")
        if tok_path.is_file():
            self.tokenizer = clip_tokenizer_from_bpe(tok_path)
        else:
            self.tokenizer = load_clip_tokenizer(tok_path, self.name, "tokenizer_path",
                                                 "Use any OpenAI/LAION CLIP folder or bpe_simple_vocab_16e6.txt.gz.")
        loaded = load_weights_file(file, self.name, "path")
        state_dict = loaded.get("state_dict", loaded)
        if not isinstance(state_dict, dict):
            raise UserError(f"Reward {self.name!r}: {file}['state_dict'] is a {type(state_dict).__name__}, "
                            "expected a dict of tensors.")
        state_dict = _strip_prefix(state_dict, "module.")
        non_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if non_tensors:
            raise UserError(f"Reward {self.name!r}: {file} has non-tensor entries {non_tensors[:4]}; expected a "
                            "state dict (optionally under the key 'state_dict').")
        where = f"Reward {self.name!r}: {file}"
        config, converted = open_clip_to_transformers(state_dict, vision_head_width, text_head_width,
                                                      self.tokenizer.eos_token_id, where)
        if config.text_config.vocab_size != len(self.tokenizer):
            raise UserError(f"{where}: the text tower has {config.text_config.vocab_size} tokens but the tokenizer "
                            f"at {tok_path} has {len(self.tokenizer)}; use the CLIP tokenizer of the model.")
        model = _clip_from_state_dict(config, converted, where)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        size = config.vision_config.image_size
        self.preprocess = ImagePreprocess(size, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "tensor", "round")

    def score_frames(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.cosine(frames, prompts)


_AESTHETIC_LINEARS = (0, 2, 4, 6, 7)  # nn.Sequential indices of the Linear layers (dropouts between)


def build_aesthetic_mlp(state_dict: dict[str, torch.Tensor], where: str) -> torch.nn.Sequential:
    """The LAION aesthetic MLP (``Linear, Dropout(0.2), Linear, Dropout(0.2), Linear, Dropout(0.1),
    Linear, Linear``; no activations) holding ``state_dict``; sizes are read from the weights
    (768-1024-128-64-16-1 for ``sac+logos+ava1-l14-linearMSE.pth``). :class:`UserError` when the
    keys or shapes are not that layout."""
    expected = {f"layers.{i}.{p}" for i in _AESTHETIC_LINEARS for p in ("weight", "bias")}
    sd = _strip_prefix(dict(state_dict), "module.")
    if set(sd) != expected:
        raise UserError(f"{where} is not a LAION aesthetic MLP: expected keys layers.{{0,2,4,6,7}}.weight/bias, "
                        f"missing {sorted(expected - set(sd))[:4]}, unexpected {sorted(set(sd) - expected)[:4]}.")
    dims = [int(sd["layers.0.weight"].shape[1])] + [int(sd[f"layers.{i}.weight"].shape[0]) for i in _AESTHETIC_LINEARS]
    for j, i in enumerate(_AESTHETIC_LINEARS):
        w, b = sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"]
        if tuple(w.shape) != (dims[j + 1], dims[j]) or tuple(b.shape) != (dims[j + 1],):
            raise UserError(f"{where}: layers.{i} has shapes {tuple(w.shape)}/{tuple(b.shape)}, which do not chain "
                            f"into an MLP {'-'.join(map(str, dims))}.")
    if dims[-1] != 1:
        raise UserError(f"{where}: the MLP ends in {dims[-1]} outputs, expected 1.")
    mlp = torch.nn.Sequential(
        torch.nn.Linear(dims[0], dims[1]), torch.nn.Dropout(0.2),
        torch.nn.Linear(dims[1], dims[2]), torch.nn.Dropout(0.2),
        torch.nn.Linear(dims[2], dims[3]), torch.nn.Dropout(0.1),
        torch.nn.Linear(dims[3], dims[4]),
        torch.nn.Linear(dims[4], dims[5]),
    )
    mlp.load_state_dict({k[len("layers."):]: v.float() for k, v in sd.items()}, strict=True)
    return mlp.eval().requires_grad_(False)


@register_reward("aesthetic")
class Aesthetic(_ClipFrameReward):
    """LAION aesthetic predictor v2 per frame: ``MLP(normalize(CLIP ViT-L/14 image embeds))``.

    ``path``: the MLP weights (``sac+logos+ava1-l14-linearMSE.pth``, read with ``weights_only=True``,
    or a ``.safetensors`` with the same keys); ``clip_path``: transformers CLIPModel folder of CLIP
    ViT-L/14. The prompt is not used. See :mod:`trainer.rewards.models`.
    """

    def __init__(self, path: str, clip_path: str, every: int = 1, aggregate: str = "mean", top_p: float = 0.3,
                 batch_size: int = 32, device: str = "auto", dtype: str = "auto"):
        super().__init__(every, aggregate, top_p, batch_size)
        self._setup(device, dtype, 0)
        file = _existing_path(path, self.name, "path",
                              "the aesthetic MLP weights file, e.g. sac+logos+ava1-l14-linearMSE.pth")
        folder = _existing_path(clip_path, self.name, "clip_path",
                                "the transformers CLIPModel folder of CLIP ViT-L/14 (openai/clip-vit-large-patch14)")
        self.mlp = build_aesthetic_mlp(load_weights_file(file, self.name, "path"), f"Reward {self.name!r}: {file}")
        self.model = load_clip_model(folder, self.name, "clip_path", self.device, self.dtype)
        embed_dim = self.model.config.projection_dim
        if self.mlp[0].in_features != embed_dim:
            raise UserError(f"Reward {self.name!r}: the MLP in {file} takes {self.mlp[0].in_features}-dim embeddings "
                            f"but the CLIP model in {folder} projects to {embed_dim}; the LAION predictor needs "
                            "CLIP ViT-L/14 (768).")
        self.mlp.to(self.device)
        self.tokenizer = None
        size = self.model.config.vision_config.image_size
        self.preprocess = ImagePreprocess(size, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "pil", "round")

    def score_frames(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        embeds = F.normalize(self.image_embeds(frames), dim=-1)
        return self.mlp(embeds).squeeze(-1)
