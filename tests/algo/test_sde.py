"""Numerical tests of the SDE/ODE math, K(t), rectification and the schedule CLI."""

import json
import math

import pytest
import torch

from trainer.algo import sde
from trainer.schedule import main as schedule_main
from trainer.schedule import schedule_table

GRID = sde.sigma_grid(10, 3.0).float()


def test_sigma_grid_matches_diffusers_unipc_flow_grid():
    from diffusers import UniPCMultistepScheduler

    for steps, shift in [(20, 3.0), (10, 8.0), (50, 3.0)]:
        ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
        ref.set_timesteps(steps)
        ours = sde.sigma_grid(steps, shift)
        assert ours.shape == (steps + 1,) and ours[-1] == 0
        # diffusers nudges sigma_0 down by 1e-6 to keep its own log finite; otherwise identical
        assert torch.allclose(ours, ref.sigmas.double(), atol=2e-6)


@pytest.mark.parametrize("schedule", sde.NOISE_SCHEDULES)
def test_log_prob_equals_direct_gaussian_density(schedule):
    torch.manual_seed(0)
    x, v, x_next = torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4, 2, 3, 3)
    j = 3
    s = sde.noise_std(schedule, GRID[j], GRID)
    mean = sde.sde_mean(x, v, GRID[j], GRID[j + 1], s)
    lp = sde.sde_log_prob(x_next, mean, GRID[j], GRID[j + 1], s)
    scale = float(s) * math.sqrt(float(GRID[j] - GRID[j + 1]))
    direct = torch.distributions.Normal(mean.double(), scale).log_prob(x_next.double()).flatten(1).mean(1)
    assert torch.allclose(lp.double(), direct, atol=1e-5)


def test_mean_is_reference_formula_and_std_zero_gives_euler():
    torch.manual_seed(1)
    x, v = torch.randn(2, 4, 1, 2, 2), torch.randn(2, 4, 1, 2, 2)
    t, tn, s = 0.8, 0.7, 0.5
    dt = tn - t
    expected = x * (1 + s**2 / (2 * t) * dt) + v * (1 + s**2 * (1 - t) / (2 * t)) * dt
    assert torch.allclose(sde.sde_mean(x, v, t, tn, s), expected, atol=1e-6)
    assert torch.equal(sde.sde_mean(x, v, t, tn, 0.0), sde.ode_step(x, v, t, tn))
    assert torch.allclose(sde.ode_step(x, v, t, tn), x + dt * v)


@pytest.mark.parametrize("schedule", sde.NOISE_SCHEDULES)
def test_first_step_at_sigma_one_is_finite(schedule):
    torch.manual_seed(2)
    x, v, eps = torch.randn(2, 4, 1, 2, 2), torch.randn(2, 4, 1, 2, 2), torch.randn(2, 4, 1, 2, 2)
    assert GRID[0] == 1.0
    s = sde.noise_std(schedule, GRID[0], GRID)
    x_next, lp, mean = sde.sde_step(x, v, GRID[0], GRID[1], s, noise=eps)
    assert torch.isfinite(s) and s > 0
    assert torch.isfinite(x_next).all() and torch.isfinite(lp).all()
    assert torch.isfinite(sde.grad_scale(GRID[0], GRID[1], s))


def test_flow_grpo_std_uses_second_sigma_at_t_one():
    s = sde.noise_std("flow_grpo", torch.tensor(1.0), GRID, 0.7)
    assert torch.isclose(s, 0.7 * torch.sqrt(1.0 / (1.0 - GRID[1])))
    s_flash = sde.noise_std("flash", GRID[:-1], GRID)
    assert torch.allclose(s_flash, GRID[1] * GRID[:-1])  # sigma_max = sigma_1, sigma_min = 0


@pytest.mark.parametrize("schedule", sde.NOISE_SCHEDULES)
@pytest.mark.parametrize("j", [0, 2, 5, 8])
def test_grad_scale_equals_autograd_of_on_policy_log_prob(schedule, j):
    """d(log p)/dv = -eps * K(t) / D element-wise, on-policy."""
    torch.manual_seed(3 + j)
    shape = (1, 4, 2, 3, 3)
    D = math.prod(shape[1:])
    x, eps = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    v = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    t, tn = GRID[j].double(), GRID[j + 1].double()
    s = sde.noise_std(schedule, GRID[j], GRID).double()
    with torch.no_grad():
        x_next = sde.sde_mean(x, v, t, tn, s).double() + s * torch.sqrt(t - tn) * eps
    # score with float64 copies of the formulas (the library computes in float32)
    dt = tn - t
    mean = x * (1 + s**2 / (2 * t) * dt) + v * (1 + s**2 * (1 - t) / (2 * t)) * dt
    lp = (-((x_next - mean) ** 2) / (2 * s**2 * (-dt)) - torch.log(s * torch.sqrt(-dt))).mean()
    (grad,) = torch.autograd.grad(lp, v)
    K = sde.grad_scale(GRID[j], GRID[j + 1], sde.noise_std(schedule, GRID[j], GRID)).double()
    assert torch.allclose(grad, -eps * K / D, rtol=1e-4, atol=1e-9)


def test_grad_scale_matches_float32_library_log_prob():
    torch.manual_seed(5)
    shape = (1, 4, 2, 3, 3)
    x, eps = torch.randn(shape), torch.randn(shape)
    v = torch.randn(shape, requires_grad=True)
    s = sde.noise_std("flash", GRID[4], GRID)
    with torch.no_grad():
        x_next, _, _ = sde.sde_step(x, v, GRID[4], GRID[5], s, noise=eps)
    _, lp, _ = sde.sde_step(x, v, GRID[4], GRID[5], s, x_next=x_next)
    (grad,) = torch.autograd.grad(lp.sum(), v)
    K = sde.grad_scale(GRID[4], GRID[5], s)
    assert torch.allclose(grad, -eps * K / eps.numel(), rtol=1e-3, atol=1e-7)


def test_per_sample_sigmas_broadcast_like_separate_calls():
    torch.manual_seed(6)
    x, v, eps = torch.randn(3, 4, 1, 2, 2), torch.randn(3, 4, 1, 2, 2), torch.randn(3, 4, 1, 2, 2)
    js = torch.tensor([0, 4, 7])
    s = sde.noise_std("flash", GRID[js], GRID)
    xb, lpb, _ = sde.sde_step(x, v, GRID[js], GRID[js + 1], s, noise=eps)
    for i, j in enumerate(js.tolist()):
        xi, lpi, _ = sde.sde_step(x[i : i + 1], v[i : i + 1], GRID[j], GRID[j + 1], s[i], noise=eps[i : i + 1])
        assert torch.allclose(xb[i], xi[0]) and torch.allclose(lpb[i], lpi[0])


def test_rectification_weights_mean_one_and_inverse_to_k():
    k = torch.tensor([0.1, 0.2, 0.4, 0.2])
    c = sde.rectification_weights(k)
    assert torch.isclose(c.mean(), torch.tensor(1.0))
    assert torch.allclose(c * k, (c * k)[0].expand(4))  # c proportional to 1/K
    # with a global mean from other ranks the local weights need not average to 1
    g = sde.rectification_weights(k, global_mean_inv_k=torch.tensor(10.0))
    assert torch.allclose(g, (1 / k) / 10.0)


def test_k_spread_matches_reference_statements():
    # "about 2x across the first half of a 20-step shift-3 grid under flash"
    g20 = sde.sigma_grid(20, 3.0).float()
    k = sde.grad_scale(g20[:-1], g20[1:], sde.noise_std("flash", g20[:-1], g20))
    assert 1.8 < float(k[:10].max() / k[:10].min()) < 2.2
    # "more than 20x across a 10-step grid under flow_grpo"
    k2 = sde.grad_scale(GRID[:-1], GRID[1:], sde.noise_std("flow_grpo", GRID[:-1], GRID))
    assert float(k2.max() / k2.min()) > 20


def test_schedule_reproduces_flash_grpo_wan_recipe_weights():
    """20 UniPC flow steps, shift 3, flash schedule: weights = (1/K)/mean over steps 0..9."""
    from diffusers import UniPCMultistepScheduler

    ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    ref.set_timesteps(20)
    sig = ref.sigmas.double()
    sig[0] = 1.0
    s = sig[1] * sig[:-1]  # flash: sigma_min + (sigma_max - sigma_min) t, sigma_max = sigma_1, sigma_min = 0
    dt = (sig[1:] - sig[:-1]).abs()
    K = dt.sqrt() * (1 / s + s * (1 - sig[:-1]) / (2 * sig[:-1]))
    expected = (1 / K) / (1 / K[:10]).mean()
    rows = schedule_table(20, 3.0, "flash")
    got = torch.tensor([r["rect_weight"] for r in rows], dtype=torch.float64)
    assert torch.allclose(got, expected, rtol=1e-5)
    assert [r["in_window"] for r in rows] == [True] * 10 + [False] * 10
    assert abs(sum(r["rect_weight"] for r in rows[:10]) / 10 - 1) < 1e-6


def test_schedule_cli_json_and_table(capsys):
    assert schedule_main(["--steps", "20", "--shift", "3", "--noise", "flash", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 20 and data["window"] == [0, 10]
    assert schedule_main(["--steps", "8", "--noise", "dance"]) == 0
    out = capsys.readouterr().out
    assert "K(t)" in out and len([ln for ln in out.splitlines() if ln.strip()[:1].isdigit()]) == 8
    assert schedule_main(["--steps", "8", "--window-start", "6", "--window-end", "4"]) == 2
