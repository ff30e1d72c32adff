"""ComfyUI/original-format Wan transformer files load as ``from_pretrained`` loads a diffusers
folder: same values, same dtypes (keep-in-fp32 modules stay float32), same outputs; key prefixes;
fp8-scaled files de-quantised, block-scaled ones refused."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.pack.test_pack import to_comfy_wan_keys
from trainer.engine import models
from trainer.engine.models import TINY_CONFIG
from trainer.errors import UserError


def _tiny_wan(seed=0):
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(**TINY_CONFIG["transformer"]).eval()
        with torch.no_grad():  # non-trivial norms and modulation (their init is 1 / 0)
            for name, p in model.named_parameters():
                if "norm" in name or "scale_shift_table" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    return model


def _write(tmp_path, model, prefix="diffusion_model.", sd=None):
    model.save_pretrained(str(tmp_path / "folder" / "transformer"))
    (tmp_path / "cfg" / "transformer").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg" / "transformer" / "config.json").write_text(json.dumps(dict(model.config)))
    sd = sd if sd is not None else to_comfy_wan_keys(model.state_dict())
    path = tmp_path / "wan.safetensors"
    save_file({prefix + k: v for k, v in sd.items()}, str(path))
    return path


def _forward(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = TINY_CONFIG["transformer"]
    x = torch.randn(1, c["in_channels"], 3, 8, 8, generator=g)
    emb = torch.randn(1, 6, c["text_dim"], generator=g)
    with torch.no_grad():
        return model(hidden_states=x.to(model.dtype), timestep=torch.tensor([500.0]),
                     encoder_hidden_states=emb.to(model.dtype), return_dict=False)[0].float()


@pytest.mark.parametrize("prefix", ["diffusion_model.", "model.diffusion_model.", ""])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_single_file_equals_from_pretrained(tmp_path, prefix, dtype):
    from diffusers import WanTransformer3DModel

    model = _tiny_wan()
    path = _write(tmp_path, model, prefix)
    ref = WanTransformer3DModel.from_pretrained(str(tmp_path / "folder" / "transformer"), torch_dtype=dtype).eval()
    loaded = models.load_wan_transformer_file(path, tmp_path / "cfg", dtype)
    want, got = ref.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    if dtype == torch.bfloat16:
        assert want["scale_shift_table"].dtype == torch.float32  # a keep-in-fp32 module, kept
        assert want["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert not any(b.is_meta for b in loaded.buffers())
    # equal weights; outputs equal up to float32 summation order (from_pretrained's own model
    # differs from the module it was saved from by as much)
    out, want_out = _forward(loaded), _forward(ref)
    assert (out - want_out).abs().max() <= 1e-5 * want_out.abs().max()


def test_fp8_scaled_file_is_dequantised(tmp_path):
    model = _tiny_wan()
    sd = to_comfy_wan_keys(model.state_dict())
    deq = {}
    for k in [k for k in sd if k.startswith("blocks.") and k.endswith(".weight") and sd[k].dim() == 2]:
        scale = sd[k].abs().max() / 448.0
        sd[k] = (sd[k] / scale).to(torch.float8_e4m3fn)
        sd[k.removesuffix(".weight") + ".scale_weight"] = scale.reshape(()).float()
        deq[k] = sd[k].float() * scale
    sd["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = _write(tmp_path, model, "model.diffusion_model.", sd)
    loaded = models.load_wan_transformer_file(path, tmp_path / "cfg", torch.float32)
    got = to_comfy_wan_keys(loaded.state_dict())
    assert deq and all(torch.equal(got[k], v) for k, v in deq.items())
    ref = _forward(model)
    assert (_forward(loaded) - ref).abs().max() < 0.1 * ref.abs().max()  # fp8 error, not a wrong model

    k = next(iter(deq))
    sd[k.removesuffix(".weight") + ".scale_weight"] = torch.ones(sd[k].shape[0], 1)
    path = _write(tmp_path, model, "", sd)
    with pytest.raises(UserError, match="block- or row-scaled"):
        models.load_wan_transformer_file(path, tmp_path / "cfg", torch.float32)
