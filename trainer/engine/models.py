"""Wan text-to-video models: the built-in tiny model and local diffusers folders.

Everything here returns a diffusers ``WanPipeline`` whose components the engine uses directly
(``tokenizer``, ``text_encoder``, ``transformer``, ``vae``, ``scheduler``). Nothing is ever
downloaded: a real model is read from a local folder in the layout of
``Wan2.1-T2V-1.3B-Diffusers`` (``model_index.json`` plus one sub-folder per component).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import torch

from ..errors import UserError
from .data import DEFAULT_PROMPTS

log = logging.getLogger(__name__)

TINY_MODEL = "tiny"
"""The ``model`` value that selects the built-in tiny Wan model (random transformer, trained tiny VAE)."""

TOY_MODEL = "toy"
"""The ``model`` value that selects the shipped pretrained toy Wan model (``TOY_MODEL_DIR``)."""

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The ``trainer`` folder, which holds the shipped ``assets/`` and ``configs/``."""

TOY_MODEL_DIR = PACKAGE_DIR / "assets" / "toy_wan"
"""A diffusers Wan folder trained on the toy world by ``python -m trainer.toy.model``; it follows
captions such as "a small red bar on the left moves up slowly on a black background"."""


def resolve_model(model: str) -> str:
    """``model`` with the built-in name ``"toy"`` replaced by its folder (everything else unchanged)."""
    return str(TOY_MODEL_DIR) if model == TOY_MODEL else model

# Sentences the tiny tokenizer is trained on: the demo prompts and a few more.
_TINY_CORPUS = DEFAULT_PROMPTS + [
    "a person walks through a busy city street",
    "snow falls on a quiet forest of tall pine trees",
]

TINY_CONFIG = {
    "transformer": dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=32,
    ),
    "vae": dict(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ),  # the architecture of the shipped trained VAE (its config.json holds the real latent stats)
    "text_encoder": dict(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    ),
}


def _tiny_tokenizer():
    """A T5 tokenizer from a sentencepiece unigram model trained in memory (no files, no network)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TINY_CORPUS * 8), model_writer=buf, vocab_size=96,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    # transformers 5 ignores vocab_file=; the vocab list is what builds the tokenizer.
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def make_scheduler(shift: float):
    """The sampler Wan2.1 recipes use: UniPC on flow sigmas with the given time shift.

    The engine only takes the sigma grid from it (see ``trainer.algo.sde.sigma_grid``); the ODE and SDE
    steps themselves are the project's own.
    """
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=float(shift),
        num_train_timesteps=1000,
    )


def meta_wan_transformer(config: dict):
    """A ``WanTransformer3DModel`` of ``config`` on the meta device: shapes and dtypes (float32),
    no memory. A rank that receives its weights from another builds this."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        return WanTransformer3DModel.from_config(config)


def build_tiny_pipeline(seed: int = 0, shift: float = 3.0, text_encoder: bool = True, transformer_weights: bool = True):
    """Build the tiny Wan2.1 stack (about 40k transformer parameters).

    Deterministic for a given ``seed``; offline; well under a second after imports. The
    architecture is the real one (diffusers ``WanTransformer3DModel``, ``AutoencoderKLWan``,
    transformers ``UMT5EncoderModel``), only the widths and depths are small. The text encoder and
    transformer are random-initialised from ``seed``. The VAE is the trained one shipped in
    ``trainer/assets/tiny_vae`` (written by ``python -m trainer.toy.vae``; its config carries the real
    ``latents_mean``/``latents_std``), so decoded colours and brightness follow the latents and
    pixel rewards can be moved by training; if that folder is missing it falls back, with a
    warning, to a random VAE whose decoder barely reacts to its latents. ``text_encoder`` and
    ``transformer_weights`` as for ``load_pipeline``.
    """
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # built even when not wanted: the transformer's random init comes after it
        encoder = UMT5EncoderModel(
            UMT5Config(vocab_size=len(tokenizer), **TINY_CONFIG["text_encoder"])
        ).eval()
        with torch.device("cpu" if transformer_weights else "meta"):  # meta: draws no random numbers
            transformer = WanTransformer3DModel(**TINY_CONFIG["transformer"])
        vae_dir = PACKAGE_DIR / "assets" / "tiny_vae"
        if (vae_dir / "config.json").is_file():
            vae = AutoencoderKLWan.from_pretrained(str(vae_dir), local_files_only=True).eval()
        else:
            log.warning(
                "trained tiny VAE not found at %s; using a random-initialised one (decoded pixels "
                "will barely follow the latents). Recreate it with: python -m trainer.toy.vae",
                vae_dir,
            )
            vae = AutoencoderKLWan(**TINY_CONFIG["vae"]).eval()
    return WanPipeline(
        tokenizer=tokenizer if text_encoder else None, text_encoder=encoder if text_encoder else None,
        vae=vae, transformer=transformer, scheduler=make_scheduler(shift),
    )


def _load_diffusers_folder(model: str, shift: float, dtype: torch.dtype, text_encoder: bool = True,
                           transformer_weights: bool = True):
    """A local diffusers Wan2.1 T2V folder; ``UserError`` naming what is missing."""
    path = Path(os.path.expanduser(model))
    if not path.is_dir():
        raise UserError(
            f"model folder not found: {path}\n"
            "Point the workflow's 'model' input (or --model, or the FLASH_GRPO_MODEL environment "
            "variable) at a local diffusers Wan2.1 text-to-video folder, e.g. a download of "
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers, or use model 'tiny' for the built-in test model."
        )
    missing = [
        name for name in ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer")
        if not (path / name).exists()
    ]
    if missing:
        raise UserError(
            f"{path} is not a diffusers Wan folder: missing {', '.join(missing)}. Expected the "
            "layout of Wan2.1-T2V-1.3B-Diffusers (model_index.json, transformer/, vae/, "
            "text_encoder/, tokenizer/)."
        )
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path / 'model_index.json'} is not a readable JSON file ({e}). Download the model "
                        "folder again, or restore that file from the model's repository.") from None
    if not isinstance(index, dict):
        raise UserError(f"{path / 'model_index.json'} must hold a JSON object (diffusers' model index), "
                        f"not a JSON {type(index).__name__}. Download the model folder again.")
    if index.get("_class_name") not in ("WanPipeline", None):
        raise UserError(
            f"{path} holds a {index.get('_class_name')}, not a Wan text-to-video pipeline "
            "(WanPipeline). Image-to-video and other Wan variants are not supported."
        )
    from diffusers import WanPipeline, WanTransformer3DModel

    skip = {} if text_encoder else {"text_encoder": None, "tokenizer": None}
    if not transformer_weights:
        skip["transformer"] = meta_wan_transformer(WanTransformer3DModel.load_config(
            str(path / "transformer"), local_files_only=True))
    pipe = WanPipeline.from_pretrained(str(path), torch_dtype=dtype, **skip)
    pipe.scheduler = make_scheduler(shift)
    # The VAE decodes in float32: cheap next to the transformer and exact colours for rewards.
    pipe.vae.to(torch.float32)
    return pipe


def weights_hash(module: torch.nn.Module) -> str:
    """A short sha256 over a module's parameter names, shapes and values (the base-model id).

    Stored in the LoRA metadata so a LoRA can be matched to the exact weights it was trained on.
    LoRA parameters are skipped and peft's ``base_layer`` wrapping is ignored. Computed once per
    module object (the base weights are frozen; a warm pipeline reuses the value).
    """
    cached = module.__dict__.get("_flash_grpo_weights_hash")
    if cached is not None:
        return cached
    h = hashlib.sha256()
    # peft wraps a layer that has (or had) a LoRA: ``to_q.weight`` becomes ``to_q.base_layer.weight``.
    # Hash the plain names, so a warm model reused after a LoRA run hashes as it did before.
    items = {n.replace(".base_layer.", "."): p for n, p in module.state_dict().items() if "lora_" not in n}
    for name, p in sorted(items.items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    module.__dict__["_flash_grpo_weights_hash"] = h.hexdigest()[:16]
    return module.__dict__["_flash_grpo_weights_hash"]


# --------------------------------------------------------------------------------------------
# ComfyUI model files (diffusion_models/, vae/, text_encoders/)
# --------------------------------------------------------------------------------------------

CONFIGS_DIR = PACKAGE_DIR / "configs"
"""Shipped diffusers configs (``<name>/transformer/config.json``, ``<name>/vae/config.json``)."""

COMFY_MODEL_SUFFIX = ".flashgrpo.json"
"""A ``model`` value ending in this names a manifest of ComfyUI model files (``comfy_manifest``)."""

_COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def _safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple]:
    """Key -> shape of a safetensors file, read from its header only (no weights loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise UserError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}).") from exc


def wan_transformer_config(shapes: dict[str, tuple]) -> dict:
    """The diffusers ``WanTransformer3DModel`` config of a ComfyUI/original-format Wan2.1 file.

    ``shapes``: key -> shape (keys with or without a ``model.diffusion_model.`` prefix). Widths
    come from the weights; attention heads are ``dim / 128`` as in every Wan2.1 model (ComfyUI's
    own rule). ``UserError`` when the file is not a Wan2.1 text-to-video transformer.
    """
    s = {}
    for k, v in shapes.items():
        for p in _COMFY_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        s[k] = v
    if "head.modulation" not in s or "patch_embedding.weight" not in s:
        raise UserError(
            "this file is not a Wan2.1 diffusion model in ComfyUI/original format (no "
            "'head.modulation' / 'patch_embedding.weight' keys). Pick e.g. "
            "wan2.1_t2v_1.3B_fp16.safetensors from models/diffusion_models."
        )
    if "img_emb.proj.0.weight" in s or "vace_patch_embedding.weight" in s:
        raise UserError("this is a Wan image-to-video / VACE model; only Wan2.1 text-to-video is supported.")
    dim = s["head.modulation"][-1]
    blocks = {int(k.split(".")[1]) for k in s if k.startswith("blocks.")}
    return {
        "_class_name": "WanTransformer3DModel",
        "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-06,
        "ffn_dim": s["blocks.0.ffn.0.weight"][0], "freq_dim": s["time_embedding.0.weight"][1],
        "image_dim": None, "in_channels": s["patch_embedding.weight"][1],
        "num_attention_heads": max(dim // 128, 1), "num_layers": len(blocks),
        "out_channels": s["head.head.weight"][0] // 4, "patch_size": list(s["patch_embedding.weight"][2:]),
        "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
        "text_dim": s["text_embedding.0.weight"][1],
    }


def shipped_wan_config(transformer_config: dict) -> str | None:
    """Name of the shipped config folder (``trainer/configs/<name>``) equal to this config, if any."""
    keys = ("ffn_dim", "in_channels", "num_attention_heads", "num_layers", "out_channels", "text_dim")
    for d in sorted(CONFIGS_DIR.glob("*/transformer/config.json")):
        shipped = json.loads(d.read_text())
        if all(shipped.get(k) == transformer_config.get(k) for k in keys):
            return d.parent.parent.name
    return None


def write_comfy_manifest(path: str | os.PathLike, transformer: str, vae: str,
                         text_encoder: str | None, config: str = "auto") -> Path:
    """Write the manifest naming ComfyUI model files; its path is a ``model`` value for
    ``load_pipeline`` (it must end in ``COMFY_MODEL_SUFFIX``)."""
    path = Path(path)
    if not path.name.endswith(COMFY_MODEL_SUFFIX):
        raise ValueError(f"a ComfyUI model manifest must end in {COMFY_MODEL_SUFFIX}: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": "flash-grpo-comfy-files", "transformer": str(transformer), "vae": str(vae),
            "text_encoder": str(text_encoder) if text_encoder else None, "config": config}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def load_comfy_text_encoder(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``(tokenizer, UMT5EncoderModel)`` from a ComfyUI umt5 text-encoder file.

    ComfyUI's files (``text_encoders/umt5_xxl_fp16.safetensors`` and the fp8 ones) hold the
    transformers T5 key layout plus ``spiece_model``, the sentencepiece model as bytes: the
    tokenizer is built from it. fp8 "scaled" weights (``scale_weight`` or ``weight_scale`` per
    layer) are de-quantised to ``dtype`` tensor by tensor as they are read (no float32 copy of the
    whole encoder). The config comes from the weights' shapes.
    """
    import sentencepiece as spm
    from safetensors import safe_open
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    sd = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:  # one tensor at a time, cast as read
        keys = set(f.keys())
        for k in sorted(keys):
            if k.endswith((".scale_input", ".input_scale", ".comfy_quant", ".scale_weight", ".weight_scale")) \
                    or k == "scaled_fp8":
                continue
            t = f.get_tensor(k)
            layer = k.removesuffix(".weight")
            scale_key = next((f"{layer}.{s}" for s in ("scale_weight", "weight_scale") if f"{layer}.{s}" in keys), None)
            if k.endswith(".weight") and scale_key is not None:
                scale = f.get_tensor(scale_key)
                if scale.numel() != 1:
                    raise UserError(f"{path}: block-scaled quantisation ({scale_key}) is not supported; use umt5_xxl_fp16.")
                t = t.to(torch.float32) * scale.to(torch.float32)
            sd[k] = t.to(dtype) if t.is_floating_point() and k != "spiece_model" else t
    spiece = sd.pop("spiece_model", None)
    if spiece is None:
        raise UserError(
            f"{path} holds no 'spiece_model' (the tokenizer ComfyUI stores in umt5 files); pick a "
            "umt5_xxl text encoder from ComfyUI's text_encoders folder, or leave the text encoder "
            "empty to use a diffusers Wan folder instead."
        )
    if "shared.weight" not in sd or "encoder.block.0.layer.0.SelfAttention.q.weight" not in sd:
        raise UserError(f"{path} is not a T5/umt5 text encoder (no 'shared.weight' / 'encoder.block.0...').")
    vocab_size, d_model = sd["shared.weight"].shape
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1]
    config = UMT5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=inner // heads, num_heads=heads,
        d_ff=sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
        num_layers=len({k.split(".")[2] for k in sd if k.startswith("encoder.block.")}),
        relative_attention_num_buckets=sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[0],
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    sd.setdefault("encoder.embed_tokens.weight", sd["shared.weight"])
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise UserError(f"{path}: text encoder weights do not fit umt5 (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    sp = spm.SentencePieceProcessor(model_proto=bytes(spiece.to(torch.uint8).tolist()))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    return tokenizer, model.eval()


_FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def load_wan_transformer_file(path: str | os.PathLike, config_dir: str | os.PathLike,
                              dtype: torch.dtype = torch.float32):
    """A ``WanTransformer3DModel`` from a ComfyUI/original-format file, equal to what
    ``from_pretrained(..., torch_dtype=dtype)`` gives for the same weights in a diffusers folder.

    * Keys with a ``model.diffusion_model.`` or ``diffusion_model.`` prefix are accepted.
    * The modules diffusers keeps in float32 (``_keep_in_fp32_modules``: norms, rope,
      ``time_embedder``, ``scale_shift_table``) stay float32, everything else becomes ``dtype``
      (diffusers' own ``from_single_file`` casts them to ``dtype`` as well).
    * fp8 "scaled" files: a weight with a per-tensor ``scale_weight`` is de-quantised
      (``weight.float() * scale``); block or row scales are refused with a ``UserError``.
    * Tensors are read one at a time from the file; the model is built on the meta device, so no
      float32 copy of the whole model is ever made.

    ``config_dir`` holds ``transformer/config.json``.
    """
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from safetensors import safe_open

    config = WanTransformer3DModel.load_config(str(config_dir), subfolder="transformer", local_files_only=True)
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    keep = model._keep_in_fp32_modules or []
    sd = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = set(f.keys())
        for key in sorted(keys):
            name = next((key[len(p):] for p in _COMFY_PREFIXES if key.startswith(p)), key)
            if name == "scaled_fp8" or name.endswith((".scale_weight", ".scale_input", ".input_scale")):
                continue
            t = f.get_tensor(key)
            scale_key = key.removesuffix(".weight") + ".scale_weight"
            if key.endswith(".weight") and scale_key in keys:
                scale = f.get_tensor(scale_key)
                if scale.numel() != 1:
                    raise UserError(
                        f"{path}: {scale_key} holds {scale.numel()} scales (block- or row-scaled fp8); only "
                        "per-tensor scaled fp8 files are supported. Use the fp16/bf16 file instead.")
                t = t.to(torch.float32) * scale.to(torch.float32)
            elif t.dtype in _FP8_DTYPES and not key.endswith(".weight"):
                raise UserError(f"{path}: {key} is fp8 without a scale; use the fp16/bf16 file instead.")
            sd[name] = t
    sd = convert_wan_transformer_to_diffusers(sd)
    for name, t in sd.items():
        if t.is_floating_point():
            sd[name] = t.to(torch.float32 if any(m in name.split(".") for m in keep) else dtype)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise UserError(f"{path} does not fit a Wan2.1 transformer with the config in {config_dir}: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}.")
    # non-persistent buffers (the rotary tables) are not in the file: rebuild them off the meta device
    rope = model.rope
    model.rope = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    return model.eval()


def _load_component_folder(cls, folder: Path, dtype):
    return cls.from_pretrained(str(folder), torch_dtype=dtype)


def load_comfy_files(transformer_path: str | os.PathLike, vae_path: str | os.PathLike,
                     text_encoder_path: str | os.PathLike | None, config_dir: str | os.PathLike | None = None,
                     shift: float = 3.0, dtype: torch.dtype = torch.float32, text_encoder: bool = True,
                     transformer_weights: bool = True):
    """A ``WanPipeline`` from ComfyUI model files.

    * ``transformer_path``: a ComfyUI/original-format Wan2.1 T2V file (``diffusion_models/``),
      loaded with diffusers' single-file converter. ``config_dir``: a folder with
      ``transformer/config.json`` (and ``vae/config.json``); None = the shipped Wan2.1 1.3B/14B
      config matching the file's shapes, else a config inferred from them.
    * ``vae_path``: ComfyUI's ``wan_2.1_vae.safetensors`` (original Wan VAE keys), or a diffusers
      ``AutoencoderKLWan`` folder.
    * ``text_encoder_path``: a ComfyUI umt5 file (``load_comfy_text_encoder``), or a diffusers
      pipeline folder holding ``text_encoder/`` and ``tokenizer/``.
    * ``text_encoder`` and ``transformer_weights`` as for ``load_pipeline``.
    """
    import tempfile

    from diffusers import AutoencoderKLWan, WanPipeline

    transformer_path, vae_path = Path(transformer_path), Path(vae_path)
    for what, p in (("diffusion model", transformer_path), ("VAE", vae_path), ("text encoder", text_encoder_path)):
        if p is not None and not Path(p).exists():
            raise UserError(f"{what} file not found: {p}")
    if text_encoder_path is None:
        raise UserError("a text encoder is needed to encode the training prompts (umt5_xxl in text_encoders/).")
    with tempfile.TemporaryDirectory(prefix="flash_grpo_cfg_") as tmp:
        if config_dir is None:
            inferred = wan_transformer_config(_safetensors_shapes(transformer_path))
            name = shipped_wan_config(inferred)
            if name is not None:
                config_dir = CONFIGS_DIR / name
            else:
                config_dir = Path(tmp)
                (config_dir / "transformer").mkdir()
                (config_dir / "transformer" / "config.json").write_text(json.dumps(inferred))
        config_dir = Path(config_dir)
        try:
            if transformer_weights:
                transformer = load_wan_transformer_file(transformer_path, config_dir, dtype)
            else:
                from diffusers import WanTransformer3DModel

                transformer = meta_wan_transformer(WanTransformer3DModel.load_config(
                    str(config_dir), subfolder="transformer", local_files_only=True))
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                f"{transformer_path} does not load as a Wan2.1 T2V transformer with the config in "
                f"{config_dir} ({type(exc).__name__}: {exc})."
            ) from exc
        if vae_path.is_dir():
            vae = AutoencoderKLWan.from_pretrained(str(vae_path), torch_dtype=torch.float32)
        else:
            vae_config = config_dir / "vae" if (config_dir / "vae" / "config.json").exists() else CONFIGS_DIR / "wan2.1_t2v_1.3b" / "vae"
            vae = AutoencoderKLWan.from_single_file(
                str(vae_path), config=str(vae_config.parent), subfolder="vae", torch_dtype=torch.float32,
                local_files_only=True,
            )
    te_path = Path(text_encoder_path)
    if not text_encoder:
        return WanPipeline(tokenizer=None, text_encoder=None, vae=vae.eval(), transformer=transformer,
                           scheduler=make_scheduler(shift))
    if te_path.is_dir():
        from transformers import AutoTokenizer, UMT5EncoderModel

        encoder = UMT5EncoderModel.from_pretrained(str(te_path / "text_encoder"), torch_dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(te_path / "tokenizer"))
    else:
        tokenizer, encoder = load_comfy_text_encoder(te_path, dtype=dtype)
    if encoder.config.d_model != transformer.config.text_dim:
        raise UserError(
            f"the text encoder's width {encoder.config.d_model} differs from the diffusion "
            f"model's text_dim {transformer.config.text_dim}: pick the umt5_xxl encoder for Wan2.1."
        )
    return WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae.eval(),
                       transformer=transformer, scheduler=make_scheduler(shift))


def _rms_norm_by_sum_of_squares(norm, x: torch.Tensor) -> torch.Tensor:
    """``WanRMS_norm.forward`` with ``F.normalize`` written as ``x * rsqrt(max(sum x^2, eps^2))``
    (in float32, as diffusers does for half dtypes): the same values to float rounding."""
    xf = x.float()
    sq = xf.square().sum(dim=1 if norm.channel_first else -1, keepdim=True)
    return (xf * sq.clamp_min(1e-24).rsqrt()).to(x.dtype) * norm.scale * norm.gamma + norm.bias


def use_cpu_vae_norms(vae: torch.nn.Module, enabled: bool) -> int:
    """Give every ``WanRMS_norm`` of Wan's VAE the sum-of-squares form (``enabled``) or its own
    forward back; returns how many norms there are.

    On CPU, torch's ``F.normalize`` over the channel dim of a ``[B, C, T, H, W]`` tensor is a
    strided reduction about 7x slower than the sum of squares: 44 % of the toy VAE's decode time,
    the largest cost of a demo iteration (``python -m bench.decode`` times both). On CUDA the
    stock form is kept."""
    try:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
    except ImportError:  # another diffusers layout: leave the VAE as it is
        return 0
    norms = [m for m in vae.modules() if isinstance(m, WanRMS_norm)]
    for norm in norms:
        if enabled:
            norm.forward = _rms_norm_by_sum_of_squares.__get__(norm)
        else:
            norm.__dict__.pop("forward", None)
    return len(norms)


def load_pipeline(model: str, shift: float = 3.0, dtype: torch.dtype = torch.float32, seed: int = 0,
                  text_encoder: bool = True, transformer_weights: bool = True):
    """Load any ``model`` value: ``"tiny"`` (the built-in model), ``"toy"`` (the shipped
    pretrained toy model, a diffusers folder loaded like any other), a local diffusers Wan2.1 T2V
    folder, or a manifest of ComfyUI model files (a path ending in ``COMFY_MODEL_SUFFIX``, written
    by ``write_comfy_manifest``). Raises ``UserError`` naming what is missing and how to fix it.

    ``text_encoder=False``: no text encoder and tokenizer (None in the pipeline).
    ``transformer_weights=False``: the transformer is built from its config on the meta device and
    its weights file is never read (``meta_wan_transformer``)."""
    parts = {"text_encoder": text_encoder, "transformer_weights": transformer_weights}
    if model == TINY_MODEL:
        return build_tiny_pipeline(seed=seed, shift=shift, **parts)
    model = resolve_model(model)
    if str(model).endswith(COMFY_MODEL_SUFFIX):
        path = Path(os.path.expanduser(model))
        if not path.is_file():
            raise UserError(f"ComfyUI model manifest not found: {path}")
        m = json.loads(path.read_text())
        config = m.get("config") or "auto"
        config_dir = None if config == "auto" else CONFIGS_DIR / config
        return load_comfy_files(m["transformer"], m["vae"], m.get("text_encoder"), config_dir,
                                shift=shift, dtype=dtype, **parts)
    return _load_diffusers_folder(model, shift=shift, dtype=dtype, **parts)
