"""α-entmax and its threshold τ, with the analytic backward.

Convention used everywhere in EntmaxKV: for α > 1

    p_i = [(α - 1) x_i - τ]_+ ^ (1 / (α - 1)),   Σ_i p_i = 1,

and for α = 1 (softmax) p_i = exp(x_i - τ) with τ = logsumexp(x). So in both cases
p_i = ρ_α(lin(α) x_i - τ), with lin(α) = α - 1 (or 1 for softmax) and ρ_α as in ``rho``.

τ is exact (sort based) for α = 1.5 and α = 2, and found by bisection with a fixed number of
iterations otherwise, so no path has data-dependent control flow. Entries equal to -inf are
masked: they get probability 0 and do not count towards the support. The row maximum is
subtracted first (entmax is shift-invariant, τ shifts by lin(α) times the offset), so scores
sharing a large offset lose no precision in float32.

Gradients. ``entmax`` and ``entmax_threshold`` are one ``torch.autograd.Function``
(``EntmaxFunction``) whose backward is the analytic Jacobian, not autograd through the sort
or the bisection. With s_i = p_i^(2-α) on the support (p_i > 0) and 0 off it (s = p for α = 1),

    ∂p_i/∂x_j = s_i (δ_ij - s_j / Σ_k s_k),      ∂τ/∂x_j = lin(α) s_j / Σ_k s_k,

so gradient flows only through the support (Peters et al. 2019; the ``entmax`` library's
``entmax_bisect`` backward is the same formula). The backward is built from differentiable
torch ops, so second derivatives (``gradgradcheck``, ``jacrev(jacrev(...))``) work wherever
entmax is twice differentiable: away from ties, i.e. no entry with (α-1)·x_i exactly equal
to τ. At a tie the Jacobian is not defined (one-sided derivatives differ); the backward then
treats the tied entry (p_i = 0) as outside the support. For α > 1.5 the second derivative
grows like p_i^(3-2α) as an entry approaches the boundary: that is the function, not noise.
The Function has ``setup_context`` and ``generate_vmap_rule = True`` so that
``torch.func.grad``, ``jacrev`` and ``vmap`` compose with it (README.md, "Composing with
torch.func"). It has no ``jvp`` on purpose: dynamo (torch 2.13) refuses to trace an
autograd.Function that defines one ("Unsupported custom jvp"), which would break
``torch.compile`` of anything differentiated through entmax. Forward mode (``jacfwd``,
``jvp``) therefore raises; ``jacrev`` gives the same Jacobian.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from entmaxkv.validation import check_alpha

__all__ = ["entmax", "entmax_threshold", "entmax_with_threshold", "EntmaxFunction", "rho", "lin",
           "BISECTION_ITERS"]

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


def _forward(x: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """(p, τ) over the last dim of x (already in the work dtype)."""
    m = x.amax(-1, keepdim=True)
    # Shift by the row maximum; rows with no finite maximum (all masked, or ±inf/NaN present)
    # are left as they are, so they behave as without the shift.
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    y = x - m
    if alpha == 1.0:
        tau = torch.logsumexp(y, dim=-1)
        p = torch.exp(y - tau.unsqueeze(-1))
    else:
        z = y * (alpha - 1.0)
        if alpha in (1.5, 2.0):
            tau = _sorted_threshold(z, alpha)
            p = rho(z - tau.unsqueeze(-1), alpha)
        else:
            tau = _bisection_threshold(z, alpha)
            p = rho(z - tau.unsqueeze(-1), alpha)
            # bisection leaves τ within a tiny bracket; renormalise as the entmax library does
            p = p / p.sum(-1, keepdim=True)
    return p, tau + lin(alpha) * m.squeeze(-1)


def support_weights(p: Tensor, alpha: float) -> Tensor:
    """s = p^(2-α) on the support (p > 0), 0 off it; s = p for softmax. Same shape as p.

    Differentiable in p where p > 0 (the double backward needs it); the inner ``where`` keeps
    the unused branch finite so no NaN gradient leaks from p = 0."""
    if alpha == 1.0:
        return p
    support = p > 0
    if alpha == 2.0:
        return support.to(p.dtype)
    safe = torch.where(support, p, torch.ones_like(p))
    return torch.where(support, safe.pow(2.0 - alpha), torch.zeros_like(p))


def entmax_backward(p: Tensor, grad_p: Tensor, grad_tau: Tensor, alpha: float) -> Tensor:
    """Vector-Jacobian product of (p, τ) = EntmaxFunction(x) over the last dim.

    Args: p [..., N] the forward's output; grad_p [..., N]; grad_tau [...]. Returns [..., N]:
    s ⊙ (grad_p - ⟨grad_p, s⟩ / Σs) + grad_tau · lin(α) · s / Σs, with s = ``support_weights(p)``.
    """
    s = support_weights(p, alpha)
    total = s.sum(-1, keepdim=True)
    mean_g = (s * grad_p).sum(-1, keepdim=True) / total
    return s * (grad_p - mean_g) + grad_tau.unsqueeze(-1) * (lin(alpha) / total) * s


class EntmaxFunction(torch.autograd.Function):
    """``(p, τ) = EntmaxFunction.apply(x, alpha)`` over the last dim of x (float32 or float64),
    with the analytic backward of ``entmax_backward``. Prefer ``entmax`` /
    ``entmax_threshold`` / ``entmax_with_threshold``, which handle ``dim`` and dtypes."""

    generate_vmap_rule = True  # forward and backward are plain torch ops: vmap can run them batched

    @staticmethod
    def forward(x: Tensor, alpha: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return _forward(x, alpha)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, alpha = inputs
        p, _ = output
        ctx.alpha = alpha
        ctx.save_for_backward(p)  # the output, so the backward stays differentiable (double backward)

    @staticmethod
    def backward(ctx: Any, grad_p: Tensor, grad_tau: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors
        return entmax_backward(p, grad_p, grad_tau, ctx.alpha), None


def entmax_with_threshold(x: Tensor, alpha: float = 1.5, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Both ``entmax(x)`` and ``entmax_threshold(x)`` from one threshold computation.

    Returns ``(p, tau)``: p has x's shape, both in the work dtype (float32, or float64 for
    float64 x); tau has ``dim`` removed. Gradients through both are analytic (module docstring).
    """
    check_alpha(alpha)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    z = x.movedim(dim, -1).to(_work_dtype(x))
    p, tau = EntmaxFunction.apply(z, float(alpha))
    return p.movedim(-1, dim), tau


def entmax_threshold(x: Tensor, alpha: float = 1.5, dim: int = -1) -> Tensor:
    """τ such that Σ_i ρ_α(lin(α)·x_i - τ) = 1 along ``dim`` (which is removed).

    Computed in float32 (float64 for float64 input) and returned in that dtype; its gradient is
    ∂τ/∂x_j = lin(α)·s_j / Σ s (softmax: ∂τ/∂x = softmax(x)).
    Example: ``entmax_threshold(torch.tensor([0., 1.]), alpha=2.0)`` is 0.0.
    """
    return entmax_with_threshold(x, alpha, dim)[1]


def entmax(x: Tensor, alpha: float = 1.5, dim: int = -1) -> Tensor:
    """α-entmax along ``dim``: α = 1 is softmax, α = 2 sparsemax. Same shape and dtype as x.

    Computed in float32 (float64 for float64 input); the gradient flows only through the
    support (module docstring).

    Example::

        >>> entmax(torch.tensor([3.0, 1.0, -2.0]), alpha=2.0)
        tensor([1., 0., 0.])
    """
    return entmax_with_threshold(x, alpha, dim)[0].to(x.dtype)
