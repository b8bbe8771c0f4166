"""``entmaxkv::page_statistics``: min/max/mean/std of every full page of a prompt, one launch.

Grid (B·Hkv, P): one program per page slot; slots that are not full pages of their sequence
exit at once (prefill of a 128K prompt is one launch, not a Python loop over pages).
Bytes: each full page's keys read once, four statistic rows written, all in the cache dtype.

Mean and std are computed in float64 and rounded once to the cache dtype by ``round_stat``
(through float32, to nearest even), as ``state.page_statistics`` does: fp16 keys sum exactly
in float64 whatever the order, so the stored means are the torch code's bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, page_stats_of, register_batch_rule, store_box

__all__ = ["page_statistics", "round_stat", "check_boxes"]


@triton.jit
def round_stat(x, OUT: tl.constexpr):
    """A float64 statistic rounded to the cache dtype ``OUT`` as ``state.round_stat`` does: to
    float32, then to fp16/bf16, each to nearest even. The bf16 step rounds the float32 bits
    itself: Triton's CPU interpreter truncates float32 -> bf16 (``../shared/PLATFORM.md``);
    what is left after it is exact, so the final cast is the same everywhere (the interpreter
    also turns float64 -> bf16 into NaN: min/max, exact in any dtype, go through here too).
    NaN passes through as NaN (its bits would otherwise carry into the sign: 0x7FFFFFFF + 0x7FFF)."""
    if OUT == tl.float64:
        return x
    y = x.to(tl.float32)
    if OUT == tl.bfloat16:
        bits = y.to(tl.int32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536  # to nearest even at bit 16
        y = tl.where(y != y, y, bits.to(tl.float32, bitcast=True))
    return y.to(OUT)


@triton.jit
def _page_stats_kernel(
    k_pages, k_min, k_max, k_mean, k_std, box_min, box_max, box_scale, box_l1, seq_lens, H, P, D,
    S: tl.constexpr, BLOCK_D: tl.constexpr, BOXES: tl.constexpr,
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
        # float64: min/max stay exact, mean/std are rounded once, below
        lo, hi, mean, std = page_stats_of(keys.to(tl.float64), S)
        stat = row * D + d
        tl.store(k_min + stat, round_stat(lo, k_min.dtype.element_ty), mask=dmask)  # exact
        tl.store(k_max + stat, round_stat(hi, k_max.dtype.element_ty), mask=dmask)
        tl.store(k_mean + stat, round_stat(mean, k_mean.dtype.element_ty), mask=dmask)
        tl.store(k_std + stat, round_stat(std, k_std.dtype.element_ty), mask=dmask)
        if BOXES:  # the page's 8-bit box (page_box.encode_boxes), from its exact min/max
            store_box(lo, hi, d, dmask, row, box_min, box_max, box_scale, box_l1, D)


@triton_op("entmaxkv::page_statistics",
           mutates_args=("k_min", "k_max", "k_mean", "k_std", "box_min", "box_max", "box_scale", "box_l1"))
def page_statistics(
    k_pages: torch.Tensor, seq_lens: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor,
    k_mean: torch.Tensor, k_std: torch.Tensor, box_min: torch.Tensor | None, box_max: torch.Tensor | None,
    box_scale: torch.Tensor | None, box_l1: torch.Tensor | None,
) -> None:
    """Write the statistics (and, with them, the 8-bit boxes) of every full page in place.

    k_pages: [B, Hkv, P, S, D] contiguous; seq_lens: [B] int64; k_min/k_max/k_mean/k_std:
    [B, Hkv, P, D] in the cache dtype. box_min, box_max: optional [B, Hkv, P, D] int8 and
    box_scale, box_l1: [B, Hkv, P] float32 (``page_box.encode_boxes``'s bits), all four None
    without boxes (required arguments: see ``append_token``). Page p of sequence b is full when
    (p + 1)·S <= seq_lens[b]; other slots are not touched.
    """
    boxes = check_boxes(k_pages, box_min, box_max, box_scale, box_l1)
    b, h, p, s, d = k_pages.shape
    if b * h > 65535:
        raise ValueError(f"page_statistics: batch × KV heads must be at most 65,535 (a CUDA grid axis), got {b * h}")
    wrap_triton(_page_stats_kernel)[(p, b * h)](
        k_pages, k_min, k_max, k_mean, k_std, *(boxes or (k_min,) * 4), seq_lens, h, p, d, S=s,
        BLOCK_D=next_pow2(d), BOXES=boxes is not None,
    )


def check_boxes(k_pages: torch.Tensor, box_min: torch.Tensor | None, box_max: torch.Tensor | None,
                box_scale: torch.Tensor | None, box_l1: torch.Tensor | None) -> tuple | None:
    """The four box tensors of a cache with ``k_pages`` [B, Hkv, P, S, D], checked (int8 [B,
    Hkv, P, D] codes, float32 [B, Hkv, P] scale and l1, contiguous), or None when all are None."""
    boxes = (box_min, box_max, box_scale, box_l1)
    if all(x is None for x in boxes):
        return None
    b, h, p, _, d = k_pages.shape
    want = {"box_min": (torch.int8, (b, h, p, d)), "box_max": (torch.int8, (b, h, p, d)),
            "box_scale": (torch.float32, (b, h, p)), "box_l1": (torch.float32, (b, h, p))}
    for (name, (dtype, shape)), x in zip(want.items(), boxes):
        if x is None or x.dtype != dtype or tuple(x.shape) != shape or not x.is_contiguous():
            raise ValueError(f"{name} must be a contiguous {dtype} tensor of shape {shape} (or all four boxes None), "
                             f"got {None if x is None else (x.dtype, tuple(x.shape))}")
    return boxes


@page_statistics.register_fake
def _(k_pages, seq_lens, k_min, k_max, k_mean, k_std, box_min, box_max, box_scale, box_l1):
    return None


register_batch_rule(page_statistics, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9))  # vmap folds into the batch dimension
