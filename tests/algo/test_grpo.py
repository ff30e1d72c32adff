"""The GRPO objective: advantages, clipped surrogate, KL."""

import torch

from trainer.algo.grpo import clipped_surrogate, group_advantages, kl_to_reference


def test_group_advantages_per_group_and_global_std():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 0.0, 4.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    adv, signal = group_advantages(r, g, "group", clip=5.0)
    assert torch.allclose(adv[:3], (r[:3] - 2.0) / (r[:3].std(unbiased=False) + 1e-4))
    assert torch.equal(adv[3:6], torch.zeros(3)) and not signal[3:6].any()  # equal rewards: no signal
    assert signal[:3].all() and signal[6:].all()
    adv_g, _ = group_advantages(r, g, "global", clip=5.0)
    assert torch.allclose(adv_g[6:], (r[6:] - 2.0) / (r.std(unbiased=False) + 1e-4))


def test_group_advantages_are_clipped():
    r = torch.tensor([0.0] * 99 + [1.0])
    adv, _ = group_advantages(r, torch.zeros(100, dtype=torch.long), "group", clip=5.0)
    assert adv.max() == 5.0  # unclipped it would be ~9.9


def test_surrogate_at_ratio_one_is_minus_advantage_and_gradient_is_policy_gradient():
    lp_old = torch.tensor([-1.0, -2.0, -0.5])
    lp = lp_old.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    w = torch.tensor([0.5, 1.0, 1.5])
    out = clipped_surrogate(lp, lp_old, adv, 0.1, w)
    assert torch.equal(out.ratio, torch.ones(3))
    assert torch.allclose(out.loss, -adv * w)
    out.loss.sum().backward()
    assert torch.allclose(lp.grad, -adv * w)  # d/dlogp of -A*ratio at ratio 1


def test_surrogate_clips_in_the_pessimistic_direction():
    lp_old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = clipped_surrogate(lp, lp_old, adv, 0.2)
    expected = torch.tensor([-1.2, 1.5, -0.5, 0.8])
    assert torch.allclose(out.loss, expected)
    out.loss.sum().backward()
    # clipped terms carry no gradient; unclipped ones do
    assert lp.grad[0] == 0 and lp.grad[3] == 0 and lp.grad[1] != 0 and lp.grad[2] != 0
    assert out.clipped.all()


def test_kl_to_reference_formula():
    m, r = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    std = torch.tensor([0.5, 1.0])
    assert torch.allclose(kl_to_reference(m, r, std), 1.0 / (2 * std**2))
    assert torch.equal(kl_to_reference(m, m, std), torch.zeros(2))
