"""α-entmax and its threshold τ.

Convention used everywhere in EntmaxKV: for α > 1

    p_i = [(α - 1) x_i - τ]_+ ^ (1 / (α - 1)),   Σ_i p_i = 1,

and for α = 1 (softmax) p_i = exp(x_i - τ) with τ = logsumexp(x). So in both cases
p_i = ρ_α(lin(α) x_i - τ), with lin(α) = α - 1 (or 1 for softmax) and ρ_α as in ``rho``.

τ is exact (sort based) for α = 1.5 and α = 2, and found by bisection with a fixed number of
iterations otherwise, so no path has data-dependent control flow. Entries equal to -inf are
masked: they get probability 0 and do not count towards the support.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entmaxkv.validation import check_alpha

__all__ = ["entmax", "entmax_threshold", "rho", "lin", "BISECTION_ITERS"]

BISECTION_ITERS = 60  # halves a bracket of width <= 1 below float64 resolution


def lin(alpha: float) -> float:
    """The factor applied to scores before the threshold: α - 1, or 1 for softmax."""
    return alpha - 1.0 if alpha > 1.0 else 1.0


def rho(z: Tensor, alpha: float) -> Tensor:
    """Probability as a function of ``lin(α)·x - τ``: [z]_+^(1/(α-1)), or exp(z) for α = 1."""
    if alpha == 1.0:
        return torch.exp(z)
    if alpha == 2.0:
        return z.clamp_min(0)
    return z.clamp_min(0).pow(1.0 / (alpha - 1.0))


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _sorted_threshold(z: Tensor, alpha: float) -> Tensor:
    """Exact τ over the last dim for α in {1.5, 2}; z = (α-1)·x, sorted descending inside."""
    zs, _ = torch.sort(z, dim=-1, descending=True)
    valid = zs > float("-inf")
    zf = torch.where(valid, zs, torch.zeros_like(zs))
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cs = zf.cumsum(-1)
    if alpha == 2.0:
        tau_k = (cs - 1) / k
        cond = zs > tau_k
    else:  # 1.5: solve Σ_{j<=k} (z_j - τ)^2 = 1 on the top-k entries
        mean = cs / k
        ss = (zf.square().cumsum(-1) - k * mean.square()).clamp_min(0)
        tau_k = mean - ((1 - ss) / k).clamp_min(0).sqrt()
        cond = tau_k <= zs
    support = (cond & valid).sum(-1, keepdim=True).clamp_min(1)
    return tau_k.gather(-1, support - 1).squeeze(-1)


def _bisection_threshold(z: Tensor, alpha: float) -> Tensor:
    """τ over the last dim for any α in (1, 2] by bisection; z = (α-1)·x."""
    inv = 1.0 / (alpha - 1.0)
    valid = z > float("-inf")
    n = valid.sum(-1, keepdim=True).clamp_min(1).to(z.dtype)
    zmax = z.amax(-1, keepdim=True)
    lo = zmax - 1.0  # f(lo) >= 0: the top entry alone has mass 1
    hi = zmax - n.pow(-(alpha - 1.0))  # f(hi) <= 0: every entry has mass <= 1/n
    for _ in range(BISECTION_ITERS):
        mid = (lo + hi) / 2
        f = (z - mid).clamp_min(0).pow(inv).sum(-1, keepdim=True) - 1
        lo = torch.where(f >= 0, mid, lo)
        hi = torch.where(f >= 0, hi, mid)
    return ((lo + hi) / 2).squeeze(-1)


def entmax_threshold(x: Tensor, alpha: float = 1.5, dim: int = -1) -> Tensor:
    """τ such that Σ_i ρ_α(lin(α)·x_i - τ) = 1 along ``dim`` (which is removed).

    Computed in float32 (float64 for float64 input) and returned in that dtype.
    Example: ``entmax_threshold(torch.tensor([0., 1.]), alpha=2.0)`` is 0.0.
    """
    check_alpha(alpha)
    alpha = float(alpha)
    z = x.movedim(dim, -1).to(_work_dtype(x))
    if alpha == 1.0:
        return torch.logsumexp(z, dim=-1)
    z = z * (alpha - 1.0)
    if alpha in (1.5, 2.0):
        return _sorted_threshold(z, alpha)
    return _bisection_threshold(z, alpha)


def entmax(x: Tensor, alpha: float = 1.5, dim: int = -1) -> Tensor:
    """α-entmax along ``dim``: α = 1 is softmax, α = 2 sparsemax. Same shape and dtype as x.

    Example::

        >>> entmax(torch.tensor([3.0, 1.0, -2.0]), alpha=2.0)
        tensor([1., 0., 0.])
    """
    check_alpha(alpha)
    alpha = float(alpha)
    z = x.movedim(dim, -1).to(_work_dtype(x))
    tau = entmax_threshold(z, alpha, dim=-1)
    p = rho(lin(alpha) * z - tau.unsqueeze(-1), alpha)
    if alpha not in (1.5, 2.0):
        # bisection leaves τ within a tiny bracket; renormalise as the entmax library does
        p = p / p.sum(-1, keepdim=True)
    return p.to(x.dtype).movedim(-1, dim)
