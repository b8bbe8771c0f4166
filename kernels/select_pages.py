"""``entmaxkv::select_pages``: the pages with the largest keys, as a fixed-capacity page list.

For each (sequence, KV head) row of ``keys`` [B, Hkv, P], keep the ``count`` eligible pages
(key > −inf; +inf marks forced pages) with the largest keys — ties go to the lower page
index, as a stable descending sort would — and write them in increasing page order into a
list [B, Hkv, M] (int32, padded with −1), with the number kept. Threshold selection is the
same call with keys −inf where the threshold fails and ``count`` = M.

No sort: the k-th largest key is found bit by bit (most significant first) on an
order-preserving integer image of the float keys — one counting pass per bit, 32 for float32
keys, 64 for float64 — then one compaction pass writes the list. One program per row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2

__all__ = ["select_pages"]

MAX_BLOCK = 4096


@triton.jit
def _ordered(x, INT: tl.constexpr, NBITS: tl.constexpr):
    """Order-preserving map of floats to signed ints (−inf lowest, +inf highest): flip the
    magnitude bits of negative floats. −0.0 becomes +0.0 first: they are equal keys (a tie)."""
    bits = tl.where(x == 0, tl.zeros_like(x), x).to(INT, bitcast=True)
    magnitude = (tl.full(bits.shape, 1, INT) << (NBITS - 1)) - 1
    return bits ^ ((bits >> (NBITS - 1)) & magnitude)


@triton.jit
def _select_kernel(
    keys, counts, pages, kept, P, M,
    BLOCK: tl.constexpr, NBITS: tl.constexpr, INT: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = keys + row * P
    lanes = tl.arange(0, BLOCK)
    eligible_total = 0
    for start in range(0, P, BLOCK):
        x = tl.load(base + start + lanes, mask=start + lanes < P, other=float("-inf"))
        eligible_total += tl.sum((x > float("-inf")).to(tl.int32))
    k = tl.minimum(tl.minimum(tl.load(counts + row), eligible_total), M)

    # The k-th largest ordered key t: the largest t with #{u >= t} >= k, built bit by bit from
    # the most significant one. Bits are set on the unsigned image (u + 2^(N-1)); flipping the
    # sign bit turns it back into the signed value that the comparisons use.
    one = tl.full((), 1, INT)
    sign = one << (NBITS - 1)
    t_bits = tl.zeros((), INT)
    for i in range(NBITS):
        cand_bits = t_bits | (one << (NBITS - 1 - i))
        cand = cand_bits ^ sign
        c = 0
        for start in range(0, P, BLOCK):
            x = tl.load(base + start + lanes, mask=start + lanes < P, other=float("-inf"))
            u = _ordered(x, INT, NBITS)
            c += tl.sum(((x > float("-inf")) & (u >= cand)).to(tl.int32))
        t_bits = tl.where(c >= k, cand_bits, t_bits)
    t = t_bits ^ sign

    above = 0
    for start in range(0, P, BLOCK):
        x = tl.load(base + start + lanes, mask=start + lanes < P, other=float("-inf"))
        u = _ordered(x, INT, NBITS)
        above += tl.sum(((x > float("-inf")) & (u > t)).to(tl.int32))
    ties_wanted = k - above

    written = 0
    ties_seen = 0
    out = pages + row * M
    for start in range(0, P, BLOCK):
        idx = start + lanes
        x = tl.load(base + idx, mask=idx < P, other=float("-inf"))
        u = _ordered(x, INT, NBITS)
        ok = x > float("-inf")
        tie = (ok & (u == t)).to(tl.int32)
        tie_rank = ties_seen + tl.cumsum(tie, axis=0) - tie
        take = ((ok & (u > t)) | ((tie == 1) & (tie_rank < ties_wanted))).to(tl.int32)
        pos = written + tl.cumsum(take, axis=0) - take
        tl.store(out + pos, idx.to(tl.int32), mask=take == 1)
        written += tl.sum(take)
        ties_seen += tl.sum(tie)
    for start in range(0, M, BLOCK):
        idx = start + lanes
        tl.store(out + idx, tl.full((BLOCK,), -1, tl.int32), mask=(idx >= k) & (idx < M))
    tl.store(kept + row, k)


@triton_op("entmaxkv::select_pages", mutates_args=())
def select_pages(keys: torch.Tensor, counts: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """keys: [B, Hkv, P] float32/float64 (−inf: not eligible, +inf: forced); counts: [B, Hkv]
    int32, how many pages each row wants. Returns ``(pages [B, Hkv, capacity] int32, kept
    [B, Hkv] int32)`` with kept = min(count, eligible pages, capacity) page indices in
    increasing order, then −1."""
    b, h, p = keys.shape
    pages = torch.empty((b, h, capacity), dtype=torch.int32, device=keys.device)
    kept = torch.empty((b, h), dtype=torch.int32, device=keys.device)
    wide = keys.dtype == torch.float64
    wrap_triton(_select_kernel)[(b * h,)](
        keys, counts, pages, kept, p, capacity,
        BLOCK=min(MAX_BLOCK, max(16, next_pow2(max(p, capacity)))), NBITS=64 if wide else 32,
        INT=tl.int64 if wide else tl.int32,
    )
    return pages, kept


@select_pages.register_fake
def _(keys, counts, capacity):
    b, h, _ = keys.shape
    return keys.new_empty((b, h, capacity), dtype=torch.int32), keys.new_empty((b, h), dtype=torch.int32)
