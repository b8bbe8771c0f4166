"""``entmaxkv::code_bounds`` and ``entmaxkv::code_candidates``: the scans over the key codes
behind certified-exact ``Exact`` (``entmaxkv.exact_codes``), without a token-score tensor.

Every token i of a coded page p (a full page other than the newest) has the score interval
of ``entmaxkv.keycodes``, computed here from the same tensors with the same formulas:

    step_pd = (kmax_pd − kmin_pd) / (2^bits − 1)                (IEEE division, as torch)
    ŝ_i     = scale · (q·kmin_p + Σ_d (q_d·step_pd)·code_id)  (+ slope·(i − newest position))
    ε_p     = scale · Σ_d |q_d|·(step_pd/2 + r·M_pd)          (+ 8·eps·|slope|·span)

with r = 8·eps + 6·γ and γ = 2(D+2)·eps of the work dtype. Only the order of the D-term sums
differs from the torch reference, so ŝ and ε agree with it within the rounding of a D-term
dot product, and the certificate's argument holds unchanged: r·M covers the rounding of ŝ
computed in any order (the reference's and this one's), so |s̃_i − ŝ_i| <= ε_p here too.

1. ``code_bounds``: one pass over the codes of every coded page, for all G query heads of
   a KV group per program (a page's codes and statistics are read once per group). Writes
   per (head, page) the best ŝ and ε: page_max ± ε is the best token's lower / upper bound
   (max_i (ŝ_i ± ε) = max_i ŝ_i ± ε: rounding is monotone). Enough to pick seed pages; the
   token scores are written only when asked (``with_scores``, for tests and diagnostics).
2. ``code_candidates``: given τ_low per head, a second pass that first checks each page's
   best upper bound against τ_low and rescans the codes of only the pages that can hold a
   candidate — tokens with lin·(ŝ + ε) > τ_low for some head of the group, compared in
   float64 like the reference. It appends them to a fixed-capacity list per (sequence, KV
   head) through an atomic counter (list order across programs is unspecified; the count
   is exact, and nothing is written past the capacity: the caller flags count > capacity),
   and marks the pages holding a candidate.

Grid (B·Hkv, ceil(P / BLOCK_P)); each program walks BLOCK_P pages, and pages past the coded
ones cost one store. Bytes per step: codes + kmin/kmax of every coded page once (pass 1),
then only candidate pages' again (pass 2), plus [B, Hkv, G, P] floats twice.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, register_batch_rule, work_dtype_of

__all__ = ["code_bounds", "code_candidates", "code_radius_factor"]

BLOCK_P = 16  # pages walked per program


def code_radius_factor(dtype: torch.dtype, head_dim: int) -> float:
    """r of ``keycodes.code_radius`` for the work dtype: 8·eps + 6·γ, exactly (an integer
    times eps, so a float32 kernel argument carries it without rounding)."""
    eps = torch.finfo(dtype).eps
    return 8 * eps + 6 * (2.0 * (head_dim + 2) * eps)


def _alibi_eps(dtype: torch.dtype, num_pages: int, page_size: int) -> float:
    """8·eps·span of ``keycodes.code_scores`` (a power of two times an integer: exact)."""
    return 8 * torch.finfo(dtype).eps * float(num_pages * page_size)


@triton.jit
def _coded_page(qw, qabs, codes, k_min, k_max, page_row, d, dmask, tok, r, scale, D, W,
                S: tl.constexpr, BITS: tl.constexpr, WORK: tl.constexpr):
    """ŝ [G_PAD, S] (no ALiBi) and ε [G_PAD] of one coded page; ``page_row`` = bh·P + p."""
    stat = page_row * D + d
    kmin = tl.load(k_min + stat, mask=dmask, other=0.0).to(WORK)
    kmax = tl.load(k_max + stat, mask=dmask, other=0.0).to(WORK)
    levels = tl.full((), 2**BITS - 1, WORK)
    if WORK == tl.float64:
        step = (kmax - kmin) / levels  # IEEE in float64
    else:
        step = tl.math.div_rn(kmax - kmin, levels)  # the encoding's step bit for bit (`/` is approximate)
    radius = step / 2 + r * tl.maximum(tl.abs(kmin), tl.abs(kmax))
    row = page_row * S + tok  # [S] token rows of the code storage
    cmask = dmask[None, :] & (tok[:, None] < S)
    if BITS == 8:
        code = tl.load(codes + row[:, None] * W + d[None, :], mask=cmask, other=0).to(WORK)
    else:  # element 2j in the low nibble, 2j+1 in the high one
        byte = tl.load(codes + row[:, None] * W + (d // 2)[None, :], mask=cmask, other=0).to(tl.int32)
        code = ((byte >> ((d % 2) * 4)[None, :]) & 15).to(WORK)
    base = tl.sum(qw * kmin[None, :], axis=1)
    qstep = qw * step[None, :]
    s_hat = (base[:, None] + tl.sum(qstep[:, None, :] * code[None, :, :], axis=2)) * scale
    eps = tl.sum(qabs * radius[None, :], axis=1) * scale
    return s_hat, eps


@triton.jit
def _load_group(q, seq_lens, slopes, scale_t, bh, H, G, D, S: tl.constexpr, G_PAD: tl.constexpr,
                BLOCK_D: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """The group's queries (work dtype), |q|, scale, coded page count, query position, slopes."""
    b = bh // H
    length = tl.load(seq_lens + b).to(tl.int32)
    coded = tl.maximum(length - 1, 0) // S  # full pages before the one holding the newest token
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, BLOCK_D)
    gmask = g < G
    dmask = d < D
    qrow = (bh * G + g).to(tl.int64)
    qw = tl.load(q + qrow[:, None] * D + d[None, :], mask=gmask[:, None] & dmask[None, :], other=0.0).to(WORK)
    if HAS_ALIBI:
        slope = tl.load(slopes + (bh % H) * G + g, mask=gmask, other=0.0).to(WORK)
    else:
        slope = tl.zeros((G_PAD,), WORK)
    return qw, tl.abs(qw), tl.load(scale_t).to(WORK), coded, length - 1, slope, g, d, gmask, dmask, qrow


@triton.jit
def _code_bounds_kernel(
    q, codes, k_min, k_max, seq_lens, slopes, scale_t,
    page_max, eps_out, s_hat_out,
    r, alibi_eps, H, G, P, D, W,
    S: tl.constexpr, G_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, BITS: tl.constexpr,
    WORK: tl.constexpr, HAS_ALIBI: tl.constexpr, WITH_SCORES: tl.constexpr,
):
    bh = tl.program_id(0)
    qw, qabs, scale, coded, q_pos, slope, g, d, gmask, dmask, qrow = _load_group(
        q, seq_lens, slopes, scale_t, bh, H, G, D, S, G_PAD, BLOCK_D, WORK, HAS_ALIBI)
    r_w = tl.cast(r, WORK)
    tok = tl.arange(0, S)
    for j in range(BLOCK_P):
        p = tl.program_id(1) * BLOCK_P + j
        out = qrow * P + p
        if p < coded:
            s_hat, eps = _coded_page(qw, qabs, codes, k_min, k_max, bh.to(tl.int64) * P + p, d, dmask, tok,
                                     r_w, scale, D, W, S, BITS, WORK)
            if HAS_ALIBI:
                s_hat += slope[:, None] * (p * S + tok - q_pos).to(WORK)[None, :]
                eps += tl.abs(slope) * tl.cast(alibi_eps, WORK)
            tl.store(page_max + out, tl.max(s_hat, axis=1), mask=gmask)
            tl.store(eps_out + out, eps, mask=gmask)
            if WITH_SCORES:
                tl.store(s_hat_out + (qrow * P + p)[:, None] * S + tok[None, :], s_hat, mask=gmask[:, None])
        elif p < P:  # not coded: no token can be chosen from it
            tl.store(page_max + out, tl.full((G_PAD,), float("-inf"), WORK), mask=gmask)
            tl.store(eps_out + out, tl.zeros((G_PAD,), WORK), mask=gmask)


@triton.jit
def _code_candidates_kernel(
    q, codes, k_min, k_max, seq_lens, slopes, scale_t, lin_t, page_max, eps_in, tau_low,
    index, count, page_mask,
    r, alibi_eps, H, G, P, D, W, C,
    S: tl.constexpr, G_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, BITS: tl.constexpr,
    WORK: tl.constexpr, HAS_ALIBI: tl.constexpr,
):
    bh = tl.program_id(0)
    qw, qabs, scale, coded, q_pos, slope, g, d, gmask, dmask, qrow = _load_group(
        q, seq_lens, slopes, scale_t, bh, H, G, D, S, G_PAD, BLOCK_D, WORK, HAS_ALIBI)
    r_w = tl.cast(r, WORK)
    c = tl.load(lin_t)  # float64 α − 1, as the reference multiplies
    tau = tl.load(tau_low + qrow, mask=gmask, other=float("inf"))  # padded heads reach −inf
    tok = tl.arange(0, S)
    for j in range(BLOCK_P):
        p = tl.program_id(1) * BLOCK_P + j
        found = tl.zeros((), tl.int32)
        if p < coded:
            out = qrow * P + p
            best = tl.load(page_max + out, mask=gmask, other=float("-inf"))
            spread = tl.load(eps_in + out, mask=gmask, other=0.0)
            if tl.max(c * (best + spread).to(tl.float64) - tau, axis=0) > 0:  # some token may reach τ_low
                s_hat, eps = _coded_page(qw, qabs, codes, k_min, k_max, bh.to(tl.int64) * P + p, d, dmask, tok,
                                         r_w, scale, D, W, S, BITS, WORK)
                if HAS_ALIBI:
                    s_hat += slope[:, None] * (p * S + tok - q_pos).to(WORK)[None, :]
                    eps += tl.abs(slope) * tl.cast(alibi_eps, WORK)
                high = (s_hat + eps[:, None]).to(tl.float64)
                cand = (tl.max(c * high - tau[:, None], axis=0) > 0).to(tl.int32)  # any head of the group
                n = tl.sum(cand, axis=0)
                found = n
                if n > 0:
                    first = tl.atomic_add(count + bh, n)
                    slot = first + tl.cumsum(cand, axis=0) - cand
                    tl.store(index + bh.to(tl.int64) * C + slot, (p * S + tok).to(tl.int32),
                             mask=(cand == 1) & (slot < C))
        if p < P:
            tl.store(page_mask + bh.to(tl.int64) * P + p, found > 0)


def _launch_args(q: torch.Tensor, k_codes: torch.Tensor, k_min: torch.Tensor, bits: int):
    b, hkv, p, s, w = k_codes.shape
    d = k_min.shape[-1]
    g = q.shape[1] // hkv
    work = work_dtype_of(k_min.dtype)
    consts = dict(S=s, G_PAD=next_pow2(g), BLOCK_D=next_pow2(d), BLOCK_P=BLOCK_P, BITS=bits,
                  WORK=tl.float64 if work == torch.float64 else tl.float32)
    return b, hkv, p, s, w, d, g, work, consts


@triton_op("entmaxkv::code_bounds", mutates_args=())
def code_bounds(
    q: torch.Tensor, k_codes: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor, seq_lens: torch.Tensor,
    alibi_slopes: torch.Tensor | None, bits: int, scale: float, with_scores: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 1: ``(page_max, eps, s_hat)``.

    q: [B, Hq, D] contiguous (Hq = Hkv·G); k_codes: [B, Hkv, P, S, W] uint8 (``keycodes``
    layout for ``bits`` 4 or 8); k_min/k_max: [B, Hkv, P, D] in the cache dtype; seq_lens: [B]
    (after the step's append); alibi_slopes: optional [Hq].
    page_max: [B, Hkv, G, P] work dtype, max_i ŝ_i over each coded page, −inf elsewhere;
    eps: [B, Hkv, G, P] ε_p of coded pages, 0 elsewhere; s_hat: [B, Hkv, G, P·S] ŝ of the
    tokens of coded pages (other slots unwritten) if ``with_scores``, else [0].
    """
    b, hkv, p, s, w, d, g, work, consts = _launch_args(q, k_codes, k_min, bits)
    page_max = torch.empty((b, hkv, g, p), dtype=work, device=q.device)
    eps = torch.empty_like(page_max)
    s_hat = torch.empty((b, hkv, g, p * s) if with_scores else (0,), dtype=work, device=q.device)
    scale_t = torch.full((1,), scale, dtype=torch.float64, device=q.device)  # a fill, not a copy
    slopes = alibi_slopes if alibi_slopes is not None else page_max  # never read without ALiBi
    wrap_triton(_code_bounds_kernel)[(b * hkv, triton.cdiv(p, BLOCK_P))](
        q, k_codes, k_min, k_max, seq_lens, slopes, scale_t, page_max, eps, s_hat if with_scores else page_max,
        code_radius_factor(work, d), _alibi_eps(work, p, s), hkv, g, p, d, w,
        HAS_ALIBI=alibi_slopes is not None, WITH_SCORES=with_scores, **consts,
    )
    return page_max, eps, s_hat


@code_bounds.register_fake
def _(q, k_codes, k_min, k_max, seq_lens, alibi_slopes, bits, scale, with_scores):
    b, hkv, p, s, _ = k_codes.shape
    g = q.shape[1] // hkv
    work = work_dtype_of(k_min.dtype)
    page_max = q.new_empty((b, hkv, g, p), dtype=work)
    return page_max, torch.empty_like(page_max), q.new_empty((b, hkv, g, p * s) if with_scores else (0,), dtype=work)


@triton_op("entmaxkv::code_candidates", mutates_args=())
def code_candidates(
    q: torch.Tensor, k_codes: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor, seq_lens: torch.Tensor,
    alibi_slopes: torch.Tensor | None, page_max: torch.Tensor, eps: torch.Tensor, tau_low: torch.Tensor,
    bits: int, scale: float, lin: float, capacity: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2: ``(index, count, page_mask)`` of the tokens with lin·(ŝ + ε) > τ_low for some
    head of the group.

    Inputs as ``code_bounds`` plus its ``page_max`` and ``eps`` and tau_low: [B, Hkv, G]
    float64; lin: α − 1; capacity: C. index: [B, Hkv, C] int32 token slots (p·S + j),
    unordered, −1 in unused entries; count: [B, Hkv] int32, candidates found (may exceed C:
    then only C are listed); page_mask: [B, Hkv, P] bool, pages holding a candidate (listed
    or not).
    """
    b, hkv, p, s, w, d, g, work, consts = _launch_args(q, k_codes, k_min, bits)
    index = torch.full((b, hkv, capacity), -1, dtype=torch.int32, device=q.device)
    count = torch.zeros((b, hkv), dtype=torch.int32, device=q.device)
    page_mask = torch.empty((b, hkv, p), dtype=torch.bool, device=q.device)
    scale_t = torch.full((1,), scale, dtype=torch.float64, device=q.device)
    lin_t = torch.full((1,), lin, dtype=torch.float64, device=q.device)
    slopes = alibi_slopes if alibi_slopes is not None else page_max
    wrap_triton(_code_candidates_kernel)[(b * hkv, triton.cdiv(p, BLOCK_P))](
        q, k_codes, k_min, k_max, seq_lens, slopes, scale_t, lin_t, page_max, eps, tau_low,
        index, count, page_mask,
        code_radius_factor(work, d), _alibi_eps(work, p, s), hkv, g, p, d, w, capacity,
        HAS_ALIBI=alibi_slopes is not None, **consts,
    )
    return index, count, page_mask


@code_candidates.register_fake
def _(q, k_codes, k_min, k_max, seq_lens, alibi_slopes, page_max, eps, tau_low, bits, scale, lin, capacity):
    b, hkv, p = k_codes.shape[:3]
    return (q.new_empty((b, hkv, capacity), dtype=torch.int32), q.new_empty((b, hkv), dtype=torch.int32),
            q.new_empty((b, hkv, p), dtype=torch.bool))


# vmap folds into the batch dimension (q, codes, statistics, lengths; bounds and τ_low too)
register_batch_rule(code_bounds, (0, 1, 2, 3, 4))
register_batch_rule(code_candidates, (0, 1, 2, 3, 4, 6, 7, 8))
