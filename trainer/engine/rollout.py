"""Rollouts: sampling trajectories with ODE and SDE steps, keeping what the update needs.

``predict_velocity`` is the only place the transformer is called with classifier-free guidance:
the rollout and the update both use it, so the cond/uncond layout and the guidance formula are
identical in both: ``v = v_u + w (v_c - v_u)`` (classifier-free guidance with scale ``w``), as the
importance ratio ``exp(log p - log p_old)`` of the clipped surrogate requires.

``rollout`` runs all trajectories of a batch in lockstep over the sigma grid. Trajectories that
start from the same noise and have taken only ODE steps so far are the same trajectory: they are
kept as one row and split when their first SDE step comes. With shared initial noise per group
and Flash-GRPO's single SDE step ``k``, the whole prefix up to and including the velocity at step
``k`` is computed once per group.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ..algo import sde as sde_math
from .strategies import StepPlan


@dataclass
class Conditioning:
    """Text embeddings per sample: ``cond`` ``[N, L, D]`` and ``uncond`` (``None`` without CFG)."""

    cond: torch.Tensor
    uncond: torch.Tensor | None
    guidance_scale: float

    def rows(self, index: torch.Tensor) -> "Conditioning":
        return Conditioning(
            self.cond[index], None if self.uncond is None else self.uncond[index], self.guidance_scale
        )


def autocast_context(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on CUDA; plain float32 elsewhere."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def predict_velocity(
    transformer, x: torch.Tensor, sigma: torch.Tensor, conditioning: Conditioning, chunk: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Guided velocity ``v_u + w (v_c - v_u)`` in float32, for rows ``x`` at per-row ``sigma``.

    With guidance, cond and uncond rows go through the transformer in one batch, cond first:
    ``[x; x]`` with ``[cond; uncond]``. ``chunk`` (> 0) bounds the rows per forward call.
    """
    n = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(n)
    if chunk and n > chunk:
        return torch.cat([
            predict_velocity(transformer, x[i : i + chunk], sigma[i : i + chunk],
                             conditioning.rows(torch.arange(i, min(i + chunk, n))), 0, dtype)
            for i in range(0, n, chunk)
        ])
    w = conditioning.guidance_scale
    guided = conditioning.uncond is not None and w != 1.0
    model_dtype = next(transformer.parameters()).dtype
    if guided:
        inp = torch.cat([x, x])
        t = torch.cat([sigma, sigma]) * 1000.0
        emb = torch.cat([conditioning.cond, conditioning.uncond])
    else:
        inp, t, emb = x, sigma * 1000.0, conditioning.cond
    with autocast_context(x.device, dtype):
        out = transformer(
            hidden_states=inp.to(model_dtype), timestep=t, encoder_hidden_states=emb.to(model_dtype),
            return_dict=False,
        )[0].float()
    if not guided:
        return out
    v_cond, v_uncond = out.chunk(2)
    return v_uncond + w * (v_cond - v_uncond)


NoiseFn = "Callable[[int, int, tuple], torch.Tensor]"  # (sample id, step (-1 = initial), shape) -> noise


@dataclass
class RolloutResult:
    """Output of ``rollout``. Transitions are the trained (sample, step) pairs, ``M`` of them.

    ``inputs`` holds the distinct states ``x_j`` the trained transitions start from (``U <= M``:
    samples that shared their trajectory up to step ``j`` share one input); transition ``m``
    starts from ``inputs[trans_input[m]]``.
    """

    latents: torch.Tensor  # [N, C, F, H, W] final clean latents
    inputs: torch.Tensor  # [U, C, F, H, W]
    input_sample: torch.Tensor  # [U] a sample whose conditioning the input uses
    input_step: torch.Tensor  # [U]
    trans_input: torch.Tensor  # [M]
    trans_sample: torch.Tensor  # [M]
    trans_step: torch.Tensor  # [M]
    x_next: torch.Tensor  # [M, C, F, H, W]
    log_prob: torch.Tensor  # [M] log p_old
    forward_rows: int = 0  # transformer rows evaluated (cond+uncond counted once per row)
    extras: dict = field(default_factory=dict)


@dataclass
class _Row:
    """A trajectory of ``rollout``: its state ``[1, C, F, H, W]``, the samples sharing it, the grid
    index where it is evaluated next, and in a solver tail the grid points still to visit and the
    previous velocity and step."""

    state: torch.Tensor
    members: list[int]
    next: int = 0
    tail: list[int] | None = None
    v_prev: torch.Tensor | None = None
    h_prev: float | None = None


def rollout(
    transformer,
    plan: StepPlan,
    sigmas: torch.Tensor,
    stds: torch.Tensor,
    conditioning: Conditioning,
    latent_shape: tuple[int, ...],
    noise_fn,
    groups: torch.Tensor | None = None,
    device: torch.device = torch.device("cpu"),  # noqa: B008 - an immutable value
    dtype: torch.dtype = torch.float32,
    chunk: int = 0,
    sync_calls=None,
    tail_steps: int = 0,
) -> RolloutResult:
    """Sample ``N`` trajectories following ``plan`` and record the trained transitions.

    Args:
        plan: SDE/train masks ``[N, T]`` (only rows of this process).
        sigmas: the ``T + 1`` grid; ``stds``: ``s(t)`` at each of the ``T`` steps.
        conditioning: per-sample text embeddings.
        latent_shape: ``(C, F, H, W)`` of one latent video.
        noise_fn: ``noise_fn(sample, step, shape)`` gives the standard normal noise of a sample's
            initial state (``step = -1``) or of its SDE step ``step``; keyed by sample so results
            do not depend on batch layout or process count.
        groups: ``[N]`` group id per sample when the initial noise is shared inside a group
            (rows of one group start as one trajectory); ``None`` for independent noise.
        chunk: trajectories per transformer call (0 = all rows of a step in one call).
        sync_calls: on several processes, ``sync_calls(calls)`` returns the most transformer calls
            any process makes at this step; the missing ones are made on one row and discarded,
            so that every process makes the same number of calls (FSDP all-gathers per call).
        tail_steps: if > 0, a sample finishes after its last SDE step in this many steps of the
            second-order multistep solver (``sde.multistep_step``) over grid points spread evenly
            over the rest of the grid (``sde.tail_grid``), instead of one Euler step per grid point:
            those steps only produce the video that is scored. Samples without SDE steps keep
            the full grid.
    """
    n, T = plan.sde.shape
    sigmas32 = sigmas.to(torch.float32)
    steps = torch.arange(T)
    last_sde = torch.where(plan.sde, steps, torch.full_like(steps, -1)).max(dim=1).values.tolist()
    if groups is None:
        rows = [_Row(noise_fn(i, -1, latent_shape).to(device)[None], [i]) for i in range(n)]
    else:
        rows = []
        for g in torch.unique(groups, sorted=True).tolist():
            members = (groups == g).nonzero().flatten().tolist()
            rows.append(_Row(noise_fn(members[0], -1, latent_shape).to(device)[None], members))

    inputs, input_sample, input_step = [], [], []
    trans_input, trans_sample, trans_step, x_next_list, logp_list = [], [], [], [], []
    forward_rows = 0
    for j in range(T):
        due = [row for row in rows if row.next == j]  # rows in a solver tail skip grid points
        kept = [row for row in rows if row.next != j]
        sigma, sigma_next = sigmas32[j], sigmas32[j + 1]
        with torch.no_grad():
            calls = (-(-len(due) // chunk) if chunk else 1) if due else 0
            padding = 0 if sync_calls is None else sync_calls(calls) - calls  # before any call of this step
            if due:
                x = torch.cat([row.state for row in due]).float()
                lead = torch.tensor([row.members[0] for row in due])
                v = predict_velocity(transformer, x, sigma, conditioning.rows(lead), chunk, dtype)
            for _ in range(padding):  # padding calls, results unused
                first = (due or rows)[0]
                predict_velocity(transformer, first.state.float(), sigma,
                                 conditioning.rows(torch.tensor(first.members[:1])), 0, dtype)
        forward_rows += len(due)
        new_rows = kept
        for r, row in enumerate(due):
            members, xr, vr = row.members, x[r : r + 1], v[r : r + 1]
            if row.tail is not None:
                nxt = row.tail[0]
                state = sde_math.multistep_step(xr, vr, row.v_prev, sigma, sigmas32[nxt], row.h_prev)
                new_rows.append(_Row(state, members, nxt, row.tail[1:], vr, float(sigmas32[nxt] - sigma)))
                continue
            sde_members = [i for i in members if plan.sde[i, j]]
            if not sde_members:
                new_rows.append(_Row(sde_math.ode_step(xr, vr, sigma, sigma_next), members, j + 1))
                continue
            if any(plan.train[i, j] for i in members):
                u = len(inputs)
                inputs.append(x[r])
                input_sample.append(members[0])
                input_step.append(j)
            for i in members:
                if not plan.sde[i, j]:
                    new_rows.append(_Row(sde_math.ode_step(xr, vr, sigma, sigma_next), [i], j + 1))
                    continue
                eps = noise_fn(i, j, latent_shape).to(device)[None]
                xn, lp, _ = sde_math.sde_step(xr, vr, sigma, sigma_next, stds[j], noise=eps)
                tail = None
                if 0 < tail_steps < T - j - 1 and j == last_sde[i]:  # after the last SDE step: few steps
                    tail = sde_math.tail_grid(j + 1, tail_steps, T)[1:]
                new_rows.append(_Row(xn, [i], j + 1, tail))
                if plan.train[i, j]:
                    trans_input.append(u)
                    trans_sample.append(i)
                    trans_step.append(j)
                    x_next_list.append(xn[0])
                    logp_list.append(lp[0])
        rows = new_rows

    latents = torch.empty((n, *latent_shape), device=device)
    for row in rows:
        latents[row.members] = row.state[0]
    empty = torch.empty((0, *latent_shape), device=device)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return RolloutResult(
        latents=latents,
        inputs=torch.stack(inputs) if inputs else empty,
        input_sample=as_long(input_sample),
        input_step=as_long(input_step),
        trans_input=as_long(trans_input),
        trans_sample=as_long(trans_sample),
        trans_step=as_long(trans_step),
        x_next=torch.stack(x_next_list) if x_next_list else empty,
        log_prob=torch.stack(logp_list) if logp_list else torch.empty(0, device=device),
        forward_rows=forward_rows,
    )


def transition_log_prob(
    transformer,
    result: RolloutResult,
    index: torch.Tensor,
    sigmas: torch.Tensor,
    stds: torch.Tensor,
    conditioning: Conditioning,
    dtype: torch.dtype = torch.float32,
    with_reference: bool = False,
    reference_context=None,
):
    """Recompute ``log p`` of transitions ``index`` under the current policy (with gradients).

    Each distinct input state is sent through the transformer once, however many transitions start
    from it. Returns ``(log_prob [m], mean [m, ...], ref_mean or None)``; ``ref_mean`` is the mean
    under the reference model (``reference_context()`` disables the LoRA), without gradients.
    """
    sigmas32 = sigmas.to(torch.float32)
    used, local = torch.unique(result.trans_input[index], return_inverse=True)
    x = result.inputs[used]
    steps = result.input_step[used]
    cond = conditioning.rows(result.input_sample[used])
    v = predict_velocity(transformer, x, sigmas32[steps], cond, 0, dtype)[local]
    t_steps = result.trans_step[index]
    sigma, sigma_next, std = sigmas32[t_steps], sigmas32[t_steps + 1], stds[t_steps]
    x_in = result.inputs[result.trans_input[index]]
    mean = sde_math.sde_mean(x_in, v, sigma, sigma_next, std)
    logp = sde_math.sde_log_prob(result.x_next[index], mean, sigma, sigma_next, std)
    ref_mean = None
    if with_reference:
        with torch.no_grad(), reference_context():
            v_ref = predict_velocity(transformer, x, sigmas32[steps], cond, 0, dtype)[local]
        ref_mean = sde_math.sde_mean(x_in, v_ref, sigma, sigma_next, std)
    return logp, mean, ref_mean
