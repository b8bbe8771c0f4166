"""``entmaxkv::gaussian_select``: the ``Gaussian`` selector's page rule as one op.

Per (sequence, KV head) row and query head h, over the candidate pages (full pages other
than the newest, p < n = (len − 1) // S), with c = lin(α), N = max(n, 1) and μ, σ, U the
pages' score means, stds and safe upper bounds (``page_bounds``, read in float64):

    σ_global_h  = sqrt(mean σ² + mean (μ − mean μ)²)       the pooled score spread
    excess_h    = max(τ̂_h / c − mean(μ + 1.5σ), 0)
    τ_floor_h   = τ̂_h − c·max(safety_z·σ_global_h, excess_fraction·excess_h)
    keep_p      = candidate & (forced | any_h c·(μ_hp + z·σ_hp) > τ_floor_h
                                       | any_h c·U_hp >= τ̂_h + outlier_margin)

(forced: the first ``sink_pages`` and the ``recent_pages`` candidates before the newest page;
the outlier rule only with ``outlier_margin`` given) — ``gaussian.gaussian_keep``, which it
replaces on the kernel path (~100 small torch launches), up to the order of the sums: the
means are sums over chunks (the squared deviation by Chan's merge of chunk moments), so a
page within rounding of its threshold may be decided the other way. And the attention's
score floor of the kept pages, as ``pages_above`` gives it (m the page mean scores):

    floor_h     = max(newest_h, max over kept pages of m_hp − slack·absmax_hp − alibi_h)

(``KernelOps.score_floor``'s composition, ~6 launches over [B, Hkv, G, P], to the bit).

Three launches, all over a (row, ``CHUNK``-page chunk) grid: each chunk's moments; each
chunk's keep mask, kept count and per-head floor from the row's merged moments; each chunk's
slice of the page list (increasing, −1 padded) at the offset of the chunks before it, and
from chunk 0 the row's floor. Bytes: μ and σ of the row's G heads twice, U once, absmax of
the kept pages; the mask twice. (``Gaussian`` passes the means as μ and m: the second read is
of the kept pages only.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.gaussian import page_max_quantile
from entmaxkv.kernels.common import candidate_count, next_pow2, register_batch_rule
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs
from entmaxkv.kernels.quest_select import _float64_of, float64_words

__all__ = ["gaussian_select"]

# pages per program. 1,024 left the B = 1 step 8 programs a row (64 at 32/8), the keep kernel 8.8 µs
# at 128K. 256, same run (H100, needles, perf-log row 162): B = 1 128K 102.3–102.5 -> 100.5 µs, 64K
# 77.8–79.6 -> 76.8; B = 16 64K 327.0 (the second base; the first, timed first in its process, 350.9)
# -> 324.4; the same outputs, the gpu tests of the Gaussian path pass at both
CHUNK = 256
NUM_WARPS = 4


@triton.jit
def _moments_kernel(
    mu, sigma, seq_lens, moments, H, P, NCHUNK,
    S: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, CHUNK: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """moments[row, chunk, :, g] = (Σμ, Σσ², Σ(μ + 1.5σ), Σ(μ − chunk mean)²) over the chunk's
    candidates, in float64."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n = candidate_count(tl.load(seq_lens + row // H), S, P)
    idx = chunk * CHUNK + tl.arange(0, CHUNK)
    gs = tl.arange(0, G_PAD)
    ok = (gs[:, None] < G) & (idx[None, :] < n)
    at = (row * G + gs[:, None]) * P + idx[None, :]
    m = tl.load(mu + at, mask=ok, other=0.0).to(tl.float64)
    s = tl.load(sigma + at, mask=ok, other=0.0).to(tl.float64)
    count = tl.minimum(tl.maximum(n - chunk * CHUNK, 0), CHUNK).to(tl.float64)
    total = tl.sum(m, axis=1)
    dev = tl.where(ok, m - (total / tl.maximum(count, 1.0))[:, None], 0.0)
    out = moments + (row * NCHUNK + chunk) * 4 * G + gs
    tl.store(out, total, mask=gs < G)
    tl.store(out + G, tl.sum(s * s, axis=1), mask=gs < G)
    tl.store(out + 2 * G, tl.sum(tl.where(ok, m + 1.5 * s, 0.0), axis=1), mask=gs < G)
    tl.store(out + 3 * G, tl.sum(dev * dev, axis=1), mask=gs < G)


@triton.jit
def _keep_kernel(
    mu, sigma, upper, means, absmax, slopes, tau_hat, seq_lens, moments, mask, kept, tau_floor, chunk_floor,
    slack,
    z_hi, z_mid, z_lo, c_hi, c_mid, c_lo, sz_hi, sz_mid, sz_lo, ef_hi, ef_mid, ef_lo, om_hi, om_mid, om_lo, sink,
    recent, H, P, NCHUNK,
    S: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, CHUNK: tl.constexpr, NCHUNK_PAD: tl.constexpr,
    OUTLIER: tl.constexpr, HAS_ALIBI: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """The chunk's keep mask, kept count and per-head score floor of its kept pages (−inf where
    none), from the row's moments (and, from chunk 0, τ_floor)."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n = candidate_count(tl.load(seq_lens + row // H), S, P)
    gs = tl.arange(0, G_PAD)
    cs = tl.arange(0, NCHUNK_PAD)
    c = _float64_of(c_hi, c_mid, c_lo)
    # merge the chunks' moments (Chan): Σ(μ − mean)² = Σ_k [M2_k + n_k·(mean_k − mean)²]
    at = (row * NCHUNK + cs[None, :]) * 4 * G + gs[:, None]
    live = (gs[:, None] < G) & (cs[None, :] < NCHUNK)
    count_k = tl.minimum(tl.maximum(n - cs * CHUNK, 0), CHUNK).to(tl.float64)[None, :]
    sum_k = tl.load(moments + at, mask=live, other=0.0)
    n_all = tl.maximum(n, 1).to(tl.float64)
    mean = tl.sum(sum_k, axis=1) / n_all
    mean_k = sum_k / tl.maximum(count_k, 1.0)
    spread = tl.sum(tl.load(moments + at + 3 * G, mask=live, other=0.0)
                    + count_k * (mean_k - mean[:, None]) * (mean_k - mean[:, None]), axis=1)
    var_sigma = tl.sum(tl.load(moments + at + G, mask=live, other=0.0), axis=1) / n_all
    top_mean = tl.sum(tl.load(moments + at + 2 * G, mask=live, other=0.0), axis=1) / n_all
    sigma_global = tl.sqrt(var_sigma + spread / n_all)
    t_hat = tl.load(tau_hat + row * G + gs, mask=gs < G, other=0.0)
    excess = tl.maximum(t_hat / c - top_mean, 0.0)
    margin = c * tl.maximum(_float64_of(sz_hi, sz_mid, sz_lo) * sigma_global, _float64_of(ef_hi, ef_mid, ef_lo) * excess)
    floor = t_hat - margin
    if chunk == 0:
        tl.store(tau_floor + row * G + gs, floor, mask=gs < G)

    idx = chunk * CHUNK + tl.arange(0, CHUNK)
    cand = idx < n
    ok = (gs[:, None] < G) & cand[None, :]
    pa = (row * G + gs[:, None]) * P + idx[None, :]
    z = _float64_of(z_hi, z_mid, z_lo)
    m = tl.load(mu + pa, mask=ok, other=0.0).to(tl.float64)
    s = tl.load(sigma + pa, mask=ok, other=0.0).to(tl.float64)
    reaches = ok & (c * (m + z * s) > floor[:, None])
    if OUTLIER:
        u = tl.load(upper + pa, mask=ok, other=0.0).to(tl.float64)
        reaches = reaches | (ok & (c * u >= (t_hat + _float64_of(om_hi, om_mid, om_lo))[:, None]))
    forced = cand & ((idx < sink) | (idx >= n - recent))
    keep = cand & ((tl.max(reaches.to(tl.int32), axis=0) > 0) | forced)
    tl.store(mask + row * P + idx, keep, mask=idx < P)
    tl.store(kept + row * NCHUNK + chunk, tl.sum(keep.to(tl.int32)))
    held = ok & keep[None, :]
    room = slack * tl.load(absmax + pa, mask=held, other=0.0)  # exact: slack is a power of two
    mean = tl.load(means + pa, mask=held, other=0.0)
    if HAS_ALIBI:  # the mean carries the page-centre bias; a token may sit (S − 1)/2 positions lower
        # · 0.5, not / 2: the same bits in IEEE arithmetic, and an exact multiply where the GPU
        # compiles a division to an approximate one (div.full.f32)
        slope = tl.abs(tl.load(slopes + (row % H) * G + gs, mask=gs < G, other=0.0)).to(room.dtype)
        spread = slope * (S - 1) * 0.5
        room = room + spread[:, None]
    best = tl.max(tl.where(held, mean - room, float("-inf")), axis=1)
    tl.store(chunk_floor + (row * NCHUNK + chunk) * G + gs, best, mask=gs < G)


@triton.jit
def _list_kernel(
    mask, kept, pages, count, P, NCHUNK,
    CHUNK: tl.constexpr, NCHUNK_PAD: tl.constexpr,
):
    """The chunk's kept pages at list positions offset + rank (offset: pages kept by the chunks
    before it), and −1 in the chunk's share of the list positions past the row's total."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cs = tl.arange(0, NCHUNK_PAD)
    per_chunk = tl.load(kept + row * NCHUNK + cs, mask=cs < NCHUNK, other=0)
    offset = tl.sum(tl.where(cs < chunk, per_chunk, 0))
    total = tl.sum(per_chunk)
    idx = chunk * CHUNK + tl.arange(0, CHUNK)
    take = tl.load(mask + row * P + idx, mask=idx < P, other=False).to(tl.int32)
    pos = offset + tl.cumsum(take, axis=0) - take
    out = pages + row * P
    tl.store(out + pos, idx.to(tl.int32), mask=take == 1)
    tl.store(out + idx, tl.full((CHUNK,), -1, tl.int32), mask=(idx >= total) & (idx < P))
    if chunk == 0:
        tl.store(count + row, total)


@triton.jit
def _row_floor(chunk_floor, newest_floor, floor, row, NCHUNK, G: tl.constexpr, G_PAD: tl.constexpr,
               NCHUNK_PAD: tl.constexpr):
    """The row's score floor [G]: its chunks' best kept-page floors and the newest page's."""
    gs = tl.arange(0, G_PAD)
    cs = tl.arange(0, NCHUNK_PAD)
    at = (row * NCHUNK + cs[None, :]) * G + gs[:, None]
    live = (gs[:, None] < G) & (cs[None, :] < NCHUNK)
    pages_best = tl.max(tl.load(chunk_floor + at, mask=live, other=float("-inf")), axis=1)
    newest = tl.load(newest_floor + row * G + gs, mask=gs < G, other=float("-inf"))
    tl.store(floor + row * G + gs, tl.maximum(pages_best, newest.to(pages_best.dtype)), mask=gs < G)


@triton.jit
def _list_floor_kernel(
    mask, kept, chunk_floor, newest_floor, pages, count, floor, P, NCHUNK,
    G: tl.constexpr, G_PAD: tl.constexpr, CHUNK: tl.constexpr, NCHUNK_PAD: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """``_list_kernel``, and from chunk 0 the row's score floor."""
    pdl_enter(PDL)
    _list_kernel(mask, kept, pages, count, P, NCHUNK, CHUNK, NCHUNK_PAD)
    if tl.program_id(1) == 0:
        _row_floor(chunk_floor, newest_floor, floor, tl.program_id(0).to(tl.int64), NCHUNK, G, G_PAD, NCHUNK_PAD)


@triton_op("entmaxkv::gaussian_select", mutates_args=())
def gaussian_select(
    mu: torch.Tensor, sigma: torch.Tensor, upper: torch.Tensor, means: torch.Tensor, absmax: torch.Tensor,
    tau_hat: torch.Tensor, max_quantile: float, newest_floor: torch.Tensor, seq_lens: torch.Tensor,
    alibi_slopes: torch.Tensor | None, page_size: int, alpha: float, safety_margin_z: float,
    excess_margin_fraction: float, outlier_margin: float, use_outlier: bool, sink_pages: int, recent_pages: int,
    slack: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Gaussian``'s kept pages -> ``(pages [B, Hkv, P] int32 (increasing, −1 padded),
    count [B, Hkv] int32, mask [B, Hkv, P] bool, tau_floor [B, Hkv, G] float64, floor [B, Hkv, G])``.

    mu, sigma, upper: [B, Hkv, G, P] (the Gaussian model's page score means and stds, and
    ``page_bounds``' upper); means, absmax: [B, Hkv, G, P] (``page_bounds``' mean and absmax,
    for the floor: read for kept pages only) — all in the work dtype, entries of pages that are
    not candidates never read; tau_hat: [B, Hkv, G] float64 (the model's τ̂); max_quantile: the
    quantile of a page's maximum (``Gaussian.max_quantile``; z = Φ⁻¹(max_quantile^(1/page_size))
    is computed here, on the host, by ``gaussian.page_max_quantile``: no launch, and the value
    is concrete here even where torch.compile traced it as a symbol); newest_floor: [B, Hkv, G] work dtype, the
    newest page's score floor; seq_lens: [B] int64 (after the append); alibi_slopes: optional
    [Hq]; α in (1, 2]; the margins as in ``Gaussian`` (``outlier_margin`` read only with
    ``use_outlier``); sink_pages, recent_pages >= 0; slack: ``mean_slack`` of the work dtype
    (a power of two). floor: ``KernelOps.score_floor`` of the kept pages (the module docstring).
    """
    b, hkv, g, p = mu.shape
    z = page_max_quantile(float(max_quantile), page_size)
    chunks = triton.cdiv(p, CHUNK)
    dev = mu.device
    moments = torch.empty((b, hkv, chunks, 4, g), dtype=torch.float64, device=dev)
    kept = torch.empty((b, hkv, chunks), dtype=torch.int32, device=dev)
    pages = torch.empty((b, hkv, p), dtype=torch.int32, device=dev)
    count = torch.empty((b, hkv), dtype=torch.int32, device=dev)
    mask = torch.empty((b, hkv, p), dtype=torch.bool, device=dev)
    tau_floor = torch.empty((b, hkv, g), dtype=torch.float64, device=dev)
    chunk_floor = torch.empty((b, hkv, chunks, g), dtype=means.dtype, device=dev)
    floor = torch.empty((b, hkv, g), dtype=means.dtype, device=dev)
    # counts past P mean "all pages" (n < P): clamped, so that every int argument fits 32 bits
    # (torch 2.11's Inductor sizes kernel int arguments to 32 bits; see quest_select)
    sink_pages, recent_pages = min(sink_pages, p), min(recent_pages, p)
    shape = dict(S=page_size, G=g, G_PAD=max(2, next_pow2(g)), CHUNK=CHUNK)
    wrap_triton(_moments_kernel)[(b * hkv, chunks)](mu, sigma, seq_lens, moments, hkv, p, chunks, **shape,
                                                     num_warps=NUM_WARPS, **pdl_kwargs(mu, "gaussian_select"))
    wrap_triton(_keep_kernel)[(b * hkv, chunks)](
        mu, sigma, upper, means, absmax, alibi_slopes if alibi_slopes is not None else mu, tau_hat, seq_lens,
        moments, mask, kept, tau_floor, chunk_floor, slack, *float64_words(z), *float64_words(alpha - 1.0),
        *float64_words(safety_margin_z), *float64_words(excess_margin_fraction),
        *float64_words(outlier_margin if use_outlier else 0.0), sink_pages, recent_pages, hkv, p, chunks,
        **shape, NCHUNK_PAD=max(2, next_pow2(chunks)), OUTLIER=use_outlier, HAS_ALIBI=alibi_slopes is not None,
        num_warps=NUM_WARPS, **pdl_kwargs(mu, "gaussian_select"))
    wrap_triton(_list_floor_kernel)[(b * hkv, chunks)](
        mask, kept, chunk_floor, newest_floor, pages, count, floor, p, chunks, G=g, G_PAD=max(2, next_pow2(g)),
        CHUNK=CHUNK, NCHUNK_PAD=max(2, next_pow2(chunks)), num_warps=NUM_WARPS, **pdl_kwargs(mu, "gaussian_select"))
    return pages, count, mask, tau_floor, floor


@gaussian_select.register_fake
def _(mu, sigma, upper, means, absmax, tau_hat, max_quantile, newest_floor, seq_lens, alibi_slopes, page_size, alpha,
      safety_margin_z, excess_margin_fraction, outlier_margin, use_outlier, sink_pages, recent_pages, slack):
    b, hkv, g, p = mu.shape
    return (mu.new_empty((b, hkv, p), dtype=torch.int32), mu.new_empty((b, hkv), dtype=torch.int32),
            mu.new_empty((b, hkv, p), dtype=torch.bool), mu.new_empty((b, hkv, g), dtype=torch.float64),
            means.new_empty((b, hkv, g)))


register_batch_rule(gaussian_select, (0, 1, 2, 3, 4, 5, 7, 8))  # vmap folds into the batch dimension
