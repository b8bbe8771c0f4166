"""``entmaxkv::page_statistics``: min/max/mean/std of every full page of a prompt, one launch.

Grid (B·Hkv, P): one program per page slot; slots that are not full pages of their sequence
exit at once (prefill of a 128K prompt is one launch, not a Python loop over pages).
Bytes: each full page's keys read once, four statistic rows written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, page_stats_of, register_batch_rule

__all__ = ["page_statistics"]


@triton.jit
def _page_stats_kernel(
    k_pages, k_min, k_max, k_mean, k_std, seq_lens, H, P, D,
    S: tl.constexpr, BLOCK_D: tl.constexpr, WORK: tl.constexpr,
):
    page = tl.program_id(0)  # pages on the grid's x axis: y and z stop at 65,535 (a 1M-token cache has more pages)
    bh = tl.program_id(1)
    length = tl.load(seq_lens + bh // H)
    if page < length // S:
        rows = tl.arange(0, S)
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        row = bh.to(tl.int64) * P + page
        keys = tl.load(k_pages + row * S * D + rows[:, None] * D + d[None, :], mask=dmask[None, :], other=0.0)
        lo, hi, mean, std = page_stats_of(keys.to(WORK), S)
        stat = row * D + d
        tl.store(k_min + stat, lo.to(k_min.dtype.element_ty), mask=dmask)
        tl.store(k_max + stat, hi.to(k_max.dtype.element_ty), mask=dmask)
        tl.store(k_mean + stat, mean.to(k_mean.dtype.element_ty), mask=dmask)
        tl.store(k_std + stat, std.to(k_std.dtype.element_ty), mask=dmask)


@triton_op("entmaxkv::page_statistics", mutates_args=("k_min", "k_max", "k_mean", "k_std"))
def page_statistics(
    k_pages: torch.Tensor, seq_lens: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor,
    k_mean: torch.Tensor, k_std: torch.Tensor,
) -> None:
    """Write the statistics of every full page in place.

    k_pages: [B, Hkv, P, S, D] contiguous; seq_lens: [B] int64; k_min/k_max (cache dtype) and
    k_mean/k_std (float32, float64 for a float64 cache): [B, Hkv, P, D]. Page p of sequence b
    is full when (p + 1)·S <= seq_lens[b]; other slots are not touched.
    """
    b, h, p, s, d = k_pages.shape
    work = tl.float64 if k_pages.dtype == torch.float64 else tl.float32
    if b * h > 65535:
        raise ValueError(f"page_statistics: batch × KV heads must be at most 65,535 (a CUDA grid axis), got {b * h}")
    wrap_triton(_page_stats_kernel)[(p, b * h)](
        k_pages, k_min, k_max, k_mean, k_std, seq_lens, h, p, d, S=s, BLOCK_D=next_pow2(d), WORK=work,
    )


@page_statistics.register_fake
def _(k_pages, seq_lens, k_min, k_max, k_mean, k_std):
    return None


register_batch_rule(page_statistics, (0, 1, 2, 3, 4, 5))  # vmap folds into the batch dimension
