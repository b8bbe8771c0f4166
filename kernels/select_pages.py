"""``entmaxkv::select_pages``: the pages with the largest keys, as a fixed-capacity page list.

For each (sequence, KV head) row of ``keys`` [B, Hkv, P], keep the ``count`` eligible pages
(key > −inf; +inf marks forced pages) with the largest keys — ties go to the lower page
index, as a stable descending sort would — and write them in increasing page order into a
list [B, Hkv, M] (int32, padded with −1), with the number kept. Threshold selection is the
same call with keys −inf where the threshold fails and ``count`` = M.

No sort: the k-th largest key is found on an order-preserving integer image of the float
keys, most significant bits first, ``RADIX`` bits a counting pass, then one compaction pass
writes the list. One program per row. Each counting pass is one block-wide reduction (a
``tl.sum`` with barriers), latency-bound, so the number of passes is the cost:

- ``RADIX = 1``: one pass per bit — 32 for float32 keys, 64 for float64 — each counting the
  keys >= one candidate threshold.
- ``RADIX = 2``: one pass per two bits — 16 for float32, 32 for float64. A pass tests the three
  candidates t|01, t|10, t|11 of the next two bits at once: each lane packs its three 0/1
  indicators into one int64 (``FIELD``-bit fields) and one ``tl.sum`` returns the three counts.
  The largest candidate whose count is >= k wins, which is what two 1-bit passes decide, so the
  threshold and the pages selected are the same bit for bit.

Both then run one more pass (the keys above the threshold, for the ties) and, before the
search, one that counts the eligible keys. On the H200 (``benchmarks/quest_select_gpu.py``,
TopK's ``quest_select``, B = 1, 32/8 heads, 2026-11-29) radix 2 is slower on long rows — 8,196
pages at 128K: 58.8 µs against 53.1 (8 warps), 55.3 against 50.5 (16) — and barely faster on
short ones (516 pages at 8K: 14.8 against 15.4): the int64 reduction and the packing cost
about what the halved pass count saves. ``RADIX`` below is the default, 1.
(A 4-bit radix select with ``tl.histogram`` — 8 passes instead of 32 — measured 2–3× slower
on the H200: benchmarks/results/perf-log.md.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, register_batch_rule

__all__ = ["select_pages", "search_radix"]  # the @triton.jit helpers are shared with quest_select

MAX_BLOCK = 16384  # a row up to this many pages stays in registers
WIDE_WARPS = 8  # warps of a program whose row block holds 2048 pages or more
# bits decided per counting pass of the threshold search, 1 or 2 (select_pages and quest_select
# both read it at call time: flipping it here flips both); 1 measured faster on long rows (above)
RADIX = 1


def search_radix(radix: int, block: int) -> tuple[int, int]:
    """``(RADIX, FIELD)`` launch constexprs of a threshold search over ``block``-lane chunks.

    A radix-2 pass sums, over one chunk, three counts packed in one int64: each count is at
    most ``block`` (lanes past the row are ineligible and count 0), so FIELD = bit_length(block)
    bits hold it and the fields cannot carry into each other. A streamed row unpacks every
    chunk's sum before adding it to int32 totals, so the row length P does not bound it. The
    three fields need 3·FIELD <= 63 bits (the int64 stays non-negative): blocks up to 2^20
    lanes, which is every block Triton builds (``tl.TRITON_MAX_TENSOR_NUMEL`` = 2^20 in Triton
    3.7); a larger block would fall back to radix 1.
    """
    if radix not in (1, 2):
        raise ValueError(f"RADIX must be 1 or 2, got {radix!r}")
    field = int(block).bit_length()
    return (radix if 3 * field <= 63 else 1), field


@triton.jit
def _ordered(x, INT: tl.constexpr, NBITS: tl.constexpr):
    """Order-preserving map of floats to signed ints (−inf lowest, +inf highest): flip the
    magnitude bits of negative floats. −0.0 becomes +0.0 first: they are equal keys (a tie)."""
    bits = tl.where(x == 0, tl.zeros_like(x), x).to(INT, bitcast=True)
    magnitude = (tl.full(bits.shape, 1, INT) << (NBITS - 1)) - 1
    return bits ^ ((bits >> (NBITS - 1)) & magnitude)


@triton.jit
def _eligible_ordered(x, INT: tl.constexpr, NBITS: tl.constexpr):
    """``_ordered(x)``, and the lowest integer for ineligible keys (−inf): below every
    threshold the search tries (those are all > the lowest integer)."""
    lowest = tl.full(x.shape, -(2 ** (NBITS - 1)), INT)
    return tl.where(x > float("-inf"), _ordered(x, INT, NBITS), lowest)


@triton.jit
def _count(base, lanes, P, cand, u_all, INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr,
           ONE_CHUNK: tl.constexpr):
    """#{eligible u >= cand} over the row (from registers when the row is one chunk)."""
    if ONE_CHUNK:
        return tl.sum((u_all >= cand).to(tl.int32))
    c = 0
    for start in range(0, P, BLOCK):
        x = tl.load(base + start + lanes, mask=start + lanes < P, other=float("-inf"))
        c += tl.sum((_eligible_ordered(x, INT, NBITS) >= cand).to(tl.int32))
    return c


@triton.jit
def _packed_ge(u, c1, c2, c3, FIELD: tl.constexpr):
    """Per lane, the indicators u >= c1, c2, c3 as one int64 with a FIELD-bit field each (low
    to high): summing it sums the three counts at once."""
    return ((u >= c1).to(tl.int64) | ((u >= c2).to(tl.int64) << FIELD)
            | ((u >= c3).to(tl.int64) << (2 * FIELD)))


@triton.jit
def _unpacked(total, FIELD: tl.constexpr):
    """The three int32 counts of a sum of ``_packed_ge`` over at most 2^FIELD − 1 lanes."""
    field_mask: tl.constexpr = (1 << FIELD) - 1
    return ((total & field_mask).to(tl.int32), ((total >> FIELD) & field_mask).to(tl.int32),
            ((total >> (2 * FIELD)) & field_mask).to(tl.int32))


@triton.jit
def _count3(base, lanes, P, c1, c2, c3, u_all, INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr,
            ONE_CHUNK: tl.constexpr, FIELD: tl.constexpr):
    """(#{eligible u >= c1}, … >= c2, … >= c3) over the row, one reduction per chunk. A chunk's
    counts are <= BLOCK < 2^FIELD (``search_radix``), so its packed sum has no carry between
    fields; a streamed row adds the unpacked counts (int32), so the row length is not bounded
    by the field."""
    tl.static_assert((1 << FIELD) > BLOCK, "a FIELD-bit field must hold a chunk's count (up to BLOCK)")
    tl.static_assert(3 * FIELD <= 63, "three FIELD-bit fields must fit a non-negative int64")
    if ONE_CHUNK:
        return _unpacked(tl.sum(_packed_ge(u_all, c1, c2, c3, FIELD)), FIELD)
    n1 = 0
    n2 = 0
    n3 = 0
    for start in range(0, P, BLOCK):
        x = tl.load(base + start + lanes, mask=start + lanes < P, other=float("-inf"))
        a1, a2, a3 = _unpacked(tl.sum(_packed_ge(_eligible_ordered(x, INT, NBITS), c1, c2, c3, FIELD)), FIELD)
        n1 += a1
        n2 += a2
        n3 += a3
    return n1, n2, n3


@triton.jit
def _threshold(base, lanes, P, u_all, k, eligible_total, INT: tl.constexpr, NBITS: tl.constexpr,
               BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr, RADIX: tl.constexpr, FIELD: tl.constexpr):
    """(t, ties_wanted): the k-th largest ordered key t of the row, and how many keys equal to
    t the k largest include. t is the largest t with #{u >= t} >= k, built from the most
    significant bit down, RADIX bits a pass (1 or 2; NBITS is even). Bits are set on the
    unsigned image (u + 2^(N-1)); flipping the sign bit turns it back into the signed value
    that the comparisons use. When every eligible page is taken there is nothing to search: t
    is the lowest value."""
    one = tl.full((), 1, INT)
    sign = one << (NBITS - 1)
    t_bits = tl.zeros((), INT)
    above = k
    if k < eligible_total:
        if RADIX == 1:
            for i in range(NBITS):
                cand_bits = t_bits | (one << (NBITS - 1 - i))
                c = _count(base, lanes, P, cand_bits ^ sign, u_all, INT, NBITS, BLOCK, ONE_CHUNK)
                t_bits = tl.where(c >= k, cand_bits, t_bits)
        else:
            tl.static_assert(RADIX == 2, "RADIX is 1 or 2")
            for i in range(0, NBITS, 2):
                hi = one << (NBITS - 1 - i)
                lo = one << (NBITS - 2 - i)
                # t|01 < t|10 < t|11, so n01 >= n10 >= n11: the largest candidate with a count
                # >= k is the one the two 1-bit passes (bit hi, then bit lo) would reach
                n01, n10, n11 = _count3(base, lanes, P, (t_bits | lo) ^ sign, (t_bits | hi) ^ sign,
                                        (t_bits | hi | lo) ^ sign, u_all, INT, NBITS, BLOCK, ONE_CHUNK, FIELD)
                t_bits = tl.where(n11 >= k, t_bits | hi | lo,
                                  tl.where(n10 >= k, t_bits | hi, tl.where(n01 >= k, t_bits | lo, t_bits)))
        above = _count(base, lanes, P, (t_bits ^ sign) + 1, u_all, INT, NBITS, BLOCK, ONE_CHUNK)
    return t_bits ^ sign, k - above


@triton.jit
def _take(x, t, ties_seen, ties_wanted, INT: tl.constexpr, NBITS: tl.constexpr):
    """(take, ties) int32 masks of one chunk of keys: the pages kept (above the threshold t, or
    tied with it and among the first ``ties_wanted`` ties of the row) and the ties."""
    u = _ordered(x, INT, NBITS)
    ok = x > float("-inf")
    tie = (ok & (u == t)).to(tl.int32)
    tie_rank = ties_seen + tl.cumsum(tie, axis=0) - tie
    take = ((ok & (u > t)) | ((tie == 1) & (tie_rank < ties_wanted))).to(tl.int32)
    return take, tie


@triton.jit
def _pad(out, lanes, k, M, BLOCK: tl.constexpr):
    """−1 in list slots k..M−1."""
    for start in range(0, M, BLOCK):
        idx = start + lanes
        tl.store(out + idx, tl.full((BLOCK,), -1, tl.int32), mask=(idx >= k) & (idx < M))


@triton.jit
def _select_kernel(
    keys, counts, pages, kept, P, M,
    BLOCK: tl.constexpr, NBITS: tl.constexpr, INT: tl.constexpr, ONE_CHUNK: tl.constexpr, RADIX: tl.constexpr,
    FIELD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = keys + row * P
    lanes = tl.arange(0, BLOCK)
    x_all = tl.load(base + lanes, mask=lanes < P, other=float("-inf"))  # the whole row if ONE_CHUNK
    u_all = _eligible_ordered(x_all, INT, NBITS)  # computed once: every counting pass reuses it
    eligible_total = _count(base, lanes, P, tl.full((), -(2 ** (NBITS - 1)) + 1, INT), u_all, INT, NBITS, BLOCK,
                            ONE_CHUNK)
    k = tl.minimum(tl.minimum(tl.load(counts + row), eligible_total), M)
    t, ties_wanted = _threshold(base, lanes, P, u_all, k, eligible_total, INT, NBITS, BLOCK, ONE_CHUNK, RADIX,
                                FIELD)

    written = 0
    ties_seen = 0
    out = pages + row * M
    for start in range(0, P, BLOCK):
        idx = start + lanes
        if ONE_CHUNK:
            x = x_all
        else:
            x = tl.load(base + idx, mask=idx < P, other=float("-inf"))
        take, tie = _take(x, t, ties_seen, ties_wanted, INT, NBITS)
        pos = written + tl.cumsum(take, axis=0) - take
        tl.store(out + pos, idx.to(tl.int32), mask=(take == 1) & (pos < M))
        written += tl.sum(take)
        ties_seen += tl.sum(tie)
    _pad(out, lanes, k, M, BLOCK)
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
    block = min(MAX_BLOCK, max(16, next_pow2(max(p, capacity))))
    radix, field = search_radix(RADIX, block)
    wrap_triton(_select_kernel)[(b * h,)](
        keys, counts, pages, kept, p, capacity,
        BLOCK=block, NBITS=64 if wide else 32, INT=tl.int64 if wide else tl.int32, ONE_CHUNK=p <= block,
        RADIX=radix, FIELD=field,
        num_warps=WIDE_WARPS if block >= 2048 else 4,
    )
    return pages, kept


@select_pages.register_fake
def _(keys, counts, capacity):
    b, h, _ = keys.shape
    return keys.new_empty((b, h, capacity), dtype=torch.int32), keys.new_empty((b, h), dtype=torch.int32)


register_batch_rule(select_pages, (0, 1))  # vmap folds into the batch dimension
