"""``entmaxkv::box_bounds``: a TopK step's page scores on a cache with 8-bit page boxes, one
launch: every full page's box bound (``page_box_upper``'s programs, the same bits) and one
extra program a row for the newest page (``page_bounds``' newest-page outputs: the same device
code, at the warps of ``page_bounds``' tensor-core form, TopK's on fp16/bf16, so the same bits
there). It takes ``page_bounds``' place in the step (perf-log row 134): no min/max is read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, register_batch_rule, work_dtype_of
from entmaxkv.kernels.page_box_upper import box_block, box_slack, check_box_args
from entmaxkv.kernels.page_scores import DOT_BLOCK_P, DOT_STAGES, DOT_WARPS, _newest_page, dot_iters, newest_slack
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs

__all__ = ["box_bounds"]


@triton.jit
def _box_bounds_kernel(q, q_newest, code_min, code_max, box_scale, box_l1, seq_lens, k_pages, upper, newest_max,
                       newest_mag, newest_scores, newest_floor, attn_scale, newest_scale, slack, slack_newest, H, P, D,
                       S: tl.constexpr, G: tl.constexpr, GD: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, ITERS: tl.constexpr, STAGES: tl.constexpr,
                       WORK: tl.constexpr, PDL: tl.constexpr = False):
    pdl_enter(PDL)
    bh = tl.program_id(0)
    block = tl.program_id(1)
    length = tl.load(seq_lens + bh // H).to(tl.int32)
    if block == tl.num_programs(1) - 1:  # the extra program: the newest page, token by token
        _newest_page(q_newest, k_pages, newest_max, newest_max, newest_mag, newest_scores, newest_floor, newest_scale,
                     slack_newest, bh, H, P, D, length, S, G, BLOCK_S, BLOCK_D, WORK, False, True)
    else:
        box_block(q, code_min, code_max, box_scale, box_l1, upper, attn_scale, slack, bh, block, length // S, P, D, G,
                  GD, BLOCK_P, BLOCK_D, ITERS, STAGES)


@triton_op("entmaxkv::box_bounds", mutates_args=())
def box_bounds(q: torch.Tensor, code_min: torch.Tensor, code_max: torch.Tensor, box_scale: torch.Tensor,
               box_l1: torch.Tensor, seq_lens: torch.Tensor, k_pages: torch.Tensor, scale: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(upper [B, Hkv, G, P] float32, newest_max, newest_mag [B, Hkv, G], newest_scores [B, Hkv,
    G, S], newest_floor [B, Hkv, G], the last four in the work dtype): ``page_box_upper``'s
    output (entries of pages that are not full undefined) and ``page_bounds``' newest-page
    outputs, from one launch.

    q: [B, Hq, D] contiguous in the cache dtype; code_min, code_max, box_scale, box_l1: the
    cache's boxes (``page_box_upper``); seq_lens: [B] int64 (>= 1); k_pages: [B, Hkv, P, S, D]
    contiguous, the cache's keys (only each sequence's newest page is read). No ALiBi.
    """
    check_box_args(q, code_min, code_max, box_scale, box_l1, seq_lens)
    b, hkv, p, s, d = k_pages.shape
    if tuple(code_min.shape) != (b, hkv, p, d):
        raise ValueError(f"k_pages must be [B, Hkv, P, S, D] with [B, Hkv, P, D] = {tuple(code_min.shape)}, got "
                         f"{tuple(k_pages.shape)}")
    if q.dtype != k_pages.dtype or not k_pages.is_contiguous():
        raise ValueError(f"k_pages must be contiguous in q's dtype, got {k_pages.dtype} for q {q.dtype}")
    g = q.shape[1] // hkv
    work = work_dtype_of(k_pages.dtype)
    upper = torch.empty((b, hkv, g, p), dtype=torch.float32, device=q.device)
    newest_max = torch.empty((b, hkv, g), dtype=work, device=q.device)
    newest_mag = torch.empty_like(newest_max)
    newest_scores = torch.empty((b, hkv, g, s), dtype=work, device=q.device)
    newest_floor = torch.empty_like(newest_max)
    # a float64 cache: the newest page's scores take q·scale (kernels get float scalars as
    # float32, as newest-page code does in page_bounds); the box quantizes q itself
    q_newest, newest_scale = (q * scale, 1.0) if work == torch.float64 else (q, scale)
    iters = dot_iters(b * hkv * triton.cdiv(p, DOT_BLOCK_P), q.device)
    grid = (b * hkv, triton.cdiv(p, DOT_BLOCK_P * iters) + 1)
    wrap_triton(_box_bounds_kernel)[grid](
        q, q_newest, code_min, code_max, box_scale, box_l1, seq_lens, k_pages, upper, newest_max, newest_mag,
        newest_scores, newest_floor, scale, newest_scale, box_slack(q.dtype, d), newest_slack(work, d), hkv, p, d,
        S=s, G=g, GD=max(16, next_pow2(g)), BLOCK_P=DOT_BLOCK_P, BLOCK_D=next_pow2(d), BLOCK_S=next_pow2(s),
        ITERS=iters, STAGES=DOT_STAGES, WORK=tl.float64 if work == torch.float64 else tl.float32,
        num_warps=DOT_WARPS, **pdl_kwargs(q, "page_scores"),  # in page_bounds' place
    )
    return upper, newest_max, newest_mag, newest_scores, newest_floor


@box_bounds.register_fake
def _(q, code_min, code_max, box_scale, box_l1, seq_lens, k_pages, scale):
    b, hkv, p, s, _ = k_pages.shape
    work = work_dtype_of(k_pages.dtype)
    newest = q.new_empty((b, hkv, q.shape[1] // hkv), dtype=work)
    return (q.new_empty((b, hkv, q.shape[1] // hkv, p), dtype=torch.float32), newest, torch.empty_like(newest),
            q.new_empty((*newest.shape, s), dtype=work), torch.empty_like(newest))


register_batch_rule(box_bounds, (0, 1, 2, 3, 4, 5, 6))
