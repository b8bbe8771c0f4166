"""``entmaxkv::page_box_upper``: TopK's page upper bounds from 8-bit page boxes, on integer
tensor cores (``entmaxkv.page_box`` has the definitions and the float64 reference).

Why: at B = 16 ``page_bounds`` reads the fp16 min/max at the roofline (3.8–3.95 TB/s on the
H200, perf-log row 132), so only fewer bytes make it faster. A box is 2·D + 8 bytes a page and
KV head instead of 4·D. Row 132's box went through the fp16 tensor-core form and paid a
conversion of every code between the shared-memory stage and the dots (1.4–2.0 TB/s). Here
the query is quantized instead (to int8 codes and a power-of-two step a head, in registers,
once a program) and the codes enter ``tl.dot`` as stored: int8 × int8 -> int32 (wgmma
m64n16k32.s32.s8.s8 on sm_90, its loads staged by cp.async: checked offline), exact. The
query's rounding is covered by l1/2 (the Lipschitz term), so the bound stays safe.

Grid (B·Hkv, ceil(P / (BLOCK_P·ITERS))); programs past the last full page exit. Entries of
pages that are not full are not written. A TopK step on a cache with page boxes
(``PagedKVCache.empty(..., page_boxes=True)``) runs its device code (``box_block``) in
``box_bounds``, in ``page_bounds``' place (perf-log rows 133–134).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, register_batch_rule
from entmaxkv.kernels.page_scores import DOT_BLOCK_P, DOT_STAGES, DOT_WARPS, dot_iters, rounding_gamma
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs

__all__ = ["page_box_upper", "box_block", "box_slack", "check_box_args"]

FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
MIN_STEP = tl.constexpr(2.0 ** -126)  # the smallest query step, a normal float32 (``page_box.query_codes``)


@triton.jit
def _page_box_upper_kernel(q, code_min, code_max, box_scale, box_l1, seq_lens, upper, attn_scale, slack, H, P, D,
                           S: tl.constexpr, G: tl.constexpr, GD: tl.constexpr, BLOCK_P: tl.constexpr,
                           BLOCK_D: tl.constexpr, ITERS: tl.constexpr, STAGES: tl.constexpr,
                           PDL: tl.constexpr = False):
    pdl_enter(PDL)
    bh = tl.program_id(0)
    full = tl.load(seq_lens + bh // H).to(tl.int32) // S
    box_block(q, code_min, code_max, box_scale, box_l1, upper, attn_scale, slack, bh, tl.program_id(1), full, P, D,
              G, GD, BLOCK_P, BLOCK_D, ITERS, STAGES)


@triton.jit
def box_block(q, code_min, code_max, box_scale, box_l1, upper, attn_scale, slack, bh, block, full, P, D,
              G: tl.constexpr, GD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, ITERS: tl.constexpr,
              STAGES: tl.constexpr):
    """The bounds of row ``bh``'s pages [block·BLOCK_P·ITERS, ...) below ``full`` (one program's
    share; also ``box_bounds``' page programs)."""
    if block * BLOCK_P * ITERS < full:
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        heads = tl.arange(0, GD)
        hmask = heads < G
        qrows = (bh * G + heads).to(tl.int64)
        qt = tl.load(q + qrows[None, :] * D + d[:, None], mask=dmask[:, None] & hmask[None, :], other=0.0)
        qt = qt.to(tl.float32)  # [BLOCK_D, GD], exact (float64 q: rounded, see page_box_upper)
        # a head with an entry that is not finite in float32 (inf, NaN, float64 beyond 3.4e38)
        # gets the vacuous bound +inf; its q is zeroed so that its step and codes stay defined
        finite = tl.sum((tl.abs(qt) < float("inf")).to(tl.int32), axis=0) == BLOCK_D  # [GD]
        qt = tl.where(finite[None, :], qt, 0.0)
        # each head's step: the smallest power of two >= 2^-126 with 127·t >= max |q| (1 for q = 0)
        m = tl.max(tl.abs(qt), axis=0)  # [GD]
        e = tl.ceil(tl.log2(tl.maximum(m, 127.0 * MIN_STEP) / 127.0)).to(tl.int32)  # a guess, within one
        e = tl.where(127.0 * _pow2(e) < m, e + 1, e)
        e = tl.where((e > -126) & (127.0 * _pow2(e - 1) >= m), e - 1, e)
        e = tl.where(m > 0, e, 0)
        t = _pow2(e)
        x = qt * _pow2(-e)[None, :]  # exact: q's significand shifted (|x| <= 127)
        r = tl.floor(x)
        codes = r + tl.where(x - r >= 0.5, 1.0, 0.0)  # half up, as floor(x + 1/2) in exact arithmetic
        q_pos = tl.maximum(codes, 0.0).to(tl.int8)
        q_neg = tl.minimum(codes, 0.0).to(tl.int8)
        scale_w = tl.cast(attn_scale, tl.float32)
        for i in tl.range(0, ITERS, num_stages=STAGES):
            p = (block * ITERS + i) * BLOCK_P + tl.arange(0, BLOCK_P)
            pmask = (p < full) & (p < P)
            stat = (bh.to(tl.int64) * P + p)[:, None] * D + d[None, :]
            smask = pmask[:, None] & dmask[None, :]
            cmin = tl.load(code_min + stat, mask=smask, other=0)  # [BLOCK_P, BLOCK_D] int8, as stored
            cmax = tl.load(code_max + stat, mask=smask, other=0)
            integer = tl.dot(cmax, q_pos, out_dtype=tl.int32) + tl.dot(cmin, q_neg, out_dtype=tl.int32)
            page = bh.to(tl.int64) * P + p
            s = tl.load(box_scale + page, mask=pmask, other=0.0)[:, None]
            l1 = tl.load(box_l1 + page, mask=pmask, other=0.0)[:, None]
            step = s * t[None, :] * scale_w  # [BLOCK_P, GD]: t a power of two, so one rounding (and scale's cast)
            # (I + l1/2 + slack·128·l1)·step: I + l1/2 exact (a half-integer below 2^23), then
            # two roundings (< 2·eps·mag with step's); one product, never inf − inf
            u = (integer.to(tl.float32) + 0.5 * l1 + tl.cast(slack, tl.float32) * (128.0 * l1)) * step
            # a step that overflows float32 (a vacuous page's scale +inf, or keys and queries
            # whose scores pass float32's range): +inf, never −inf or NaN; a bound below
            # −3.4e38 (a finite step, a product past float32) is −3.4e38, still above it
            u = tl.where(finite[None, :] & (step < float("inf")), tl.maximum(u, -FLOAT32_MAX), float("inf"))
            out = qrows[None, :] * P + p[:, None]
            tl.store(upper + out, u, mask=pmask[:, None] & hmask[None, :])


@triton.jit
def _pow2(e):
    """2^e in float32, exactly, for integer e in [-126, 127] (built from its exponent bits)."""
    return ((tl.minimum(tl.maximum(e, -126), 127) + 127) << 23).to(tl.float32, bitcast=True)


def check_box_args(q, code_min, code_max, box_scale, box_l1, seq_lens) -> None:
    if q.dim() != 3 or code_min.dim() != 4:
        raise ValueError(f"q must be [B, Hq, D] and code_min [B, Hkv, P, D], got {tuple(q.shape)} and "
                         f"{tuple(code_min.shape)}")
    b, hkv, p, d = code_min.shape
    if code_min.dtype != torch.int8 or code_max.dtype != torch.int8 or code_max.shape != code_min.shape:
        raise TypeError(f"code_min and code_max must be int8 [B, Hkv, P, D] = {tuple(code_min.shape)}, got "
                        f"{code_min.dtype} and {code_max.dtype} {tuple(code_max.shape)}")
    for name, x in (("box_scale", box_scale), ("box_l1", box_l1)):
        if x.dtype != torch.float32 or tuple(x.shape) != (b, hkv, p):
            raise ValueError(f"{name} must be float32 [B, Hkv, P] = {(b, hkv, p)}, got {x.dtype} {tuple(x.shape)}")
    if q.shape[0] != b or q.shape[2] != d or q.shape[1] % hkv or q.dtype not in (torch.float16, torch.bfloat16,
                                                                                   torch.float32, torch.float64):
        raise ValueError(f"q must be a float [B, Hkv·G, D] tensor with B = {b}, D = {d}, got {q.dtype} "
                         f"{tuple(q.shape)}")
    if not 32 <= d <= 512:
        raise ValueError(f"the head dimension must be in [32, 512] (int8 tensor cores' K; I + l1/2 exact in "
                         f"float32), got {d}")
    for name, x in (("q", q), ("code_min", code_min), ("code_max", code_max), ("box_scale", box_scale),
                    ("box_l1", box_l1)):
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if tuple(seq_lens.shape) != (b,):
        raise ValueError(f"seq_lens must be [B] = ({b},), got {tuple(seq_lens.shape)}")


@triton_op("entmaxkv::page_box_upper", mutates_args=())
def page_box_upper(q: torch.Tensor, code_min: torch.Tensor, code_max: torch.Tensor, box_scale: torch.Tensor,
                   box_l1: torch.Tensor, seq_lens: torch.Tensor, page_size: int, scale: float) -> torch.Tensor:
    """upper [B, Hkv, G, P] float32: a safe upper bound of every score scale·q·k of each full
    page (entries of other pages undefined), ``entmaxkv.page_box.box_upper``'s, within 4·eps·mag.

    q: [B, Hq, D] contiguous (fp16, bf16, float32 or float64; Hq = Hkv·G); code_min / code_max: [B, Hkv,
    P, D] int8 and box_scale / box_l1: [B, Hkv, P] float32, from ``page_box.box_codes``;
    seq_lens: [B] int64 (a page is full when (page + 1)·S <= length); 32 <= D <= 512.

    γ is the work dtype's (``rounding_gamma``: float64 for float64 q, float32 otherwise), as in
    the attention that scores the tokens. A float64 q is rounded to float32 before it is
    quantized: that moves q_d by up to 2^-24·|q_d| <= 2^-24·127·t, at most (127/128)·2^-24·mag
    over the page, inside the 2·eps·mag of the slack that the float32 roundings leave. A head
    with an entry that is not finite in float32 (inf, NaN, a float64 beyond 3.4e38), and a page
    whose step scale·t·scale overflows float32, get +inf: vacuous, never unsafe. A bound past
    float32's range is +inf above it and −3.4e38 (float32's lowest, still above the bound) below.
    """
    check_box_args(q, code_min, code_max, box_scale, box_l1, seq_lens)
    b, hkv, p, d = code_min.shape
    g = q.shape[1] // hkv
    upper = torch.empty((b, hkv, g, p), dtype=torch.float32, device=q.device)
    iters = dot_iters(b * hkv * triton.cdiv(p, DOT_BLOCK_P), q.device)
    grid = (b * hkv, triton.cdiv(p, DOT_BLOCK_P * iters))
    wrap_triton(_page_box_upper_kernel)[grid](
        q, code_min, code_max, box_scale, box_l1, seq_lens, upper, scale,
        box_slack(q.dtype, d), hkv, p, d,
        S=page_size, G=g, GD=max(16, next_pow2(g)), BLOCK_P=DOT_BLOCK_P, BLOCK_D=next_pow2(d), ITERS=iters,
        STAGES=DOT_STAGES, num_warps=DOT_WARPS, **pdl_kwargs(q, "page_scores"),  # in page_bounds' place
    )
    return upper


def box_slack(q_dtype: torch.dtype, head_dim: int) -> float:
    """γ + 4·eps: γ of the work dtype (float64 for float64 q, float32 otherwise), 4·eps the
    kernel's float32 roundings (``page_box``)."""
    return rounding_gamma(torch.float64 if q_dtype == torch.float64 else torch.float32, head_dim) + 4 * 2.0 ** -23


@page_box_upper.register_fake
def _(q, code_min, code_max, box_scale, box_l1, seq_lens, page_size, scale):
    b, hkv, p, _ = code_min.shape
    return q.new_empty((b, hkv, q.shape[1] // hkv, p), dtype=torch.float32)


register_batch_rule(page_box_upper, (0, 1, 2, 3, 4, 5))
