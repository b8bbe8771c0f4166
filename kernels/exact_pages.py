"""``entmaxkv::pages_above``: one exclusion round of ``Exact``'s page-box certificate as one op.

Per (sequence, KV head) row, over the candidate pages (full pages other than the newest,
p < n = (len − 1) // S), with c = α − 1, U the pages' safe upper bounds and τ_low a safe lower
bound of each query head's τ (``KernelOps.tau_lower_bound``):

    keep_p      = candidate & any_h c·U_hp > τ_low_h        (in float64)
    magnitude_h = max over kept pages of absmax_hp           (0 if none)
    floor_h     = max(newest_h, max over kept pages of mean_hp − slack·absmax_hp − alibi_h)

— ``Exact``'s ``alive``, and what the next round's τ bound and the attention need of it: the
|score| scale of the kept pages' tokens, and the attention's score floor
(``KernelOps.score_floor``: slack = ``mean_slack``, a power of two, alibi_h = |slope_h|·(S−1)/2,
newest_h the newest page's floor), which the torch composition computed in ~30 small launches
and a ``select_pages`` to list the mask. The comparison is the composition's to the bit (a
float32 bound converts exactly to float64; one product, one compare), so the pages are the
same; so is the floor (slack·absmax is exact, the rest is the composition's order of
operations).

Two launches over (row, ``CHUNK``-page chunk) programs: each chunk's keep mask, kept count and
per-head magnitude; each chunk's slice of the page list (increasing, −1 padded) at the offset
of the chunks before it (``gaussian_select``'s list kernel), and from chunk 0 the row's count
magnitude and floor. Bytes: U, absmax and the mean of the row's G heads once, the mask twice.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import candidate_count, next_pow2, register_batch_rule
from entmaxkv.kernels.gaussian_select import _list_kernel, _row_floor
from entmaxkv.kernels.quest_select import _float64_of, float64_words

__all__ = ["pages_above"]

CHUNK = 1024  # pages per program
NUM_WARPS = 4


@triton.jit
def _above_kernel(
    upper, absmax, means, slopes, tau_low, seq_lens, mask, kept, chunk_mag, chunk_floor, slack, c_hi, c_mid, c_lo,
    H, P, NCHUNK,
    S: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, CHUNK: tl.constexpr, HAS_ALIBI: tl.constexpr,
):
    """The chunk's keep mask, kept count, and per head the largest absmax and the largest
    mean − slack·absmax (− the ALiBi spread) of its kept pages (0 and −inf where none)."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n = candidate_count(tl.load(seq_lens + row // H), S, P)
    gs = tl.arange(0, G_PAD)
    idx = chunk * CHUNK + tl.arange(0, CHUNK)
    cand = idx < n
    ok = (gs[:, None] < G) & cand[None, :]
    at = (row * G + gs[:, None]) * P + idx[None, :]
    c = _float64_of(c_hi, c_mid, c_lo)
    u = tl.load(upper + at, mask=ok, other=0.0).to(tl.float64)
    t = tl.load(tau_low + row * G + gs, mask=gs < G, other=0.0)
    above = ok & ~(c * u <= t[:, None])  # a NaN bound or τ_low excludes nothing (certificate.pages_above)
    keep = cand & (tl.max(above.to(tl.int32), axis=0) > 0)
    tl.store(mask + row * P + idx, keep, mask=idx < P)
    tl.store(kept + row * NCHUNK + chunk, tl.sum(keep.to(tl.int32)))
    a = tl.load(absmax + at, mask=ok & keep[None, :], other=0.0)
    tl.store(chunk_mag + (row * NCHUNK + chunk) * G + gs, tl.max(a, axis=1), mask=gs < G)
    m = tl.load(means + at, mask=ok & keep[None, :], other=0.0)
    room = slack * a  # exact: slack is a power of two
    if HAS_ALIBI:  # the mean carries the page-centre bias; a token may sit (S − 1)/2 positions lower
        # · 0.5, not / 2: an exact multiply (gaussian_select's note)
        spread = tl.abs(tl.load(slopes + (row % H) * G + gs, mask=gs < G, other=0.0)).to(a.dtype) * (S - 1) * 0.5
        room = room + spread[:, None]
    best = tl.max(tl.where(ok & keep[None, :], m - room, float("-inf")), axis=1)
    tl.store(chunk_floor + (row * NCHUNK + chunk) * G + gs, best, mask=gs < G)


@triton.jit
def _list_magnitude_kernel(
    mask, kept, chunk_mag, chunk_floor, newest_floor, pages, count, magnitude, floor, P, NCHUNK,
    G: tl.constexpr, G_PAD: tl.constexpr, CHUNK: tl.constexpr, NCHUNK_PAD: tl.constexpr,
):
    """``gaussian_select``'s list kernel, and from chunk 0 the row's magnitude and (its ``_row_floor``) floor."""
    _list_kernel(mask, kept, pages, count, P, NCHUNK, CHUNK, NCHUNK_PAD)
    if tl.program_id(1) == 0:
        row = tl.program_id(0).to(tl.int64)
        gs = tl.arange(0, G_PAD)
        cs = tl.arange(0, NCHUNK_PAD)
        live = (gs[:, None] < G) & (cs[None, :] < NCHUNK)
        at = (row * NCHUNK + cs[None, :]) * G + gs[:, None]
        tl.store(magnitude + row * G + gs, tl.max(tl.load(chunk_mag + at, mask=live, other=0.0), axis=1), mask=gs < G)
        _row_floor(chunk_floor, newest_floor, floor, row, NCHUNK, G, G_PAD, NCHUNK_PAD)


@triton_op("entmaxkv::pages_above", mutates_args=())
def pages_above(
    upper: torch.Tensor, absmax: torch.Tensor, means: torch.Tensor, tau_low: torch.Tensor,
    newest_floor: torch.Tensor, seq_lens: torch.Tensor, alibi_slopes: torch.Tensor | None, page_size: int,
    alpha: float, slack: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidate pages some query head's safe bound puts above its τ lower bound ->
    ``(pages [B, Hkv, P] int32 (increasing, −1 padded), count [B, Hkv] int32, mask [B, Hkv, P]
    bool, magnitude [B, Hkv, G], floor [B, Hkv, G])``.

    upper, absmax, means: [B, Hkv, G, P] (``page_bounds``' outputs, work dtype; entries of
    pages that are not candidates are never read); tau_low: [B, Hkv, G] float64;
    newest_floor: [B, Hkv, G] work dtype, the newest page's score floor; seq_lens: [B] int64
    (after the append); alibi_slopes: optional [Hq]; α in (1, 2]; slack: ``mean_slack`` of the
    work dtype (a power of two: exact as the float32 a kernel takes its float arguments in). magnitude: the largest absmax of a kept page per query head
    (0 where none is kept); floor: ``KernelOps.score_floor`` of the kept pages.
    """
    b, hkv, g, p = upper.shape
    chunks = triton.cdiv(p, CHUNK)
    dev = upper.device
    kept = torch.empty((b, hkv, chunks), dtype=torch.int32, device=dev)
    chunk_mag = torch.empty((b, hkv, chunks, g), dtype=absmax.dtype, device=dev)
    chunk_floor = torch.empty((b, hkv, chunks, g), dtype=means.dtype, device=dev)
    pages = torch.empty((b, hkv, p), dtype=torch.int32, device=dev)
    count = torch.empty((b, hkv), dtype=torch.int32, device=dev)
    mask = torch.empty((b, hkv, p), dtype=torch.bool, device=dev)
    magnitude = torch.empty((b, hkv, g), dtype=absmax.dtype, device=dev)
    floor = torch.empty((b, hkv, g), dtype=means.dtype, device=dev)
    shape = dict(G=g, G_PAD=max(2, next_pow2(g)), CHUNK=CHUNK)
    wrap_triton(_above_kernel)[(b * hkv, chunks)](
        upper, absmax, means, alibi_slopes if alibi_slopes is not None else means, tau_low, seq_lens, mask, kept,
        chunk_mag, chunk_floor, slack, *float64_words(alpha - 1.0), hkv, p, chunks, S=page_size, **shape,
        HAS_ALIBI=alibi_slopes is not None, num_warps=NUM_WARPS)
    wrap_triton(_list_magnitude_kernel)[(b * hkv, chunks)](
        mask, kept, chunk_mag, chunk_floor, newest_floor, pages, count, magnitude, floor, p, chunks, **shape,
        NCHUNK_PAD=max(2, next_pow2(chunks)), num_warps=NUM_WARPS)
    return pages, count, mask, magnitude, floor


@pages_above.register_fake
def _(upper, absmax, means, tau_low, newest_floor, seq_lens, alibi_slopes, page_size, alpha, slack):
    b, hkv, g, p = upper.shape
    return (upper.new_empty((b, hkv, p), dtype=torch.int32), upper.new_empty((b, hkv), dtype=torch.int32),
            upper.new_empty((b, hkv, p), dtype=torch.bool), absmax.new_empty((b, hkv, g)), means.new_empty((b, hkv, g)))


register_batch_rule(pages_above, (0, 1, 2, 3, 4, 5))  # vmap folds into the batch dimension
