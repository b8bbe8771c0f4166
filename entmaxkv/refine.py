"""Using a threshold τ that a selector estimated (Gaussian ``fixed`` / ``corrected`` modes).

Both the reference and the kernels apply the same two rules to an estimated τ̂ over the
attended tokens, with z_i = (α−1)·s_i and f(t) = Σ_i ρ(z_i − t) − 1 (convex, decreasing):

1. ``usable_tau``: τ = min(τ̂, z_max − 1e-9·(1 + |z_max|)), so the top token keeps weight and
   the renormalised weights are defined.
2. ``refine_tau`` (``corrected``): safeguarded Newton steps. Start from a point known to be
   <= the root — τ̂ itself when f(τ̂) >= 0, raised to z_max − 1, else z_max − 1 (f >= 0 there:
   the top token alone has mass >= 1). Newton from the left of the root of a convex decreasing
   function increases monotonically and never passes the root, so the iterate never diverges
   (the slope is clamped away from 0, the step is capped at z_max). The result is the iterate
   if its constraint residual |f| is no larger than τ̂'s, else τ̂: refinement never makes the
   residual |Σ p − 1| worse.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["usable_tau", "refine_tau", "SLOPE_FLOOR"]

SLOPE_FLOOR = 1e-300  # the kernels use the same constant


def usable_tau(tau: Tensor, zmax: Tensor) -> Tensor:
    """min(τ, z_max − 1e-9·(1 + |z_max|)), elementwise (float64)."""
    return torch.minimum(tau, zmax - 1e-9 * (1 + zmax.abs()))


def _excess(z: Tensor, t: Tensor, power: float) -> tuple[Tensor, Tensor]:
    """f(t) and −f'(t) over the last dim of z (−inf entries are absent)."""
    gap = (z - t.unsqueeze(-1)).clamp_min(0)
    if power == 1.0:
        return gap.sum(-1) - 1, (gap > 0).to(z.dtype).sum(-1)
    value = gap.pow(power).sum(-1) - 1
    slope = power * torch.where(gap > 0, gap.pow(power - 1), torch.zeros_like(gap)).sum(-1)
    return value, slope


def refine_tau(tau_hat: Tensor, z: Tensor, alpha: float, iters: int) -> Tensor:
    """Safeguarded Newton refinement of τ̂ [...] on z [..., N] = (α−1)·scores (float64, −inf
    absent), α in (1, 2]. Fixed iteration count: no data-dependent control flow."""
    power = 1.0 / (alpha - 1.0)
    zmax = z.amax(-1)
    f_hat, _ = _excess(z, tau_hat, power)
    x = torch.where(f_hat >= 0, torch.maximum(tau_hat, zmax - 1), zmax - 1)
    for _ in range(iters):
        fx, slope = _excess(z, x, power)
        x = torch.minimum(torch.maximum(x + fx / slope.clamp_min(SLOPE_FLOOR), x), zmax)
    fx, _ = _excess(z, x, power)
    return torch.where(fx.abs() <= f_hat.abs(), x, tau_hat)
