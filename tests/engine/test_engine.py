"""The engine on the tiny model: plans, rollouts, the ratio invariant, strategies, rectification."""

import math

import pytest
import torch

from trainer.engine.config import FlashGRPOConfig
from trainer.engine.recipe import FlashGRPORecipe, sample_noise
from trainer.engine.rollout import rollout, transition_log_prob
from trainer.engine.strategies import StepPlan, expected_passes, make_plan, mix_window
from trainer.errors import UserError


def tiny_cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), run_name="t", iterations=2, sample_videos=False, eval_prompts=0)
    base.update(kw)
    return FlashGRPOConfig.from_dict(base, preset="tiny_demo")


@pytest.fixture
def recipe(tmp_path):
    return FlashGRPORecipe(tiny_cfg(tmp_path)).setup()


# ---- plans --------------------------------------------------------------------------------------
def test_flash_plan_iso_temporal_shares_k_inside_each_group(tmp_path):
    cfg = tiny_cfg(tmp_path, sampling_steps=20, window_end=10)
    plan = make_plan(cfg, iteration=3, num_groups=6, group_size=4)
    ks = plan.sde.float().argmax(dim=1).view(6, 4)
    assert plan.sde.sum(1).eq(1).all()  # exactly one SDE step per sample
    assert (ks == ks[:, :1]).all()  # the same k for the whole group
    assert ks.min() >= 0 and ks.max() < 10
    assert plan.group_steps == ks[:, 0].tolist()
    assert torch.equal(plan.train, plan.sde)
    again = make_plan(cfg, iteration=3, num_groups=6, group_size=4)  # what every rank draws
    assert torch.equal(again.sde, plan.sde)


def test_flash_plan_without_iso_temporal_draws_k_per_sample(tmp_path):
    cfg = tiny_cfg(tmp_path, sampling_steps=20, iso_temporal=False)
    plan = make_plan(cfg, iteration=0, num_groups=4, group_size=8)
    ks = plan.sde.float().argmax(dim=1).view(4, 8)
    assert any(len(set(row.tolist())) > 1 for row in ks)
    assert plan.group_steps is None


def test_k_is_uniform_over_the_window(tmp_path):
    cfg = tiny_cfg(tmp_path, sampling_steps=20, window_start=2, window_end=6)
    counts = torch.zeros(20)
    for it in range(400):
        counts += make_plan(cfg, it, 1, 2).sde[0].float()
    assert counts[:2].sum() == 0 and counts[6:].sum() == 0
    assert counts[2:6].min() > 70  # 100 expected per step


def test_baseline_plans(tmp_path):
    T = 10
    full = make_plan(tiny_cfg(tmp_path, strategy="flow_grpo"), 0, 2, 3)
    assert full.sde.all() and full.train.sum(1).eq(int(T * 0.99)).all()
    dance = make_plan(tiny_cfg(tmp_path, strategy="dance"), 0, 2, 3)
    assert dance.sde.all() and dance.train.sum(1).eq(6).all()
    assert not torch.equal(dance.train[0], dance.train[1]) or not torch.equal(dance.train[1], dance.train[2])
    mix = tiny_cfg(tmp_path, strategy="mixgrpo", mix_window_size=4, mix_shift_every=2)
    windows = [mix_window(mix, it) for it in range(20)]
    assert [w[0] for w in windows[:8]] == [0, 0, 1, 1, 2, 2, 3, 3]  # moves one step every 2 iterations
    assert windows[16] == (8, 10) and windows[14] == (7, 10) and windows[12] == (6, 10)  # to T-2, shorter
    assert windows[18] == (0, 4)  # then rolls back (9 positions: starts 0..T-2)
    p = make_plan(mix, 5, 1, 2)
    assert p.sde[0].nonzero().flatten().tolist() == [2, 3, 4, 5] and torch.equal(p.train, p.sde)
    assert make_plan(mix, 16, 1, 2).sde[0].nonzero().flatten().tolist() == [8, 9]
    assert mix.resolved_shared_noise()  # MixGRPO's code shares the initial noise in a group


# ---- rollout and the ratio invariant -----------------------------------------------------------
def _rollout(recipe, plan, groups=None, noise_key=None):
    prompts = ["a red ball", "a blue square"]
    G = plan.sde.shape[0] // 2
    cond = recipe.conditioning([p for p in prompts for _ in range(G)])
    key = noise_key or (lambda i, step: (i, step))

    def noise_fn(i, step, shape):
        s, st = key(i, step)
        return sample_noise(0, 0, s, st, shape)

    return rollout(recipe.transformer, plan, recipe.sigmas, recipe.stds, cond, recipe.latent_shape, noise_fn,
                   groups=groups), cond


def test_ratio_is_exactly_one_before_the_first_update(recipe):
    plan = make_plan(recipe.cfg, 0, 2, 4)
    res, cond = _rollout(recipe, plan)
    idx = torch.arange(res.trans_step.numel())
    logp, _, _ = transition_log_prob(recipe.transformer, res, idx, recipe.sigmas, recipe.stds, cond)
    assert torch.equal(logp.detach(), res.log_prob)
    event = recipe.run_iteration(0)
    assert event["ratio_mean"] == 1.0 and event["ratio_max_dev"] == 0.0 and event["clip_frac"] == 0.0


def test_the_update_changes_the_policy(recipe):
    plan = make_plan(recipe.cfg, 0, 2, 4)
    res, cond = _rollout(recipe, plan)
    recipe.run_iteration(0)
    idx = torch.arange(res.trans_step.numel())
    logp, _, _ = transition_log_prob(recipe.transformer, res, idx, recipe.sigmas, recipe.stds, cond)
    assert not torch.equal(logp.detach(), res.log_prob)


def test_shared_prefix_equals_separate_trajectories_with_the_same_noise(recipe):
    """With initial noise shared in a group, computing the ODE prefix once changes nothing but cost."""
    plan = make_plan(recipe.cfg, 1, 2, 4)
    G = 4
    same_start = lambda i, step: (i - i % G, step) if step < 0 else (i, step)  # noqa: E731
    separate, _ = _rollout(recipe, plan, groups=None, noise_key=same_start)
    shared, _ = _rollout(recipe, plan, groups=torch.arange(2).repeat_interleave(G), noise_key=same_start)
    assert torch.allclose(shared.latents, separate.latents, atol=1e-5)
    order_s = torch.argsort(shared.trans_sample)
    order_p = torch.argsort(separate.trans_sample)
    assert torch.allclose(shared.log_prob[order_s], separate.log_prob[order_p], atol=1e-5)
    assert shared.inputs.shape[0] == 2 and separate.inputs.shape[0] == 8  # one training input per group
    ks = torch.tensor(plan.group_steps)
    expected_rows = int(((ks + 1) * 1 + (recipe.cfg.sampling_steps - ks - 1) * G).sum())
    assert shared.forward_rows == expected_rows < separate.forward_rows == 8 * recipe.cfg.sampling_steps


def test_ode_only_rollout_equals_plain_euler_sampling(recipe):
    n, T = 2, recipe.cfg.sampling_steps
    plan = StepPlan(torch.zeros(n, T, dtype=torch.bool), torch.zeros(n, T, dtype=torch.bool), None)
    res, cond = _rollout(recipe, plan)
    x = torch.stack([sample_noise(0, 0, i, -1, recipe.latent_shape) for i in range(n)])
    from trainer.engine.rollout import predict_velocity

    with torch.no_grad():
        for j in range(T):
            v = predict_velocity(recipe.transformer, x, recipe.sigmas[j], cond)
            x = x + (recipe.sigmas[j + 1] - recipe.sigmas[j]) * v
    assert torch.allclose(res.latents, x, atol=1e-5)
    assert res.log_prob.numel() == 0


def test_cfg_velocity_is_the_guidance_formula(recipe):
    from trainer.engine.rollout import Conditioning, predict_velocity

    cond = recipe.conditioning(["a red ball"])
    x = torch.randn(1, *recipe.latent_shape)
    with torch.no_grad():
        v = predict_velocity(recipe.transformer, x, 0.7, cond)
        vc = predict_velocity(recipe.transformer, x, 0.7, Conditioning(cond.cond, None, 1.0))
        vu = predict_velocity(recipe.transformer, x, 0.7, Conditioning(cond.uncond, None, 1.0))
    assert torch.allclose(v, vu + 4.5 * (vc - vu), atol=1e-5)


# ---- rectification and the update ---------------------------------------------------------------
def test_rectification_weights_in_an_iteration(tmp_path):
    r = FlashGRPORecipe(tiny_cfg(tmp_path, iso_temporal=False, prompts_per_iteration=2, group_size=4)).setup()
    event = r.run_iteration(0)
    plan = make_plan(r.cfg, 0, 2, 4)
    ks = plan.sde.float().argmax(1)
    inv = 1.0 / r.grad_scales[ks]
    expected = inv / inv.mean()
    for step, w in event["rect_weights"].items():
        assert math.isclose(w, float(expected[ks == int(step)][0]), rel_tol=1e-5)
    off = FlashGRPORecipe(tiny_cfg(tmp_path / "off", rectification=False)).setup().run_iteration(0)
    assert set(off["rect_weights"].values()) == {1.0}


def test_rectified_gradient_equals_weighted_sum_of_per_sample_gradients(tmp_path):
    """The update's gradient is sum_i c_i * grad(surrogate_i) / M: check against single-sample grads."""
    from trainer.algo.grpo import clipped_surrogate

    r = FlashGRPORecipe(tiny_cfg(tmp_path, iso_temporal=False)).setup()
    plan = make_plan(r.cfg, 0, 2, 4)
    res, cond = _rollout(r, plan)
    M = res.trans_step.numel()
    adv = torch.linspace(-1, 1, M)
    inv = 1.0 / r.grad_scales[res.trans_step]
    w = inv / inv.mean()
    # make lora_B non-zero so every LoRA parameter gets a gradient
    with torch.no_grad():
        for p in r.lora_params:
            p.add_(0.01 * torch.randn_like(p))

    def grad_of(index, weights):
        r.optimizer.zero_grad()
        logp, _, _ = transition_log_prob(r.transformer, res, index, r.sigmas, r.stds, cond)
        clipped_surrogate(logp, res.log_prob[index], adv[index], 0.2, weights).loss.sum().backward()
        return torch.cat([p.grad.flatten().clone() for p in r.lora_params])

    full = grad_of(torch.arange(M), w) / M
    parts = sum(w[i] * grad_of(torch.tensor([i]), None) for i in range(M)) / M
    assert torch.allclose(full, parts, rtol=1e-3, atol=1e-9)


def test_kl_term_is_zero_before_the_first_update_and_positive_after(tmp_path):
    r = FlashGRPORecipe(tiny_cfg(tmp_path, kl_beta=0.1)).setup()
    first = r.run_iteration(0)
    assert first["kl"] == 0.0  # LoRA B starts at zero: policy == reference
    second = r.run_iteration(1)
    assert second["kl"] > 0.0


@pytest.mark.parametrize("strategy", ["flow_grpo", "dance", "mixgrpo"])
def test_every_strategy_runs_an_iteration(tmp_path, strategy):
    r = FlashGRPORecipe(tiny_cfg(tmp_path, strategy=strategy, dance_best_of_n=2 if strategy == "dance" else 0)).setup()
    event = r.run_iteration(0)
    expected = {"flow_grpo": 8 * 9, "dance": 8 * 6, "mixgrpo": 8 * 4}[strategy]  # rolled out
    assert event["transitions"] == expected
    assert math.isfinite(event["loss"]) and event["grad_norm"] > 0
    assert event["ratio_max_dev"] < 1e-3  # the first minibatch is on-policy


def test_pass_counts(tmp_path):
    flash = expected_passes(tiny_cfg(tmp_path))
    full = expected_passes(tiny_cfg(tmp_path, strategy="flow_grpo"))
    assert flash["update"] == 2 * 3 and full["update"] == 9 * 2 * 3
    assert full["total"] / flash["total"] == pytest.approx((20 + 54) / (20 + 6))
    shared = expected_passes(tiny_cfg(tmp_path, shared_noise=True))
    assert shared["rollout"] < flash["rollout"]


def test_decode_gives_uint8_videos_by_the_reference_formula_in_any_chunking(recipe):
    latents = torch.randn(3, *recipe.latent_shape, generator=torch.Generator().manual_seed(0))
    videos = recipe.decode(latents)
    assert videos.dtype == torch.uint8 and videos.shape == (3, 9, 64, 64, 3)
    vae = recipe.pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        x = vae.decode(latents * std + mean, return_dict=False)[0].permute(0, 2, 3, 4, 1)
    ref = (((x + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8)
    assert (videos.int() - ref.int()).abs().max() <= 1  # float rounding at a .5 boundary at most
    recipe.cfg.decode_batch_size = 2
    assert [c.shape[0] for c in recipe.decode_chunks(latents)] == [2, 1]
    assert (recipe.decode(latents).int() - videos.int()).abs().max() <= 1

    # A VAE that decodes to NaN (e.g. a file with broken weights) stops with the cause, not black videos.
    with torch.no_grad():
        vae.decoder.conv_in.weight[0].fill_(float("nan"))

    with pytest.raises(UserError, match="the decoded videos hold NaN or Inf"):
        recipe.decode(latents)


def test_the_cpu_vae_norms_decode_what_the_stock_norms_decode(recipe):
    """On CPU the recipe gives Wan's VAE the sum-of-squares RMS norm; it decodes the same videos as
    diffusers' own norm (to float rounding), also in bfloat16, and switches back."""
    from trainer.engine.models import use_cpu_vae_norms

    vae = recipe.pipe.vae
    norms = [m for m in vae.modules() if "forward" in m.__dict__]
    assert norms and len(norms) == use_cpu_vae_norms(vae, True)  # the recipe set them up
    latents = torch.randn(2, *recipe.latent_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = vae.decode(latents, return_dict=False)[0]
        norm = next(m for m in norms if m.gamma.dim() == 4)  # a [C, 1, 1, 1] norm of 5-d activations
        x = torch.randn(2, norm.gamma.shape[0], 3, 5, 5).bfloat16()
        fast_bf16 = norm(x)
        use_cpu_vae_norms(vae, False)
        assert not any("forward" in m.__dict__ for m in vae.modules())
        stock = vae.decode(latents, return_dict=False)[0]
        stock_bf16 = norm(x)
    use_cpu_vae_norms(vae, True)
    assert (fast - stock).abs().max() < 1e-4 and stock.abs().max() > 0.1
    assert fast_bf16.dtype == stock_bf16.dtype and (fast_bf16.float() - stock_bf16.float()).abs().max() < 2e-2


def test_chunked_scoring_equals_scoring_all_videos(recipe):
    latents = torch.randn(3, *recipe.latent_shape, generator=torch.Generator().manual_seed(1))
    prompts = ["a", "b", "c"]
    whole = recipe.reward_fn(recipe.decode(latents), prompts)
    chunked = recipe.score_latents(latents, prompts)
    assert torch.allclose(chunked.scores, whole.scores, atol=1e-6)
    assert chunked.details.keys() == whole.details.keys()


def test_embeddings_are_cached_unpadded_and_padded_like_diffusers(recipe):
    e = recipe.embed(["b", "a", "a"])
    assert e.shape[0] == 3 and torch.equal(e[1], e[2])
    L = recipe.cfg.max_sequence_length
    ref, _ = recipe.pipe.encode_prompt(["a", "b"], do_classifier_free_guidance=False, max_sequence_length=L)
    assert torch.allclose(e[1], ref[0], atol=1e-6) and torch.allclose(e[0], ref[1], atol=1e-6)
    cached = recipe._embeddings["a"]
    assert cached.shape[0] < L and cached.abs().sum(dim=1).gt(0).all()  # no padding rows kept
    # every prompt of the run was encoded at setup (training, held-out, negative)
    assert {*recipe.prompts.train, recipe.cfg.negative_prompt} <= set(recipe._embeddings)


def test_rollout_pads_its_forward_calls_to_the_largest_count_of_any_rank(recipe):
    calls = []
    plan = StepPlan(sde=torch.zeros(3, 4, dtype=torch.bool), train=torch.zeros(3, 4, dtype=torch.bool),
                    group_steps=None)
    model = recipe.transformer

    def counting(*a, **kw):
        calls.append(1)
        return model(*a, **kw)

    counting.parameters = model.parameters
    cond = recipe.conditioning(["a", "b", "c"])
    sigmas = recipe.sigmas[:5].clone()
    sigmas[-1] = 0.0
    rollout(counting, plan, sigmas, torch.zeros(4), cond, recipe.latent_shape,
            lambda i, j, shape: sample_noise(0, 0, i, j, shape), chunk=2, sync_calls=lambda n: n + 3)
    assert len(calls) == 4 * (2 + 3)  # 2 calls of <= 2 rows per step, padded by 3


def test_before_after_sheet_is_written_and_survives_a_resume(tmp_path):
    """samples/before_after.png: the base model's held-out videos next to the trained ones; a
    resumed run no longer holds the "before" videos and samples them again from the base model."""
    from PIL import Image

    cfg = tiny_cfg(tmp_path, iterations=1, eval_prompts=1, sample_videos=True, run_name="ba")
    first = FlashGRPORecipe(cfg).setup()
    first.train()
    sheet = tmp_path / "ba" / "samples" / "before_after.png"
    made_in_one_go = Image.open(sheet).convert("RGB")
    before_scores = first._samples["before"][1]
    sheet.unlink()

    resumed = FlashGRPORecipe(FlashGRPOConfig.from_dict({**cfg.to_dict(), "iterations": 2}),
                              run_dir=tmp_path / "ba", resume=True).setup()
    resumed.train()
    assert "before" in resumed._samples and sheet.is_file()
    # The base model's samples are the same as those of the run's start (the LoRA starts at zero).
    assert resumed._samples["before"][1] == before_scores
    assert Image.open(sheet).size == made_in_one_go.size


def test_preview_every_writes_held_out_samples_during_training_and_the_animated_before_after(tmp_path):
    """preview_every=1 over 3 iterations: previews after iterations 1 and 2 (not after the last:
    the "after" samples are its preview), each an animated WebP of the held-out videos as the
    "after" samples are drawn, with its middle frame as PNG; a resume drops previews past its checkpoint."""
    import numpy as np
    from PIL import Image

    from trainer.engine.runlog import EventLog

    cfg = tiny_cfg(tmp_path, iterations=3, eval_prompts=2, sample_videos=True, run_name="pv", preview_every=1,
                   checkpoint_every=1)
    seen = []
    result = FlashGRPORecipe(cfg).setup().train(on_event=seen.append)
    previews = [e for e in seen if e["event"] == "preview"]
    held_out = FlashGRPORecipe(cfg).setup(training=False).prompts.eval
    assert [e["iterations_done"] for e in previews] == [1, 2] and [e["iteration"] for e in previews] == [0, 1]
    assert [e for e in EventLog(tmp_path / "pv" / "events.jsonl").read() if e["event"] == "preview"] == previews
    for e in previews:
        assert e["path"] == str(tmp_path / "pv" / "samples" / f"preview_{e['iterations_done']:05d}.webp")
        assert len(e["eval_rewards"]) == 2 and e["prompts"] == held_out
        with Image.open(e["path"]) as im:
            assert im.format == "WEBP" and im.n_frames == cfg.num_frames
            assert im.size == (2 * (2 * cfg.width + 2), 2 * cfg.height)  # two prompts side by side, 2x
            im.seek(cfg.num_frames // 2)
            middle = np.asarray(im.convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(e["frame"]).convert("RGB")), middle)
    # The preview after iteration 2 shows what training changed since iteration 1.
    first, second = (np.asarray(Image.open(e["frame"])) for e in previews)
    assert not np.array_equal(first, second)
    with Image.open(result.run_dir / "samples" / "before_after.webp") as im:  # before (top) and after
        assert im.n_frames == cfg.num_frames and im.size == (2 * (2 * cfg.width + 2), 2 * (2 * cfg.height + 2))

    log = EventLog(tmp_path / "pv" / "events.jsonl")
    log.truncate_after(0)  # a resume from the checkpoint after iteration 1
    assert [e["iteration"] for e in log.read() if e["event"] in ("iteration", "preview")] == [0, 0]


def test_sampling_with_an_aligned_lora_file_at_a_strength(tmp_path):
    """``lora_file``: the trained LoRA replaces the fresh one; strength 0 samples the base model
    exactly, strength s scales the LoRA's delta (s = 2 moves twice as far as 1, to first order)."""
    from trainer.engine import lora as lora_lib

    cfg = tiny_cfg(tmp_path, eval_sampling_steps=4)
    trained = FlashGRPORecipe(cfg).setup(training=False)
    with torch.no_grad():
        for name, p in lora_lib.lora_parameters(trained.transformer):
            if ".lora_B." in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "trained.safetensors"
    lora_lib.save_aligned_lora(path, trained.transformer, cfg.lora_rank, cfg.lora_alpha, {"trainer": "test"})
    prompts = ["a red ball", "a blue cube"]

    def videos(strength=None):
        r = FlashGRPORecipe(cfg, lora_file=None if strength is None else (str(path), strength)).setup(training=False)
        return r.sample(prompts)

    base, zero, one, two = videos(), videos(0.0), videos(1.0), videos(2.0)
    assert torch.equal(base, zero)
    assert torch.equal(one, trained.sample(prompts))  # the file computes what the module did
    d1, d2 = (one - base).abs().mean(), (two - base).abs().mean()
    assert d1 > 0 and 1.3 < float(d2 / d1) < 2.7


def test_weights_hash_is_computed_once_per_module(recipe, monkeypatch):
    from trainer.engine.models import weights_hash

    first = weights_hash(recipe.transformer)
    assert first == recipe.base_model_hash
    monkeypatch.setattr(recipe.transformer, "state_dict", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rehashed")))
    assert weights_hash(recipe.transformer) == first


def test_noise_is_drawn_on_the_given_device_from_the_seeding_rule():
    from trainer import seeding

    a = sample_noise(3, 1, 2, 5, (2, 3), "cpu")
    assert torch.equal(a, seeding.normal((2, 3), 3, "noise", 1, 2, 5))
    assert torch.equal(a, sample_noise(3, 1, 2, 5, (2, 3)))
    assert not torch.equal(a, sample_noise(3, 1, 2, 6, (2, 3)))


def test_attention_backend_is_selectable_and_a_missing_one_is_refused(tmp_path):
    from trainer.errors import UserError

    native = predict(FlashGRPORecipe(tiny_cfg(tmp_path)).setup(training=False))
    math_ = FlashGRPORecipe(tiny_cfg(tmp_path, attention_backend="_native_math")).setup(training=False)
    assert str(math_.transformer.blocks[0].attn1.processor._attention_backend.value) == "_native_math"
    v = [native, predict(math_)]
    assert (v[0] - v[1]).abs().max() < 1e-5 * v[0].abs().max()
    again = FlashGRPORecipe(tiny_cfg(tmp_path)).setup(training=False)  # back to native, process-wide too
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    assert _AttentionBackendRegistry.get_active_backend()[0].value == "native"
    assert torch.equal(predict(again), v[0])
    import importlib.util

    if importlib.util.find_spec("sageattention") is None:
        with pytest.raises(UserError, match="attention_backend='sage'"):
            FlashGRPORecipe(tiny_cfg(tmp_path, attention_backend="sage")).setup(training=False)


def predict(recipe):
    from trainer.engine.rollout import predict_velocity

    x = torch.randn(2, *recipe.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return predict_velocity(recipe.transformer, x, torch.tensor(0.5), recipe.conditioning(["a", "b"]))


def test_eval_samples_average_the_held_out_score_over_initial_noises(tmp_path):
    """eval_samples=3: each held-out prompt's score is the mean over three ODE samples from three
    initial noises (none of them a training iteration's), the readings and videos are the first's."""
    cfg = tiny_cfg(tmp_path, eval_prompts=2, eval_samples=3, prompts=["a red cat", "a blue dog", "a green car"])
    recipe = FlashGRPORecipe(cfg).setup()
    out = recipe._write_samples("before")
    prompts = recipe.prompts.eval
    draws = [recipe.reward_fn(recipe.sample(prompts, draw=d), prompts).scores for d in range(3)]
    assert not torch.equal(draws[0], draws[1])  # other noise, other videos
    assert torch.allclose(torch.tensor(out["eval_rewards"]), torch.stack(draws).mean(0))
    assert out["eval_samples"] == 3
    assert torch.allclose(recipe.sample(prompts), recipe.sample(prompts, draw=0))
    with pytest.raises(UserError, match="eval_samples=0"):
        tiny_cfg(tmp_path, eval_samples=0).validate()
