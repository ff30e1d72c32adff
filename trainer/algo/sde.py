"""Flow-matching sampling math as pure float32 tensor functions.

The SDE that turns the deterministic flow-matching ODE into a stochastic policy, as in Flow-GRPO
(arXiv 2505.05470) and Flash-GRPO (arXiv 2605.15980): from ``x_t`` with velocity ``v`` and step
``dt = sigma_next - sigma < 0``,

    x_next = x (1 + s^2 dt / (2t)) + v (1 + s^2 (1 - t) / (2t)) dt + s sqrt|dt| eps,   eps ~ N(0, I)

with a noise scale ``s(t)`` (``noise_std``; ``s = 0`` is the Euler ODE step). Its log-density is
Gaussian with standard deviation ``s sqrt|dt|``. On-policy, the gradient of ``log p`` with respect
to the velocity scales with ``K(t) = sqrt|dt| (1/s + s (1 - t) / (2t))`` (``grad_scale``);
Flash-GRPO's temporal gradient rectification weights each sample by ``c_i = (1/K_i) / mean(1/K)``
(``rectification_weights``) so samples at different timesteps push equally hard.

Conventions
-----------
* ``sigma`` runs from 1 (pure noise) to 0 (clean). A grid of ``T`` steps has ``T + 1`` sigmas,
  the last one 0. Step ``j`` goes from ``sigmas[j]`` to ``sigmas[j + 1]``; ``dt = sigmas[j+1] -
  sigmas[j] < 0``.
* The model predicts the velocity ``v ~ noise - x0``; the transformer's timestep input is
  ``sigma * 1000``.
* Per-sample quantities (``sigma``, ``dt``, the noise scale ``std``) are tensors of shape ``[N]``
  (or scalars); they are broadcast over the other dimensions of ``x`` here, so different samples
  of one batch may sit at different steps.

Everything is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

import math

import torch

NOISE_SCHEDULES = ("flash", "flow_grpo", "dance")
"""Names of the SDE noise schedules ``s(t)`` (see ``noise_std``): Flash-GRPO's linear ``flash``,
Flow-GRPO's ``flow_grpo`` and DanceGRPO's constant ``dance``."""

DEFAULT_NOISE_LEVEL = {"flash": 1.0, "flow_grpo": 0.7, "dance": 0.3}
"""The published noise level of each schedule: a multiplier for ``flash``, ``a`` for
``flow_grpo``, the constant ``eta`` for ``dance``."""

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def time_shift(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's time shift ``shift * sigma / (1 + (shift - 1) * sigma)``."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sigma_grid(steps: int, shift: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The ``steps + 1`` sigmas Wan2.1 samples on, ending with 0 (float64 for exact tables).

    This is the grid of diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True,
    flow_shift=shift)``, the sampler of Wan2.1 and of Flash-GRPO's Wan recipe: ``steps`` points
    evenly spaced from 1 to ``1 / num_train_timesteps``, time-shifted, then a final 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base = torch.linspace(1.0, 1.0 / num_train_timesteps, steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([time_shift(base, shift), torch.zeros(1, dtype=torch.float64)])


def _expand(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample ``[N]`` (or scalar) value over the trailing dims of ``like``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(value.shape + (1,) * (like.ndim - value.ndim))


def noise_std(
    schedule: str, sigma: torch.Tensor, sigmas: torch.Tensor, noise_level: float | None = None
) -> torch.Tensor:
    """The SDE noise scale ``s(t)`` at ``sigma`` for a schedule on the grid ``sigmas``.

    * ``flash``: ``level * (sigma_min + (sigma_max - sigma_min) * t)`` with ``sigma_max =
      sigmas[1]`` and ``sigma_min = sigmas[-1]`` (Flash-GRPO's Wan code; level 1 is the reference).
    * ``flow_grpo``: ``a * sqrt(t / (1 - t))``; at ``t = 1`` the denominator uses ``1 - sigmas[1]``
      so the first step is finite.
    * ``dance``: the constant ``eta``.
    """
    level = DEFAULT_NOISE_LEVEL[schedule] if noise_level is None else float(noise_level)
    t = torch.as_tensor(sigma, dtype=torch.float32)
    sigmas = sigmas.to(torch.float32)
    if schedule == "flash":
        s_max, s_min = sigmas[1], sigmas[-1]
        return level * (s_min + (s_max - s_min) * t)
    if schedule == "flow_grpo":
        denom = torch.where(t >= 1.0, 1.0 - sigmas[1], 1.0 - t)
        return level * torch.sqrt(t / denom)
    if schedule == "dance":
        return torch.full_like(t, level)
    raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {NOISE_SCHEDULES}")


def ode_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Deterministic Euler step ``x + (sigma_next - sigma) * v`` in float32."""
    x, v = x.float(), v.float()
    dt = _expand(torch.as_tensor(sigma_next) - torch.as_tensor(sigma), x)
    return x + dt * v


def multistep_step(x: torch.Tensor, v: torch.Tensor, v_prev: torch.Tensor | None, sigma, sigma_next,
                   h_prev=None) -> torch.Tensor:
    """One step of the second-order Adams-Bashforth flow solver in ``sigma`` (variable steps), float32.

    With ``h = sigma_next - sigma`` and the previous step's ``h_prev`` and velocity ``v_prev``:
    ``x + h ((1 + h / (2 h_prev)) v - h / (2 h_prev) v_prev)``, the linear extrapolation of the
    velocity over the step; one velocity per step, as DPM-Solver++(2M) or UniPC use their history.
    Without history (``v_prev`` None) it is the Euler step ``ode_step``.
    """
    if v_prev is None:
        return ode_step(x, v, sigma, sigma_next)
    h = float(sigma_next) - float(sigma)
    r = h / (2.0 * float(h_prev))
    return x.float() + h * ((1.0 + r) * v.float() - r * v_prev.float())


def tail_grid(start: int, steps: int, total: int) -> list[int]:
    """Grid indices ``start = g_0 < ... < g_n = total`` of a trajectory's tail in ``steps`` steps,
    spread evenly over the remaining indices of the ``total``-step grid (all of them when
    ``steps`` is 0 or not fewer than the remaining steps)."""
    remaining = total - start
    if steps <= 0 or steps >= remaining:
        return list(range(start, total + 1))
    return sorted({round(start + remaining * i / steps) for i in range(steps + 1)})


def sde_mean(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, std) -> torch.Tensor:
    """Mean of the SDE transition from ``sigma`` to ``sigma_next`` with noise scale ``std``.

    ``x * (1 + s^2/(2t) dt) + v * (1 + s^2 (1-t)/(2t)) dt``. With ``std = 0`` this is exactly
    the Euler step.
    """
    x, v = x.float(), v.float()
    t = _expand(sigma, x)
    dt = _expand(torch.as_tensor(sigma_next) - torch.as_tensor(sigma), x)
    s2 = _expand(std, x) ** 2
    return x * (1.0 + s2 / (2.0 * t) * dt) + v * (1.0 + s2 * (1.0 - t) / (2.0 * t)) * dt


def sde_log_prob(x_next: torch.Tensor, mean: torch.Tensor, sigma, sigma_next, std) -> torch.Tensor:
    """Gaussian log-density of ``x_next`` under ``N(mean, s^2 |dt|)``, averaged over elements.

    Returns one value per sample, shape ``[N]``.
    """
    x_next, mean = x_next.float(), mean.float()
    dt_abs = _expand((torch.as_tensor(sigma) - torch.as_tensor(sigma_next)).abs(), x_next)
    step_std = _expand(std, x_next) * torch.sqrt(dt_abs)
    lp = -((x_next - mean) ** 2) / (2.0 * step_std**2) - torch.log(step_std) - _LOG_SQRT_2PI
    return lp.flatten(1).mean(dim=1)


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    std,
    noise: torch.Tensor | None = None,
    x_next: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SDE step with its log-probability: returns ``(x_next, log_prob [N], mean)``.

    Sampling: pass ``noise`` (standard normal, shape of ``x``): ``x_next = mean + s sqrt|dt| eps``.
    Scoring: pass the ``x_next`` to evaluate instead (training recomputes ``log p`` of the
    transition taken during the rollout).
    """
    mean = sde_mean(x, v, sigma, sigma_next, std)
    if x_next is None:
        if noise is None:
            raise ValueError("sde_step needs either noise (to sample) or x_next (to score)")
        dt_abs = _expand((torch.as_tensor(sigma) - torch.as_tensor(sigma_next)).abs(), mean)
        x_next = mean + _expand(std, mean) * torch.sqrt(dt_abs) * noise.float()
    return x_next, sde_log_prob(x_next, mean, sigma, sigma_next, std), mean


def grad_scale(sigma, sigma_next, std) -> torch.Tensor:
    """``K(t) = sqrt|dt| * (1/s + s (1-t) / (2t))``: the on-policy gradient scale.

    On-policy, ``d(log p)/dv = -eps * K(t) / D`` element-wise (``D`` = elements per sample), so
    ``K`` is how strongly a sample's advantage pushes the velocity at that step.
    """
    t = torch.as_tensor(sigma, dtype=torch.float32)
    dt_abs = (t - torch.as_tensor(sigma_next, dtype=torch.float32)).abs()
    s = torch.as_tensor(std, dtype=torch.float32)
    return torch.sqrt(dt_abs) * (1.0 / s + s * (1.0 - t) / (2.0 * t))


def rectification_weights(k_values: torch.Tensor, global_mean_inv_k: torch.Tensor | None = None) -> torch.Tensor:
    """Temporal gradient rectification: ``c_i = (1/K_i) / mean(1/K)``.

    ``k_values`` holds ``K(t_i)`` for this process's samples. The mean of ``1/K`` must be taken
    over the whole global batch (all ranks); pass it as ``global_mean_inv_k`` when running
    distributed, otherwise the local mean is used. The weights are positive and average to 1.
    """
    inv = 1.0 / k_values.float()
    mean = inv.mean() if global_mean_inv_k is None else global_mean_inv_k
    return inv / mean
