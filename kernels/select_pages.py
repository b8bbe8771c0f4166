"""``entmaxkv::select_pages``: the pages with the largest keys, as a fixed-capacity page list.

For each (sequence, KV head) row of ``keys`` [B, Hkv, P], keep the ``count`` eligible pages
(key > −inf; +inf marks forced pages) with the largest keys — ties go to the lower page
index, as a stable descending sort would — and write them in increasing page order into a
list [B, Hkv, M] (int32, padded with −1), with the number kept. Threshold selection is the
same call with keys −inf where the threshold fails and ``count`` = M.

No sort: one program per row finds the k-th largest key by counting passes over an
order-preserving integer image of the keys (``threshold_search``: a bitwise search, ``RADIX``
bits a pass, or an interpolation search of at most ``PROBES`` probes before it bisects), then
one compaction pass writes the list. Each pass is a block-wide reduction; as measured below,
their number is a small part of the per-row program's time.

Measured on the H200 (``benchmarks/quest_select_gpu.py``, TopK's ``quest_select``, B = 1,
32/8 heads, 2026-11-29). Bitwise, radix 2 is slower on long rows than radix 1 — 8,196 pages at
128K: 58.8 µs against 53.1 (8 warps), 55.3 against 50.5 (16) — and barely faster on short ones
(516 pages at 8K: 14.8 against 15.4): the int64 reduction and the packing cost about what the
halved pass count saves. (A 4-bit radix select with ``tl.histogram`` — 8 passes instead of
32 — measured 2–3× slower: benchmarks/results/perf-log.md.) The interpolation search takes
11–18 passes on these rows instead of 35, yet saves only 2–3 µs (128K: 48.9 against 51.1;
8K: 14.4 against 15.0): a pass costs ~0.25 µs, and the rest of the per-row program — one
program on each of 8 SMs at B = 1, latency-bound (ncu: 25% occupancy, 9.2 cycles per issued
instruction) — is the list, the mask and the score floor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import next_pow2, register_batch_rule
from entmaxkv.kernels.threshold_search import _eligible_ordered, _ordered, _row_threshold, search_radix

__all__ = ["select_pages", "search_radix", "search_sample"]  # the @triton.jit helpers are shared with quest_select

MAX_BLOCK = 16384  # a row up to this many pages stays in registers
WIDE_WARPS = 8  # warps of a program whose row block holds 2048 pages or more
# The threshold search (select_pages and quest_select both read these at call time: flipping
# one here flips both). PROBES: interpolation probes before the search bisects, 0 for the
# bitwise search; RADIX: bits the bitwise search decides a pass, 1 or 2 (1 measured faster on
# long rows, above).
PROBES = 12
RADIX = 1
# A streamed row (longer than MAX_BLOCK, read from memory every counting pass) starts the
# interpolation search from a bracket found on a sample of SAMPLE keys held in registers, in
# runs of SAMPLE_RUN consecutive keys (``threshold_search._sampled_bracket``), confirmed by one
# counting pass; 0: no sample. A streamed pass costs ~15 µs on the H200 (one program reading a
# 65,540-page row at 1M tokens: the search took 290 µs of a 450 µs TopK 3% step in the profile,
# session 14). The step at 1M (B = 1, 32/8, fp16, TopK 3%, α = 1 / 1.5; step_variants_gpu.py
# --contexts 1048576 --selector TopK3, 2026-11-30): no sample 429.0 / 426.9 µs; 8,192 keys
# in runs of 4 327.3 / 323.4, of 8 321.8 (α = 1.5), of 1 315.8 / 313.4; 4,096 of 1 317.3 /
# 315.4; 2,048 of 1 340.4 / 338.8; 16,384 of 1 322.7 / 320.1 (the same outputs). Since
# quest_select counts streamed rows with (row, chunk) programs and searches the gathered keys
# (below): 8,192 keys 167.1 µs, 4,096 155.4, 2,048 156.4 (α = 1.5, 8 warps, session 15).
SAMPLE = 4096
SAMPLE_RUN = 1
# The pass that confirms a sampled bracket also copies the row's keys inside it to a scratch
# row of GATHER keys; where they fit, the search runs on them in registers instead of
# streaming the row every pass (a power of two; 0: no copy, the confirmed bracket's search
# streams the row). The bracket holds ~6·sqrt(k·SAMPLE/P)·P/SAMPLE keys: ~1,100 at 1M, TopK 3%
# (~750 with the 8,192-key sample of the figures here),
# where the step took 255.9 µs against 314.2 with GATHER = 0 (H200, step_variants_gpu.py
# --contexts 1048576 --selector TopK3 --alphas 1.5, 2026-11-30, the same outputs; with
# quest_select's (row, chunk) counting, 176.6 against 268.2).
GATHER = 4096
# warps of select_pages' program of a streamed row, which reads the whole row every counting
# pass: bound by one SM's instruction issue and memory latency, more warps hide more of it. As
# measured on quest_select when its streamed rows took the same one-program search: 1M TopK 3%
# on the H200, 255.9 µs at 8 warps, 244.8 at 16 (2026-11-30). quest_select's search program
# takes it too where it searches a streamed row alone (no sample: SAMPLE or PROBES 0); with a
# sample it counts such rows with (row, chunk) programs, and its programs take SELECT_WARPS.
STREAMED_WARPS = 16
# keys a pass of the list writing takes (re-read from memory, after the search): the search
# holds the row in registers, and writing the list from those registers too (its scans, masks
# and positions a [BLOCK] tensor each) made ptxas spill at 16,384 lanes (sm_90a: 272 bytes a
# thread at 16 warps; none now). quest_select at 128K on the H200, when it still wrote its list
# this way: 45.0 µs at 4,096, 46.1 at 2,048, 53.0 at 1,024, 48.9 for the whole row (with
# PROBES = 12; 51.1 bitwise), 2026-11-29 (it now writes the list from (row, chunk) programs)
COMPACT_BLOCK = 4096


def search_sample(one_chunk: bool, keys: torch.Tensor, rows: int) -> tuple[dict, torch.Tensor]:
    """The search program's ``SAMPLE``, ``RUN`` and ``GATHER`` launch constexprs and its scratch
    rows ([rows, GATHER] of the keys' dtype, on their device): a sample for a streamed row
    searched by interpolation (``SAMPLE``, ``PROBES`` and ``GATHER`` read at each call), else
    none (the scratch is then one key, never written: a fresh tensor, so that no input of the
    op is ever an argument a kernel may write)."""
    if one_chunk or PROBES <= 0 or SAMPLE <= 0:
        return dict(SAMPLE=0, RUN=1, GATHER=0), torch.empty(1, dtype=keys.dtype, device=keys.device)
    if SAMPLE & (SAMPLE - 1) or SAMPLE % SAMPLE_RUN:
        raise ValueError(f"SAMPLE must be a power of two divisible by SAMPLE_RUN, got {SAMPLE}, {SAMPLE_RUN}")
    if GATHER < 0 or GATHER & (GATHER - 1):
        raise ValueError(f"GATHER must be 0 or a power of two, got {GATHER}")
    scratch = torch.empty((rows, GATHER) if GATHER > 0 else (1,), dtype=keys.dtype, device=keys.device)
    return dict(SAMPLE=SAMPLE, RUN=SAMPLE_RUN, GATHER=GATHER), scratch


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
    keys, counts, pages, kept, scratch, P, M,
    BLOCK: tl.constexpr, NBITS: tl.constexpr, INT: tl.constexpr, ONE_CHUNK: tl.constexpr, RADIX: tl.constexpr,
    FIELD: tl.constexpr, PROBES: tl.constexpr, COMPACT: tl.constexpr, SAMPLE: tl.constexpr = 0,
    RUN: tl.constexpr = 1, GATHER: tl.constexpr = 0,
):
    row = tl.program_id(0).to(tl.int64)
    base = keys + row * P
    lanes = tl.arange(0, BLOCK)
    x_all = tl.load(base + lanes, mask=lanes < P, other=float("-inf"))  # the whole row if ONE_CHUNK
    u_all = _eligible_ordered(x_all, INT, NBITS)  # computed once: every counting pass reuses it
    want = tl.minimum(tl.load(counts + row), M)
    t, ties_wanted, k = _row_threshold(base, lanes, P, u_all, want, scratch + row * GATHER, INT, NBITS, BLOCK,
                                       ONE_CHUNK, RADIX, FIELD, PROBES, SAMPLE=SAMPLE, RUN=RUN, GATHER=GATHER)

    # the list, COMPACT keys at a time re-read from memory (``COMPACT_BLOCK``)
    written = 0
    ties_seen = 0
    out = pages + row * M
    sub = tl.arange(0, COMPACT)
    for start in range(0, P, COMPACT):
        idx = start + sub
        x = tl.load(base + idx, mask=idx < P, other=float("-inf"))
        take, tie = _take(x, t, ties_seen, ties_wanted, INT, NBITS)
        pos = written + tl.cumsum(take, axis=0) - take
        tl.store(out + pos, idx.to(tl.int32), mask=(take == 1) & (pos < M))
        written += tl.sum(take)
        ties_seen += tl.sum(tie)
    _pad(out, sub, k, M, COMPACT)
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
    sample, scratch = search_sample(p <= block, keys, b * h)
    wrap_triton(_select_kernel)[(b * h,)](
        keys, counts, pages, kept, scratch, p, capacity,
        BLOCK=block, NBITS=64 if wide else 32, INT=tl.int64 if wide else tl.int32, ONE_CHUNK=p <= block,
        RADIX=radix, FIELD=field, PROBES=PROBES, COMPACT=min(block, COMPACT_BLOCK), **sample,
        num_warps=STREAMED_WARPS if p > block else WIDE_WARPS if block >= 2048 else 4,
    )
    return pages, kept


@select_pages.register_fake
def _(keys, counts, capacity):
    b, h, _ = keys.shape
    return keys.new_empty((b, h, capacity), dtype=torch.int32), keys.new_empty((b, h), dtype=torch.int32)


register_batch_rule(select_pages, (0, 1))  # vmap folds into the batch dimension
