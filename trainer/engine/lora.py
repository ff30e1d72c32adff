"""LoRA on the Wan transformer: adding it, reading/writing its weights, ComfyUI-format files.

Training side (peft, through diffusers' ``transformer.add_adapter``):

* ``add_lora`` puts a peft LoRA adapter named ``"default"`` on the attention projections of every
  ``WanTransformerBlock`` (``attn1``/``attn2`` ``to_q``, ``to_k``, ``to_v``, ``to_out.0``) and
  optionally on the block FFN (``ffn.net.0.proj``, ``ffn.net.2``); nothing else (patch embedding,
  condition embedder, ``proj_out``) gets LoRA. ``lora_B`` starts at zero, so the model output is
  bit-identical to the base model until the first update. Base weights are frozen.
* ``lora_parameters`` / ``lora_state_dict`` / ``load_lora_state_dict`` give the trainable tensors
  and an exact save/restore of them in peft naming (``blocks.0.attn1.to_q.lora_A.weight``).
* ``lora_disabled`` runs the same model with LoRA switched off: the frozen reference for a KL term.

File side (what ComfyUI's own LoRA loader applies to its Wan models: ``comfy.lora.model_lora_keys_unet``
and ``comfy.lora.load_lora`` in ComfyUI; ``tests/pack/test_comfyui_integration.py`` checks it against a real ComfyUI):

* keys ``diffusion_model.<module>.lora_A.weight`` ([rank, in]), ``.lora_B.weight`` ([out, rank]) and
  ``.alpha`` (0-dim float32; the applied delta is ``alpha / rank * B @ A``), with ComfyUI/original Wan
  module names: ``attn1 -> self_attn``, ``attn2 -> cross_attn``, ``to_q/to_k/to_v -> q/k/v``,
  ``to_out.0 -> o``, ``ffn.net.0.proj -> ffn.0``, ``ffn.net.2 -> ffn.2``. diffusers'
  ``WanPipeline.load_lora_weights`` reads the same files (it folds alpha/rank into the weights).
* ``save_aligned_lora`` writes such a file atomically with string metadata (``format``,
  ``lora_rank``, ``lora_alpha`` and the caller's entries, non-strings JSON-encoded and listed in
  ``json_keys`` so that ``read_aligned_lora`` decodes exactly those).
* ``read_aligned_lora`` validates a file, ``check_lora_matches`` refuses a LoRA made for another
  Wan model (naming the first module whose shape does not fit), ``apply_aligned_lora`` loads a file
  into a transformer (adding the adapter when it has none) for resume and evaluation.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from ..errors import UserError

ADAPTER_NAME = "default"
"""The peft adapter name used for the one LoRA this project trains."""

LORA_FORMAT = "comfyui-wan-lora"
"""Value of the ``format`` metadata entry of files written by ``save_aligned_lora``."""

LORA_TARGETS = {
    "attn": [
        "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
        "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    ],
    "ffn": ["ffn.net.0.proj", "ffn.net.2"],
}
"""Module-name suffixes (inside ``blocks.N.``) of the ``nn.Linear`` layers that get LoRA.

Names as in diffusers' ``WanTransformerBlock``: ``attn1`` is self-attention, ``attn2``
cross-attention (``to_out`` is a ModuleList whose item 0 is the Linear), ``ffn`` is a diffusers
``FeedForward`` whose ``net.0`` is a GELU wrapper holding the first Linear as ``.proj``.
"""

# diffusers name part -> ComfyUI / original Wan name part (the inverse of diffusers' own
# ``convert_wan_transformer_to_diffusers`` renames; see tests/pack/test_pack.py).
_ATTN_TO_COMFY = {"attn1": "self_attn", "attn2": "cross_attn"}
_PROJ_TO_COMFY = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
_FFN_TO_COMFY = {"ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}

_PEFT_ATTN_RE = re.compile(r"^blocks\.(\d+)\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$")
_PEFT_FFN_RE = re.compile(r"^blocks\.(\d+)\.(ffn\.net\.0\.proj|ffn\.net\.2)$")
_COMFY_ATTN_RE = re.compile(r"^blocks\.(\d+)\.(self_attn|cross_attn)\.(q|k|v|o)$")
_COMFY_FFN_RE = re.compile(r"^blocks\.(\d+)\.(ffn\.0|ffn\.2)$")
_COMFY_KEY_RE = re.compile(
    r"^diffusion_model\.(blocks\.\d+\.(?:(?:self_attn|cross_attn)\.[qkvo]|ffn\.[02]))"
    r"\.(lora_A\.weight|lora_B\.weight|alpha)$"
)
_PEFT_KEY_RE = re.compile(r"^(.+)\.(lora_A|lora_B)\.weight$")

_RESERVED_METADATA = ("format", "lora_rank", "lora_alpha", "json_keys")


# --------------------------------------------------------------------------------------------
# Module names
# --------------------------------------------------------------------------------------------


def target_regex(include_ffn: bool = False) -> str:
    """The peft ``target_modules`` regex (peft full-matches it against each module name).

    Matches ``blocks.<N>.<suffix>`` for every suffix of ``LORA_TARGETS["attn"]`` (and ``"ffn"``
    when ``include_ffn``) and nothing else.
    """
    suffixes = list(LORA_TARGETS["attn"]) + (list(LORA_TARGETS["ffn"]) if include_ffn else [])
    return r"blocks\.\d+\.(" + "|".join(re.escape(s) for s in suffixes) + r")"


def to_comfy_module(name: str) -> str:
    """diffusers module name -> ComfyUI Wan module name (both without any prefix).

    ``blocks.3.attn1.to_out.0`` -> ``blocks.3.self_attn.o``; ``blocks.0.ffn.net.2`` ->
    ``blocks.0.ffn.2``. Raises ``ValueError`` for a module outside ``LORA_TARGETS``.
    """
    m = _PEFT_ATTN_RE.match(name)
    if m:
        return f"blocks.{m.group(1)}.{_ATTN_TO_COMFY[m.group(2)]}.{_PROJ_TO_COMFY[m.group(3)]}"
    m = _PEFT_FFN_RE.match(name)
    if m:
        return f"blocks.{m.group(1)}.{_FFN_TO_COMFY[m.group(2)]}"
    raise ValueError(f"{name!r} is not a Wan block module that this project puts LoRA on")


def from_comfy_module(name: str) -> str:
    """ComfyUI Wan module name -> diffusers module name; the inverse of ``to_comfy_module``."""
    m = _COMFY_ATTN_RE.match(name)
    if m:
        attn = {v: k for k, v in _ATTN_TO_COMFY.items()}[m.group(2)]
        proj = {v: k for k, v in _PROJ_TO_COMFY.items()}[m.group(3)]
        return f"blocks.{m.group(1)}.{attn}.{proj}"
    m = _COMFY_FFN_RE.match(name)
    if m:
        return f"blocks.{m.group(1)}.{ {v: k for k, v in _FFN_TO_COMFY.items()}[m.group(2)] }"
    raise ValueError(f"{name!r} is not a ComfyUI Wan block module that this project handles")


# --------------------------------------------------------------------------------------------
# peft adapter on the live transformer
# --------------------------------------------------------------------------------------------


def _is_lora_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def has_lora(transformer: torch.nn.Module) -> bool:
    """Whether ``transformer`` carries the project's peft adapter (``"default"``)."""
    return ADAPTER_NAME in (getattr(transformer, "peft_config", None) or {})


LORA_INITS = {"gaussian": "gaussian", "kaiming": True}
"""``lora_init`` config value -> peft's ``init_lora_weights``."""


def add_lora(
    transformer: torch.nn.Module,
    rank: int = 16,
    alpha: float = 32,
    include_ffn: bool = False,
    init_seed: int | None = None,
    init: str = "gaussian",
) -> None:
    """Add the trainable LoRA adapter ``"default"`` to a diffusers ``WanTransformer3DModel``.

    Targets exactly the block Linears in ``LORA_TARGETS`` (attention always, FFN when
    ``include_ffn``); scale ``alpha / rank``; no dropout. ``lora_B`` starts at zero, so the output
    is unchanged until training moves it; ``lora_A`` starts as peft's ``init``: ``"gaussian"``
    (``N(0, (1/r)^2)``, what the Flow-GRPO and Flash-GRPO reference codes use) or ``"kaiming"``
    (peft's default, Kaiming-uniform: about 4x smaller on Wan 1.3B, fan_in 1536 and r 16, so the
    same learning rate moves ``lora_B`` about 4x slower).
    ``init_seed`` makes ``lora_A`` reproducible without touching the global RNG (the CPU generator
    is forked). All base weights are frozen; only the LoRA parameters require grad afterwards.
    """
    from peft import LoraConfig

    if has_lora(transformer):
        raise ValueError("the transformer already has a LoRA adapter named 'default'")
    if int(rank) < 1:
        raise UserError(f"LoRA rank must be a positive integer, got {rank}. Use e.g. rank 16.")
    if init not in LORA_INITS:
        raise UserError(f"LoRA init {init!r}: choose one of {', '.join(LORA_INITS)}.")
    if float(alpha) <= 0:
        raise UserError(f"LoRA alpha must be positive, got {alpha}. Use e.g. alpha = 2 * rank.")
    config = LoraConfig(
        r=int(rank), lora_alpha=float(alpha), lora_dropout=0.0, bias="none",
        init_lora_weights=LORA_INITS[init], target_modules=target_regex(include_ffn),
    )
    with torch.random.fork_rng(devices=[]):
        if init_seed is not None:
            torch.default_generator.manual_seed(int(init_seed))
        transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    for name, p in transformer.named_parameters():
        p.requires_grad_(_is_lora_param(name))
    expected = sum(
        1 for name, _ in transformer.named_modules() if re.fullmatch(target_regex(include_ffn), name)
    )
    got = len(lora_parameters(transformer)) // 2
    if expected == 0 or got != expected:
        raise RuntimeError(f"LoRA landed on {got} modules, expected {expected}")


def remove_lora(transformer: torch.nn.Module) -> None:
    """Remove the ``"default"`` adapter (a warm model reused for a new run starts afresh)."""
    if has_lora(transformer):
        transformer.delete_adapters(ADAPTER_NAME)


def lora_parameters(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The LoRA parameters as ``(name, param)`` sorted by name (peft names, e.g.
    ``blocks.0.attn1.to_q.lora_A.default.weight``): what the optimizer trains."""
    return sorted(
        ((n, p) for n, p in transformer.named_parameters() if _is_lora_param(n)),
        key=lambda item: item[0],
    )


def _peft_key(param_name: str) -> str:
    """``blocks.0.attn1.to_q.lora_A.default.weight`` -> ``blocks.0.attn1.to_q.lora_A.weight``."""
    return param_name.replace(f".{ADAPTER_NAME}.", ".")


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights as CPU clones keyed ``<module>.lora_A.weight`` / ``.lora_B.weight``
    (the diffusers/peft naming without the adapter name), in their training dtype."""
    out = {}
    for n, p in lora_parameters(transformer):
        t = p.detach()
        if hasattr(t, "full_tensor"):  # FSDP-sharded (DTensor): gather, a collective on every rank
            t = t.full_tensor()
        out[_peft_key(n)] = t.to("cpu").clone()
    return out


def load_lora_state_dict(transformer: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Copy ``sd`` (as returned by ``lora_state_dict``) into the transformer's LoRA parameters.

    The key sets must match exactly and every shape must be equal; otherwise ``UserError`` lists
    the first missing/unexpected keys or the first wrong shape and nothing is changed. Values are
    cast to each parameter's dtype and device.
    """
    params = {_peft_key(n): p for n, p in lora_parameters(transformer)}
    if not params:
        raise UserError("the model has no LoRA adapter to load weights into (call add_lora first)")
    missing = sorted(set(params) - set(sd))
    unexpected = sorted(set(sd) - set(params))
    if missing or unexpected:
        raise UserError(
            "the LoRA weights do not match the model's LoRA layers: "
            f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}. "
            "The LoRA was trained with other LoRA settings (rank, FFN on/off) or for another model."
        )
    for key, p in params.items():
        if tuple(sd[key].shape) != tuple(p.shape):
            raise UserError(
                f"LoRA weight {key} has shape {tuple(sd[key].shape)} but the model expects "
                f"{tuple(p.shape)}: the LoRA rank or the model differs from the one it was made for."
            )
    with torch.no_grad():
        for key, p in params.items():
            value = sd[key].to(device=p.device, dtype=p.dtype)
            if hasattr(p, "device_mesh"):  # FSDP-sharded (DTensor): keep this rank's shard
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value, p.device_mesh, p.placements)
            p.copy_(value)


@contextlib.contextmanager
def lora_disabled(transformer: torch.nn.Module):
    """Run the transformer with its LoRA switched off inside the ``with`` block.

    The base model then equals the frozen reference (for a KL term against the initial policy).
    Every LoRA layer's previous on/off state and every LoRA parameter's ``requires_grad`` flag are
    restored on exit, also when the block raises (peft's toggle otherwise rewrites the flags).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]
    was_disabled = [bool(m.disable_adapters) for m in layers]
    grad_flags = [(p, p.requires_grad) for _, p in lora_parameters(transformer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield transformer
    finally:
        for m, disabled in zip(layers, was_disabled):
            m.enable_adapters(not disabled)
        for p, flag in grad_flags:
            p.requires_grad_(flag)


# --------------------------------------------------------------------------------------------
# ComfyUI key format
# --------------------------------------------------------------------------------------------


def to_comfy_keys(
    peft_sd: dict[str, torch.Tensor], alpha: float, rank: int
) -> dict[str, torch.Tensor]:
    """peft/diffusers LoRA state dict -> ComfyUI Wan LoRA state dict.

    ``blocks.N.attn1.to_q.lora_A.weight`` -> ``diffusion_model.blocks.N.self_attn.q.lora_A.weight``
    (same for ``lora_B``), plus one ``diffusion_model.<module>.alpha`` 0-dim float32 tensor per
    module holding ``alpha``. Tensors are passed through unchanged (no copy, no cast). Raises
    ``ValueError`` for keys outside ``LORA_TARGETS``, a module lacking A or B, or a ``lora_A``
    whose first dimension is not ``rank``.
    """
    out: dict[str, torch.Tensor] = {}
    modules: dict[str, set[str]] = {}
    for key, tensor in peft_sd.items():
        m = _PEFT_KEY_RE.match(key)
        if not m:
            raise ValueError(f"not a LoRA weight key: {key!r}")
        module, which = m.group(1), m.group(2)
        if which == "lora_A" and tensor.shape[0] != int(rank):
            raise ValueError(f"{key} has rank {tensor.shape[0]}, expected {rank}")
        comfy = to_comfy_module(module)
        out[f"diffusion_model.{comfy}.{which}.weight"] = tensor
        modules.setdefault(comfy, set()).add(which)
    for comfy, parts in sorted(modules.items()):
        if parts != {"lora_A", "lora_B"}:
            raise ValueError(f"module {comfy} has only {sorted(parts)}")
        out[f"diffusion_model.{comfy}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


def from_comfy_keys(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float, int]:
    """ComfyUI Wan LoRA state dict -> ``(peft-style state dict, alpha, rank)``.

    Inverse of ``to_comfy_keys``. Every module needs ``lora_A`` and ``lora_B``; ``alpha`` is the
    common value of the ``.alpha`` tensors (a file without them means scale 1, i.e. alpha = rank,
    as in ComfyUI). Raises ``UserError`` on a key of another format, a module missing a half,
    differing ranks or alphas across modules, or A/B shapes that do not chain.
    """
    halves: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for key, tensor in sd.items():
        m = _COMFY_KEY_RE.match(key)
        if not m:
            raise UserError(
                f"unexpected key {key!r}: not a ComfyUI Wan LoRA file of this project (expected keys "
                "like 'diffusion_model.blocks.0.self_attn.q.lora_A.weight', '.lora_B.weight' and "
                "'.alpha' on self_attn/cross_attn q/k/v/o and ffn.0/ffn.2)."
            )
        module, part = m.group(1), m.group(2)
        if part == "alpha":
            alphas[module] = float(tensor.item())
        else:
            halves.setdefault(module, {})[part.split(".")[0]] = tensor
    if not halves:
        raise UserError("the LoRA file holds no LoRA weights (no '.lora_A.weight' keys)")
    peft_sd: dict[str, torch.Tensor] = {}
    ranks = set()
    for module, pair in sorted(halves.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise UserError(f"LoRA module {module} has {sorted(pair)} but needs lora_A and lora_B")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise UserError(
                f"LoRA module {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not "
                "form a low-rank pair ([rank, in] and [out, rank]); the file is damaged."
            )
        ranks.add(int(a.shape[0]))
        peft_name = from_comfy_module(module)
        peft_sd[f"{peft_name}.lora_A.weight"] = a
        peft_sd[f"{peft_name}.lora_B.weight"] = b
    extra_alpha = sorted(set(alphas) - set(halves))
    if extra_alpha:
        raise UserError(f"LoRA file has an alpha for {extra_alpha[0]} but no weights for it")
    if len(ranks) != 1:
        raise UserError(f"LoRA modules have different ranks {sorted(ranks)}; only one rank is supported")
    rank = ranks.pop()
    if not alphas:
        alpha = float(rank)
    elif len(alphas) != len(halves) or len(set(alphas.values())) != 1:
        raise UserError(
            "LoRA modules have different (or missing) alpha values; only one alpha is supported"
        )
    else:
        alpha = next(iter(alphas.values()))
    return peft_sd, alpha, rank


def _encode_metadata(metadata: dict, rank: int, alpha: float) -> dict[str, str]:
    """Caller metadata plus ours -> safetensors ``dict[str, str]``; JSON keys listed in ``json_keys``."""
    merged = {k: v for k, v in (metadata or {}).items() if k not in _RESERVED_METADATA}
    merged["format"] = LORA_FORMAT
    merged["lora_rank"] = int(rank)
    merged["lora_alpha"] = float(alpha)
    out: dict[str, str] = {}
    json_keys = []
    for key, value in merged.items():
        if not isinstance(key, str):
            raise ValueError(f"metadata keys must be strings, got {key!r}")
        if isinstance(value, str):
            out[key] = value
        else:
            out[key] = json.dumps(value, sort_keys=True)
            json_keys.append(key)
    out["json_keys"] = json.dumps(sorted(json_keys))
    return out


def _decode_metadata(raw: dict[str, str] | None) -> dict:
    """safetensors metadata -> dict with the entries named in ``json_keys`` JSON-decoded."""
    raw = dict(raw or {})
    try:
        json_keys = json.loads(raw.pop("json_keys", "[]"))
    except json.JSONDecodeError:
        json_keys = []
    out: dict = {}
    for key, value in raw.items():
        if key in json_keys:
            try:
                out[key] = json.loads(value)
                continue
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out


def save_aligned_lora(
    path: str | os.PathLike,
    transformer: torch.nn.Module,
    rank: int,
    alpha: float,
    metadata: dict | None = None,
    dtype: torch.dtype = torch.float32,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the transformer's LoRA as a ComfyUI Wan LoRA safetensors file at ``path``.

    ``state_dict`` (``lora_state_dict`` output) is written instead of the transformer's current
    LoRA when given (distributed runs gather it on every rank, then rank 0 writes).

    Keys as in ``to_comfy_keys``; A/B weights contiguous in ``dtype`` (default float32), alphas
    float32. Metadata: the caller's entries (e.g. base model hash, training config; strings kept,
    other values JSON-encoded) plus ``format`` = ``"comfyui-wan-lora"``, ``lora_rank``,
    ``lora_alpha`` and ``json_keys`` (which entries are JSON). ``rank``/``alpha`` must be those of
    the adapter (checked against its peft config) so the file applies the trained scale. The file
    is written to a temp file in the same folder, then moved over ``path`` (atomic on one
    filesystem: a crash never leaves a half-written LoRA); the folder is created if needed.
    """
    from safetensors.torch import save_file

    if not has_lora(transformer):
        raise ValueError("the transformer has no LoRA adapter to save")
    config = transformer.peft_config[ADAPTER_NAME]
    if int(config.r) != int(rank) or float(config.lora_alpha) != float(alpha):
        raise ValueError(
            f"rank/alpha {rank}/{alpha} differ from the adapter's {config.r}/{config.lora_alpha}"
        )
    sd = lora_state_dict(transformer) if state_dict is None else state_dict
    tensors = to_comfy_keys(sd, alpha=alpha, rank=rank)
    tensors = {
        k: (v if k.endswith(".alpha") else v.to(dtype)).contiguous() for k, v in tensors.items()
    }
    meta = _encode_metadata(metadata or {}, rank=rank, alpha=alpha)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_aligned_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and validate a ComfyUI Wan LoRA file -> ``(ComfyUI-keyed state dict, metadata)``.

    Metadata entries listed in ``json_keys`` come back JSON-decoded (so ``lora_rank`` is an int
    and a training config a dict). ``UserError`` when the file is missing, is not a safetensors
    file, or holds keys/shapes that are not this format (see ``from_comfy_keys``). Files from
    other tools with the same key layout (with or without ``.alpha``) are accepted.
    """
    from safetensors import safe_open

    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise UserError(
            f"LoRA file not found: {path}\nCheck the path; LoRAs are written as .safetensors files "
            "into the run's output folder (and ComfyUI's models/loras folder)."
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = f.metadata()
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise UserError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}). "
            "Pick a LoRA .safetensors file written by this trainer or another Wan LoRA trainer."
        ) from exc
    meta = _decode_metadata(raw_meta)
    fmt = meta.get("format")
    if fmt is not None and fmt not in (LORA_FORMAT, "pt"):
        raise UserError(f"{path} has format {fmt!r}, not a ComfyUI Wan LoRA ({LORA_FORMAT})")
    try:
        from_comfy_keys(sd)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return sd, meta


def _linear_of(transformer: torch.nn.Module, name: str) -> torch.nn.Linear | None:
    """The (base) ``nn.Linear`` at ``name``, unwrapping a peft LoRA layer; None if absent."""
    try:
        module = transformer.get_submodule(name)
    except AttributeError:
        return None
    module = getattr(module, "base_layer", module)
    return module if isinstance(module, torch.nn.Linear) else None


def check_lora_matches(sd: dict[str, torch.Tensor], transformer: torch.nn.Module) -> None:
    """Refuse a LoRA that does not fit ``transformer`` (made for another Wan model).

    ``sd`` is ComfyUI-keyed (from ``read_aligned_lora``) or peft-keyed. Checks that every module
    exists as a Linear and that ``lora_A`` is ``[rank, in_features]`` and ``lora_B``
    ``[out_features, rank]``; raises ``UserError`` naming the first module that does not fit, e.g.
    a 1.3B LoRA (inner dim 1536) on a 14B model (5120) or a LoRA with more blocks than the model.
    """
    if any(k.startswith("diffusion_model.") for k in sd):
        sd, _, _ = from_comfy_keys(sd)
    n_blocks = len(getattr(transformer, "blocks", []))
    inner = getattr(getattr(transformer, "config", None), "num_attention_heads", None)
    head = getattr(getattr(transformer, "config", None), "attention_head_dim", None)
    model_inner = inner * head if inner and head else None
    for key in sorted(sd, key=_natural_key):
        m = _PEFT_KEY_RE.match(key)
        if not m:
            raise UserError(f"unexpected LoRA key {key!r}")
        module, which = m.group(1), m.group(2)
        label = f"{to_comfy_module(module)} (diffusers {module})"
        block = int(module.split(".")[1])
        if block >= n_blocks:
            raise UserError(
                f"this LoRA has weights for block {block} but the loaded model has only {n_blocks} "
                f"blocks: it was trained on another Wan model (e.g. 14B vs 1.3B)."
            )
        linear = _linear_of(transformer, module)
        if linear is None:
            raise UserError(f"LoRA module {label} does not exist as a Linear in the loaded model")
        t = sd[key]
        if which == "lora_A":
            want, got, what = linear.in_features, int(t.shape[1]), "input width"
        else:
            want, got, what = linear.out_features, int(t.shape[0]), "output width"
        if want != got:
            if model_inner is not None and want == model_inner:
                detail = (
                    f"this LoRA was made for a model with inner dim {got} but the loaded model has "
                    f"{want}"
                )
            else:
                detail = f"this LoRA's {what} of {label} is {got} but the loaded model's is {want}"
            raise UserError(
                f"{detail} (module {label}, {which} shape {tuple(t.shape)}): it was trained on "
                "another Wan model. Load the base model the LoRA was trained on, or pick a LoRA "
                "made for this model."
            )


def _natural_key(key: str):
    """Sort key with block numbers compared as numbers (block 2 before block 10)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def apply_aligned_lora(transformer: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Load a ComfyUI Wan LoRA file into ``transformer`` (for resume or evaluation); returns its
    decoded metadata.

    The file must fit the model (``check_lora_matches``). A transformer without LoRA first gets
    ``add_lora`` with the file's rank and alpha (FFN LoRA if the file has FFN modules); one that
    already has the adapter must have the same rank and alpha. The weights are then loaded with an
    exact key match (``load_lora_state_dict``), so the model computes what the file encodes.
    """
    sd, meta = read_aligned_lora(path)
    check_lora_matches(sd, transformer)
    peft_sd, alpha, rank = from_comfy_keys(sd)
    if not has_lora(transformer):
        include_ffn = any(".ffn." in k for k in peft_sd)
        add_lora(transformer, rank=rank, alpha=alpha, include_ffn=include_ffn)
    else:
        config = transformer.peft_config[ADAPTER_NAME]
        if int(config.r) != rank or float(config.lora_alpha) != float(alpha):
            raise UserError(
                f"{path} has LoRA rank {rank} / alpha {alpha:g} but the model's LoRA uses rank "
                f"{config.r} / alpha {config.lora_alpha:g}. Set the LoRA rank and alpha to the "
                "file's values to resume from it."
            )
    try:
        load_lora_state_dict(transformer, peft_sd)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return meta
