"""``entmaxkv::newest_page_bounds``: ``page_bounds``' newest-page outputs alone, one program a
row (B·Hkv), for a step whose page bounds come from elsewhere (``page_box_upper``: perf-log
row 133). The same device code as ``page_bounds``' extra program (``_newest_page``) at the warps
``page_bounds`` takes without σ (TopK's form), so the same bits there (checked on the CPU; the
GPU test is written, not yet run).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, register_batch_rule, work_dtype_of
from entmaxkv.kernels.page_scores import DOT_WARPS, NUM_WARPS, _newest_page, newest_slack, uses_dot
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs

__all__ = ["newest_page_bounds"]


@triton.jit
def _newest_page_kernel(q, k_pages, slopes, seq_lens, newest_max, newest_mag, newest_scores, newest_floor, scale,
                        slack, H, P, D, S: tl.constexpr, G: tl.constexpr, BLOCK_S: tl.constexpr,
                        BLOCK_D: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr,
                        PDL: tl.constexpr = False):
    pdl_enter(PDL)
    bh = tl.program_id(0)
    length = tl.load(seq_lens + bh // H).to(tl.int32)
    _newest_page(q, k_pages, slopes, newest_max, newest_mag, newest_scores, newest_floor, scale, slack, bh, H, P, D,
                 length, S, G, BLOCK_S, BLOCK_D, WORK, HAS_ALIBI, True)


@triton_op("entmaxkv::newest_page_bounds", mutates_args=())
def newest_page_bounds(q: torch.Tensor, k_pages: torch.Tensor, seq_lens: torch.Tensor,
                       alibi_slopes: torch.Tensor | None, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(newest_max, newest_mag [B, Hkv, G], newest_scores [B, Hkv, G, S], newest_floor [B, Hkv,
    G]) in the work dtype, as ``page_bounds`` returns them. q: [B, Hq, D] contiguous in the cache
    dtype; k_pages: [B, Hkv, P, S, D] contiguous; seq_lens: [B] int64 (>= 1); alibi_slopes:
    optional [Hq]."""
    b, hkv, p, s, d = k_pages.shape
    if q.dim() != 3 or q.shape[0] != b or q.shape[2] != d or q.shape[1] % hkv:
        raise ValueError(f"q must be [B, Hkv·G, D] with B = {b}, Hkv = {hkv}, D = {d}, got {tuple(q.shape)}")
    if q.dtype != k_pages.dtype or not q.is_contiguous() or not k_pages.is_contiguous():
        raise ValueError(f"q and k_pages must be contiguous in one dtype, got {q.dtype} and {k_pages.dtype}")
    if tuple(seq_lens.shape) != (b,):
        raise ValueError(f"seq_lens must be [B] = ({b},), got {tuple(seq_lens.shape)}")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) != (q.shape[1],):
        raise ValueError(f"alibi_slopes must be [Hq] = ({q.shape[1]},), got {tuple(alibi_slopes.shape)}")
    g = q.shape[1] // hkv
    work = work_dtype_of(k_pages.dtype)
    newest_max = torch.empty((b, hkv, g), dtype=work, device=q.device)
    newest_mag = torch.empty_like(newest_max)
    newest_scores = torch.empty((b, hkv, g, s), dtype=work, device=q.device)
    newest_floor = torch.empty_like(newest_max)
    if work == torch.float64:  # kernels get float scalars as float32: scale q exactly here instead
        q, scale = q * scale, 1.0
    wrap_triton(_newest_page_kernel)[(b * hkv,)](
        q, k_pages, alibi_slopes.contiguous() if alibi_slopes is not None else newest_max, seq_lens, newest_max,
        newest_mag, newest_scores, newest_floor, scale, newest_slack(work, d), hkv, p, d,
        S=s, G=g, BLOCK_S=next_pow2(s), BLOCK_D=next_pow2(d),
        WORK=tl.float64 if work == torch.float64 else tl.float32, HAS_ALIBI=alibi_slopes is not None,
        num_warps=DOT_WARPS if uses_dot(q, k_pages, False) else NUM_WARPS,  # page_bounds' launch: its layouts
        **pdl_kwargs(q, "page_scores"),  # in page_bounds' place
    )
    return newest_max, newest_mag, newest_scores, newest_floor


@newest_page_bounds.register_fake
def _(q, k_pages, seq_lens, alibi_slopes, scale):
    b, hkv, _, s, _ = k_pages.shape
    work = work_dtype_of(k_pages.dtype)
    newest = q.new_empty((b, hkv, q.shape[1] // hkv), dtype=work)
    return newest, torch.empty_like(newest), q.new_empty((*newest.shape, s), dtype=work), torch.empty_like(newest)


register_batch_rule(newest_page_bounds, (0, 1, 2))
