"""The published recipes, item by item: LoRA init, batch-std advantages, two optimizer steps per
rollout, zero-advantage transitions left out, the EMA schedule, DanceGRPO's best-of-n, and the
few-step solver tail of cheap flash rollouts."""

import math

import pytest
import torch

from trainer.algo import sde as sde_math
from trainer.algo.grpo import ema_decay_at
from trainer.engine import lora as lora_lib
from trainer.engine.config import FlashGRPOConfig
from trainer.engine.models import build_tiny_pipeline
from trainer.engine.recipe import FlashGRPORecipe
from trainer.engine.strategies import STRATEGIES, StepPlan, expected_passes, make_plan


def tiny_cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), run_name="t", iterations=3, sample_videos=False, eval_prompts=0)
    base.update(kw)
    return FlashGRPOConfig.from_dict(base, preset="tiny_demo")


def test_the_paper_preset_runs_as_the_reference_code_does():
    cfg = FlashGRPOConfig.from_dict({}, preset="flash_grpo_wan2.1_1.3b")
    assert (cfg.lora_init, cfg.advantage_std, cfg.updates_per_iteration) == ("gaussian", "global", 2)
    assert (cfg.drop_zero_advantage, cfg.ema_decay, cfg.ema_update_every) == (True, 0.9, 8)
    assert FlashGRPOConfig().lora_init == "gaussian"  # the default too


# ---- LoRA init ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [4, 16])
def test_gaussian_lora_init_has_std_one_over_rank_and_kaiming_is_smaller(rank):
    stds = {}
    for init in ("gaussian", "kaiming"):
        t = build_tiny_pipeline(seed=0).transformer
        lora_lib.add_lora(t, rank=rank, alpha=2 * rank, init_seed=1, init=init)
        a = torch.cat([p.detach().flatten() for n, p in lora_lib.lora_parameters(t) if "lora_A" in n])
        b = torch.cat([p.detach().flatten() for n, p in lora_lib.lora_parameters(t) if "lora_B" in n])
        assert b.abs().max() == 0  # the adapter starts as the identity
        stds[init] = float(a.std())
    assert stds["gaussian"] == pytest.approx(1.0 / rank, rel=0.1)
    fan_in = t.blocks[0].attn1.to_q.base_layer.in_features
    assert stds["kaiming"] == pytest.approx(1.0 / math.sqrt(3 * fan_in), rel=0.1)  # uniform(+-1/sqrt(fan_in))


def test_the_recipe_uses_the_configured_init(tmp_path):
    for init, rank in (("gaussian", 4), ("kaiming", 4)):
        r = FlashGRPORecipe(tiny_cfg(tmp_path / init, lora_init=init, lora_rank=rank)).setup()
        a = torch.cat([p.detach().flatten() for n, p in lora_lib.lora_parameters(r.transformer) if "lora_A" in n])
        assert (abs(float(a.std()) - 1.0 / rank) < 0.1 / rank) == (init == "gaussian")


# ---- two optimizer steps per rollout ------------------------------------------------------------
def test_two_optimizer_steps_per_rollout_make_the_second_off_policy(tmp_path):
    r = FlashGRPORecipe(tiny_cfg(tmp_path, updates_per_iteration=2, iso_temporal=False)).setup()
    event = r.run_iteration(0)
    assert event["optimizer_steps"] == 2 and r.optimizer_steps == 2
    assert event["ratio_max_dev"] > 0  # the second minibatch sees a policy one step newer
    one = FlashGRPORecipe(tiny_cfg(tmp_path / "one", updates_per_iteration=1, iso_temporal=False)).setup()
    first = one.run_iteration(0)
    assert first["optimizer_steps"] == 1 and first["ratio_max_dev"] == 0.0


# ---- zero-advantage transitions -----------------------------------------------------------------
def _update_rows(recipe, it):
    """(event, transformer rows sent with gradients during iteration ``it``)."""
    rows = []
    handle = recipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: rows.append(kw["hidden_states"].shape[0]) if torch.is_grad_enabled() else None,
        with_kwargs=True)
    try:
        event = recipe.run_iteration(it)
    finally:
        handle.remove()
    return event, sum(rows)


def test_zero_advantage_transitions_are_left_out_of_the_loss_and_the_compute(tmp_path):
    """Best-of-2 of groups of 4 zeroes half the advantages: dropped, the update sends half the rows,
    and its loss is the same sum over half as many transitions."""
    kw = dict(strategy="dance", dance_best_of_n=2, group_size=4, updates_per_iteration=1, iterations=1,
              shared_noise=False)  # (shared noise would let a group share its first input)
    drop = FlashGRPORecipe(tiny_cfg(tmp_path / "drop", drop_zero_advantage=True, **kw)).setup()
    keep = FlashGRPORecipe(tiny_cfg(tmp_path / "keep", drop_zero_advantage=False, **kw)).setup()
    e_drop, rows_drop = _update_rows(drop, 0)
    e_keep, rows_keep = _update_rows(keep, 0)
    assert rows_drop * 2 == rows_keep > 0
    per_sample = drop.strategy.trained_per_sample(drop.cfg)
    n_all, n_kept = 8 * per_sample, 4 * per_sample
    assert e_drop["loss"] * n_kept == pytest.approx(e_keep["loss"] * n_all, rel=1e-4, abs=1e-7)
    assert expected_passes(drop.cfg)["update"] * 2 == expected_passes(keep.cfg)["update"]


def test_an_iteration_without_any_signal_takes_no_optimizer_step(tmp_path):
    r = FlashGRPORecipe(tiny_cfg(tmp_path, rewards=[{"name": "brightness", "weight": 0.0}])).setup()
    before = {n: p.detach().clone() for n, p in lora_lib.lora_parameters(r.transformer)}
    event = r.run_iteration(0)
    assert event["groups_with_signal"] == 0 and event["optimizer_steps"] == 0 and r.optimizer_steps == 0
    assert all(torch.equal(p, before[n]) for n, p in lora_lib.lora_parameters(r.transformer))


# ---- EMA ----------------------------------------------------------------------------------------
def test_ema_decay_schedule_is_the_reference_formula():
    assert [ema_decay_at(s, 0.9) for s in (0, 1, 8)] == pytest.approx([1 / 10, 2 / 11, 9 / 18])
    assert ema_decay_at(80, 0.9) == 0.9 and ema_decay_at(500, 0.99) == pytest.approx(501 / 510)


def test_ema_is_updated_every_n_optimizer_steps_with_the_scheduled_decay(tmp_path):
    r = FlashGRPORecipe(tiny_cfg(tmp_path, ema_decay=0.9, ema_update_every=2, updates_per_iteration=1)).setup()
    names = [n for n, _ in lora_lib.lora_parameters(r.transformer)]
    weights = lambda: {n: p.detach().clone() for n, p in lora_lib.lora_parameters(r.transformer)}  # noqa: E731
    init = weights()
    r.run_iteration(0)
    assert all(torch.equal(r.ema[n], init[n]) for n in names)  # 1 step: not yet
    r.run_iteration(1)
    after_two = weights()
    d = ema_decay_at(1, 0.9)  # the update after optimizer step s = 1
    for n in names:
        assert torch.allclose(r.ema[n], d * init[n] + (1 - d) * after_two[n], atol=1e-7)
    assert any(not torch.equal(r.ema[n], init[n]) for n in names)


# ---- DanceGRPO best-of-n ------------------------------------------------------------------------
def test_dance_best_of_n_keeps_the_top_and_bottom_half_of_n_in_each_group(tmp_path):
    cfg = tiny_cfg(tmp_path, strategy="dance", group_size=8, dance_best_of_n=4)
    rewards = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 1, 2, 3, 4, 5, 6, 7, 8], dtype=torch.float)
    adv = torch.arange(1.0, 17.0)
    out = STRATEGIES["dance"].filter_advantages(cfg, adv, rewards, 8)
    kept = (out != 0).nonzero().flatten().tolist()
    assert kept == [1, 2, 5, 6] + [8, 9, 14, 15]  # the 2 worst and the 2 best of each group
    assert torch.equal(out[out != 0], adv[out != 0])
    with pytest.raises(Exception, match="dance_best_of_n=3"):
        tiny_cfg(tmp_path, strategy="dance", group_size=8, dance_best_of_n=3)


# ---- cheap flash rollouts: the few-step solver tail ---------------------------------------------
def test_tail_grid_spreads_the_steps_over_the_rest_of_the_grid():
    assert sde_math.tail_grid(5, 3, 20) == [5, 10, 15, 20]
    assert sde_math.tail_grid(1, 4, 10) == [1, 3, 6, 8, 10]
    assert sde_math.tail_grid(8, 4, 10) == [8, 9, 10]  # fewer steps left than asked: every step
    assert sde_math.tail_grid(3, 0, 10) == list(range(3, 11))


def test_the_multistep_solver_is_exact_for_a_velocity_linear_in_sigma():
    """AB2 integrates v(sigma) = a + b sigma exactly on any grid (second order); Euler does not."""
    a, b = torch.tensor([0.3]), torch.tensor([-1.7])
    grid = [0.9, 0.6, 0.45, 0.1, 0.0]
    x, v_prev, h_prev = torch.tensor([2.0]), None, None
    x_euler = x.clone()
    for s, s_next in zip(grid[:-1], grid[1:]):
        v = a + b * s
        if v_prev is None:  # the exact first step (as if the history were known)
            x_new = x + (s_next - s) * a + 0.5 * b * (s_next ** 2 - s ** 2)
        else:
            x_new = sde_math.multistep_step(x, v, v_prev, s, s_next, h_prev)
        x, v_prev, h_prev = x_new, v, s_next - s
        x_euler = sde_math.ode_step(x_euler, a + b * s, s, s_next)
    exact = 2.0 + (0.0 - 0.9) * a + 0.5 * b * (0.0 - 0.9 ** 2)
    assert torch.allclose(x, exact, atol=1e-6)
    assert not torch.allclose(x_euler, exact, atol=1e-2)


def test_a_solver_tail_saves_the_predicted_rows_and_changes_nothing_before_it(tmp_path):
    cfg = tiny_cfg(tmp_path, sampling_steps=10, window_end=5, ode_tail_steps=2, shared_noise=True)
    full_cfg = tiny_cfg(tmp_path / "full", sampling_steps=10, window_end=5, shared_noise=True)
    cheap, full = FlashGRPORecipe(cfg).setup(), FlashGRPORecipe(full_cfg).setup()
    batch_c, batch_f = cheap.rollout_phase(0), full.rollout_phase(0)
    ks = batch_c.plan.group_steps
    G = cfg.group_size
    expected = sum((k + 1) + G * (len(sde_math.tail_grid(k + 1, 2, 10)) - 1) for k in ks)
    assert batch_c.result.forward_rows == expected < batch_f.result.forward_rows
    # the trained transitions (x_k, x_{k+1}, log p_old) are the same (up to the batch layout of the
    # transformer calls): the tail comes after them
    assert torch.allclose(batch_c.result.x_next, batch_f.result.x_next, atol=1e-5)
    assert torch.allclose(batch_c.result.log_prob, batch_f.result.log_prob, atol=1e-4)
    assert not torch.equal(batch_c.result.latents, batch_f.result.latents)
    # counting predicts the mean over the window
    assert expected_passes(cfg)["rollout"] < expected_passes(full_cfg)["rollout"]


def test_a_tail_as_long_as_the_rest_of_the_grid_is_the_plain_rollout(tmp_path):
    cheap = FlashGRPORecipe(tiny_cfg(tmp_path, ode_tail_steps=10)).setup()
    full = FlashGRPORecipe(tiny_cfg(tmp_path / "full")).setup()
    assert torch.equal(cheap.rollout_phase(0).result.latents, full.rollout_phase(0).result.latents)


def test_sampling_without_sde_steps_keeps_the_full_grid(tmp_path):
    r = FlashGRPORecipe(tiny_cfg(tmp_path, ode_tail_steps=2)).setup(training=False)
    plan = StepPlan(torch.zeros(2, 10, dtype=torch.bool), torch.zeros(2, 10, dtype=torch.bool), None)
    from trainer.engine.rollout import rollout

    res = rollout(r.transformer, plan, r.sigmas, r.stds, r.conditioning(["a", "b"]), r.latent_shape,
                  lambda i, j, shape: torch.zeros(shape), tail_steps=2)
    assert res.forward_rows == 2 * 10
    assert make_plan(r.cfg, 0, 1, 2).sde.sum() == 2
