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

from .errors import UserError

log = logging.getLogger(__name__)

TINY_MODEL = "tiny"
"""The ``model`` value that selects the built-in tiny random-initialised Wan model."""

# Sentences the tiny tokenizer is trained on: enough pieces to tell prompts apart.
_TINY_CORPUS = [
    "a red ball rolls to the left on a white background",
    "a blue square moves up slowly over a dark floor",
    "a green triangle spins fast in the bright sky",
    "a yellow cat runs across the grass at sunset",
    "a black dog jumps over a small fence in the rain",
    "an orange car drives down a long empty road at night",
    "a purple flower opens in the morning light",
    "waves crash on a sandy beach under a grey cloudy sky",
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
    ),
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

    The engine only takes the sigma grid from it (see ``trainer.sde.sigma_grid``); the ODE and SDE
    steps themselves are the project's own.
    """
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=float(shift),
        num_train_timesteps=1000,
    )


def build_tiny_pipeline(seed: int = 0, shift: float = 3.0):
    """Build the tiny random-initialised Wan2.1 stack (about 40k transformer parameters).

    Deterministic for a given ``seed``; offline; well under a second after imports. The
    architecture is the real one (diffusers ``WanTransformer3DModel``, ``AutoencoderKLWan``,
    transformers ``UMT5EncoderModel``), only the widths and depths are small.
    """
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(vocab_size=len(tokenizer), **TINY_CONFIG["text_encoder"])
        ).eval()
        transformer = WanTransformer3DModel(**TINY_CONFIG["transformer"])
        vae = AutoencoderKLWan(**TINY_CONFIG["vae"]).eval()
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=make_scheduler(shift),
    )


def load_pipeline(model: str, shift: float = 3.0, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Load ``model``: ``"tiny"`` or a local diffusers Wan2.1 T2V folder.

    Raises ``UserError`` naming the missing folder or component and how to point at the weights.
    """
    if model == TINY_MODEL:
        return build_tiny_pipeline(seed=seed, shift=shift)
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
    index = json.loads((path / "model_index.json").read_text())
    if index.get("_class_name") not in ("WanPipeline", None):
        raise UserError(
            f"{path} holds a {index.get('_class_name')}, not a Wan text-to-video pipeline "
            "(WanPipeline). Image-to-video and other Wan variants are not supported."
        )
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(path), torch_dtype=dtype)
    pipe.scheduler = make_scheduler(shift)
    # The VAE decodes in float32: cheap next to the transformer and exact colours for rewards.
    pipe.vae.to(torch.float32)
    return pipe


def weights_hash(module: torch.nn.Module) -> str:
    """A short sha256 over a module's parameter names, shapes and values (the base-model id).

    Stored in the LoRA metadata so a LoRA can be matched to the exact weights it was trained on.
    """
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
