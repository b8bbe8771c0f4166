"""``entmaxkv::quest_select``: a TopK (Quest) step's whole page selection in one kernel.

Per (sequence, KV head) row, from ``page_bounds``' per-head page quantities [G, P]:

    candidates   full pages other than the newest one: p < n, n = (len − 1) // S
    attained     L_h = max(best candidate mean-key score, the newest page's best score)
    key_p        max_h lin(α)·(U_hp − L_h) on candidates (−inf elsewhere); +inf on forced
                 pages: the first ``sink_pages`` and the ``recent_pages`` just before the newest
    count        ``budget_pages``, or ceil(n·coverage − 1e-9) computed in float64
    selection    the max(count, forced) candidates with the largest keys (ties to the lower
                 page index), as a page list (increasing, −1 padded), its length and a mask
    score floor  per head, max(best selected mean score − its rounding slack, newest page's
                 best score − 2γ·its magnitude): a score some attended token reaches, which
                 ``sparse_decode`` filters its survivors from

The arithmetic is that of the torch composition it replaces (``topk.rank_key``,
``topk.forced_pages``, the count in ``TopK``, ``select_pages`` and ``KernelOps.score_floor``),
operation for operation, so it selects the same pages from the same page scores. α − 1 and
the coverage enter as the bits of their float64 values, in three 21-bit int arguments: a
float argument reaches a kernel as float32 in eager launches (the count must be the float64
one), and one 64-bit int argument breaks torch 2.11's Inductor (it sizes int arguments to
32 bits: "'int' object has no attribute 'xreplace'", seen on the H200).

One program per row; the selection is ``select_pages``' bitwise threshold search (its
``@triton.jit`` helpers). Rows of up to ``MAX_BLOCK`` pages stay in registers; longer rows
write their keys to a scratch row first and stream it.
Bytes: upper, mean (twice), absmax of the row's G heads — small next to ``page_bounds``.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, register_batch_rule, work_dtype_of
from entmaxkv.kernels.page_scores import rounding_gamma
from entmaxkv.kernels.select_pages import MAX_BLOCK, WIDE_WARPS, _count, _eligible_ordered, _pad, _take, _threshold

__all__ = ["quest_select", "float64_words"]


def float64_words(x: float) -> tuple[int, int, int]:
    """The IEEE bits of float64 ``x`` >= 0 as three 21-bit ints (high first), each a plain
    32-bit kernel argument; ``_float64_of`` puts them back together."""
    bits = struct.unpack("<q", struct.pack("<d", float(x)))[0]
    if bits < 0:
        raise ValueError(f"float64_words takes x >= 0, got {x}")
    return bits >> 42, (bits >> 21) & 0x1FFFFF, bits & 0x1FFFFF


@triton.jit
def _float64_of(high, middle, low):
    """The float64 whose bits ``float64_words`` split (ints or, when Triton specialises a
    value of 1, constexprs: hence the additions instead of ``.to``)."""
    zero = tl.full((), 0, tl.int64)
    bits = ((zero + high) << 42) | ((zero + middle) << 21) | (zero + low)
    return bits.to(tl.float64, bitcast=True)


@triton.jit
def _head(v, gs, g):
    """Entry g of a [G_PAD] vector, as a scalar."""
    return tl.max(tl.where(gs == g, v, float("-inf")), axis=0)


@triton.jit
def _quest_select_kernel(
    upper, means, absmax, newest_max, newest_mag, seq_lens, slopes, scratch,
    pages, kept, mask, floor,
    lin_hi, lin_mid, lin_lo, budget, cov_hi, cov_mid, cov_lo, sink, recent, slack_c, two_gamma, H, P,
    S: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, BLOCK: tl.constexpr, NBITS: tl.constexpr,
    INT: tl.constexpr, ONE_CHUNK: tl.constexpr, COVERAGE: tl.constexpr, HAS_ALIBI: tl.constexpr,
    WORK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    length = tl.load(seq_lens + row // H).to(tl.int32)
    n = tl.maximum(length - 1, 0) // S  # candidates are pages 0..n-1 (n is the newest page)
    lanes = tl.arange(0, BLOCK)
    gs = tl.arange(0, G_PAD)
    heads = row * G * P  # this row's [G, P] block
    lin_w = _float64_of(lin_hi, lin_mid, lin_lo).to(WORK)

    # L_h: the best candidate mean score, or the newest page's best score
    attained = tl.load(newest_max + row * G + gs, mask=gs < G, other=float("-inf")).to(WORK)
    for start in range(0, P, BLOCK):
        idx = start + lanes
        for g in tl.static_range(G):
            mu = tl.load(means + heads + g * P + idx, mask=idx < n, other=float("-inf")).to(WORK)
            attained = tl.where(gs == g, tl.maximum(attained, tl.max(mu, axis=0)), attained)

    # keys: max_h lin·(U_hp − L_h), −inf off the candidates, +inf on forced pages
    x_all = tl.full((BLOCK,), float("-inf"), WORK)
    forced_total = 0
    for start in range(0, P, BLOCK):
        idx = start + lanes
        cand = idx < n
        key = tl.full((BLOCK,), float("-inf"), WORK)
        for g in tl.static_range(G):
            u = tl.load(upper + heads + g * P + idx, mask=cand, other=0.0).to(WORK)
            key = tl.maximum(key, (u - _head(attained, gs, g)) * lin_w)
        forced = cand & ((idx < sink) | (idx >= n - recent))
        key = tl.where(forced, float("inf"), tl.where(cand, key, float("-inf")))
        forced_total += tl.sum(forced.to(tl.int32))
        if ONE_CHUNK:
            x_all = key
        else:
            tl.store(scratch + row * P + idx, key, mask=idx < P)
    if not ONE_CHUNK:
        tl.debug_barrier()  # the keys other lanes stored are visible to the counting passes

    if COVERAGE:  # ceil(n·coverage − 1e-9) in float64, as TopK computes it
        coverage = _float64_of(cov_hi, cov_mid, cov_lo)
        want = tl.ceil(n.to(tl.float64) * coverage - tl.full((), 1e-9, tl.float64)).to(tl.int32)
    else:
        want = budget
    want = tl.maximum(want, forced_total)

    base = scratch + row * P
    u_all = _eligible_ordered(x_all, INT, NBITS)
    eligible_total = _count(base, lanes, P, tl.full((), -(2 ** (NBITS - 1)) + 1, INT), u_all, INT, NBITS, BLOCK,
                            ONE_CHUNK)
    k = tl.minimum(tl.minimum(want, eligible_total), P)
    t, ties_wanted = _threshold(base, lanes, P, u_all, k, eligible_total, INT, NBITS, BLOCK, ONE_CHUNK)

    # the list, the mask, and each head's best selected mean score less its rounding slack
    # (the mean key's own rounding and two dot products'; with ALiBi the page-centre bias less
    # half a page of slope: a token may sit lower)
    best = tl.full((G_PAD,), float("-inf"), WORK)
    written = 0
    ties_seen = 0
    out = pages + row * P
    for start in range(0, P, BLOCK):
        idx = start + lanes
        if ONE_CHUNK:
            x = x_all
        else:
            x = tl.load(base + idx, mask=idx < P, other=float("-inf"))
        take, tie = _take(x, t, ties_seen, ties_wanted, INT, NBITS)
        pos = written + tl.cumsum(take, axis=0) - take
        tl.store(out + pos, idx.to(tl.int32), mask=(take == 1) & (pos < P))
        tl.store(mask + row * P + idx, take == 1, mask=idx < P)
        for g in tl.static_range(G):
            mu = tl.load(means + heads + g * P + idx, mask=take == 1, other=0.0).to(WORK)
            slack = tl.cast(slack_c, WORK) * tl.load(absmax + heads + g * P + idx, mask=take == 1, other=0.0).to(WORK)
            if HAS_ALIBI:
                slope = tl.abs(tl.load(slopes + (row % H) * G + g).to(WORK))
                slack = slack + slope * (S - 1) / 2
            low = tl.where(take == 1, mu - slack, float("-inf"))
            best = tl.where(gs == g, tl.maximum(best, tl.max(low, axis=0)), best)
        written += tl.sum(take)
        ties_seen += tl.sum(tie)
    _pad(out, lanes, k, P, BLOCK)
    tl.store(kept + row, k)
    top = tl.load(newest_max + row * G + gs, mask=gs < G, other=0.0).to(WORK)
    mag = tl.load(newest_mag + row * G + gs, mask=gs < G, other=0.0).to(WORK)
    tl.store(floor + row * G + gs, tl.maximum(best, top - tl.cast(two_gamma, WORK) * mag), mask=gs < G)


@triton_op("entmaxkv::quest_select", mutates_args=())
def quest_select(
    upper: torch.Tensor, means: torch.Tensor, absmax: torch.Tensor, newest_max: torch.Tensor,
    newest_mag: torch.Tensor, seq_lens: torch.Tensor, alibi_slopes: torch.Tensor | None, page_size: int,
    head_dim: int, alpha: float, budget_pages: int, coverage: float, sink_pages: int, recent_pages: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A TopK step's selection from its page scores -> ``(pages [B, Hkv, P] int32 (increasing,
    −1 padded), count [B, Hkv] int32, mask [B, Hkv, P] bool, score_floor [B, Hkv, G])``.

    upper, means, absmax: [B, Hkv, G, P] work dtype (``page_bounds``; entries of pages that
    are not candidates are never read); newest_max, newest_mag: [B, Hkv, G] the newest page's
    best score and |score| scale; seq_lens: [B] int64 (after the append); alibi_slopes:
    optional [Hq]; page_size S and head_dim D of the cache; α in [1, 2]; ``budget_pages`` >= 0
    pages to keep, or −1 to keep ceil(n·coverage − 1e-9) of the n candidates; sink_pages,
    recent_pages >= 0. The score floor is in the work dtype, as ``sparse_decode`` takes it.
    """
    b, hkv, g, p = upper.shape
    work = work_dtype_of(upper.dtype)
    pages = torch.empty((b, hkv, p), dtype=torch.int32, device=upper.device)
    kept = torch.empty((b, hkv), dtype=torch.int32, device=upper.device)
    mask = torch.empty((b, hkv, p), dtype=torch.bool, device=upper.device)
    floor = torch.empty((b, hkv, g), dtype=work, device=upper.device)
    wide = work == torch.float64
    block = min(MAX_BLOCK, max(16, next_pow2(p)))
    one_chunk = p <= block
    # keys of rows too long for registers (one chunk: never touched, but typed as keys and
    # aliasing no input, so that Inductor's mutation analysis sees no write to one)
    scratch = torch.empty((1,) if one_chunk else (b, hkv, p), dtype=work, device=upper.device)
    eps = torch.finfo(work).eps
    lin = alpha - 1.0 if alpha > 1.0 else 1.0
    wrap_triton(_quest_select_kernel)[(b * hkv,)](
        upper, means, absmax, newest_max, newest_mag, seq_lens, alibi_slopes if alibi_slopes is not None else upper,
        scratch, pages, kept, mask, floor,
        *float64_words(lin), max(budget_pages, 0), *float64_words(coverage), sink_pages, recent_pages,
        (2 * page_size + 4 * (head_dim + 2)) * eps, 2 * rounding_gamma(work, head_dim), hkv, p,
        S=page_size, G=g, G_PAD=max(2, next_pow2(g)), BLOCK=block, NBITS=64 if wide else 32,
        INT=tl.int64 if wide else tl.int32, ONE_CHUNK=one_chunk, COVERAGE=budget_pages < 0,
        HAS_ALIBI=alibi_slopes is not None, WORK=tl.float64 if wide else tl.float32,
        num_warps=WIDE_WARPS if block >= 2048 else 4,
    )
    return pages, kept, mask, floor


@quest_select.register_fake
def _(upper, means, absmax, newest_max, newest_mag, seq_lens, alibi_slopes, page_size, head_dim, alpha,
      budget_pages, coverage, sink_pages, recent_pages):
    b, hkv, g, p = upper.shape
    return (upper.new_empty((b, hkv, p), dtype=torch.int32), upper.new_empty((b, hkv), dtype=torch.int32),
            upper.new_empty((b, hkv, p), dtype=torch.bool), upper.new_empty((b, hkv, g)))


register_batch_rule(quest_select, (0, 1, 2, 3, 4, 5))  # vmap folds into the batch dimension
