"""``entmaxkv::append_token``: write each sequence's new key/value at its slot and, when the
token completes its page, that page's statistics and (for a cache with them) the page's key
codes and 8-bit box; and each sequence's length after the step and whether the token fitted.
One program per (sequence, KV head).

Bytes: the new K/V rows (2·D elements), plus one page of keys (S·D) read and four statistic
rows written (cache dtype; mean and std computed in float64 and rounded once, as in
``page_stats``) on the one step in S that fills a page (and S·W code bytes, 2·D + 8 box bytes). A full sequence
(length == capacity) is left untouched; the caller reports it (``fits``).

Codes follow ``keycodes.encode_keys`` bit for bit: step = (kmax − kmin)·fl(1/(2^bits − 1))
and code = round_half_even((k − kmin) / step) clamped to [0, 2^bits − 1] (0 where step is 0),
with the stored (cache-dtype) min/max in the work dtype and an IEEE division, like torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import code_step, next_pow2, page_stats_of, register_batch_rule, store_box
from entmaxkv.kernels.page_stats import check_boxes, round_stat
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs

__all__ = ["append_token"]


@triton.jit
def _round_half_even(x):
    """torch.round for x >= 0: x − floor(x) is exact, so ties are seen exactly."""
    f = tl.floor(x)
    frac = x - f
    odd = (f.to(tl.int32) & 1) == 1
    return tl.where((frac > 0.5) | ((frac == 0.5) & odd), f + 1.0, f)


@triton.jit
def _page_codes(keys, lo, hi, d, D, BITS: tl.constexpr, WORK: tl.constexpr):
    """int32 codes [S, BLOCK_D] of a page's keys (work dtype) against its min/max [BLOCK_D]."""
    levels = tl.full((), 2**BITS - 1, WORK)
    step = code_step(lo, hi, BITS, WORK)
    coded = (step > 0) & (d < D)
    diff = keys - lo[None, :]
    safe = tl.where(coded, step, 1.0)[None, :]
    if WORK == tl.float64:
        ratio = diff / safe
    else:
        ratio = tl.math.div_rn(diff, safe)
    code = tl.minimum(tl.maximum(_round_half_even(ratio), 0.0), levels)
    return tl.where(coded[None, :], code, 0.0).to(tl.int32)


@triton.jit
def _append_kernel(
    k_pages, v_pages, k_min, k_max, k_mean, k_std, seq_lens, k_new, v_new, k_codes, box_min, box_max, box_scale,
    box_l1, new_lens, fits, capacity, H, P, D, W,
    S: tl.constexpr, BLOCK_D: tl.constexpr, WORK: tl.constexpr, BITS: tl.constexpr, BOXES: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    bh = tl.program_id(0)
    b = bh // H
    length = tl.load(seq_lens + b)
    if bh % H == 0:  # one program of the sequence reports its new length
        tl.store(new_lens + b, length + (length < capacity).to(length.dtype))
        tl.store(fits + b, length < capacity)
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
            lo, hi, mean, std = page_stats_of(keys.to(tl.float64), S)  # float64: see page_stats
            stat = (bh.to(tl.int64) * P + page) * D + d
            tl.store(k_min + stat, round_stat(lo, k_min.dtype.element_ty), mask=dmask)  # exact
            tl.store(k_max + stat, round_stat(hi, k_max.dtype.element_ty), mask=dmask)
            tl.store(k_mean + stat, round_stat(mean, k_mean.dtype.element_ty), mask=dmask)
            tl.store(k_std + stat, round_stat(std, k_std.dtype.element_ty), mask=dmask)
            if BOXES:  # the page's 8-bit box (page_box.encode_boxes), from its exact min/max
                store_box(lo, hi, d, dmask, bh.to(tl.int64) * P + page, box_min, box_max, box_scale, box_l1, D)
            if BITS != 0:  # the page's codes, against its min/max as stored (exact conversions)
                lo = round_stat(lo, k_min.dtype.element_ty).to(WORK)
                hi = round_stat(hi, k_max.dtype.element_ty).to(WORK)
                code = _page_codes(keys, lo, hi, d, D, BITS, WORK)
                code_row = (bh.to(tl.int64) * P + page) * S + rows
                if BITS == 8:
                    tl.store(k_codes + code_row[:, None] * W + d[None, :], code.to(tl.uint8), mask=dmask[None, :])
                else:  # channel 2j in the low nibble of byte j, 2j+1 in the high one
                    nibble = tl.where(d % 2 == 1, 16, 1)[None, :]
                    byte = tl.sum(tl.reshape(code * nibble, (S, BLOCK_D // 2, 2)), axis=2)
                    j = tl.arange(0, BLOCK_D // 2)
                    tl.store(k_codes + code_row[:, None] * W + j[None, :], byte.to(tl.uint8), mask=(j < W)[None, :])


@triton_op("entmaxkv::append_token",
           mutates_args=("k_pages", "v_pages", "k_min", "k_max", "k_mean", "k_std", "k_codes", "box_min", "box_max",
                         "box_scale", "box_l1"))
def append_token(
    k_pages: torch.Tensor, v_pages: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor,
    k_mean: torch.Tensor, k_std: torch.Tensor, seq_lens: torch.Tensor, k_new: torch.Tensor,
    v_new: torch.Tensor, capacity: int, k_codes: torch.Tensor | None, key_bits: int,
    box_min: torch.Tensor | None, box_max: torch.Tensor | None, box_scale: torch.Tensor | None,
    box_l1: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write k_new/v_new [B, Hkv, 1, D] at slot ``seq_lens[b]`` of every (b, head) in place;
    returns ``(new_lens [B] int64, fits [B] bool)``: seq_lens + 1 where the token fitted
    (seq_lens < capacity), seq_lens elsewhere — what ``state.append_token`` returns, without
    three more launches of torch glue.

    k_pages, v_pages: [B, Hkv, P, S, D] contiguous; k_min/k_max/k_mean/k_std: [B, Hkv, P, D]
    in the cache dtype; seq_lens: [B] int64,
    the lengths *before* the append (not changed here). Rows with seq_lens[b] >= capacity are
    not touched; P = ceil(capacity / S). k_codes: optional [B, Hkv, P, S, W] uint8 key codes
    (``keycodes`` layout) for ``key_bits`` 4 or 8: a page the token completes gets its codes;
    None (and ``key_bits`` 0) without codes. box_min, box_max: optional [B, Hkv, P, D] int8 and
    box_scale, box_l1: [B, Hkv, P] float32, the cache's 8-bit page boxes (``page_box``): a page
    the token completes gets its box; all four None without boxes. All are required arguments: torch 2.11's boxed
    calls drop trailing arguments equal to their defaults, and a dropped mutable argument
    breaks its in-place bookkeeping (IndexError in ``adinplaceorview_impl``, seen on the H200).
    """
    if k_codes is not None and key_bits not in (4, 8):
        raise ValueError(f"append_token: key_bits must be 4 or 8 with k_codes, got {key_bits!r}")
    boxes = check_boxes(k_pages, box_min, box_max, box_scale, box_l1)
    b, h, p, s, d = k_pages.shape
    work = tl.float64 if k_pages.dtype == torch.float64 else tl.float32
    bits = 0 if k_codes is None else key_bits
    new_lens = torch.empty_like(seq_lens)
    fits = torch.empty(seq_lens.shape, dtype=torch.bool, device=seq_lens.device)
    wrap_triton(_append_kernel)[(b * h,)](
        k_pages, v_pages, k_min, k_max, k_mean, k_std, seq_lens, k_new, v_new,
        k_pages if k_codes is None else k_codes,  # never written without codes (nor boxes without boxes)
        *(boxes or (k_pages,) * 4), new_lens, fits, capacity, h, p, d, 0 if k_codes is None else k_codes.shape[-1],
        S=s, BLOCK_D=max(2, next_pow2(d)), WORK=work, BITS=bits, BOXES=boxes is not None,
        **pdl_kwargs(seq_lens, "append")
    )
    return new_lens, fits


@append_token.register_fake
def _(k_pages, v_pages, k_min, k_max, k_mean, k_std, seq_lens, k_new, v_new, capacity, k_codes, key_bits, box_min,
      box_max, box_scale, box_l1):
    return torch.empty_like(seq_lens), seq_lens.new_empty(seq_lens.shape, dtype=torch.bool)


# vmap folds into the batch dimension (the cache's tensors, the new K/V, the codes, the boxes)
register_batch_rule(append_token, (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 13, 14, 15))
