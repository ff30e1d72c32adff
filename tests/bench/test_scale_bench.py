"""``bench.scale`` and ``bench.memory_plan`` on the CPU: the tiny measurement run, the analytic FLOP
counter against torch's ``FlopCounterMode``, the activation estimate against what autograd really
saves, and the parameter counts of the real Wan2.1 configs built on the meta device.

No timing is asserted (the machine is shared), only that the measured times exist and are positive.

How ``FlopCounterMode`` sees attention: it has formulas for the CUDA SDPA kernels (flash,
memory-efficient, cuDNN), but on the CPU ``scaled_dot_product_attention`` runs
``_scaled_dot_product_flash_attention_for_cpu``, which it does not know and counts as 0 FLOPs.
Under ``sdpa_kernel(SDPBackend.MATH)`` attention decomposes into ``bmm`` calls that it counts
(forward ``QK^T`` + ``PV`` = 4 * Sq * Sk * d, backward 4 bmm = 2x), so the comparison below
includes attention; the config is chosen so attention is a sizeable share of the FLOPs.
"""

import json

import pytest
import torch

from bench import memory_plan as mp
from bench import scale
from tests.support import run_cli

SMALL = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=16, in_channels=4,
             out_channels=4, text_dim=32, freq_dim=32, ffn_dim=96, num_layers=3, rope_max_seq_len=32)
SMALL_LATENT = (4, 3, 8, 8)  # 48 video tokens
SMALL_TEXT = 24


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (shared CPU cores), restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_cpu_run_json(tmp_path):
    out = tmp_path / "scale.json"
    proc = run_cli("bench.scale", "--device", "cpu", "--tiny-test", "--steps", "1", "--json", str(out),
                   timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rollout step" in proc.stdout and "CPU" in proc.stdout
    data = json.loads(out.read_text())
    assert data["model"] == "tiny" and data["device"]["type"] == "cpu"
    assert data["rows"] == 2 and data["latent"] == [4, 2, 4, 4]
    m = data["measured"]
    assert m["errors"] == {}
    assert m["rollout_step_s"] > 0 and m["update_s"] > 0 and m["peak_rss_bytes"] > 0
    roll, upd = data["flops"]["rollout"], data["flops"]["update"]
    assert roll["forward"] > 0 and roll["recompute"] == 0
    assert upd["forward"] == roll["forward"] and upd["backward"] > 0 and upd["recompute"] > 0
    assert upd["hardware"] == upd["forward"] + upd["backward"] + upd["recompute"] > upd["model"]
    assert sum(roll["parts"].values()) == roll["forward"]
    u = data["utilisation"]
    assert u["rollout_tflops_per_s"] > 0 and u["update_tflops_per_s"] > 0
    assert u["update_mfu"] is None  # no known peak for a CPU


@pytest.mark.parametrize("checkpointing", [True, False])
def test_analytic_flops_match_flop_counter(checkpointing):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.engine.rollout import Conditioning, predict_velocity

    model = scale.build_transformer(SMALL, torch.device("cpu"), torch.float32, 4, checkpointing)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, *SMALL_LATENT), generator=g)
    cond = Conditioning(torch.randn(1, SMALL_TEXT, 32, generator=g), torch.randn(1, SMALL_TEXT, 32, generator=g), 4.5)
    expected = scale.wan_flops(SMALL, SMALL_LATENT, rows=2, text_len=SMALL_TEXT, lora_rank=4,
                               checkpointing=checkpointing)
    attention = expected["parts"]["self_attn_core"] + expected["parts"]["cross_attn_core"]
    assert attention > 0.15 * expected["forward"]  # leaving attention out would fail the 10% check

    with sdpa_kernel([SDPBackend.MATH]):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            predict_velocity(model, x, torch.tensor(0.7), cond)
        forward = fc.get_total_flops()
        model.train()
        with FlopCounterMode(display=False) as fc:
            predict_velocity(model, x, torch.tensor(0.7), cond).square().mean().backward()
        total = fc.get_total_flops()
    assert forward == pytest.approx(expected["forward"], rel=0.10)
    assert total == pytest.approx(expected["hardware"], rel=0.10)
    assert total - forward == pytest.approx(expected["backward"] + expected["recompute"], rel=0.10)


def test_activation_estimate_matches_saved_tensors():
    """One real block (head_dim 128) in bf16 under CPU autocast with the LoRA: the bytes autograd
    saves for its backward against ``activation_bytes``'s ``block_saved``."""
    cfg = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=64, freq_dim=32, ffn_dim=1024, num_layers=1, rope_max_seq_len=1024)
    latent, text_len, rows = (16, 3, 8, 8), 40, 2
    model = scale.build_transformer(cfg, torch.device("cpu"), torch.bfloat16, 16, True)
    captured = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda mod, args: captured.setdefault("args", args))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(hidden_states=torch.randn(rows, *latent, dtype=torch.bfloat16), timestep=torch.full((rows,), 500.0),
              encoder_hidden_states=torch.randn(rows, text_len, 64, dtype=torch.bfloat16), return_dict=False)
    hook.remove()
    hidden, text, temb, rope = captured["args"]
    hidden = hidden.detach().requires_grad_(True)
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()} | {hidden.untyped_storage().data_ptr()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model.blocks[0](hidden, text, temb, rope)
    estimate = mp.activation_bytes(cfg, latent, rows, text_len, 16)["block_saved"]
    assert sum(saved.values()) == pytest.approx(estimate, rel=0.10)


def test_memory_plan_counts_from_meta_builds():
    small, big = mp.model_counts("1.3b"), mp.model_counts("14b")
    assert 1.2e9 < small["params"] < 1.5e9
    assert 13e9 < big["params"] < 15e9
    assert mp.meta_transformer(mp.load_config("14b")).blocks[0].ffn.net[2].weight.device.type == "meta"
    for counts, cfg in ((small, mp.load_config("1.3b")), (big, mp.load_config("14b"))):
        d = mp.inner_dim(cfg)
        assert counts["lora_params"] == cfg["num_layers"] * 8 * 16 * 2 * d  # 8 attention Linears d->d
        assert 2 * counts["params"] < counts["weight_bytes"] < 2.01 * counts["params"]  # bf16, a few fp32
    assert 5.5e9 < mp.text_encoder_params() < 5.9e9  # UMT5-XXL encoder, ~5.7B

    plans = {(p["model"], p["gpus"], p["parallel"]): p for p in mp.all_plans()}
    fsdp, ddp = plans[("14b", 8, "fsdp")], plans[("14b", 8, "ddp")]
    assert fsdp["items"]["base weights (bf16)"] == pytest.approx(ddp["items"]["base weights (bf16)"] / 8)
    assert fsdp["peak"] < ddp["peak"] and fsdp["fits"]
    assert plans[("1.3b", 1, "single")]["fits"]
    table = mp.markdown_table(list(plans.values()))
    assert "| **per-GPU peak** |" in table and "14B 8x FSDP" in table


def test_without_cuda_prints_plan_and_exits_zero(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "no_cuda.json"
    assert scale.main(["--model", "14b", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CUDA is not available" in text and "| **per-GPU peak** |" in text
    data = json.loads(out.read_text())
    assert data["measured"] is None and data["flops"]["update"]["forward"] > 0 and data["memory_plan"]
    assert data["latent"] == [16, 21, 60, 104] and data["tokens"] == 21 * 30 * 52


def test_memory_plan_of_the_cuda_presets_on_gpu_and_host():
    plans = {p["preset"]: p for p in mp.preset_plans()}
    small = plans["flash_grpo_wan2.1_1.3b_24gb"]
    assert small["gpu_gib"] == 22.0 and small["fits"] and small["peak"] < 22 * mp.GIB
    assert small["settings"]["micro_batch"] == 1 and small["settings"]["vae_tiling"]
    full = plans["flash_grpo_wan2.1_1.3b"]
    assert full["fits"] and full["settings"]["micro_batch"] == 2  # the plan says 2 fits 78 GiB
    # two transitions per call double the activations of the update, not the resident bytes
    one = mp.plan("1.3b", 1, "ddp", micro_batch=1)
    assert full["phases"]["update"] > one["phases"]["update"]
    for p in plans.values():
        host = p["host"]
        te = mp.text_encoder_params() * mp.BF16
        assert host["peak"] >= te + mp.model_counts("1.3b")["weight_bytes"]  # loading: all on the CPU
        assert host["items"]["decoded chunk (uint8) + a reward's float32 copy"] == 5 * 3 * (
            p["settings"]["frames"] * p["settings"]["height"] * p["settings"]["width"])
        # the other ranks read no text encoder, and with FSDP no transformer weights
        other = host["other"]["items"]
        assert other["ddp"]["text encoder (bf16, stays on the CPU)"] == 0
        assert other["fsdp"]["transformer while loading (bf16)"] == 0
        assert host["other"]["peak"]["fsdp"] <= host["other"]["peak"]["ddp"] <= host["peak"] - te
        assert host["machine_peak"]["fsdp"] == host["peak"] + 7 * host["other"]["peak"]["fsdp"]
    big = mp.host_plan("14b", processes=8)  # 14B: a rank that reads no weights holds far less
    assert big["other"]["peak"]["fsdp"] < big["other"]["peak"]["ddp"] / 4 < big["peak"] / 4
    # tiling bounds the VAE's working set by its tile, whatever the frame size
    vae = mp.vae_summary("1.3b")
    assert mp.vae_decode_bytes(vae, 480, 832, tiling=True) == mp.vae_decode_bytes(vae, 256, 256)
    table = mp.preset_table(list(plans.values()))
    assert "`flash_grpo_wan2.1_1.3b_24gb`" in table and "host peak, rank 0" in table
