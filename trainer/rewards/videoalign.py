"""VideoAlign / VideoReward (KwaiVGI): a video-native reward model on Qwen2-VL-2B, from local files.

Registered as ``videoalign``. VideoReward scores a whole video (not frames) on three axes --
visual quality ``VQ``, motion quality ``MQ`` and text alignment ``TA`` -- and the reference
reports ``Overall = VQ + MQ + TA`` (each first standardised with the mean/std stored in the
checkpoint's ``model_config.json``).

Files the user provides (nothing is downloaded):

* ``path`` -- the VideoReward folder (HF ``KwaiVGI/VideoReward``): ``model_config.json`` and
  ``checkpoint-<step>/`` holding ``adapter_model.safetensors`` (the LoRA of the language model)
  and ``non_lora_state_dict.pth`` (every other trained tensor: the ``rm_head``, the vision tower
  and merger, the embeddings of the three reward tokens). ``non_lora_state_dict.pth`` is a
  pickle: it is read **only** with ``torch.load(..., map_location="cpu", weights_only=True)``.
  A full ``model.pth`` in the checkpoint folder (the reference's other layout) is read the same way.
* ``base_path`` -- the local ``Qwen/Qwen2-VL-2B-Instruct`` folder (config, weights, tokenizer with
  its chat template, ``preprocessor_config.json``). Defaults to ``model_name_or_path`` of
  ``model_config.json`` when that is an existing folder.
* ``prompt_template_path`` -- VideoAlign's ``prompt_template.py`` (or the VideoAlign checkout
  holding it, or a plain text file with the template). The template text the model was trained
  with is read from there (the constant for the config's ``prompt_template_type``, e.g.
  ``DETAILED_PROMPT_WITH_SPECIAL_TOKEN`` for ``"detailed_special"``, parsed with ``ast`` -- never
  imported or executed) instead of being duplicated here. ``prompt_template`` passes the template
  string directly. Not needed for ``prompt_template_type: "none"``.

What is reproduced from the reference (KwaiVGI/VideoAlign: ``inference.py``,
``train_reward.py``, ``trainer.py`` ``Qwen2VLRewardModelBT``, ``vision_process.py``,
``utils.py`` ``load_model_from_checkpoint``; transformers 4.45 ``Qwen2VLImageProcessor`` and
``Qwen2VLForConditionalGeneration.get_rope_index``):

1. Model: Qwen2-VL with the tokens ``<|VQ_reward|>``, ``<|MQ_reward|>``, ``<|TA_reward|>`` added
   to the tokenizer (``use_special_tokens``), embeddings resized to ``len(tokenizer)``, the
   non-LoRA tensors loaded over the base weights, the LoRA (``r``, ``lora_alpha``, ``use_rslora``
   from ``adapter_config.json`` or ``model_config.json``) added to each target weight, and
   ``rm_head = Linear(hidden, output_dim, bias=False)``.
2. Frames (``vision_process.fetch_video`` + ``smart_nframes``, ``sample_type: "uniform"``):
   ``nframes = T / video_fps * fps`` clamped to ``[4, min(768, T)]`` (rounded to even bounds)
   and rounded to a multiple of 2 (or ``num_frames`` rounded to even when the config sets it),
   capped at ``T``; indices ``linspace(0, T - 1, nframes).round()``. The reference reads an MP4
   and knows its fps: here ``video_fps`` (default 16, Wan2.1's rate) says at what rate the given
   frames were generated. Frames come straight from memory, without the MP4 encode/decode.
3. Resize (``smart_resize`` with factor 28, ``min_pixels = 128*28*28``, ``max_pixels =
   max_frame_pixels`` of the config): torchvision's tensor ``resize(BICUBIC, antialias=True)`` on
   uint8 frames = float bicubic antialiased interpolation, clamp to 0..255, round to uint8.
4. Processor: ``/255``, normalise with the processor's ``image_mean``/``image_std`` (OpenAI CLIP
   constants for Qwen2-VL), and cut into ``temporal_patch_size x patch_size x patch_size`` patches
   in Qwen2-VL's order (row-major over 2x2 merge windows), giving ``pixel_values_videos`` and
   ``video_grid_thw``. (The processor's own resize is a no-op on these sizes.)
5. Text: the chat template of the base folder (the processor's ``chat_template.json``, as the
   reference's ``processor.apply_chat_template``; else the tokenizer's) applied to one user message ``[video, text]``
   with ``add_generation_prompt=True``; ``<|video_pad|>`` repeated ``t*h*w / merge_size**2``
   times; right padding. M-RoPE positions computed as transformers 4.45's ``get_rope_index``
   (passed explicitly, so newer transformers' own variants are not relied upon).
6. Reward: ``rm_head`` on the last hidden state at the three reward tokens (in order of
   appearance: VQ, MQ, TA; with ``output_dim == 3`` the diagonal), or at the last token for
   ``reward_token: "last"``; then ``(x - mean) / std`` per axis when ``use_norm`` and the config
   has ``inference_config``; ``Overall = VQ + MQ + TA``.

Differences (documented, deliberate): the LoRA is merged into the weights (in float32, then cast)
instead of being applied as a separate branch -- the same function up to rounding; the model runs
in bfloat16 on CUDA by default like the reference (``dtype="float32"`` on CPU); an odd number of
sampled frames is padded by repeating the last frame (the reference's processor would fail);
only ``sample_type: "uniform"`` and ``reward_token`` ``"special"``/``"last"`` are supported.
Requires transformers >= 4.52 (``Qwen2VLForConditionalGeneration.model`` holding ``visual`` and
``language_model``).

``scores`` is the axis chosen by ``dimension`` (``"Overall"`` by default); ``details`` always
hold ``VQ``, ``MQ`` and ``TA``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import Reward, RewardOutput, register_reward
from .frames import check_positive_int, resolve_device, resolve_dtype
from .models import _existing_path, load_weights_file

__all__ = [
    "VideoAlign",
    "REWARD_TOKENS",
    "smart_resize",
    "sample_frame_indices",
    "resize_frames",
    "qwen2vl_patchify",
    "mrope_position_ids",
]

REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
"""Special tokens VideoAlign adds to the tokenizer, in the order of its ``rm_head`` outputs."""
DIMENSIONS = ("VQ", "MQ", "TA")

# Constants of VideoAlign's vision_process.py (from qwen-vl-utils).
IMAGE_FACTOR = 28
VIDEO_MIN_PIXELS = 128 * 28 * 28
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
MAX_RATIO = 200

# The prompt constants of VideoAlign's prompt_template.py, by ``prompt_template_type``.
_TEMPLATE_CONSTANTS = {"detailed_special": "DETAILED_PROMPT_WITH_SPECIAL_TOKEN", "detailed": "DETAILED_PROMPT"}


# ----------------------------------------------------------------------------------------------
# Frame sampling and pixels
# ----------------------------------------------------------------------------------------------

def _round_by(x: float, factor: int) -> int:
    return round(x / factor) * factor


def _ceil_by(x: float, factor: int) -> int:
    return math.ceil(x / factor) * factor


def _floor_by(x: float, factor: int) -> int:
    return math.floor(x / factor) * factor


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = VIDEO_MIN_PIXELS,
                 max_pixels: int = 200704) -> tuple[int, int]:
    """Qwen2-VL's target size: both sides multiples of ``factor``, area in
    ``[min_pixels, max_pixels]``, aspect ratio kept as well as possible (qwen-vl-utils rule)."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise UserError(f"videoalign: frames of {height}x{width} exceed Qwen2-VL's aspect ratio limit {MAX_RATIO}.")
    h = max(factor, _round_by(height, factor))
    w = max(factor, _round_by(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = _floor_by(height / beta, factor), _floor_by(width / beta, factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = _ceil_by(height * beta, factor), _ceil_by(width * beta, factor)
    return h, w


def sample_frame_indices(total: int, video_fps: float, fps: float | None = 2.0,
                         num_frames: int | None = None) -> list[int]:
    """Indices of the frames VideoAlign looks at (``smart_nframes`` + uniform sampling).

    With ``num_frames``: that many (rounded to even). Otherwise ``total / video_fps * fps``
    clamped to ``[4, min(768, total)]`` (bounds rounded to even) and rounded to even. Capped at
    ``total``; indices ``torch.linspace(0, total - 1, n).round()``.
    """
    if num_frames is not None:
        n = _round_by(num_frames, FRAME_FACTOR)
    else:
        lo = _ceil_by(FPS_MIN_FRAMES, FRAME_FACTOR)
        hi = _floor_by(min(FPS_MAX_FRAMES, total), FRAME_FACTOR)
        n = _round_by(min(max(total / video_fps * fps, lo), hi), FRAME_FACTOR)
    n = max(1, min(n, total))  # the reference raises for n < 2; one frame is padded to two instead
    return torch.linspace(0, total - 1, n).round().long().tolist()


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 ``[n, 3, H, W]`` -> uint8 ``[n, 3, height, width]`` as torchvision's tensor
    ``resize(BICUBIC, antialias=True)``: float32 interpolation, clamp 0..255, round."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    x = F.interpolate(frames.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 255).round().to(torch.uint8)


def qwen2vl_patchify(frames: torch.Tensor, patch_size: int, temporal_patch_size: int,
                     merge_size: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalised float frames ``[n, C, h, w]`` -> ``(patches [t*gh*gw, C*tp*ps*ps], (t, gh, gw))``.

    Patch order is Qwen2-VL's: time, then ``merge_size x merge_size`` windows row by row, then
    the patches inside a window row by row; each patch flattens as ``(C, tp, ps, ps)``. ``n`` must
    be a multiple of ``temporal_patch_size`` and ``h``/``w`` of ``patch_size * merge_size``.
    """
    n, c, h, w = frames.shape
    tp, ps, m = temporal_patch_size, patch_size, merge_size
    gt, gh, gw = n // tp, h // ps, w // ps
    x = frames.reshape(gt, tp, c, gh // m, m, ps, gw // m, m, ps)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, win_h, win_w, in_h, in_w, C, tp, ps_h, ps_w
    return x.reshape(gt * gh * gw, c * tp * ps * ps), (gt, gh, gw)


def mrope_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, video_grid_thw: torch.Tensor,
                       video_token_id: int, merge_size: int) -> torch.Tensor:
    """Qwen2-VL's 3-D rotary positions ``[3, B, L]`` (transformers 4.45 ``get_rope_index``, videos).

    Text tokens count up on all three axes; a run of video tokens with grid ``(t, h, w)`` gets
    ``(time, row, column)`` indices over the merged ``t x h/m x w/m`` grid, offset by the position
    where the run starts; text after it resumes at one past the largest position so far. Padding
    positions (``attention_mask == 0``) get 1, as in the reference.
    """
    batch, length = input_ids.shape
    out = torch.ones(3, batch, length, dtype=torch.long, device=input_ids.device)
    grids = iter(video_grid_thw.tolist())
    for b in range(batch):
        keep = attention_mask[b].bool()
        ids = input_ids[b][keep].tolist()
        pieces: list[torch.Tensor] = []
        next_pos, i = 0, 0
        while i < len(ids):
            j = i
            if ids[i] == video_token_id:
                t, h, w = next(grids)
                gh, gw = h // merge_size, w // merge_size
                tt = torch.arange(t).view(-1, 1, 1).expand(t, gh, gw).flatten()
                hh = torch.arange(gh).view(1, -1, 1).expand(t, gh, gw).flatten()
                ww = torch.arange(gw).view(1, 1, -1).expand(t, gh, gw).flatten()
                piece = torch.stack([tt, hh, ww]) + next_pos
                if ids[i:i + piece.shape[1]] != [video_token_id] * piece.shape[1]:
                    raise ValueError("video placeholder tokens do not match video_grid_thw")
                j = i + piece.shape[1]
            else:
                while j < len(ids) and ids[j] != video_token_id:
                    j += 1
                piece = torch.arange(j - i).view(1, -1).expand(3, -1) + next_pos
            pieces.append(piece)
            next_pos = int(piece.max()) + 1
            i = j
        if pieces:
            out[:, b, keep] = torch.cat(pieces, dim=1).to(out.device)
    return out


# ----------------------------------------------------------------------------------------------
# Checkpoint loading
# ----------------------------------------------------------------------------------------------

def _read_json(file: Path, what: str) -> dict:
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"videoalign: could not read {what} {file}: {exc}") from None
    if not isinstance(value, dict):
        raise UserError(f"videoalign: {file} must hold a JSON object.")
    return value


def _find_checkpoint(folder: Path, step: int) -> Path:
    """``folder/checkpoint-<step>`` (``step=-1``: the highest step)."""
    found = {}
    for child in folder.glob("checkpoint-*"):
        suffix = child.name.split("-", 1)[1]
        if child.is_dir() and suffix.isdigit():
            found[int(suffix)] = child
    if not found:
        raise UserError(f"videoalign: no checkpoint-<step> folder in {folder}; expected the VideoReward folder "
                        "(model_config.json + checkpoint-*/adapter_model.safetensors + non_lora_state_dict.pth).")
    if step == -1:
        return found[max(found)]
    if step not in found:
        raise UserError(f"videoalign: no checkpoint-{step} in {folder}; available steps: {sorted(found)}.")
    return found[step]


def _target_name(key: str, names: set[str]) -> str | None:
    """Map a reference checkpoint key (transformers 4.45 + peft naming) onto this model's names.

    Strips peft's ``base_model.model.`` prefix, ``.base_layer`` and the adapter name ``default``,
    and renames 4.45's ``model.{layers,embed_tokens,norm}`` (text model) and ``visual.`` to the
    newer ``model.language_model.*`` / ``model.visual.*``. Returns ``None`` when nothing matches.
    """
    key = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
    key = key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
    key = re.sub(r"\.(lora_[A-Za-z_]+)\.default(\.|$)", r".\1\2", key)
    candidates = [key]
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        candidates.append("model.language_model." + key[len("model."):])
    if key.startswith("visual."):
        candidates.append("model." + key)
    for candidate in candidates:
        if candidate in names:
            return candidate
    return None


def _lora_scale(checkpoint: Path, peft_cfg: dict) -> tuple[int | None, float]:
    """``(r, scale)`` of the LoRA: ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), from the
    checkpoint's ``adapter_config.json`` if present, else from ``model_config.json``."""
    adapter_file = checkpoint / "adapter_config.json"
    if adapter_file.is_file():
        cfg = _read_json(adapter_file, "adapter config")
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            raise UserError(f"videoalign: {adapter_file} has per-module rank/alpha patterns, which are not supported.")
        if cfg.get("use_dora"):
            raise UserError(f"videoalign: {adapter_file} is a DoRA adapter, which is not supported.")
        r, alpha, rs = cfg.get("r"), cfg.get("lora_alpha"), cfg.get("use_rslora", False)
    else:
        r, alpha, rs = peft_cfg.get("lora_r"), peft_cfg.get("lora_alpha"), peft_cfg.get("use_rslora", False)
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise UserError(f"videoalign: LoRA rank/alpha missing in {checkpoint} and model_config.json.")
    return r, alpha / (math.sqrt(r) if rs else r)


def _merge_lora(model: torch.nn.Module, lora: dict[str, torch.Tensor], r: int, scale: float, where: Path) -> int:
    """Add ``scale * B @ A`` to each LoRA target weight (``(B @ A).T`` for embeddings), in
    float32. Returns the number of merged modules; :class:`UserError` for unknown targets."""
    params = dict(model.named_parameters())
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        match = re.match(r"(.*)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.default)?(?:\.weight)?$", key)
        if match is None:
            raise UserError(f"videoalign: unexpected key {key!r} in {where} (not a LoRA A/B weight).")
        modules.setdefault(match.group(1), {})[match.group(2)] = value
    for module, parts in modules.items():
        target = _target_name(module + ".weight", set(params))
        if target is None:
            raise UserError(f"videoalign: the LoRA in {where} targets {module!r}, which the base model lacks; "
                            "is base_path the Qwen2-VL model VideoAlign was trained on?")
        weight = params[target]
        if "lora_A" in parts and "lora_B" in parts:
            a, b = parts["lora_A"].float(), parts["lora_B"].float()
            delta = b @ a
        elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
            a, b = parts["lora_embedding_A"].float(), parts["lora_embedding_B"].float()
            delta = (b @ a).t()
        else:
            raise UserError(f"videoalign: {where} has an incomplete LoRA pair for {module!r}.")
        if a.shape[0] != r:
            raise UserError(f"videoalign: LoRA of {module!r} has rank {tuple(a.shape)}, config says r={r}.")
        if tuple(delta.shape) != tuple(weight.shape):
            raise UserError(f"videoalign: LoRA of {module!r} gives shape {tuple(delta.shape)}, the weight is "
                            f"{tuple(weight.shape)}.")
        with torch.no_grad():
            weight.copy_((weight.float() + scale * delta.to(weight.device)).to(weight.dtype))
    return len(modules)


def _read_template(prompt_template: str | None, prompt_template_path: Any, template_type: str) -> str | None:
    """The prompt template text for ``template_type`` (``None`` for ``"none"``)."""
    if template_type == "none":
        return None
    if prompt_template is not None:
        if not isinstance(prompt_template, str) or "{text_prompt}" not in prompt_template:
            raise UserError("videoalign: prompt_template must be a string containing '{text_prompt}'.")
        return prompt_template
    constant = _TEMPLATE_CONSTANTS.get(template_type)
    if constant is None:
        raise UserError(f"videoalign: prompt_template_type {template_type!r} is not supported "
                        f"(supported: none, {', '.join(_TEMPLATE_CONSTANTS)}).")
    expect = (f"VideoAlign's prompt_template.py (or its checkout), which defines {constant}: the '{template_type}' "
              "prompt the model was trained with")
    if prompt_template_path is None:
        raise UserError(f"videoalign: model_config.json uses prompt_template_type {template_type!r}; pass "
                        f"prompt_template_path=<{expect}> or prompt_template=<the template text>.")
    file = _existing_path(prompt_template_path, "videoalign", "prompt_template_path", expect)
    if file.is_dir():
        file = file / "prompt_template.py"
        if not file.is_file():
            raise UserError(f"videoalign: no prompt_template.py in {file.parent}; expected {expect}.")
    text = file.read_text(encoding="utf-8")
    if file.suffix != ".py":
        template = text
    else:
        template = None
        try:
            tree = ast.parse(text, filename=str(file))
        except SyntaxError as exc:
            raise UserError(f"videoalign: {file} is not valid Python: {exc}") from None
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id == constant):
                try:
                    template = ast.literal_eval(node.value)
                except ValueError:
                    template = None
        if not isinstance(template, str):
            raise UserError(f"videoalign: {file} defines no string constant {constant}.")
    if "{text_prompt}" not in template:
        raise UserError(f"videoalign: the template from {file} has no '{{text_prompt}}' placeholder.")
    return template


@register_reward("videoalign")
class VideoAlign(Reward):
    """VideoAlign's VideoReward (Qwen2-VL-2B + LoRA): ``VQ``, ``MQ``, ``TA`` and their sum.

    Arguments: ``path`` (VideoReward folder), ``base_path`` (Qwen2-VL-2B-Instruct folder),
    ``prompt_template_path`` / ``prompt_template``, ``checkpoint_step`` (-1 = latest),
    ``dimension`` (``Overall``/``VQ``/``MQ``/``TA``: the reported score), ``use_norm``
    (standardise with the checkpoint's statistics, as the reference's default), ``video_fps`` (rate
    of the given frames, default 16), ``fps`` / ``num_frames`` / ``max_pixels`` (override the
    config's sampling), ``batch_size`` (videos per forward), ``device``, ``dtype``. See
    :mod:`trainer.rewards.videoalign` for what matches the reference.
    """

    input_format = "uint8"

    def __init__(self, path: str, base_path: str | None = None, prompt_template_path: str | None = None,
                 prompt_template: str | None = None, checkpoint_step: int = -1, dimension: str = "Overall",
                 use_norm: bool = True, video_fps: float = 16.0, fps: float | None = None,
                 num_frames: int | None = None, max_pixels: int | None = None, batch_size: int = 2,
                 device: str = "auto", dtype: str = "auto"):
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

        self.device = resolve_device(device, "reward 'videoalign'")
        self.dtype = resolve_dtype(dtype, self.device, "reward 'videoalign'")
        self.batch_size = check_positive_int(batch_size, "videoalign 'batch_size'")
        if dimension not in ("Overall",) + DIMENSIONS:
            raise UserError(f"videoalign: dimension must be Overall, VQ, MQ or TA; got {dimension!r}.")
        self.dimension = dimension
        if isinstance(video_fps, bool) or not isinstance(video_fps, (int, float)) or video_fps <= 0:
            raise UserError(f"videoalign: video_fps must be a positive number, got {video_fps!r}.")
        self.video_fps = float(video_fps)

        expect = "the VideoReward folder (model_config.json + checkpoint-*/)"
        folder = _existing_path(path, "videoalign", "path", expect)
        if not (folder / "model_config.json").is_file():
            raise UserError(f"videoalign: no model_config.json in {folder}: expected {expect}.")
        cfg = _read_json(folder / "model_config.json", "model config")
        data_cfg, model_cfg = cfg.get("data_config") or {}, cfg.get("model_config") or {}
        peft_cfg, self.norm_stats = cfg.get("peft_lora_config") or {}, cfg.get("inference_config")
        self.use_norm = bool(use_norm)
        if self.norm_stats is not None:
            needed = [f"{d}_{s}" for d in DIMENSIONS for s in ("mean", "std")]
            if not isinstance(self.norm_stats, dict) or any(
                    not isinstance(self.norm_stats.get(k), (int, float)) for k in needed):
                raise UserError(f"videoalign: inference_config in {folder}/model_config.json must hold numbers "
                                f"{', '.join(needed)}.")

        if data_cfg.get("sample_type", "uniform") != "uniform":
            raise UserError(f"videoalign: sample_type {data_cfg.get('sample_type')!r} is not supported "
                            "(only 'uniform').")
        self.fps = float(fps) if fps is not None else float(data_cfg.get("fps") or 2.0)  # 2.0: qwen-vl-utils FPS
        self.num_frames = num_frames if num_frames is not None else data_cfg.get("num_frames")
        if fps is not None and num_frames is not None:
            raise UserError("videoalign: give fps or num_frames, not both.")
        if fps is not None:
            self.num_frames = None
        self.max_pixels = int(max_pixels if max_pixels is not None else data_cfg.get("max_frame_pixels", 240 * 320))
        self.use_special = bool(model_cfg.get("use_special_tokens", False))
        self.reward_token = "special" if self.use_special else model_cfg.get("reward_token", "last")
        if self.reward_token not in ("special", "last"):
            raise UserError(f"videoalign: reward_token {self.reward_token!r} is not supported ('special' or 'last').")
        self.output_dim = int(model_cfg.get("output_dim", 1))
        if (self.reward_token == "special" and self.output_dim not in (1, 3)) or \
                (self.reward_token == "last" and self.output_dim != 3):
            raise UserError(f"videoalign: output_dim {self.output_dim} with reward_token {self.reward_token!r} "
                            "does not give the three scores VQ, MQ, TA.")
        self.template = _read_template(prompt_template, prompt_template_path,
                                       data_cfg.get("prompt_template_type", "none"))

        # Base model and tokenizer.
        if base_path is None:
            base_path = model_cfg.get("model_name_or_path")
            if not base_path or not Path(str(base_path)).expanduser().is_dir():
                raise UserError(f"videoalign: the base model {base_path!r} named in {folder}/model_config.json is "
                                "not a local folder; pass base_path=<local Qwen2-VL-2B-Instruct folder>.")
        base = _existing_path(base_path, "videoalign", "base_path", "the local Qwen2-VL-2B-Instruct folder")
        if not (base / "config.json").is_file():
            raise UserError(f"videoalign: no config.json in {base}: expected the Qwen2-VL-2B-Instruct folder.")
        if _read_json(base / "config.json", "config").get("model_type") != "qwen2_vl":
            raise UserError(f"videoalign: {base}/config.json is not a Qwen2-VL model (model_type 'qwen2_vl').")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(base), padding_side="right")
        except (OSError, ValueError) as exc:
            raise UserError(f"videoalign: could not load the tokenizer in {base}: {exc}") from None
        if self.use_special:
            self.tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
            self.special_ids = self.tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS))
        self.chat_template = self._chat_template(base)
        proc = _read_json(base / "preprocessor_config.json", "processor config") \
            if (base / "preprocessor_config.json").is_file() else {}
        self.patch_size = int(proc.get("patch_size", 14))
        self.temporal_patch_size = int(proc.get("temporal_patch_size", 2))
        self.merge_size = int(proc.get("merge_size", 2))
        self.image_mean = tuple(proc.get("image_mean", (0.48145466, 0.4578275, 0.40821073)))
        self.image_std = tuple(proc.get("image_std", (0.26862954, 0.26130258, 0.27577711)))

        try:
            model, info = Qwen2VLForConditionalGeneration.from_pretrained(str(base), output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"videoalign: could not load Qwen2-VL from {base}: {exc}") from None
        if info.get("missing_keys"):
            raise UserError(f"videoalign: the weights in {base} lack {sorted(info['missing_keys'])[:4]}.")
        if not hasattr(model.model, "language_model") or not hasattr(model.model, "visual"):
            raise UserError("videoalign needs transformers >= 4.52 (Qwen2-VL's model.visual/model.language_model).")
        model = model.to(self.dtype)  # merge the LoRA at the precision the model will run in
        if self.use_special:
            model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        config = model.config
        text_cfg = getattr(config, "text_config", config)
        self.video_token_id = config.video_token_id
        self.video_token = self.tokenizer.convert_ids_to_tokens(self.video_token_id)
        self.rm_head = torch.nn.Linear(text_cfg.hidden_size, self.output_dim, bias=False)

        # Trained weights.
        checkpoint = _find_checkpoint(folder, int(checkpoint_step))
        self._load_checkpoint(model, checkpoint, peft_cfg)
        self.model = model.model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.rm_head = self.rm_head.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.checkpoint = checkpoint

    # -- loading helpers ------------------------------------------------------------------------

    def _chat_template(self, base: Path) -> str:
        """The chat template the reference applied: the processor's (``chat_template.json``, or
        ``chat_template.jinja`` as newer transformers save it), else the tokenizer's."""
        for name in ("chat_template.json", "chat_template.jinja"):
            file = base / name
            if file.is_file():
                text = file.read_text(encoding="utf-8")
                if name.endswith(".jinja"):
                    return text
                try:
                    return json.loads(text)["chat_template"]
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"videoalign: {file} has no 'chat_template' string.") from None
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, str) and template:
            return template
        raise UserError(f"videoalign: no chat template in {base} (chat_template.json, chat_template.jinja or "
                        "tokenizer_config.json); expected the Qwen2-VL-2B-Instruct folder.")

    def _load_checkpoint(self, model: torch.nn.Module, checkpoint: Path, peft_cfg: dict) -> None:
        """Load the non-LoRA tensors (incl. ``rm_head``) and merge the LoRA of ``checkpoint``."""
        full = checkpoint / "model.pth"
        adapter = checkpoint / "adapter_model.safetensors"
        non_lora = checkpoint / "non_lora_state_dict.pth"
        if full.is_file():
            tensors = load_weights_file(full, "videoalign", "checkpoint")
        elif adapter.is_file() and non_lora.is_file():
            tensors = load_weights_file(non_lora, "videoalign", "checkpoint")
            tensors.update(load_weights_file(adapter, "videoalign", "checkpoint"))
        else:
            raise UserError(f"videoalign: {checkpoint} has neither model.pth nor adapter_model.safetensors + "
                            "non_lora_state_dict.pth.")
        lora = {k: v for k, v in tensors.items() if ".lora_" in k}
        plain = {k: v for k, v in tensors.items() if ".lora_" not in k and ".original_module." not in k}
        params = dict(model.state_dict())
        names = set(params) | {"rm_head.weight"}
        found_head = False
        for key, value in plain.items():
            if not isinstance(value, torch.Tensor):
                raise UserError(f"videoalign: {checkpoint}: entry {key!r} is not a tensor.")
            target = _target_name(key, names)
            if target is None:
                raise UserError(f"videoalign: {checkpoint} has a tensor {key!r} that the model lacks.")
            dest = self.rm_head.weight if target == "rm_head.weight" else params[target]
            if tuple(dest.shape) != tuple(value.shape):
                raise UserError(f"videoalign: {checkpoint}: {key} has shape {tuple(value.shape)}, the model expects "
                                f"{tuple(dest.shape)} (wrong base model or tokenizer?).")
            with torch.no_grad():
                dest.copy_(value.to(dest.dtype))
            found_head |= target == "rm_head.weight"
        if not found_head:
            raise UserError(f"videoalign: {checkpoint} has no rm_head weight; it is not a VideoAlign reward "
                            "checkpoint.")
        if lora:
            r, scale = _lora_scale(checkpoint, peft_cfg)
            _merge_lora(model, lora, r, scale, checkpoint)

    # -- preprocessing --------------------------------------------------------------------------

    def video_inputs(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One uint8 video ``[T, H, W, 3]`` -> ``(pixel_values_videos, (t, h, w) grid)``."""
        total, height, width = int(video.shape[0]), int(video.shape[1]), int(video.shape[2])
        indices = sample_frame_indices(total, self.video_fps, self.fps, self.num_frames)
        frames = video[indices].permute(0, 3, 1, 2)
        h, w = smart_resize(height, width, IMAGE_FACTOR, VIDEO_MIN_PIXELS, self.max_pixels)
        frames = resize_frames(frames, h, w)
        if frames.shape[0] % self.temporal_patch_size:
            pad = self.temporal_patch_size - frames.shape[0] % self.temporal_patch_size
            frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
        x = (frames.to(torch.float64) * (1.0 / 255.0)).to(torch.float32)
        mean = torch.tensor(self.image_mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return qwen2vl_patchify((x - mean) / std, self.patch_size, self.temporal_patch_size, self.merge_size)

    def prompt_text(self, prompt: str) -> str:
        """The chat text for one video (before the video placeholder is expanded)."""
        try:
            text = prompt if self.template is None else self.template.format(text_prompt=prompt)
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError("videoalign: the prompt template has a placeholder other than {text_prompt}: "
                            f"{exc!r}") from None
        messages = [{"role": "user", "content": [{"type": "video", "video": "frames"}, {"type": "text", "text": text}]}]
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=True)

    def model_inputs(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenised batch for uint8 ``videos [B, T, H, W, 3]``: ``input_ids``, ``attention_mask``,
        ``pixel_values_videos``, ``video_grid_thw``, ``position_ids`` (on CPU)."""
        pixels, grids, texts = [], [], []
        for video, prompt in zip(videos, prompts):
            patches, grid = self.video_inputs(video.cpu())
            pixels.append(patches)
            grids.append(grid)
            text = self.prompt_text(prompt)
            if text.count(self.video_token) != 1:
                raise UserError(f"videoalign: the chat template must place exactly one {self.video_token} per video.")
            count = grid[0] * grid[1] * grid[2] // self.merge_size ** 2
            texts.append(text.replace(self.video_token, self.video_token * count))
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
        grid_thw = torch.tensor(grids, dtype=torch.long)
        return {
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "pixel_values_videos": torch.cat(pixels),
            "video_grid_thw": grid_thw,
            "position_ids": mrope_position_ids(tokens["input_ids"], tokens["attention_mask"], grid_thw,
                                               self.video_token_id, self.merge_size),
        }

    # -- scoring --------------------------------------------------------------------------------

    def raw_rewards(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, 3]`` raw (unnormalised) VQ, MQ, TA for prepared inputs."""
        ids = inputs["input_ids"]
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=inputs["attention_mask"].to(self.device),
            position_ids=inputs["position_ids"].to(self.device),
            pixel_values_videos=inputs["pixel_values_videos"].to(self.device, self.dtype),
            video_grid_thw=inputs["video_grid_thw"].to(self.device),
            use_cache=False,
        )
        hidden = out.last_hidden_state
        batch = ids.shape[0]
        if self.reward_token == "special":
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for token_id in self.special_ids:
                mask |= ids == token_id
            counts = mask.sum(dim=1)
            if not bool((counts == 3).all()):
                raise UserError(f"videoalign: each prompt must contain the three reward tokens {REWARD_TOKENS} once; "
                                f"found {counts.tolist()} (check the prompt template).")
            pooled = self.rm_head(hidden[mask.to(hidden.device)]).view(batch, 3, self.output_dim)
            return pooled.diagonal(dim1=1, dim2=2) if self.output_dim == 3 else pooled[..., 0]
        last = inputs["attention_mask"].sum(dim=1) - 1
        return self.rm_head(hidden[torch.arange(batch), last.to(hidden.device)])

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        raw = self.raw_rewards(self.model_inputs(videos, prompts)).float().cpu().to(torch.float64)
        axes = {}
        for i, name in enumerate(DIMENSIONS):
            value = raw[:, i]
            if self.use_norm and self.norm_stats:
                value = (value - self.norm_stats[f"{name}_mean"]) / self.norm_stats[f"{name}_std"]
            axes[name] = value
        overall = axes["VQ"] + axes["MQ"] + axes["TA"]
        scores = overall if self.dimension == "Overall" else axes[self.dimension]
        return RewardOutput(scores.float(), {k: v.float() for k, v in axes.items()})

    def __repr__(self) -> str:
        return f"VideoAlign(checkpoint={str(self.checkpoint)!r}, device={self.device}, dimension={self.dimension!r})"
