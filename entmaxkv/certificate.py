"""Dropped-mass certificates: how much dense attention mass a selection can have left out.

Entmax (α > 1). Adding tokens never lowers τ, so τ_sel — the exact threshold over the
selected tokens — is <= the true τ over all tokens. Every token i of a dropped page p has
s_i <= U_p (the page bound), hence its dense weight is at most [(α-1)·U_p - τ_sel]_+^(1/(α-1)),
and the dropped mass m is at most Σ_dropped n_p·[(α-1)·U_p - τ_sel]_+^(1/(α-1)).
When every term is zero, no dropped token has weight: the selection's entmax *is* dense
entmax (τ over all tokens equals τ_sel), and the step is **certified**.

Softmax (α = 1). The log-sum-exp over the selected tokens is <= the full one, so a dropped
page holds at most n_p·exp(U_p - lse_sel) of the mass.

From mass to output. With p the dense weights and p̃ the renormalised weights on the
selection S (exact τ over S), p̃_i >= p_i on S, Σ_S p̃ = 1 and Σ_S p = 1 - m, so
‖p - p̃‖_1 = 2m and ‖out_dense - out_sel‖ <= 2·m·max_i ‖v_i‖ in any norm.

Rounding: U_p is a safe bound (see ``bounds``), and τ_sel is lowered by the worst rounding
error of the selected scores times (α - 1): τ is 1-Lipschitz in the scores (max-norm), so the
lowered value is <= the exact τ_sel. A certified step is therefore never wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from entmaxkv.entmax import entmax_threshold, lin, rho

if TYPE_CHECKING:
    from entmaxkv.selection import Step

__all__ = ["dropped_mass_bound", "pages_above", "safe_tau_lower_bound"]


def safe_tau_lower_bound(
    scores: Tensor, token_mask: Tensor, alpha: float, rounding: Tensor
) -> Tensor:
    """A lower bound of the exact τ (α = 1: log-sum-exp) over the tokens in ``token_mask``.

    scores: [B, Hkv, G, N]; token_mask: [B, Hkv, N]; rounding: [B, Hkv, G] score error bound.
    Returns [B, Hkv, G] float64.
    """
    s = torch.where(token_mask[:, :, None, :], scores, torch.full_like(scores, float("-inf"))).double()
    tau = entmax_threshold(s, alpha, dim=-1)
    n = token_mask.sum(-1, keepdim=True).clamp_min(1).double()
    # τ is computed in float64 from float64 sums: its own error is tiny next to score rounding.
    own = 16 * n * torch.finfo(torch.float64).eps * (tau.abs() + lin(alpha) * s.nan_to_num(neginf=0).abs().amax(-1) + 1)
    return tau - lin(alpha) * rounding.double() - own


def pages_above(upper: Tensor, tau_low: Tensor, candidates: Tensor, alpha: float) -> Tensor:
    """[B, Hkv, P] bool: the candidate pages ([B, 1 or Hkv, P] bool) whose safe bound U
    ([B, Hkv, G, P]) some query head could place above its τ lower bound tau_low ([B, Hkv, G]
    float64): not (α−1)·U_hp <= τ_low_h for some h. Every other page holds only tokens of zero
    weight (their scores s <= U_p give (α−1)·s − τ <= 0 at the true τ >= τ_low): ``Exact``'s
    exclusion round (the kernel ops run it as one op, ``entmaxkv::pages_above``). A NaN bound
    or τ_low excludes nothing (the comparison proves nothing): the step then attends the page
    and its NaN reaches the output, as dense entmax's does."""
    return (~(lin(alpha) * upper.double() <= tau_low.unsqueeze(-1))).any(2) & candidates


def dropped_mass_bound(step: "Step", page_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Bound on the dense mass outside the attended pages, and whether it is zero.

    Args:
        step: the decode step (cache after the append, scores, safe page bounds);
        page_mask: [B, Hkv, P] the attended pages (must include each sequence's newest page).
    Returns ``(bound [B, Hkv, G] float64 in [0, 1], certified [B, Hkv, G] bool)``; a bound of 1
    is vacuous ("no bound": the page bounds could not limit the dropped mass). For softmax the
    step is certified only when no page was dropped.
    """
    cache, alpha = step.cache, step.alpha
    tau_low = step.ops.tau_lower_bound(page_mask)
    dropped = (cache.full_page_mask()[:, None, :] & ~page_mask)[:, :, None, :]
    per_page = cache.page_size * rho(lin(alpha) * step.upper.double() - tau_low.unsqueeze(-1), alpha)
    # A mass is at most 1: a larger sum says nothing, so it is reported as 1 ("no bound").
    bound = torch.where(dropped, per_page, torch.zeros_like(per_page)).sum(-1).clamp_max(1.0)
    if alpha == 1.0:
        certified = ~dropped.expand_as(per_page).any(-1)
    else:
        certified = bound == 0
    return bound, certified
