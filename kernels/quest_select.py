"""``entmaxkv::quest_select``: a TopK (Quest) step's whole page selection in one op.

Per (sequence, KV head) row, from ``page_bounds``' per-head page quantities [G, P]:

    candidates   full pages other than the newest one: p < n, n = (len − 1) // S
    reference    L_h = the best finite candidate upper bound of head h, max_p U_hp
    key_p        max_h lin(α)·(U_hp − L_h) on candidates (−inf elsewhere); +inf on forced
                 pages: the first ``sink_pages`` and the ``recent_pages`` just before the newest;
                 float32's largest (``topk.VACUOUS_KEY``) where some U_hp is +inf (vacuous)
    count        ``budget_pages``, or ceil(n·coverage − 1e-9) computed in float64
    selection    the max(count, forced) candidates with the largest keys (ties to the lower
                 page index), as a page list (increasing, −1 padded), its length and a mask
    score floor  per head, max(best selected mean score − its rounding slack, newest page's
                 best score − 2γ·its magnitude): a score some attended token reaches, which
                 ``sparse_decode`` filters its survivors from (without means, as a TopK step
                 calls it: the newest page's term alone)
    magnitude    per head, the largest absmax of a selected page (0 without absmax): the
                 |score| scale of the selection's tokens, which ``Exact``'s τ lower bound over
                 its initial pages takes (``KernelOps.tau_lower_bound``)

The arithmetic is that of the torch composition it replaces (``topk.rank_key``,
``topk.forced_pages``, the count in ``TopK``, ``select_pages`` and ``KernelOps.score_floor``),
operation for operation, so it selects the same pages from the same page scores. α − 1 and
the coverage enter as the bits of their float64 values, in three 21-bit int arguments: a
float argument reaches a kernel as float32 in eager launches (the count must be the float64
one), and one 64-bit int argument breaks torch 2.11's Inductor (it sizes int arguments to
32 bits: "'int' object has no attribute 'xreplace'", seen on the H200).

Four launches (seven for streamed rows, below): two over a (row, ``CHUNK``-page chunk) grid — each chunk's best candidate
upper bound per head, then the chunk's rank keys from the row's maxima — then the threshold
(below), and the list. Rows of at most ``RANK_PAGES`` pages are *ranked*: a (row,
page block) grid counts, for each key, the row's keys above it and at or above
it — the k-th largest is the key with fewer than k above and at least k at or above — so the
threshold costs no dependent passes, only n² comparisons spread over many programs; the list
programs then count the keys before their chunk themselves. Longer rows take one program per
row for the count and the threshold (``select_pages``' threshold search, ``threshold_search``,
switched by ``select_pages.PROBES``, ``RADIX`` and ``SAMPLE``, read at each call: the same
switches as ``select_pages``'), which holds the row's keys in registers up to ``MAX_BLOCK``
pages (with ``HIST_BITS`` > 0 such a row's search starts from a histogram of its keys, which the
keys launch counts: the bin of the k-th key is its first bracket); it also stores, per ``LIST_CHUNK``-page chunk, how many keys lie above the threshold
and how many tie with it up to the chunk's end, and the floor's newest-page term. A row
longer than ``MAX_BLOCK`` pages (past ~256K tokens) with a sample (``select_pages.SAMPLE``)
takes three launches more, so that no pass over it runs in one program: a program per row
finds a sampled bracket of the threshold (``_bracket_kernel``), (row, ``COUNT_CHUNK``-page)
programs count the row at its ends and gather the keys between them (``row_passes``), the
search program searches those keys in registers (``threshold_search._threshold_in_bracket``;
it streams the row only where the counts refute the sample or too many keys lie between), and
(row, LIST_CHUNK) programs count each chunk at the threshold for the list programs, which sum
the chunks before their own. 1M tokens, TopK 3%, B = 1 on the H200: the step 255.9 → 155.4
µs (0.27× → 0.16× SDPA; session 15). Without a sample (``SAMPLE`` or ``PROBES`` 0) such a
row's one search program streams it from memory for every counting pass and counts its
chunks itself, as shorter rows' do in registers. Last a (row, ``LIST_CHUNK``-page chunk) grid writes the list:
a chunk's pages go to the slots after the earlier chunks' (the keys above, then the first
``ties_wanted`` ties in page order), with its share of the −1 padding and the mask, and each
head's best selected mean less its slack goes into the floor by an atomic max (the max of the
same values in any order: the floor is the same bit for bit), its largest absmax into the magnitude.
Bytes: upper of the row's G heads twice, the keys (4 B a page, 8 in float64 work)
twice — once more to count per chunk, and on streamed rows a sample and a counting pass more — and (given) mean
and absmax of the selected pages: small next to ``page_bounds``.
"""

from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import candidate_count, next_pow2, register_batch_rule, work_dtype_of
from entmaxkv.kernels.page_scores import mean_slack, newest_slack
from entmaxkv.kernels import select_pages as select_module  # its switches, read at call time
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs
from entmaxkv.kernels.select_pages import MAX_BLOCK, _take
from entmaxkv.kernels.row_passes import _bracket_counts_kernel, _chunk_counts_kernel
from entmaxkv.kernels.threshold_search import (_eligible_ordered, _histogram_bin, _histogram_threshold, _ordered,
                                               _row_threshold, _sampled_bracket, _threshold_in_bracket, search_radix)

__all__ = ["quest_select", "float64_words", "list_capacity", "search_block"]

CHUNK = 1024  # pages per program of the two row-parallel kernels (mean maxima, keys)
VACUOUS_KEY = tl.constexpr(3.4028234663852886e38)  # ``topk.VACUOUS_KEY``: a page with a +inf bound
CHUNK_WARPS = 4
# warps of the per-row search program once its row block holds 2048 pages, and of a streamed
# row's bracket program (1M TopK 3%, session 15: 155.4 µs at 8 warps, 155.7 at 4, 176.6 at 16;
# SAMPLE 4,096). At 128K (a
# 16,384-lane block) on the H200, quest_select took 30.0 µs with 8 warps, 31.5 with 4, 31.9
# with 16 and 35.2 with 32 (benchmarks/quest_select_gpu.py, 2026-11-29, session 7); ptxas
# (sm_90a): 202 registers a thread at 8 warps and no spill, 128 and 24 B of spill at 16,
# 255 and 428 B at 4
SELECT_WARPS = 8
# pages per program of the list launch (row, chunk): its slots of the list, the mask and the
# floor's best selected means. 512 makes 17 chunks a row at 128K: 136 programs at B = 1, one
# wave on 132 SMs (written by the per-row program, they were part of its ~45 µs at 128K)
LIST_CHUNK = 512
LIST_WARPS = 4
# keys a program of a streamed row's counting pass at its sampled bracket takes (``row_passes``;
# 1M TopK 3%: 155.2 µs at 1,024, 155.4 at 2,048; 171.7 / 176.6 at 1,024 / 2,048 and 173.1 at
# 4,096 with the 16-warp, 8,192-key sample, session 15)
COUNT_CHUNK = 2048
COUNT_WARPS = 4
# a row held as a power-of-two block and a small tail block (``search_block``), searched or
# ranked, not one block of next_pow2(P) lanes: a cache with room for a few more pages than a
# power of two (8,196 at 128K in the benchmark) made every counting pass twice as long
TAIL_BLOCKS = True
# rows of at most RANK_PAGES pages skip the threshold search: every key is ranked against the
# whole row (held in registers, ``search_block``'s lanes) in one launch over (row, block)
# programs of a power of two <= RANK_PAIRS // lanes pages each (``_rank_kernel``; RANK_PAIRS_MANY_ROWS
# // lanes with many rows). Its work grows as n² (n candidates a
# row), the search's as its passes: the per-row search program is latency-bound (one program a
# row: 6.1 µs at 8K on the H200). TopK 12.5% step (B = 1, 32/8, fp16, session 10 call 4): 8K
# (516 pages) α = 1 27.8 → 25.1 µs, α = 1.5 35.6 → 32.9 with RANK_PAIRS 8192 (25.8 / 33.5 at
# 16,384, 26.3 / 34.3 at 32,768); 16K (1,047 pages, then a 2,048-lane row; since session 11
# 1,024 + 32 lanes, not re-measured ranked) 30.0 → 32.0 and 43.5 → 45.7: slower, hence 1024;
# 32K ranked 33.5 → 59.6. A first form streaming the row through 64-key tiles was bound by its
# loop's load latency (call 3: −1 µs at 8K, +2 at 16K, +8 at 32K)
RANK_PAGES = 1024
RANK_PAIRS = 8192  # comparisons a rank program holds at once
# ... and with at least MANY_ROWS rows (B·Hkv), where the rows' programs fill the GPU anyway:
# fewer, longer rank blocks, so fewer programs load the row's keys. TopK 12.5% α = 1.5 at 8K on
# the H200 (session 30, perf-log row 128, same-run A/B): B = 16 (128 rows) 85.0 → 76.3 µs,
# MHA B = 1 (32 rows) 35.4 → 33.8, B = 4 (32 rows) 37.5–38.0 → 36.3–36.6, also with 2,048
# free cache slots; B = 1 GQA (8 rows) was 0.5–1.7 µs slower at 32,768 pairs, so it keeps 8,192
RANK_PAIRS_MANY_ROWS = 32768
MANY_ROWS = 32
RANK_WARPS = 4
# a searched row held in registers starts its interpolation search from a histogram of its keys'
# top HIST_BITS bits (``threshold_search._histogram_threshold``), counted by the (row, chunk)
# programs that compute the keys (``_keys_kernel``, atomic adds) into a histogram that the chunk
# maxima launch zeroes: the bin of the k-th key is the bracket, so the passes that count the
# eligible keys, find the finite range and narrow it down to a bin are not run (0: no histogram).
# Prediction (session 38): B = 1 128K TopK 6.25% 25 → ~10 passes a row, the search program
# 17.2 → ~10 µs of the step's ~49. Off by default until measured on the GPU (session 39 got no
# device); CPU-tested both ways (``test_quest_select``'s "registers, other start")
HIST_BITS = 0


def search_block(num_pages: int, streams: bool = True) -> tuple[int, int]:
    """(BLOCK, TAIL) lanes of a row for the search program (``threshold_search``) and the rank
    programs (``_rank_kernel``): a row of up to
    ``MAX_BLOCK`` pages in registers, as the largest power of two below it and, for the rest, a
    tail block of the next power of two (``TAIL_BLOCKS``) where that is fewer lanes than one
    block of next_pow2(P) (8,196 pages: 8,192 + 16, not 16,384); longer rows stream MAX_BLOCK
    lanes at a time (TAIL 0). ``streams`` False (a ranked row, always held whole): no
    ``MAX_BLOCK`` cap."""
    whole = max(16, next_pow2(num_pages))
    if streams and whole > MAX_BLOCK:
        return MAX_BLOCK, 0
    block = whole // 2
    rest = num_pages - block
    tail = max(16, next_pow2(rest))  # a tile of at least 16 lanes, as the block
    if not TAIL_BLOCKS or rest <= 0 or tail >= block:  # no fewer lanes than one block of whole
        return whole, 0
    return block, tail


def list_capacity(num_pages: int, budget_pages: int, coverage: float, sink_pages: int, recent_pages: int) -> int:
    """The most pages a TopK selection can keep of a row of ``num_pages`` (P): the list's
    length. It keeps max(count, forced) <= max(count, sink + recent) pages, and the count is
    ``budget_pages``, or ceil(n·coverage − 1e-9) <= ceil(P·coverage) for n < P candidates
    (float64 products are monotone in n). A list only as long as the selection can fill sizes
    ``sparse_decode``'s splits by the pages it can hold: at 8K and 12.5% 65 pages make 17
    splits a row rather than the 33 of a 516-page list. On the H200 (B = 1, 32/8, fp16,
    2026-11-29) the TopK α = 1.5 step at 8K went 45.1 → 39.0 µs, 32K and 128K unchanged; a
    rule of at least 32 pages a split for every list did the same for TopK but cost a Dense
    step at 8K 4.9 µs: the split count follows the list, not a rule of its own."""
    most = budget_pages if budget_pages >= 0 else math.ceil(num_pages * coverage)
    return max(1, min(num_pages, max(most, sink_pages + recent_pages)))


def float64_words(x: float) -> tuple[int, int, int]:
    """The IEEE bits of float64 ``x`` as three ints (high first: 22 bits with the sign, then
    21 and 21), each a plain 32-bit kernel argument; ``_float64_of`` puts them back together."""
    bits = struct.unpack("<Q", struct.pack("<d", float(x)))[0]
    return bits >> 42, (bits >> 21) & 0x1FFFFF, bits & 0x1FFFFF


@triton.jit
def _float64_of(high, middle, low):
    """The float64 whose bits ``float64_words`` split (ints or, when Triton specialises a
    value of 1, constexprs: hence the additions instead of ``.to``). A negative x's high word
    has bit 21 set, which the shift moves to bit 63, the sign (int64 shifts wrap)."""
    zero = tl.full((), 0, tl.int64)
    bits = ((zero + high) << 42) | ((zero + middle) << 21) | (zero + low)
    return bits.to(tl.float64, bitcast=True)


@triton.jit
def _chunk_best_upper_kernel(
    upper, seq_lens, best, hist, H, P, NCHUNK,
    S: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, CHUNK: tl.constexpr, WORK: tl.constexpr,
    PDL: tl.constexpr = False, HIST_BITS: tl.constexpr = 0,
):
    """best[row, chunk, g] = the chunk's largest finite candidate upper bound of head g (−inf if
    none); with ``HIST_BITS`` > 0 the row's key histogram hist[row] zeroed (by its chunk 0), for
    ``_keys_kernel`` to count into."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    if HIST_BITS > 0:
        if chunk == 0:
            bins = tl.arange(0, 1 << HIST_BITS)
            tl.store(hist + row * (1 << HIST_BITS) + bins, tl.zeros((1 << HIST_BITS,), tl.int32))
    n = candidate_count(tl.load(seq_lens + row // H), S, P)
    idx = chunk * CHUNK + tl.arange(0, CHUNK)
    gs = tl.arange(0, G_PAD)
    u = tl.load(upper + (row * G + gs[:, None]) * P + idx[None, :], mask=(gs[:, None] < G) & (idx[None, :] < n),
                other=float("-inf")).to(WORK)
    u = tl.where(u < float("inf"), u, float("-inf"))  # finite bounds only: +inf is vacuous (``topk.rank_key``)
    tl.store(best + (row * NCHUNK + chunk) * G + gs, tl.max(u, axis=1), mask=gs < G)


@triton.jit
def _keys_kernel(
    upper, chunk_best, seq_lens, keys, hist, lin_hi, lin_mid, lin_lo, sink, recent, H, P, NCHUNK,
    S: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, CHUNK: tl.constexpr, NCHUNK_PAD: tl.constexpr,
    WORK: tl.constexpr, PDL: tl.constexpr = False, HIST_BITS: tl.constexpr = 0,
):
    """The rank keys of one chunk of a row's pages, into ``keys`` (pages < n only: the
    selection reads no further); with ``HIST_BITS`` > 0 each eligible key also counted into its
    bin of the row's histogram hist[row] (``threshold_search._histogram_bin``, atomic adds:
    the counts are the same in any order), which the search starts from."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n = candidate_count(tl.load(seq_lens + row // H), S, P)
    if chunk * CHUNK < n:
        gs = tl.arange(0, G_PAD)
        cs = tl.arange(0, NCHUNK_PAD)
        # L_h: the best candidate upper bound of head h, over the row's chunks
        partial = tl.load(chunk_best + (row * NCHUNK + cs[None, :]) * G + gs[:, None],
                          mask=(gs[:, None] < G) & (cs[None, :] < NCHUNK), other=float("-inf"))
        attained = tl.max(partial, axis=1)
        lin_w = _float64_of(lin_hi, lin_mid, lin_lo).to(WORK)
        idx = chunk * CHUNK + tl.arange(0, CHUNK)
        cand = idx < n
        u = tl.load(upper + (row * G + gs[:, None]) * P + idx[None, :], mask=(gs[:, None] < G) & cand[None, :],
                    other=float("-inf")).to(WORK)
        # max_h lin·(U_hp − L_h): padded heads give −inf (a padded L_h is −inf too: keep them out)
        key = tl.max(tl.where(gs[:, None] < G, (u - attained[:, None]) * lin_w, float("-inf")), axis=0)
        key = tl.where(key == float("inf"), VACUOUS_KEY, key)  # a vacuous bound: first, within the budget
        forced = cand & ((idx < sink) | (idx >= n - recent))
        key = tl.where(forced, float("inf"), key)
        tl.store(keys + row * P + idx, key, mask=cand)
        if HIST_BITS > 0:
            NBITS: tl.constexpr = 64 if WORK == tl.float64 else 32
            INT: tl.constexpr = tl.int64 if WORK == tl.float64 else tl.int32
            u = _eligible_ordered(key, INT, NBITS)
            eligible = cand & (u > -(2 ** (NBITS - 1)))
            at = hist + row * (1 << HIST_BITS) + _histogram_bin(u, NBITS, HIST_BITS)
            tl.atomic_add(at, tl.full((CHUNK,), 1, tl.int32), mask=eligible, sem="relaxed")


@triton.jit
def _wanted(n, budget, cov_hi, cov_mid, cov_lo, sink, recent, COVERAGE: tl.constexpr):
    """How many of the row's n candidates the selection keeps before the eligible ones cap it:
    max(count, forced), the count ``budget`` or ceil(n·coverage − 1e-9) in float64 as TopK
    computes it, the forced pages the first min(sink, n) and the last min(recent, n)
    candidates, once each."""
    first, last = tl.minimum(sink, n), tl.minimum(recent, n)
    forced_total = first + last - tl.maximum(first - tl.maximum(n - recent, 0), 0)
    if COVERAGE:
        coverage = _float64_of(cov_hi, cov_mid, cov_lo)
        want = tl.ceil(n.to(tl.float64) * coverage - tl.full((), 1e-9, tl.float64)).to(tl.int32)
    else:
        want = budget
    return tl.maximum(want, forced_total)


@triton.jit
def _newest_floor(newest_max, newest_mag, floor, magnitude, slack, row, G: tl.constexpr, G_PAD: tl.constexpr,
                  WORK: tl.constexpr):
    """The floor's newest-page term, max − slack·magnitude a head (``page_scores.newest_slack``:
    2γ rounded up to a power of two), and the selected pages'
    magnitude before any: 0; the list programs raise them to their best selected means and
    largest absmax."""
    gs = tl.arange(0, G_PAD)
    top = tl.load(newest_max + row * G + gs, mask=gs < G, other=0.0).to(WORK)
    mag = tl.load(newest_mag + row * G + gs, mask=gs < G, other=0.0).to(WORK)
    tl.store(floor + row * G + gs, top - tl.cast(slack, WORK) * mag, mask=gs < G)
    tl.store(magnitude + row * G + gs, tl.zeros((G_PAD,), WORK), mask=gs < G)


@triton.jit
def _gt_ge(u_i, u_j):
    """Per key of u_i [BLOCK], the keys of u_j [R] above it and at or above it, as one packed
    int32 sum (ge << 16 | gt: no carry while R < 2^15)."""
    return tl.sum((u_j[None, :] > u_i[:, None]).to(tl.int32) + ((u_j[None, :] >= u_i[:, None]).to(tl.int32) << 16),
                  axis=1)


@triton.jit
def _rank_kernel(
    keys, newest_max, newest_mag, seq_lens, kept, found, floor, magnitude,
    budget, cov_hi, cov_mid, cov_lo, sink, recent, slack, H, P,
    G: tl.constexpr, G_PAD: tl.constexpr, S: tl.constexpr, BLOCK: tl.constexpr, ROW: tl.constexpr,
    NBITS: tl.constexpr, INT: tl.constexpr, COVERAGE: tl.constexpr, WORK: tl.constexpr, TAIL: tl.constexpr = 0,
    PDL: tl.constexpr = False,
):
    """``_search_kernel``'s (t, ties wanted) without a search, for a block of BLOCK of a row's
    pages: each key u_i of the block is compared with every key of the row (ROW lanes, and TAIL
    more: ROW + TAIL >= n), gt_i = #{u > u_i} and ge_i = #{u >= u_i}. The k-th largest key t
    is the key of any eligible page with gt_i < k <= ge_i (at most k − 1 keys above it, at least
    k at or above it), and the first k − gt_i of its ties are taken: the pages holding it store (t, k − gt_i),
    the same pair from each. With k = 0 no page holds it and block 0 stores (the image of +inf,
    0), which takes nothing. Block 0 also stores the count and the floor's newest-page term. The
    list launch then counts, per chunk, the keys above t and the ties before it itself. With
    ``TAIL`` > 0 the row is ROW lanes and TAIL more (``search_block``)."""
    pdl_enter(PDL)
    tl.static_assert(ROW + TAIL < 2**15, "a row's counts, shifted by 16, must stay a positive int32")
    row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    n = candidate_count(tl.load(seq_lens + row // H), S, P)
    base = keys + row * P
    lowest = tl.full((), -(2 ** (NBITS - 1)), INT)
    idx = block * BLOCK + tl.arange(0, BLOCK)
    u_i = _eligible_ordered(tl.load(base + idx, mask=idx < n, other=float("-inf")), INT, NBITS)
    j = tl.arange(0, ROW)
    u_j = _eligible_ordered(tl.load(base + j, mask=j < n, other=float("-inf")), INT, NBITS)
    # both counts in one int32 sum (ge << 16 | gt): each is at most ROW + TAIL < 2^15, so no carry
    counts = _gt_ge(u_i, u_j)
    eligible = tl.sum((u_j > lowest).to(tl.int32))
    if TAIL > 0:  # the row's last lanes, past ROW
        jt = ROW + tl.arange(0, TAIL)
        u_t = _eligible_ordered(tl.load(base + jt, mask=jt < n, other=float("-inf")), INT, NBITS)
        counts += _gt_ge(u_i, u_t)
        eligible += tl.sum((u_t > lowest).to(tl.int32))
    gt = counts & 0xFFFF
    ge = counts >> 16
    want = _wanted(n, budget, cov_hi, cov_mid, cov_lo, sink, recent, COVERAGE)
    k = tl.minimum(tl.minimum(want, eligible), P)
    holds_t = (u_i > lowest) & (gt < k) & (ge >= k)
    at = found + row * 2 + tl.zeros((BLOCK,), tl.int32)
    tl.store(at, u_i.to(tl.int64), mask=holds_t)
    tl.store(at + 1, (k - gt).to(tl.int64), mask=holds_t)
    if block == 0:
        tl.store(kept + row, k)
        if k == 0:
            none = tl.full((), float("inf"), tl.float32 if NBITS == 32 else tl.float64).to(INT, bitcast=True)
            tl.store(found + row * 2, none.to(tl.int64))
            tl.store(found + row * 2 + 1, tl.zeros((), tl.int64))
        _newest_floor(newest_max, newest_mag, floor, magnitude, slack, row, G, G_PAD, WORK)


@triton.jit
def _bracket_kernel(
    keys, seq_lens, bracket, totals, budget, cov_hi, cov_mid, cov_lo, sink, recent, H, P,
    S: tl.constexpr, NBITS: tl.constexpr, INT: tl.constexpr, PROBES: tl.constexpr, SAMPLE: tl.constexpr,
    RUN: tl.constexpr, COVERAGE: tl.constexpr, PDL: tl.constexpr = False,
):
    """A streamed row's sampled bracket (``threshold_search._sampled_bracket``) and length n,
    bracket[row] = (lo, hi, usable, n), and its totals zeroed, for the (row, chunk) programs
    that count the row at the bracket's ends (``row_passes``)."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    n = candidate_count(tl.load(seq_lens + row // H), S, P)
    want = tl.minimum(_wanted(n, budget, cov_hi, cov_mid, cov_lo, sink, recent, COVERAGE), P)
    lo, hi, usable = _sampled_bracket(keys + row * P, n, want, INT, NBITS, PROBES, SAMPLE, RUN)
    at = bracket + row * 4
    tl.store(at, lo.to(tl.int64))
    tl.store(at + 1, hi.to(tl.int64))
    tl.store(at + 2, usable.to(tl.int64))
    tl.store(at + 3, n.to(tl.int64))
    tl.store(totals + row * 4 + tl.arange(0, 4), tl.zeros((4,), tl.int32))


@triton.jit
def _chunk_counts(x, t, first_chunk, above, ties, taken_before, row, NLIST, INT: tl.constexpr, NBITS: tl.constexpr,
                  LANES: tl.constexpr, LIST: tl.constexpr):
    """For the LANES keys x (whole LIST-key chunks from chunk ``first_chunk`` on; −inf: not
    eligible), store per chunk the keys above t and the ties with t up to the chunk's end, after
    ``above`` and ``ties`` carried from earlier lanes; return the carried counts past x. Both
    counts of every chunk at once, packed (ties << 16 | above: LANES < 2^15) — a [LANES // LIST,
    LIST] sum and a scan of its few chunk sums (a scan over a 16,384-lane block's lanes took
    6–10 µs of the search program on the H200)."""
    u = _ordered(x, INT, NBITS)
    ok = x > float("-inf")
    packed = (ok & (u > t)).to(tl.int32) | ((ok & (u == t)).to(tl.int32) << 16)
    upto = tl.cumsum(tl.sum(tl.reshape(packed, (LANES // LIST, LIST)), axis=1), axis=0)
    chunk = first_chunk + tl.arange(0, LANES // LIST)
    at = taken_before + (row * NLIST + chunk) * 2
    tl.store(at, above + (upto & 0xFFFF), mask=chunk < NLIST)
    tl.store(at + 1, ties + (upto >> 16), mask=chunk < NLIST)
    total = tl.sum(packed)
    return above + (total & 0xFFFF), ties + (total >> 16)


@triton.jit
def _search_kernel(
    keys, newest_max, newest_mag, seq_lens, kept, found, taken_before, floor, magnitude, scratch, bracket, totals, hist,
    budget, cov_hi, cov_mid, cov_lo, sink, recent, slack, H, P, NLIST,
    G: tl.constexpr, G_PAD: tl.constexpr, S: tl.constexpr, BLOCK: tl.constexpr, NBITS: tl.constexpr,
    INT: tl.constexpr, ONE_CHUNK: tl.constexpr, RADIX: tl.constexpr, FIELD: tl.constexpr, PROBES: tl.constexpr,
    LIST: tl.constexpr, COVERAGE: tl.constexpr, WORK: tl.constexpr, TAIL: tl.constexpr = 0,
    PDL: tl.constexpr = False, SAMPLE: tl.constexpr = 0, RUN: tl.constexpr = 1, GATHER: tl.constexpr = 0,
    COUNTED: tl.constexpr = False, HIST_BITS: tl.constexpr = 0,
):
    """One row's count and threshold, and per ``LIST``-page chunk what the list programs need
    to place their pages: the keys above the threshold and the ties with it up to the chunk's
    end (inclusive, [NLIST, 2] a row); the floor starts at the newest page's term. ``TAIL`` > 0:
    the row is held as BLOCK lanes and TAIL more (``threshold_search``'s tail block). ``COUNTED``
    (a streamed row): its sampled bracket and the row's counts at its ends are in ``bracket``
    and ``totals`` (``_bracket_kernel``, ``row_passes``), and the per-chunk counts are left to
    ``row_passes._chunk_counts_kernel``. ``HIST_BITS`` > 0 (a row in registers, the
    interpolation search): the search starts from the row's key histogram in ``hist``
    (``_keys_kernel``; ``threshold_search._histogram_threshold``)."""
    pdl_enter(PDL)
    tl.static_assert(BLOCK < 2**15, "a block's tie count, shifted by 16, must stay a positive int32")
    tl.static_assert((TAIL == 0) or ONE_CHUNK, "a tail block only for a row held in registers")
    tl.static_assert(TAIL <= BLOCK, "a tail no longer than the block (FIELD holds a block's counts)")
    row = tl.program_id(0).to(tl.int64)
    n = candidate_count(tl.load(seq_lens + row // H), S, P)
    lanes = tl.arange(0, BLOCK)
    base = keys + row * P
    want = _wanted(n, budget, cov_hi, cov_mid, cov_lo, sink, recent, COVERAGE)

    # keys past n were never written: every read masks them to −inf (not eligible)
    x_all = tl.load(base + lanes, mask=lanes < n, other=float("-inf"))  # the row's block (all of it with TAIL)
    u_all = _eligible_ordered(x_all, INT, NBITS)
    if TAIL > 0:  # the row's last lanes, past BLOCK
        tail = BLOCK + tl.arange(0, TAIL)
        x_tail = tl.load(base + tail, mask=tail < n, other=float("-inf"))
        u_tail = _eligible_ordered(x_tail, INT, NBITS)
    else:
        x_tail, u_tail = x_all, u_all  # not read
    if COUNTED:
        at = bracket + row * 4
        t, ties_wanted, k = _threshold_in_bracket(
            base, lanes, n, tl.minimum(want, P), tl.load(at).to(INT), tl.load(at + 1).to(INT), tl.load(at + 2) != 0,
            tl.load(totals + row * 4), tl.load(totals + row * 4 + 1), tl.load(totals + row * 4 + 2),
            scratch + row * GATHER, INT, NBITS, BLOCK, PROBES, GATHER)
    elif HIST_BITS > 0:
        tl.static_assert(ONE_CHUNK and PROBES > 0, "a histogram for a row in registers, searched by interpolation")
        t, ties_wanted, k = _histogram_threshold(base, lanes, n, u_all, tl.minimum(want, P),
                                                 hist + row * (1 << HIST_BITS), INT, NBITS, BLOCK, ONE_CHUNK, PROBES,
                                                 HIST_BITS, u_tail, TAIL)
    else:
        t, ties_wanted, k = _row_threshold(base, lanes, n, u_all, tl.minimum(want, P), scratch + row * GATHER, INT,
                                           NBITS, BLOCK, ONE_CHUNK, RADIX, FIELD, PROBES, u_tail, TAIL, SAMPLE, RUN,
                                           GATHER)
    tl.store(kept + row, k)
    tl.store(found + row * 2, t.to(tl.int64))
    tl.store(found + row * 2 + 1, ties_wanted.to(tl.int64))

    # per LIST-page chunk, the counts up to its end (chunk c: chunks 0..c)
    if ONE_CHUNK:
        above, ties = _chunk_counts(x_all, t, 0, 0, 0, taken_before, row, NLIST, INT, NBITS, BLOCK, LIST)
        if TAIL > 0:  # the tail's chunks follow the block's (one partial chunk when TAIL < LIST)
            _chunk_counts(x_tail, t, BLOCK // LIST, above, ties, taken_before, row, NLIST, INT, NBITS, TAIL,
                          min(LIST, TAIL))
    elif not COUNTED:
        above = 0
        ties = 0
        for start in range(0, P, BLOCK):
            x = tl.load(base + start + lanes, mask=start + lanes < n, other=float("-inf"))
            above, ties = _chunk_counts(x, t, start // LIST, above, ties, taken_before, row, NLIST, INT, NBITS, BLOCK,
                                        LIST)

    _newest_floor(newest_max, newest_mag, floor, magnitude, slack, row, G, G_PAD, WORK)


@triton.jit
def _list_kernel(
    keys, means, absmax, seq_lens, slopes, kept, found, taken_before, pages, mask, floor, magnitude,
    slack_c, H, P, M, NLIST,
    S: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, LIST: tl.constexpr, NBITS: tl.constexpr,
    INT: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_MEANS: tl.constexpr, COUNT_BEFORE: tl.constexpr, WORK: tl.constexpr,
    PDL: tl.constexpr = False, SUM_BEFORE: tl.constexpr = False, NLIST_PAD: tl.constexpr = 1,
):
    """One chunk of a row: its pages' list slots (of M), mask entries and −1 padding, and (with
    ``HAS_MEANS``) each head's best selected mean score less its rounding slack, max-ed into
    the floor (the mean key's own rounding and two dot products'; with ALiBi the page-centre
    bias less half a page of slope: a token may sit lower), and its largest selected absmax,
    max-ed into the magnitude."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n = candidate_count(tl.load(seq_lens + row // H), S, P)
    idx = chunk * LIST + tl.arange(0, LIST)
    t = tl.load(found + row * 2).to(INT)
    ties_wanted = tl.load(found + row * 2 + 1).to(tl.int32)
    if COUNT_BEFORE:  # after ``_rank_kernel``: count the chunks before this one here
        above = 0
        ties_seen = 0
        for start in range(0, chunk * LIST, LIST):
            before = start + tl.arange(0, LIST)
            xb = tl.load(keys + row * P + before, mask=before < n, other=float("-inf"))
            ub = _ordered(xb, INT, NBITS)
            above += tl.sum(((xb > float("-inf")) & (ub > t)).to(tl.int32))
            ties_seen += tl.sum(((xb > float("-inf")) & (ub == t)).to(tl.int32))
    elif SUM_BEFORE:  # each chunk's own counts (``row_passes._chunk_counts_kernel``): the sums of those before
        before = tl.arange(0, NLIST_PAD)
        at = taken_before + (row * NLIST + before) * 2
        above = tl.sum(tl.load(at, mask=before < chunk, other=0))
        ties_seen = tl.sum(tl.load(at + 1, mask=before < chunk, other=0))
    else:  # the search's counts of the chunks before this one
        at = taken_before + (row * NLIST + chunk - 1) * 2
        above = tl.load(at, mask=chunk > 0, other=0)
        ties_seen = tl.load(at + 1, mask=chunk > 0, other=0)
    x = tl.load(keys + row * P + idx, mask=idx < n, other=float("-inf"))
    take, _ = _take(x, t, ties_seen, ties_wanted, INT, NBITS)
    pos = above + tl.minimum(ties_seen, ties_wanted) + tl.cumsum(take, axis=0) - take
    out = pages + row * M
    tl.store(out + pos, idx.to(tl.int32), mask=(take == 1) & (pos < M))
    tl.store(mask + row * P + idx, take == 1, mask=idx < P)
    # list slots past the count, in this chunk's share of the slots
    tl.store(out + idx, tl.full((LIST,), -1, tl.int32), mask=(idx >= tl.load(kept + row)) & (idx < M))
    if HAS_MEANS:  # every head of the group in one [G_PAD, LIST] tile: one reduction, not G
        gs = tl.arange(0, G_PAD)
        chosen = (gs[:, None] < G) & (take == 1)[None, :]
        at = row * G * P + gs[:, None] * P + idx[None, :]
        mu = tl.load(means + at, mask=chosen, other=0.0).to(WORK)
        a = tl.load(absmax + at, mask=chosen, other=0.0).to(WORK)
        slack = tl.cast(slack_c, WORK) * a
        if HAS_ALIBI:
            slope = tl.abs(tl.load(slopes + (row % H) * G + gs, mask=gs < G, other=0.0).to(WORK))
            slack = slack + (slope * (S - 1) * 0.5)[:, None]  # · 0.5, not / 2 (gaussian_select's note)
        best = tl.max(tl.where(chosen, mu - slack, float("-inf")), axis=1)
        tl.atomic_max(floor + row * G + gs, best, mask=(gs < G) & (best > float("-inf")))
        # absmax >= 0, and 0 where nothing is chosen: the max of the same values in any order
        tl.atomic_max(magnitude + row * G + gs, tl.max(a, axis=1), mask=gs < G)


@triton_op("entmaxkv::quest_select", mutates_args=())
def quest_select(
    upper: torch.Tensor, means: torch.Tensor | None, absmax: torch.Tensor | None, newest_max: torch.Tensor,
    newest_mag: torch.Tensor, seq_lens: torch.Tensor, alibi_slopes: torch.Tensor | None, page_size: int,
    head_dim: int, alpha: float, budget_pages: int, coverage: float, sink_pages: int, recent_pages: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A TopK step's selection from its page scores -> ``(pages [B, Hkv, M] int32 (increasing,
    −1 padded), count [B, Hkv] int32, mask [B, Hkv, P] bool, score_floor [B, Hkv, G],
    magnitude [B, Hkv, G])``, with M = ``list_capacity(P, ...)`` the most pages the selection
    can keep; magnitude: the largest absmax of a selected page per head (0 where none is, and
    without absmax), the |score| scale of its tokens (``KernelOps.tau_lower_bound``).

    upper, means, absmax: [B, Hkv, G, P] work dtype (``page_bounds``; entries of pages that
    are not candidates are never read); means and absmax only serve the score floor and may
    both be None (the floor is then the newest page's term); newest_max, newest_mag: [B, Hkv, G] the newest page's
    best score and |score| scale; seq_lens: [B] int64 (after the append); alibi_slopes:
    optional [Hq]; page_size S and head_dim D of the cache; α in [1, 2]; ``budget_pages`` >= 0
    pages to keep, or −1 to keep ceil(n·coverage − 1e-9) of the n candidates; sink_pages,
    recent_pages >= 0. The score floor is in the work dtype, as ``sparse_decode`` takes it.
    """
    if (means is None) != (absmax is None):
        raise ValueError("quest_select: means and absmax [B, Hkv, G, P] are given together or both None")
    b, hkv, g, p = upper.shape
    work = work_dtype_of(upper.dtype)
    m = list_capacity(p, budget_pages, coverage, sink_pages, recent_pages)
    pages = torch.empty((b, hkv, m), dtype=torch.int32, device=upper.device)
    kept = torch.empty((b, hkv), dtype=torch.int32, device=upper.device)
    mask = torch.empty((b, hkv, p), dtype=torch.bool, device=upper.device)
    floor = torch.empty((b, hkv, g), dtype=work, device=upper.device)
    magnitude = torch.empty((b, hkv, g), dtype=work, device=upper.device)
    wide = work == torch.float64
    # counts past P mean "all pages" (n < P): clamped, so that every int argument fits 32 bits
    # (Inductor sizes them so; a 64-bit one fails to compile, see above)
    budget_pages, sink_pages, recent_pages = min(budget_pages, p), min(sink_pages, p), min(recent_pages, p)
    kinds = dict(S=page_size, G=g, G_PAD=max(2, next_pow2(g)), WORK=tl.float64 if wide else tl.float32)
    # keys, written chunk by chunk by many programs, read by one program per row (typed as
    # keys and aliasing no input, so that Inductor's mutation analysis sees no write to one)
    keys = torch.empty((b, hkv, p), dtype=work, device=upper.device)
    chunks = triton.cdiv(p, CHUNK)
    chunk_best = torch.empty((b, hkv, chunks, g), dtype=work, device=upper.device)
    block, tail = search_block(p)
    ranked = p <= RANK_PAGES
    if HIST_BITS not in (0, 12, 14):  # at least a float64 key's sign and exponent (``_histogram_bin``)
        raise ValueError(f"HIST_BITS must be 0, 12 or 14, got {HIST_BITS}")
    # the key histogram the search starts from: searched rows held in registers (``HIST_BITS``)
    hist_bits = HIST_BITS if not ranked and p <= block + tail and select_module.PROBES > 0 else 0
    # a fresh tensor either way (one element when unused): no input of the op is a kernel's output
    hist = torch.empty((b * hkv, 1 << hist_bits) if hist_bits else (1,), dtype=torch.int32, device=upper.device)
    wrap_triton(_chunk_best_upper_kernel)[(b * hkv, chunks)](
        upper, seq_lens, chunk_best, hist, hkv, p, chunks, CHUNK=CHUNK, **kinds, HIST_BITS=hist_bits,
        num_warps=CHUNK_WARPS, **pdl_kwargs(upper, "quest_select"))
    wrap_triton(_keys_kernel)[(b * hkv, chunks)](
        upper, chunk_best, seq_lens, keys, hist, *float64_words(alpha - 1.0 if alpha > 1.0 else 1.0),
        sink_pages, recent_pages, hkv, p, chunks, CHUNK=CHUNK, NCHUNK_PAD=max(2, next_pow2(chunks)), **kinds,
        HIST_BITS=hist_bits, num_warps=CHUNK_WARPS, **pdl_kwargs(upper, "quest_select"))
    radix, field = search_radix(select_module.RADIX, block)
    list_pages = min(LIST_CHUNK, block)
    lists = triton.cdiv(p, list_pages)
    found = torch.empty((b, hkv, 2), dtype=torch.int64, device=upper.device)  # threshold, ties wanted
    # the search's per-chunk counts (a ranked row's list programs count for themselves)
    taken_before = torch.empty((b, hkv, lists, 2), dtype=torch.int32, device=upper.device)
    wide_ints = dict(NBITS=64 if wide else 32, INT=tl.int64 if wide else tl.int32)
    counted = False
    if ranked:
        row, row_tail = search_block(p, streams=False)  # the whole row, whatever MAX_BLOCK
        pairs = max(1, (RANK_PAIRS_MANY_ROWS if b * hkv >= MANY_ROWS else RANK_PAIRS) // (row + row_tail))
        rank_block = min(64, row, 1 << (pairs.bit_length() - 1))  # a power of two
        wrap_triton(_rank_kernel)[(b * hkv, triton.cdiv(p, rank_block))](
            keys, newest_max, newest_mag, seq_lens, kept, found, floor, magnitude,
            max(budget_pages, 0), *float64_words(coverage), sink_pages, recent_pages,
            newest_slack(work, head_dim), hkv, p,
            BLOCK=rank_block, ROW=row, TAIL=row_tail, COVERAGE=budget_pages < 0, **wide_ints, **kinds,
            num_warps=RANK_WARPS,
            **pdl_kwargs(upper, "quest_select"),
        )
    else:
        sample, scratch = select_module.search_sample(p <= block + tail, keys, b * hkv)
        counted = sample["SAMPLE"] > 0  # a streamed row, counted by (row, chunk) programs (``row_passes``)
        bracket = torch.empty((b, hkv, 4), dtype=torch.int64, device=upper.device)  # lo, hi, usable, n
        totals = torch.empty((b, hkv, 4), dtype=torch.int32, device=upper.device)  # c_lo, c_hi, eligible, gathered
        if counted:
            wrap_triton(_bracket_kernel)[(b * hkv,)](
                keys, seq_lens, bracket, totals, max(budget_pages, 0), *float64_words(coverage), sink_pages,
                recent_pages, hkv, p, S=page_size, PROBES=select_module.PROBES, SAMPLE=sample["SAMPLE"],
                RUN=sample["RUN"], COVERAGE=budget_pages < 0, **wide_ints, num_warps=SELECT_WARPS,
                **pdl_kwargs(upper, "quest_select"))
            wrap_triton(_bracket_counts_kernel)[(b * hkv, triton.cdiv(p, COUNT_CHUNK))](
                keys, bracket, totals, scratch, p, CHUNK=COUNT_CHUNK, FIELD=int(COUNT_CHUNK).bit_length(),
                GATHER=sample["GATHER"], **wide_ints, num_warps=COUNT_WARPS, **pdl_kwargs(upper, "quest_select"))
        wrap_triton(_search_kernel)[(b * hkv,)](
            keys, newest_max, newest_mag, seq_lens, kept, found, taken_before, floor, magnitude, scratch, bracket,
            totals, hist, max(budget_pages, 0), *float64_words(coverage), sink_pages, recent_pages,
            newest_slack(work, head_dim), hkv, p, lists,
            BLOCK=block, ONE_CHUNK=p <= block + tail, RADIX=radix, FIELD=field, PROBES=select_module.PROBES,
            **sample, COUNTED=counted, HIST_BITS=hist_bits,
            LIST=list_pages, COVERAGE=budget_pages < 0, TAIL=tail, **wide_ints, **kinds,
            num_warps=(select_module.STREAMED_WARPS if p > block + tail and not counted
                       else SELECT_WARPS if block >= 2048 else 4),
            **pdl_kwargs(upper, "quest_select"),
        )
        if counted:
            wrap_triton(_chunk_counts_kernel)[(b * hkv, lists)](
                keys, bracket, found, taken_before, p, lists, LIST=list_pages, **wide_ints, num_warps=LIST_WARPS,
                **pdl_kwargs(upper, "quest_select"))
    wrap_triton(_list_kernel)[(b * hkv, lists)](
        keys, upper if means is None else means, upper if absmax is None else absmax, seq_lens,
        alibi_slopes if alibi_slopes is not None else upper, kept, found, taken_before, pages, mask, floor, magnitude,
        mean_slack(work, page_size, head_dim), hkv, p, m, lists,
        LIST=list_pages, HAS_ALIBI=alibi_slopes is not None, HAS_MEANS=means is not None, COUNT_BEFORE=ranked,
        SUM_BEFORE=counted, NLIST_PAD=max(2, next_pow2(lists)) if counted else 1,
        **wide_ints, **kinds, num_warps=LIST_WARPS, **pdl_kwargs(upper, "quest_select")
    )
    return pages, kept, mask, floor, magnitude


@quest_select.register_fake
def _(upper, means, absmax, newest_max, newest_mag, seq_lens, alibi_slopes, page_size, head_dim, alpha,
      budget_pages, coverage, sink_pages, recent_pages):
    b, hkv, g, p = upper.shape
    m = list_capacity(p, budget_pages, coverage, sink_pages, recent_pages)
    return (upper.new_empty((b, hkv, m), dtype=torch.int32), upper.new_empty((b, hkv), dtype=torch.int32),
            upper.new_empty((b, hkv, p), dtype=torch.bool), upper.new_empty((b, hkv, g)), upper.new_empty((b, hkv, g)))


register_batch_rule(quest_select, (0, 1, 2, 3, 4, 5))  # vmap folds into the batch dimension
