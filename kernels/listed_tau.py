"""``entmaxkv::listed_tau``: a safe lower bound of τ over a short page list, in one launch.

``Exact``'s first τ bound is taken over its few initial pages (``initial_pages``, 8 by
default) and the newest page. Through the general ops that is four launches — a fill and two
kernels of ``sparse_decode`` (scores to a scratch, then a τ kernel that gathers them back),
then ``safe_tau`` — a chain of latency-bound launches at B = 1. Here one program per
(sequence, query head) row does it all in registers:

1. scores s = scale·q·k (+ ALiBi) of the first ``max_pages`` listed pages' tokens and of the
   newest page's, in the work dtype, in the attention's arithmetic (a D-term dot product of
   work-dtype products, then the scale: the rounding ``γ`` of ``page_scores.rounding_gamma``
   bounds), K read once per row;
2. τ over them in float64 with ``sparse_decode``'s solver (``_solve_tau``: the exact support
   from below for α = 1.5 and 2, bisection otherwise), from the floor lin·max s − 1;
3. the rounding margin of ``safe_tau`` (``safe_tau._lowered``, the same float64 operations),
   with the list's |score| scale and the newest page's.

τ over any subset of the tokens is at most the true τ, so a list longer than ``max_pages``
(which ``KernelOps`` never passes: it calls this op only with a static bound on the count)
would still give a safe, weaker bound from its first ``max_pages`` pages. NaN in, NaN out: a
NaN score makes that head's bound NaN (``pages_above`` then excludes nothing). α > 1 only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.entmax import lin
from entmaxkv.kernels.common import SOFTMAX, alpha_kind, next_pow2, register_batch_rule, work_dtype_of
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs
from entmaxkv.kernels.quest_select import _float64_of, float64_words
from entmaxkv.kernels.safe_tau import _lowered
from entmaxkv.kernels import sparse_decode as attention  # its EXACT_ITERS, read at each call
from entmaxkv.kernels.sparse_decode import _solve_tau, bisection_gap, bisection_steps

__all__ = ["listed_tau", "LISTED_TAU", "MAX_TOKENS"]

# Whether ``KernelOps.tau_lower_bound`` takes this op for a list with a static bound on its
# count (``Exact``'s initial pages): False for the four launches it replaces (an A/B switch).
LISTED_TAU = True
# the most token slots a row holds in registers, (max_pages + 1)·S rounded up to a power of two
MAX_TOKENS = 512
CHUNK_D = 32  # channels of K a loop iteration loads ([T, CHUNK_D] a program)
WARPS = 4


@triton.jit
def _listed_tau_kernel(
    q, k_pages, pages, n_pages, seq_lens, slopes, magnitude, newest_magnitude, out,
    scale, alpha, H, G, P, M,
    s_hi, s_mid, s_lo, a_hi, a_mid, a_lo, g_hi, g_mid, g_lo, e_hi, e_mid, e_lo, x_hi, x_mid, x_lo,
    D: tl.constexpr, S: tl.constexpr, T: tl.constexpr, MAX_PAGES: tl.constexpr, BLOCK_D: tl.constexpr,
    CHUNK: tl.constexpr, KIND: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr,
    BISECT_ITERS: tl.constexpr, EXACT_ITERS: tl.constexpr, PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)  # b·Hq + hq, as out's [B, Hkv, G] rows
    b = row // (H * G)
    bh = row // G  # (b, kv head)
    length = tl.load(seq_lens + b).to(tl.int32)
    newest = (length - 1) // S
    n = tl.minimum(tl.load(n_pages + bh), MAX_PAGES)
    # token slots: list position t // S (the newest page at position MAX_PAGES), offset t % S
    t = tl.arange(0, T)
    at = (t.to(tl.uint32) // S).to(tl.int32)
    in_page = (t.to(tl.uint32) % S).to(tl.int32)
    listed = at < n
    is_newest = at == MAX_PAGES
    logical = tl.where(is_newest, newest, tl.load(pages + bh * M + at, mask=listed, other=0))
    pos = logical * S + in_page
    valid = (listed | is_newest) & (pos < length)
    k_row = k_pages + (bh * P * S + logical.to(tl.int64) * S + in_page) * D  # [T] token rows
    s = tl.zeros((T,), WORK)
    for d0 in tl.static_range(0, BLOCK_D, CHUNK):
        d = d0 + tl.arange(0, CHUNK)
        qv = tl.load(q + row * D + d, mask=d < D, other=0.0).to(WORK)
        k = tl.load(k_row[:, None] + d[None, :], mask=valid[:, None] & (d < D)[None, :], other=0.0).to(WORK)
        s += tl.sum(k * qv[None, :], axis=1)
    s = s * tl.cast(scale, WORK)
    if HAS_ALIBI:
        slope = tl.load(slopes + row % (H * G)).to(WORK)
        s += slope * (pos - (length - 1)).to(WORK)
    s = tl.where(valid, s, float("-inf"))
    scored_nan = tl.max((s != s).to(tl.int32), axis=0) > 0  # the solver's comparisons would drop a NaN

    lin_f = tl.cast(alpha, tl.float64) - 1.0  # as sparse_decode's τ kernel
    z = s.to(tl.float64) * lin_f
    zmax = tl.max(z, axis=0)
    floor = zmax - 1.0  # the top token's weight is at most 1
    total = tl.sum(valid.to(tl.int32), axis=0)  # >= the tokens above the floor (the bisection's bracket)
    # _solve_tau on the row in registers (its memory arguments are never read: IN_REGS)
    tau = _solve_tau(out, 0, total, z, lin_f, 1.0 / lin_f, floor, zmax, floor, 0, 0, BISECT_ITERS, EXACT_ITERS,
                     KIND, T, True)
    tau = tl.where(scored_nan, float("nan"), tau)

    h = row % (H * G)  # the query head: its slope
    slope64 = tl.zeros((), tl.float64)
    if HAS_ALIBI:
        slope64 = tl.load(slopes + h).to(tl.float64)
    low = _lowered(tau, tl.load(magnitude + row), tl.load(newest_magnitude + row), slope64, n, length,
                   _float64_of(a_hi, a_mid, a_lo), _float64_of(g_hi, g_mid, g_lo), _float64_of(e_hi, e_mid, e_lo),
                   _float64_of(x_hi, x_mid, x_lo), _float64_of(s_hi, s_mid, s_lo), S, HAS_ALIBI)
    tl.store(out + row, low)


@triton_op("entmaxkv::listed_tau", mutates_args=())
def listed_tau(
    q: torch.Tensor, k_pages: torch.Tensor, pages: torch.Tensor, n_pages: torch.Tensor, seq_lens: torch.Tensor,
    alibi_slopes: torch.Tensor | None, magnitude: torch.Tensor, newest_magnitude: torch.Tensor, alpha: float,
    scale: float, gamma: float, max_pages: int,
) -> torch.Tensor:
    """τ_low [B, Hkv, G] float64: ``safe_tau`` of the exact τ over the first ``max_pages``
    listed pages and the newest page (module docstring).

    q: [B, Hq, D] contiguous, in the cache dtype; k_pages: [B, Hkv, P, S, D] contiguous;
    pages: [B, Hkv, M] int32 distinct full pages other than the newest (−1 padded), n_pages:
    [B, Hkv] int32 entries used; seq_lens: [B] int64 (>= 1); alibi_slopes: optional [Hq];
    magnitude: [B, Hkv, G] the listed pages' |score| scale (``quest_select``'s), newest_magnitude:
    [B, Hkv, G] the newest page's (``page_bounds``'), both in the work dtype; α in (1, 2]; gamma:
    the work dtype's dot-product rounding factor; max_pages: a static bound on n_pages with
    (max_pages + 1)·S <= ``MAX_TOKENS``.
    """
    b, hq, d = q.shape
    _, hkv, p, s, _ = k_pages.shape
    # the kernel indexes them densely (no-ops, no copies, for the contiguous tensors KernelOps passes)
    q, pages, n_pages, magnitude, newest_magnitude = (
        t.contiguous() for t in (q, pages, n_pages, magnitude, newest_magnitude))
    alibi_slopes = None if alibi_slopes is None else alibi_slopes.contiguous()
    kind = alpha_kind(alpha)
    if kind == SOFTMAX:
        raise ValueError(f"listed_tau: alpha must be in (1, 2], got {alpha}")
    tokens = next_pow2((max_pages + 1) * s)
    if max_pages < 0 or tokens > MAX_TOKENS:
        raise ValueError(f"listed_tau: max_pages must be in [0, {MAX_TOKENS // s - 1}] for pages of {s} tokens "
                         f"(its tokens in registers, at most MAX_TOKENS = {MAX_TOKENS}), got {max_pages}")
    work = work_dtype_of(k_pages.dtype)
    if work == torch.float64:  # kernels get float scalars as float32: scale q exactly here instead
        q, scale = q * scale, 1.0
    out = torch.empty((b, hkv, hq // hkv), dtype=torch.float64, device=q.device)
    eps_work = torch.finfo(work).eps
    wrap_triton(_listed_tau_kernel)[(b * hq,)](
        q, k_pages, pages, n_pages, seq_lens, alibi_slopes if alibi_slopes is not None else magnitude, magnitude,
        newest_magnitude, out, scale, alpha, hkv, hq // hkv, p, pages.shape[-1],
        *float64_words(float(p * s)), *float64_words(lin(alpha)), *float64_words(gamma), *float64_words(eps_work),
        *float64_words(bisection_gap(alpha, work)),
        D=d, S=s, T=tokens, MAX_PAGES=max_pages, BLOCK_D=max(CHUNK_D, next_pow2(d)), CHUNK=CHUNK_D, KIND=kind,
        WORK=tl.float64 if work == torch.float64 else tl.float32, HAS_ALIBI=alibi_slopes is not None,
        BISECT_ITERS=bisection_steps(work), EXACT_ITERS=attention.EXACT_ITERS, num_warps=WARPS,
        **pdl_kwargs(q, "listed_tau"))
    return out


@listed_tau.register_fake
def _(q, k_pages, pages, n_pages, seq_lens, alibi_slopes, magnitude, newest_magnitude, alpha, scale, gamma,
      max_pages):
    return magnitude.new_empty(magnitude.shape, dtype=torch.float64)


register_batch_rule(listed_tau, (0, 1, 2, 3, 4, 6, 7))  # vmap folds into the batch dimension
