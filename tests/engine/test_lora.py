"""Tests for trainer/engine/lora.py on the real tiny Wan model (no mocks).

Covers: LoRA injection leaves the output bit-identical and trains only LoRA tensors; the
``lora_disabled`` reference switch; the ComfyUI key format (names, alphas, metadata); that diffusers'
own ``load_lora_weights`` reads our file with the trained scale and no leftover keys; that every
exported module name is a Linear of the original/ComfyUI Wan model, derived from diffusers'
single-file converter; and the UserErrors for missing, foreign and mismatching files.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import re
import warnings

import pytest
import torch

from trainer.engine import lora
from trainer.engine.models import TINY_CONFIG, build_tiny_pipeline, weights_hash
from trainer.errors import UserError

KEY_RE = re.compile(
    r"^diffusion_model\.blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)\.(lora_A\.weight|lora_B\.weight|alpha)$"
)
FFN_KEY_RE = re.compile(r"^diffusion_model\.blocks\.\d+\.ffn\.(0|2)\.(lora_A\.weight|lora_B\.weight|alpha)$")


def _tiny_transformer(seed: int = 0, **overrides):
    """A tiny ``WanTransformer3DModel`` (TINY_CONFIG with ``overrides``), eval mode."""
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**{**TINY_CONFIG["transformer"], **overrides}).eval()


def _inputs(seed: int = 0):
    """One fixed forward input for the tiny transformer (2 latent frames of 8x8, 6 text tokens)."""
    g = torch.Generator().manual_seed(seed)
    cfg = TINY_CONFIG["transformer"]
    return dict(
        hidden_states=torch.randn(1, cfg["in_channels"], 2, 8, 8, generator=g),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 6, cfg["text_dim"], generator=g),
    )


@torch.no_grad()
def _out(transformer, inputs):
    return transformer(**inputs, return_dict=False)[0]


def _perturb_lora_b(transformer, seed: int = 1, scale: float = 0.5):
    """Give every lora_B random values so the LoRA changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.lora_parameters(transformer):
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _n_modules(include_ffn: bool) -> int:
    n_layers = TINY_CONFIG["transformer"]["num_layers"]
    return n_layers * (len(lora.LORA_TARGETS["attn"]) + (len(lora.LORA_TARGETS["ffn"]) if include_ffn else 0))


# --------------------------------------------------------------------------------------------


def test_add_lora_is_identity_trains_only_lora_and_disable_switch():
    t = _tiny_transformer()
    x = _inputs()
    base = _out(t, x)
    lora.add_lora(t, rank=4, alpha=8, init_seed=0)
    assert torch.equal(_out(t, x), base), "zero-init lora_B must leave the output bit-identical"

    names = [n for n, _ in lora.lora_parameters(t)]
    assert names == sorted(names) and len(names) == 2 * _n_modules(False)
    trainable = {n for n, p in t.named_parameters() if p.requires_grad}
    assert trainable == set(names)
    assert all(re.fullmatch(r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)\.lora_[AB]\.default\.weight", n)
               for n in names), names
    assert not any("condition_embedder" in n or "proj_out" in n for n in names)

    _perturb_lora_b(t)
    on = _out(t, x)
    assert not torch.allclose(on, base, atol=1e-4)
    with lora.lora_disabled(t):
        assert torch.equal(_out(t, x), base)
    assert torch.equal(_out(t, x), on)
    assert {n for n, p in t.named_parameters() if p.requires_grad} == set(names)

    # Re-enabled (with grads restored) even when the block raises.
    with pytest.raises(RuntimeError, match="boom"):
        with lora.lora_disabled(t):
            raise RuntimeError("boom")
    assert torch.equal(_out(t, x), on)
    assert {n for n, p in t.named_parameters() if p.requires_grad} == set(names)

    # init_seed makes lora_A reproducible.
    t2 = _tiny_transformer()
    lora.add_lora(t2, rank=4, alpha=8, init_seed=0)
    a1 = {k: v for k, v in lora.lora_state_dict(t).items() if "lora_A" in k}
    a2 = {k: v for k, v in lora.lora_state_dict(t2).items() if "lora_A" in k}
    assert all(torch.equal(a1[k], a2[k]) for k in a1)


def test_state_dict_round_trip_and_exact_keys():
    t = _tiny_transformer()
    lora.add_lora(t, rank=4, alpha=8, include_ffn=True, init_seed=0)
    assert len(lora.lora_parameters(t)) == 2 * _n_modules(True)
    _perturb_lora_b(t)
    sd = lora.lora_state_dict(t)
    assert all(re.fullmatch(r"blocks\.\d+\..+\.lora_[AB]\.weight", k) for k in sd)
    assert all(v.device.type == "cpu" for v in sd.values())
    x = _inputs()
    want = _out(t, x)

    t2 = _tiny_transformer()
    lora.add_lora(t2, rank=4, alpha=8, include_ffn=True, init_seed=5)
    lora.load_lora_state_dict(t2, sd)
    assert torch.equal(_out(t2, x), want)
    with pytest.raises(UserError, match="missing"):
        lora.load_lora_state_dict(t2, {k: v for k, v in sd.items() if ".ffn." not in k})
    with pytest.raises(UserError, match="unexpected"):
        lora.load_lora_state_dict(t2, {**sd, "blocks.0.proj_out.lora_A.weight": torch.zeros(4, 32)})


@pytest.mark.parametrize("include_ffn", [False, True])
def test_export_keys_alpha_and_metadata(tmp_path, include_ffn):
    t = _tiny_transformer()
    lora.add_lora(t, rank=4, alpha=8, include_ffn=include_ffn, init_seed=0)
    _perturb_lora_b(t)
    config = {"lr": 1e-4, "steps": [1, 2], "nested": {"a": True}}
    path = tmp_path / "sub" / "lora.safetensors"
    lora.save_aligned_lora(
        path, t, rank=4, alpha=8,
        metadata={"base_model_hash": "0123456789012345", "config": config, "note": "hi", "n": 3},
    )
    assert [p.name for p in path.parent.iterdir()] == ["lora.safetensors"], "temp file left behind"

    sd, meta = lora.read_aligned_lora(path)
    assert len(sd) == 3 * _n_modules(include_ffn)
    for key, v in sd.items():
        assert KEY_RE.match(key) or (include_ffn and FFN_KEY_RE.match(key)), key
        if key.endswith(".alpha"):
            assert v.dtype == torch.float32 and v.ndim == 0 and v.item() == 8.0
        else:
            assert v.dtype == torch.float32 and v.is_contiguous()
    assert any(FFN_KEY_RE.match(k) for k in sd) == include_ffn

    assert meta["format"] == "comfyui-wan-lora"
    assert meta["lora_rank"] == 4 and meta["lora_alpha"] == 8.0
    assert meta["config"] == config and meta["n"] == 3 and meta["note"] == "hi"
    assert meta["base_model_hash"] == "0123456789012345"  # a digit string stays a string

    # The raw safetensors metadata is all strings, JSON for the non-string values.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert json.loads(raw["config"]) == config and raw["format"] == "comfyui-wan-lora"

    # Exact inverse of the key mapping.
    peft_sd, alpha, rank = lora.from_comfy_keys(sd)
    assert (alpha, rank) == (8.0, 4)
    ours = lora.lora_state_dict(t)
    assert peft_sd.keys() == ours.keys() and all(torch.equal(peft_sd[k], ours[k]) for k in ours)

    # Loading the file back (into a fresh and into a LoRA'd model) reproduces the output.
    x = _inputs()
    t2 = _tiny_transformer()
    assert lora.apply_aligned_lora(t2, path)["lora_rank"] == 4
    assert torch.equal(_out(t2, x), _out(t, x))

    # bf16 export keeps float32 alphas.
    lora.save_aligned_lora(tmp_path / "bf16.safetensors", t, 4, 8, {}, dtype=torch.bfloat16)
    sd16, _ = lora.read_aligned_lora(tmp_path / "bf16.safetensors")
    assert {v.dtype for k, v in sd16.items() if not k.endswith(".alpha")} == {torch.bfloat16}
    assert {v.dtype for k, v in sd16.items() if k.endswith(".alpha")} == {torch.float32}


def test_diffusers_load_lora_weights_honours_scale(tmp_path):
    pipe = build_tiny_pipeline(seed=0)
    t = pipe.transformer
    x = _inputs()
    base = _out(t, x)
    lora.add_lora(t, rank=4, alpha=8, include_ffn=True, init_seed=0)
    _perturb_lora_b(t, scale=0.3)
    trained = _out(t, x)
    path = tmp_path / "lora.safetensors"
    lora.save_aligned_lora(path, t, rank=4, alpha=8, metadata={"base_model_hash": weights_hash(t)})

    fresh = build_tiny_pipeline(seed=0)
    assert torch.equal(_out(fresh.transformer, x), base)

    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = _Collect(level=logging.WARNING)
    loggers = [logging.getLogger("diffusers"), logging.getLogger("peft")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fresh.load_lora_weights(str(path))
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    messages = [r.getMessage() for r in records] + [str(w.message) for w in caught]
    assert not [m for m in messages if re.search(r"unexpected|missing|not used|leftover|ignored", m, re.I)], messages

    from peft import get_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapters = fresh.get_list_adapters()["transformer"]
    assert len(adapters) == 1
    n_lora_modules = sum(isinstance(m, BaseTunerLayer) for m in fresh.transformer.modules())
    assert n_lora_modules == _n_modules(True) == len(lora.lora_parameters(t)) // 2
    loaded = get_peft_model_state_dict(fresh.transformer, adapter_name=adapters[0])
    assert set(loaded) == set(lora.lora_state_dict(t)), "diffusers loaded other modules than ours"

    out = _out(fresh.transformer, x)
    assert torch.allclose(out, trained, atol=1e-5, rtol=0), (out - trained).abs().max()
    assert not torch.allclose(out, base, atol=1e-3)


def _diffusers_wan_rename_dict() -> dict[str, str]:
    """TRANSFORMER_KEYS_RENAME_DICT (original Wan -> diffusers) from diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    tree = ast.parse(inspect.getsource(convert_wan_transformer_to_diffusers).lstrip())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(tg, ast.Name) and tg.id == "TRANSFORMER_KEYS_RENAME_DICT" for tg in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("TRANSFORMER_KEYS_RENAME_DICT not found in diffusers' Wan converter")


def test_exported_modules_are_linears_of_the_original_wan_model():
    """Each exported name is a Linear of ComfyUI's (= original Wan) model, per diffusers' converter.

    The original-format key set is the inverse of diffusers' sequential rename applied to the tiny
    diffusers model's keys, and is verified by converting it back with diffusers' converter.
    """
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    t = _tiny_transformer()
    diffusers_sd = t.state_dict()
    rename = list(_diffusers_wan_rename_dict().items())

    def to_original(key: str) -> str:
        for original, renamed in reversed(rename):
            key = key.replace(renamed, original)
        return key

    original_to_diffusers = {to_original(k): k for k in diffusers_sd}
    converted = convert_wan_transformer_to_diffusers({k: diffusers_sd[v] for k, v in original_to_diffusers.items()})
    assert set(converted) == set(diffusers_sd), "the inverted rename does not round-trip"
    original_keys = set(original_to_diffusers)
    assert "blocks.0.self_attn.o.weight" in original_keys and "blocks.0.ffn.2.weight" in original_keys

    lora.add_lora(t, rank=4, alpha=8, include_ffn=True, init_seed=0)
    comfy = lora.to_comfy_keys(lora.lora_state_dict(t), alpha=8, rank=4)
    modules = sorted({k.removeprefix("diffusion_model.").removesuffix(".lora_A.weight")
                      for k in comfy if k.endswith(".lora_A.weight")})
    assert len(modules) == _n_modules(True)
    for module in modules:
        key = f"{module}.weight"
        assert key in original_keys, f"{module} is not a module of the original Wan model"
        diffusers_name = original_to_diffusers[key].removesuffix(".weight")
        assert isinstance(lora._linear_of(t, diffusers_name), torch.nn.Linear), module
        assert lora.from_comfy_module(module) == diffusers_name
        # Forward direction through diffusers' converter on a synthetic one-key checkpoint.
        assert list(convert_wan_transformer_to_diffusers({key: torch.zeros(1)})) == [f"{diffusers_name}.weight"]


def test_read_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="LoRA file not found"):
        lora.read_aligned_lora(tmp_path / "nope.safetensors")

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        lora.read_aligned_lora(junk)

    from safetensors.torch import save_file

    diffusers_style = tmp_path / "diffusers_style.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32)}, str(diffusers_style))
    with pytest.raises(UserError, match="unexpected key 'transformer.blocks.0.attn1.to_q"):
        lora.read_aligned_lora(diffusers_style)

    half = tmp_path / "half.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 32)}, str(half))
    with pytest.raises(UserError, match="needs lora_A and lora_B"):
        lora.read_aligned_lora(half)


def test_lora_for_another_model_is_refused(tmp_path):
    # A LoRA trained on a wider model (inner dim 2 heads x 24 = 48 instead of 32).
    wide = _tiny_transformer(attention_head_dim=24)
    lora.add_lora(wide, rank=4, alpha=8, init_seed=0)
    path = tmp_path / "wide.safetensors"
    lora.save_aligned_lora(path, wide, rank=4, alpha=8, metadata={})
    sd, _ = lora.read_aligned_lora(path)  # a valid file in itself

    t = _tiny_transformer()
    with pytest.raises(UserError, match=r"inner dim 48 but the loaded model has 32.*another Wan model"):
        lora.check_lora_matches(sd, t)
    with pytest.raises(UserError, match="inner dim 48"):
        lora.apply_aligned_lora(t, path)
    assert not lora.has_lora(t), "a refused LoRA must not modify the model"

    # A deeper LoRA (3 blocks) on the 2-block model.
    deep = _tiny_transformer(num_layers=3)
    lora.add_lora(deep, rank=4, alpha=8, init_seed=0)
    lora.save_aligned_lora(tmp_path / "deep.safetensors", deep, 4, 8, {})
    with pytest.raises(UserError, match="block 2 but the loaded model has only 2 blocks"):
        lora.apply_aligned_lora(_tiny_transformer(), tmp_path / "deep.safetensors")

    # Same model, other LoRA rank: resuming into a rank-8 adapter is refused with the fix.
    same = _tiny_transformer()
    lora.add_lora(same, rank=4, alpha=8, init_seed=0)
    lora.save_aligned_lora(tmp_path / "r4.safetensors", same, 4, 8, {})
    r8 = _tiny_transformer()
    lora.add_lora(r8, rank=8, alpha=8, init_seed=0)
    with pytest.raises(UserError, match="rank 4 / alpha 8 but the model's LoRA uses rank 8"):
        lora.apply_aligned_lora(r8, tmp_path / "r4.safetensors")
