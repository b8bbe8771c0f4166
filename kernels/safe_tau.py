"""``entmaxkv::safe_tau``: the kernel path's safe lower bound of τ from an attention's τ, as one op.

Per (sequence, query head), with τ the exact threshold ``sparse_decode`` computed over F full
pages and the newest page (n scores: F·S plus the newest page's tokens), a = α − 1 (1 for
softmax, α = 1, where τ is the log-sum-exp: ``entmax.lin``), M the |score|
scale of those tokens (the larger of the pages' and the newest page's), γ the rounding factor
of a dot product, and with ALiBi slope m over a span of P·S positions:

    rounding = γ·M (+ 4·eps_work·|m|·P·S),   M' = M (+ |m|·P·S)
    own      = 16·n·eps64·(|τ| + a·M' + 1) + eps32·a·M' (+ 2^−steps where τ is a bisection midpoint)
    τ_low    = τ − a·rounding − own

— ``backend.safe_tau_composition``, the torch code it replaces in ``KernelOps`` (about twenty
launches a bound, each of a few elements). In float64, in the composition's order of
operations; the GPU may fuse a product into a sum (one rounding fewer), a difference of an ulp
of τ, far inside ``own``'s room (16·n ulps). One program per (sequence, KV head) row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.entmax import lin
from entmaxkv.kernels.common import next_pow2, register_batch_rule
from entmaxkv.kernels.quest_select import _float64_of, float64_words

__all__ = ["safe_tau"]


@triton.jit
def _lowered(t, pages_magnitude, newest_magnitude, slope, full_pages, length, a, gamma, eps_work, extra, span,
             S: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """τ_low of the module docstring from τ ``t`` (float64) over ``full_pages`` full pages and the
    newest page of a sequence of ``length`` tokens; the magnitudes in the work dtype, ``slope``
    the ALiBi slope (read only with HAS_ALIBI); a, γ, eps_work, extra and the span as float64.
    Elementwise: scalars or tensors of one shape (the heads of a row)."""
    m = tl.maximum(pages_magnitude, newest_magnitude,
                   propagate_nan=tl.PropagateNan.ALL).to(tl.float64)  # NaN in, NaN out, as torch.maximum
    rounding = gamma * m
    if HAS_ALIBI:
        slope = tl.abs(slope.to(tl.float64))
        rounding = rounding + 4 * eps_work * slope * span
        m = m + slope * span
    newest_tokens = length - ((length - 1) // S) * S
    n = (full_pages.to(tl.int64) * S + newest_tokens).to(tl.float64)
    own = 16 * n * 2.220446049250313e-16 * (tl.abs(t) + a * m + 1) + 1.1920928955078125e-07 * a * m + extra
    return t - a * rounding - own


@triton.jit
def _safe_tau_kernel(
    tau, magnitude, newest_magnitude, full_pages, seq_lens, slopes, out, H,
    s_hi, s_mid, s_lo, a_hi, a_mid, a_lo, g_hi, g_mid, g_lo, e_hi, e_mid, e_lo, x_hi, x_mid, x_lo,
    S: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, HAS_ALIBI: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    gs = tl.arange(0, G_PAD)
    live = gs < G
    at = row * G + gs
    slope = tl.zeros((G_PAD,), tl.float64)
    if HAS_ALIBI:
        slope = tl.load(slopes + (row % H) * G + gs, mask=live, other=0.0).to(tl.float64)
    low = _lowered(tl.load(tau + at, mask=live, other=0.0), tl.load(magnitude + at, mask=live, other=0.0),
                   tl.load(newest_magnitude + at, mask=live, other=0.0), slope, tl.load(full_pages + row),
                   tl.load(seq_lens + row // H), _float64_of(a_hi, a_mid, a_lo), _float64_of(g_hi, g_mid, g_lo),
                   _float64_of(e_hi, e_mid, e_lo), _float64_of(x_hi, x_mid, x_lo),
                   _float64_of(s_hi, s_mid, s_lo), S, HAS_ALIBI)  # the span: P·S positions
    tl.store(out + at, low, mask=live)


@triton_op("entmaxkv::safe_tau", mutates_args=())
def safe_tau(
    tau: torch.Tensor, magnitude: torch.Tensor, newest_magnitude: torch.Tensor, full_pages: torch.Tensor,
    seq_lens: torch.Tensor, alibi_slopes: torch.Tensor | None, page_size: int, num_pages: int, alpha: float,
    gamma: float, eps_work: float, extra: float,
) -> torch.Tensor:
    """τ_low [B, Hkv, G] float64 (module docstring).

    tau: [B, Hkv, G] float64; magnitude, newest_magnitude: [B, Hkv, G] (work dtype);
    full_pages: [B, Hkv] integer, the full pages τ was computed over; seq_lens: [B] int64;
    alibi_slopes: optional [Hq]; page_size S, num_pages P (the ALiBi span is P·S); α in [1, 2];
    gamma: the work dtype's dot-product rounding factor; eps_work: its machine epsilon; extra:
    2^−steps where τ is a bisection midpoint (α not 1.5 or 2), else 0.
    """
    b, hkv, g = tau.shape
    out = torch.empty_like(tau)
    wrap_triton(_safe_tau_kernel)[(b * hkv,)](
        tau, magnitude, newest_magnitude, full_pages, seq_lens, alibi_slopes if alibi_slopes is not None else tau,
        out, hkv, *float64_words(float(num_pages * page_size)),
        *float64_words(lin(alpha)), *float64_words(gamma),
        *float64_words(eps_work), *float64_words(extra), S=page_size, G=g, G_PAD=max(2, next_pow2(g)),
        HAS_ALIBI=alibi_slopes is not None, num_warps=1)
    return out


@safe_tau.register_fake
def _(tau, magnitude, newest_magnitude, full_pages, seq_lens, alibi_slopes, page_size, num_pages, alpha, gamma,
      eps_work, extra):
    return torch.empty_like(tau)


register_batch_rule(safe_tau, (0, 1, 2, 3, 4))  # vmap folds into the batch dimension
