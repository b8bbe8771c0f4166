"""``entmaxkv::append_token``: write each sequence's new key/value at its slot and, when the
token completes its page, that page's statistics. One program per (sequence, KV head).

Bytes: the new K/V rows (2·D elements), plus one page of keys (S·D) read and four statistic
rows written on the one step in S that fills a page. A full sequence (length == capacity)
is left untouched; the caller reports it (``fits``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, page_stats_of, register_batch_rule

__all__ = ["append_token"]


@triton.jit
def _append_kernel(
    k_pages, v_pages, k_min, k_max, k_mean, k_std, seq_lens, k_new, v_new,
    capacity, H, P, D,
    S: tl.constexpr, BLOCK_D: tl.constexpr, WORK: tl.constexpr,
):
    bh = tl.program_id(0)
    b = bh // H
    length = tl.load(seq_lens + b)
    if length < capacity:
        page = length // S
        slot = length % S
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        page_base = (bh.to(tl.int64) * P + page) * S * D
        new_k = tl.load(k_new + bh * D + d, mask=dmask)
        new_v = tl.load(v_new + bh * D + d, mask=dmask)
        tl.store(k_pages + page_base + slot * D + d, new_k, mask=dmask)
        tl.store(v_pages + page_base + slot * D + d, new_v, mask=dmask)
        if slot == S - 1:
            rows = tl.arange(0, S)
            block = page_base + rows[:, None] * D + d[None, :]
            keys = tl.load(k_pages + block, mask=(rows[:, None] < S - 1) & dmask[None, :], other=0.0).to(WORK)
            # the new row comes from registers: this program's own store need not be visible yet
            keys = tl.where(rows[:, None] == S - 1, new_k.to(WORK)[None, :], keys)
            lo, hi, mean, std = page_stats_of(keys, S)
            stat = (bh.to(tl.int64) * P + page) * D + d
            tl.store(k_min + stat, lo.to(k_min.dtype.element_ty), mask=dmask)
            tl.store(k_max + stat, hi.to(k_max.dtype.element_ty), mask=dmask)
            tl.store(k_mean + stat, mean.to(k_mean.dtype.element_ty), mask=dmask)
            tl.store(k_std + stat, std.to(k_std.dtype.element_ty), mask=dmask)


@triton_op("entmaxkv::append_token", mutates_args=("k_pages", "v_pages", "k_min", "k_max", "k_mean", "k_std"))
def append_token(
    k_pages: torch.Tensor, v_pages: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor,
    k_mean: torch.Tensor, k_std: torch.Tensor, seq_lens: torch.Tensor, k_new: torch.Tensor,
    v_new: torch.Tensor, capacity: int,
) -> None:
    """Write k_new/v_new [B, Hkv, 1, D] at slot ``seq_lens[b]`` of every (b, head) in place.

    k_pages, v_pages: [B, Hkv, P, S, D] contiguous; k_min/k_max (cache dtype) and
    k_mean/k_std (float32, float64 for a float64 cache): [B, Hkv, P, D]; seq_lens: [B] int64,
    the lengths *before* the append (not changed here). Rows with seq_lens[b] >= capacity are
    not touched; P = ceil(capacity / S).
    """
    b, h, p, s, d = k_pages.shape
    work = tl.float64 if k_pages.dtype == torch.float64 else tl.float32
    wrap_triton(_append_kernel)[(b * h,)](
        k_pages, v_pages, k_min, k_max, k_mean, k_std, seq_lens, k_new, v_new,
        capacity, h, p, d, S=s, BLOCK_D=next_pow2(d), WORK=work,
    )


@append_token.register_fake
def _(k_pages, v_pages, k_min, k_max, k_mean, k_std, seq_lens, k_new, v_new, capacity):
    return None


register_batch_rule(append_token, (0, 1, 2, 3, 4, 5, 6, 7, 8))  # vmap folds into the batch dimension
