"""``entmaxkv::sparse_decode``: entmax attention of one query token over a list of pages.

Two kernels, K read once, V read only where the weight is non-zero:

1. ``_scores_kernel``, grid (B·Hkv, splits + 1): each program scores a slice of the page list
   for all query heads of a GQA group (K of a page is read once per group); the extra program
   scores the page holding the newest token. For α > 1 it keeps only the tokens that can be in
   the support — z = (α−1)·s > (α−1)·m − 1 with m the running maximum score (τ >= (α−1)·max s − 1
   because the top token alone has mass >= 1) — and writes their scores and positions to a
   small per-split scratch. The splits share their maxima through one atomic max per query
   head, so m is soon close to the global maximum; at the end each split takes the global
   maximum once more and filters its survivors again against it. For softmax it runs the usual online softmax with V
   (flash decode) and writes per-split partial sums.
2. ``_tau_kernel``, grid (B·Hq): gathers the survivors (a few slots of every split a load),
   solves τ on them in float64 — held in registers when they are few — by bisection
   with a fixed count, then the exact support formula for α = 1.5 and 2, or takes the τ given
   by a selector (optionally refined by safeguarded Newton steps), then reads V for the support
   tokens only and writes the output. For softmax it combines the partial sums.

NaN in, NaN out, as dense entmax (``entmaxkv.reference``) and torch SDPA give: a NaN score
(a NaN in the key or the query) fails every comparison, so the survivor test alone would drop
it and return a finite output. The scores kernel therefore notes NaN scores per row and
reports a split that saw one with a survivor count of −1; the τ kernel then writes NaN for
that query head's output and τ. For softmax the online sums carry the NaN by arithmetic. Only
what the step reads can be seen: a NaN key in a page the list does not hold, or a NaN value of
a token outside the support (α > 1: V is read for the support only), leaves the output finite.

Which non-support tokens survive depends on the order the splits run in; the support does not
(every token above the final floor is always kept). The order of the gathered survivors, and
so the pairing of float64 sums, may change from run to run: τ can differ in its last float64
bits, which in principle could flip a rounding of the output (never observed).

The page list is a fixed-capacity [B, Hkv, M] int32 table (padding −1) with a count per row;
``dense=True`` means "every full page before the newest one" without a list. Pages are logical
and map to physical pages through ``page_table`` [B, P] (identity for today's cache).
The number of splits depends on the batch, heads and list capacity (occupancy), not on the
lengths, so shapes are static between steps.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import (
    SOFTMAX, alpha_kind, next_pow2, register_batch_rule, rho, rho_slope, work_dtype_of,
)
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs
from entmaxkv.kernels.threshold_search import _ordered, _unordered

__all__ = ["sparse_decode", "TAU_EXACT", "TAU_GIVEN", "TAU_REFINED", "num_splits", "bisection_steps",
           "bisection_gap"]

TAU_EXACT, TAU_GIVEN, TAU_REFINED = 0, 1, 2
TOKENS_PER_ITER = 64  # tokens scored per loop iteration (several pages at once)
# α > 1 (K only, no online softmax) over a list of at least LONG_LIST_PAGES pages. On the H200
# (B = 1, 32/8, fp16, α = 1.5, session 8): Dense 128K (8,193 pages) 161.7 µs with 128 against
# 186.5 with 64, Dense 32K (2,049) 65.5 against 65.8; shorter lists lost with 128: Dense 8K
# (513) 45.7 against 39.0, TopK 12.5% 32K (257) 55.1 against 48.8, 8K 41.1 against 38.7, 128K
# (1,025) 87.4 against 89.2 (within the calls' noise); softmax lost 5 µs at 128K (its V tile
# doubles too)
ENTMAX_TOKENS_PER_ITER = 128
LONG_LIST_PAGES = 2048
SCORES_WARPS = 4  # warps of a scoring program (the default shape: ``scoring_shape``)
TAU_WARPS = 4  # warps of a τ program (one query head's gather, solve and V pass)
# elements of one KV head's pages (P·S·D) from which the scoring kernel takes 64-bit row offsets
# (``WIDE``; below it a row offset is a 32-bit int added to the head's base pointer)
WIDE_OFFSETS = 2**31
# α > 1: the scoring loop works on the query heads' rows of a tile's scores only (their next
# power of two, at least 2), not on the dot's 16 (``_first_rows``)
FIRST_ROWS = True
ROWS_PER_ITER = 64  # survivors handled per loop iteration in the τ kernel (a streamed solve)
# survivors whose V rows the τ kernel reads per iteration (the support: a few tokens a head on the
# benchmark's data, so a 64-row float64 tile was mostly masked work)
V_ROWS = 16
# α > 1: the τ kernel's V pass over the support only. With more than V_ROWS survivors, a pass
# of SUPPORT_BLOCK survivors a load first moves the tokens above τ to the front of the row's
# scratch, so the V loop reads ceil(support / V_ROWS) tiles, not ceil(survivors / V_ROWS).
# Flat scores keep hundreds of survivors a head of which tens have weight (e2e_speed.py's
# random-weight model: 313–549 in the worst head at 128K under TopK, on the CPU). On the H200
# (perf-log row 131; B = 1, 32/8, bf16, α = 1.5, e2e_data_gpu.py) the step on that model's data:
# TopK 12.5% 8K 41–42 → 32–33 µs, 128K 98 → 72; Dense 8K 56 → 39, 128K 168 → 112; ~1 µs faster
# on q × 3 (peaked) at 128K. On SyntheticStream (at most 11 survivors a head: the move never
# runs) level at 8K, for Dense and at B = 16, ~1 µs slower at B = 1 128K TopK (63–65 → 65–66):
# the compiled form's cost, not the move's (offline, the τ kernel with it spills a little:
# 96 registers and 28 B of spill stores against 111 and none; perf-log, session 32)
V_SUPPORT_FIRST = True
SUPPORT_BLOCK = 128
# α > 1: before its final filter a scoring program takes the global running maximum once more
# (one relaxed atomic): a split that finished before the others published theirs filtered its
# survivors against its own maximum only, and on TopK lists whole splits survived it (the τ
# kernel then gathered up to CAP slots of every split)
FINAL_EXCHANGE = True
# α > 1: how often a scoring program exchanges its running maximum inside its loop. An exchange
# is an atomic whose result the next instructions wait for (Triton moves it to the other lanes
# through shared memory at once, with barriers). True: at the loop's iterations 1, 2, 4, 8, ...
# (the floor rises most at the start; 0 too past the first wave: ``EXCHANGE_AT_START``), plus
# the final exchange; False: every iteration.
# With KEYED_MAX, on the H200 (perf-log row 71): −1 to −2.3 µs a step (Dense α = 1.5 128K
# 101.7 → 99.4 µs) — the atomics' latency was mostly hidden by the SM's other warps.
SPARSE_EXCHANGE = True
# α > 1 with ``SPARSE_EXCHANGE``: which programs exchange at iteration 0 too. That atomic
# publishes the program's starting maximum (−inf, or the score floor every split of the row
# shares) and reads the other programs'; the next instructions wait for it. For a program of
# the first wave (the programs an SM the split count is sized for, ``scoring_shape``) it
# reads what programs that started with it hold — their starting maxima, nothing to filter
# with — so it skips it: the first exchange is at iteration 1, after its first tile's maximum
# (an atomic round trip less in its chain; on a short list — one tile a split, as in
# ``Exact``'s attention and seed — the final exchange is its only one). A program past the
# first wave (B = 16: two waves) starts after others have published tiles' maxima: it
# exchanges first, and filters its first tile with them. True: every program exchanges at
# iteration 0, as before session 24.
EXCHANGE_AT_START = False
# α > 1: the running maxima as order-preserving integer keys (``threshold_search._ordered``):
# one integer atomic max an exchange. False: Triton's float atomic max, which is two atomics in
# sequence (a signed max for non-negative values, an unsigned min for negative ones).
KEYED_MAX = True
# α > 1: whether a tile holds a survivor, decided from its rows' maxima (already reduced for the
# running maximum: lin·max_i s_i > floor iff some lin·s_i > floor, rounding being monotone)
# instead of a sum over the tile's [rows, tokens] keep flags (a reduction across the program's
# warps every iteration). False: the sum. On the H200 (perf-log row 75): Dense α = 1.5 128K
# 99.6 → 95.5 µs, α = 2 32K 39.0 → 38.1, TopK α = 1.5 128K 66.8 → 66.1; the same outputs.
SKIP_BY_ROW_MAX = True
PROGRAMS_PER_SM = 2  # scoring programs per SM (memory parallelism of the K/V stream; the default shape)
# ... and with at least MANY_ROWS rows (B·Hkv) over a budgeted list — a list capacity of at
# least MANY_ROWS_LIST_PAGES pages and at most half the cache's page count (TopK's list, sized
# by its budget; a mask's list may hold every page) — smaller programs, more of them an SM
# (``scoring_shape``). On the H200, TopK α = 1.5 on caches sized to the context (perf-log row
# 129, same-run A/B): 32/32 B = 1 128K 139.1–140.7 → 118.6–119.9 µs, 64K 85.0–85.6 → 77.8–78.7;
# 32/8 B = 4 128K 142.9–146.0 → 130.1–130.8; B = 16 128K 373.5–386.5 → 362.8–364.7. Not taken
# where it lost: dense passes (Dense B = 16 64K 674–711 → 828–831 µs); lists of any page, which
# a mask fills with few (Gaussian and page-box Exact on needles, B = 16: +4.2 to +7.2 µs); lists
# of 128 pages (B = 16 16K: +1.7 to +1.9 µs; 256 pages: level, or 2.3–2.5 µs faster; 512 was a
# conservative bound, 256 since session 36, below). Fewer rows: only 8 measured (32/8 B = 1,
# perf-log row 111: 64.2 → 64.8 µs at 128K, within noise); between 8 and 32 not measured. Not
# measured either: a cache with much room past its sequences, whose TopK lists are long in
# capacity but short in use.
# Session 36 (perf-log row 136, same-run A/B, 32/8 fp16 B = 16 unless said): the many-rows
# shape from 256-page lists, 5 programs an SM, 2 software-pipeline stages (Triton's default is
# 3): TopK 6.25% boxed 128K 235.2/227.0 → 214.9/216.8 µs, 64K 140.9/139.4 → 131.5/131.3;
# TopK 12.5% boxed 128K 323.7/309.3 → 288.2/289.3, 32K 119.8/116.8 → 112.0/112.1; TopK 6.25%
# without boxes 128K 297.0/284.1 → 273.8/273.0; B = 4 128K 93.1/92.2 → 90.5/90.0; outputs
# bit-identical; 32/32 B = 16 128K 756.9 → 682.5/684.7 (the stages). Slower: 32/32 B = 16 64K
# (512 rows, whose 256-page lists now take this shape) 362.0/361.4/378.7 → 371.2–391.3 µs.
# 2 stages for every launch was level where the default shape stays (B = 16 32K and 16K,
# B = 1 128K and 32K), so the stages go with the many-rows shape only. Session 34: 6
# programs an SM, or 4 stages, were slower.
MANY_ROWS = 32
# list launches (not the dense pass) under PDL (``pdl.PDL_MODULES``' ``sparse_decode``) below this many
# rows B·Hkv, else as the dense pass (``sparse_decode_dense``, off). On the H100 (session 54, perf-log
# row 166; 32/8, fp16, α = 1.5, base / PDL alternated, the same outputs): B = 1 (8 rows) TopK 12.5% −0.65
# to −1.1 µs at 8K-128K, Gaussian and Exact on needles at 128K −0.7; B = 16 (128 rows) TopK 12.5% 64K
# 243.9 / 245.4 µs without against 247.4 with (and 270.0, the process's first run); 9-127 rows not measured
PDL_ROWS_BELOW = 32
MANY_ROWS_LIST_PAGES = 256
PROGRAMS_PER_SM_MANY_ROWS = 5
SCORES_WARPS_MANY_ROWS = 2
SCORES_STAGES_MANY_ROWS = 2
SCORES_STAGES = None  # software-pipeline stages of the default shape's loop (None: Triton's default)
GATHER = 32  # survivors of every split gathered a load by the τ kernel
BLOCK_REGS = 256  # up to this many survivors, τ is solved with them held in registers
# up to this many, in a register block this small (each round of the solve is a reduction over
# the block: 32 lanes are one warp's; BLOCK_REGS: no small block)
SMALL_REGS = 32
EXACT_ITERS = 16  # rounds of the exact α = 1.5 / 2 search before it falls back to bisection
# A caller that needs τ only (``KernelOps``' τ lower bounds: page-box ``Exact``'s seed) asks ``sparse_decode`` for no output (``with_output=False``): the τ kernel then skips the
# V reads of the support and the output store. False: such calls compute the output anyway
# (and drop it), as before session 20 — for an A/B of the saving.
TAU_ONLY = True


def needs_wide_offsets(pages: int, page_size: int, head_dim: int) -> bool:
    """Whether the scoring kernel takes 64-bit row offsets: one KV head's pages hold P·S·D
    elements, and a 32-bit offset reaches P·S·D − 1 at most, which fits below 2^31."""
    return pages * page_size * head_dim >= WIDE_OFFSETS


def bisection_steps(work: torch.dtype) -> int:
    """Bisection steps of the τ solve (its bracket is at most 1 wide, so for α other than 1,
    1.5 and 2 — no exact finish — τ is within 2^-(steps+1) of the root of its scores)."""
    return 60 if work == torch.float64 else 40


def bisection_gap(alpha: float, work: torch.dtype) -> float:
    """How far the τ solve's result may sit from the root of its scores beyond rounding: 0 for
    α ∈ {1, 1.5, 2} (exact finishes), else 2^−steps of ``bisection_steps`` (a midpoint)."""
    return 0.0 if alpha in (1.0, 1.5, 2.0) else 2.0 ** -bisection_steps(work)


def tokens_per_iter(entmax: bool, list_pages: int) -> int:
    """Tokens a scoring program scores per loop iteration: ``ENTMAX_TOKENS_PER_ITER`` for α > 1
    over a list of at least ``LONG_LIST_PAGES`` pages, else ``TOKENS_PER_ITER``."""
    return ENTMAX_TOKENS_PER_ITER if entmax and list_pages >= LONG_LIST_PAGES else TOKENS_PER_ITER


def _sm_count(device: torch.device) -> int:
    """SMs of a CUDA device; 4 for the interpreter (few programs keep CPU tests fast)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def scoring_shape(rows: int, list_capacity: int, num_pages: int) -> tuple[int, int, int | None]:
    """(programs an SM, warps a program, pipeline stages or None for Triton's default) of the
    scoring kernel for ``rows`` = B·Hkv rows over a list of ``list_capacity`` pages of a cache
    of ``num_pages`` (a dense pass: ``num_pages``): the ``*_MANY_ROWS`` shape for many rows over
    a long budgeted list (``MANY_ROWS_LIST_PAGES`` <= capacity <= ``num_pages`` / 2), else
    ``PROGRAMS_PER_SM`` of ``SCORES_WARPS`` at ``SCORES_STAGES``."""
    if rows >= MANY_ROWS and MANY_ROWS_LIST_PAGES <= list_capacity <= num_pages // 2:
        return PROGRAMS_PER_SM_MANY_ROWS, SCORES_WARPS_MANY_ROWS, SCORES_STAGES_MANY_ROWS
    return PROGRAMS_PER_SM, SCORES_WARPS, SCORES_STAGES


def num_splits(batch: int, kv_heads: int, list_capacity: int, num_pages: int, page_size: int,
               device: torch.device, entmax: bool = False) -> int:
    """Splits of the page list per (sequence, KV head): ``scoring_shape``'s programs an SM times
    the SMs, shared among the B·Hkv rows, never more than there are iterations of work in a
    full list (``tokens_per_iter``)."""
    sms = _sm_count(device)
    per_sm = scoring_shape(batch * kv_heads, list_capacity, num_pages)[0]
    pages_per_iter = max(1, tokens_per_iter(entmax, list_capacity) // page_size)
    most = max(1, triton.cdiv(list_capacity, pages_per_iter))
    return max(1, min(most, triton.cdiv(per_sm * sms, batch * kv_heads)))


def first_wave(device: torch.device, rows: int, list_capacity: int, num_pages: int) -> int:
    """Programs in the scoring kernel's first wave, as ``num_splits`` sizes it: the programs an
    SM of ``scoring_shape`` (``EXCHANGE_AT_START``)."""
    return scoring_shape(rows, list_capacity, num_pages)[0] * _sm_count(device)


@triton.jit
def _first_rows(x, ALL: tl.constexpr, ROWS: tl.constexpr, N: tl.constexpr):
    """The first ROWS rows of x [ALL, N] (exactly: each is added to zeros, which keeps NaN and
    ±inf; −0.0 becomes +0.0, an equal score)."""
    blocks = tl.reshape(x, [ALL // ROWS, ROWS, N])
    first = (tl.arange(0, ALL // ROWS) == 0)[:, None, None]
    return tl.sum(tl.where(first, blocks, 0.0), axis=0)


@triton.jit
def _exchange_max(run_max, qrow, m, gmask, WORK: tl.constexpr, KEYED: tl.constexpr):
    """Publish the running maxima m [ROWS] of the rows ``qrow`` and return the rows' shared
    maxima before this one — each an attained score, a score floor given to the kernel (a score
    some attended token reaches) or −inf; undefined on lanes ``gmask`` leaves out, which the
    caller masks: one relaxed atomic max a row, on the order-preserving integer keys of
    ``run_max`` (``KEYED``, ``run_max_init``: int64 keys for float64 work, int32 for float32,
    the pointer's own element type) or on floats."""
    if KEYED:
        KEY: tl.constexpr = run_max.dtype.element_ty
        NBITS: tl.constexpr = KEY.primitive_bitwidth
        key = tl.atomic_max(run_max + qrow, _ordered(m, KEY, NBITS), mask=gmask, sem="relaxed")
        return _unordered(key, WORK, NBITS)
    else:
        return tl.atomic_max(run_max + qrow, m, mask=gmask, sem="relaxed")


def run_max_init(rows: int, work: torch.dtype, keyed: bool, device: torch.device) -> torch.Tensor:
    """The scoring kernel's shared running maxima before any program: −inf, as a float of the work
    dtype or (``keyed``) as its order-preserving integer key (``_exchange_max``)."""
    if not keyed:
        return torch.full((rows,), float("-inf"), dtype=work, device=device)
    ints, int_format, float_format, nbits = (torch.int64, "<q", "<d", 64) if work == torch.float64 \
        else (torch.int32, "<i", "<f", 32)
    bits = struct.unpack(int_format, struct.pack(float_format, float("-inf")))[0]
    key = bits ^ ((bits >> (nbits - 1)) & ((1 << (nbits - 1)) - 1))  # _ordered's map (Python ints: no tensor)
    return torch.full((rows,), key, dtype=ints, device=device)


@triton.jit
def _scores_kernel(
    q, k_pages, v_pages, page_table, pages, n_pages, seq_lens, slopes, tau_in, score_floor, run_max,
    cand_s, cand_i, cand_n, part_m, part_l, part_acc,
    scale, lin, H, G, P, M, CAP, wave,
    D: tl.constexpr, S: tl.constexpr, G_PAD: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NSPLIT: tl.constexpr, DENSE: tl.constexpr, PAGED: tl.constexpr, HAS_ALIBI: tl.constexpr, GIVEN_TAU: tl.constexpr,
    HAS_FLOOR: tl.constexpr, KIND: tl.constexpr, WORK: tl.constexpr, NATIVE: tl.constexpr, WIDE: tl.constexpr,
    FINAL_EXCHANGE: tl.constexpr = False, SPARSE_EXCHANGE: tl.constexpr = False, KEYED_MAX: tl.constexpr = False,
    SKIP_BY_ROW_MAX: tl.constexpr = False, PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    bh = tl.program_id(0)
    split = tl.program_id(1)
    # past the first wave (programs are dispatched in linear order, axis 0 fastest): exchange at
    # iteration 0 too (``EXCHANGE_AT_START``; wave is 0 when every program does)
    late = split * tl.num_programs(0) + bh >= wave
    b = bh // H
    length = tl.load(seq_lens + b).to(tl.int32)
    newest = (length - 1) // S
    if split == NSPLIT:  # the page holding the newest token
        first = 0
        last = tl.where(length > 0, 1, 0)
    else:
        if DENSE:
            n = newest
        else:
            n = tl.load(n_pages + bh)
        per_split = (n + NSPLIT - 1) // NSPLIT  # balanced over the pages actually listed
        first = split * per_split
        last = tl.minimum(first + per_split, n)

    scale_w = tl.cast(scale, WORK)
    lin_w = tl.cast(lin, WORK)
    d = tl.arange(0, BLOCK_D)
    t = tl.arange(0, BLOCK_N)
    dmask = d < D
    g_dot = tl.arange(0, G_PAD)  # the dot's rows: at least 16
    qv = tl.load(q + (bh * G + g_dot).to(tl.int64)[:, None] * D + d[None, :],
                 mask=(g_dot < G)[:, None] & dmask[None, :], other=0.0)
    if not NATIVE:
        qv = qv.to(WORK)
    # the query heads' rows of everything after the dot: its first ROWS (``ROWS`` < G_PAD for
    # α > 1, the dot's padding rows cut away once a tile; G_PAD for softmax)
    g = tl.arange(0, ROWS)
    gmask = g < G
    qrow = (bh * G + g).to(tl.int64)
    if HAS_ALIBI:
        slope = tl.load(slopes + (bh % H) * G + g, mask=gmask, other=0.0).to(WORK)
    out_row = qrow * (NSPLIT + 1) + split  # [ROWS] rows of the per-split outputs

    m = tl.full((ROWS,), float("-inf"), WORK)
    if HAS_FLOOR:  # a score some attended token reaches: filters survivors from the start
        if KIND != 0:
            m = tl.load(score_floor + qrow, mask=gmask, other=float("-inf")).to(WORK)
    if KIND == 0:
        l_sum = tl.zeros((ROWS,), WORK)
        acc = tl.zeros((ROWS, BLOCK_D), WORK)
    else:
        cnt = tl.zeros((ROWS,), tl.int32)
        # NaN scores seen, per lane (the survivor test below drops them): or-ed elementwise each
        # chunk and reduced once at the end (a row sum a chunk cost ~9 µs of a dense α = 1.5
        # step at 128K on the H200)
        nan_seen = tl.zeros((ROWS, BLOCK_N), tl.int32)
        if GIVEN_TAU:
            given = tl.load(tau_in + qrow, mask=gmask, other=float("inf")).to(WORK)

    # this KV head's pages: P·S·D elements from here (``WIDE``: 64-bit offsets, ``WIDE_OFFSETS``)
    k_head = k_pages + bh.to(tl.int64) * P * S * D
    v_head = v_pages + bh.to(tl.int64) * P * S * D
    # a tile's tokens as (list position, offset in the page): S and BLOCK_N are powers of two
    # and BLOCK_N >= S, so a tile starts on a page and both come from the tile's own lanes by
    # shifts — not from each token slot by a signed division and remainder
    tl.static_assert(BLOCK_N % S == 0, "a tile holds whole pages (S a power of two, BLOCK_N >= S)")
    t_page = (t.to(tl.uint32) // S).to(tl.int32)
    in_page = (t.to(tl.uint32) % S).to(tl.int32)
    it = 0  # the loop's iteration
    for j in range(first * S, last * S, BLOCK_N):
        if KIND != 0:
            # Publish the maximum so far and take the other splits' (an attained score, so a
            # valid floor): survivors shrink to those near the global maximum.
            if SPARSE_EXCHANGE:  # at iterations 1, 2, 4, 8, ... only (and 0 past the first wave)
                shared = m
                if ((it & (it - 1)) == 0) & ((it > 0) | late):
                    shared = _exchange_max(run_max, qrow, m, gmask, WORK, KEYED_MAX)
            else:
                shared = _exchange_max(run_max, qrow, m, gmask, WORK, KEYED_MAX)
        list_pos = j // S + t_page
        in_list = list_pos < last
        if split == NSPLIT:
            logical = tl.zeros_like(list_pos) + newest
        elif DENSE:
            logical = list_pos
        else:
            logical = tl.load(pages + bh.to(tl.int64) * M + list_pos, mask=in_list, other=0)
        if PAGED:
            phys = tl.load(page_table + b.to(tl.int64) * P + logical, mask=in_list, other=0)
        else:
            phys = logical
        pos = logical * S + in_page
        valid = in_list & (pos < length)
        if WIDE:
            row = phys.to(tl.int64) * S + in_page
        else:  # a token's row within its KV head's pages in 32 bits: one 64-bit add a load
            row = phys * S + in_page
        kv_mask = valid[:, None] & dmask[None, :]
        k = tl.load(k_head + row[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
        if not NATIVE:
            k = k.to(WORK)
        s = tl.dot(qv, tl.trans(k), input_precision="ieee", out_dtype=WORK) * scale_w
        if ROWS < G_PAD:
            s = _first_rows(s, G_PAD, ROWS, BLOCK_N)
        if HAS_ALIBI:
            s += slope[:, None] * (pos - (length - 1)).to(WORK)[None, :]
        s = tl.where(valid[None, :] & gmask[:, None], s, float("-inf"))
        tile_max = tl.max(s, axis=1)
        m_new = tl.maximum(m, tile_max)
        if KIND == 0:
            # online softmax; a row with no token yet keeps m = -inf and adds nothing
            safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - safe[:, None])
            shrink = tl.exp(m - safe)
            v = tl.load(v_head + row[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
            if NATIVE:
                pv = tl.dot(p.to(v.dtype), v, out_dtype=WORK)
            else:
                pv = tl.dot(p, v.to(WORK), input_precision="ieee", out_dtype=WORK)
            l_sum = l_sum * shrink + tl.sum(p, axis=1)
            acc = acc * shrink[:, None] + pv
        else:
            m_new = tl.maximum(m_new, tl.where(gmask, shared, float("-inf")))
            floor = lin_w * m_new - 1.0  # <= (α-1)·max s − 1 <= τ
            if GIVEN_TAU:
                floor = tl.minimum(floor, given)
            keep = (lin_w * s > floor[:, None]).to(tl.int32)
            # A NaN score fails every comparison, so it would silently leave the support; note
            # it instead (one compare per score, beside the dot product's D multiply-adds)
            nan_seen = nan_seen | (s != s).to(tl.int32)
            if SKIP_BY_ROW_MAX:  # a row's tile keeps a token iff it keeps the row's best (rounding is monotone)
                any_kept = tl.max((lin_w * tile_max > floor).to(tl.int32), axis=0) > 0
            else:
                any_kept = tl.sum(keep) > 0
            if any_kept:  # most chunks hold no survivor once the floor is high
                at = cnt[:, None] + tl.cumsum(keep, axis=1) - keep
                dst = out_row[:, None] * CAP + at
                tl.store(cand_s + dst, s, mask=keep == 1)
                tl.store(cand_i + dst, pos[None, :].to(tl.int32) + tl.zeros_like(keep), mask=keep == 1)
                cnt += tl.sum(keep, axis=1)
        m = m_new
        it += 1

    tl.store(part_m + out_row, m, mask=gmask)
    if KIND == 0:
        tl.store(part_l + out_row, l_sum, mask=gmask)
        tl.store(part_acc + out_row[:, None] * D + d[None, :], acc, mask=gmask[:, None] & dmask[None, :])
    else:
        # Early tokens passed a floor from a smaller running maximum: filter this split's
        # survivors again against its final maximum, in place (each chunk is read before
        # anything at or past it is written), so the τ kernel gathers only a few per split.
        if FINAL_EXCHANGE:  # the other splits' maxima published meanwhile (attained scores)
            shared = _exchange_max(run_max, qrow, m, gmask, WORK, KEYED_MAX)
            m = tl.maximum(m, tl.where(gmask, shared, float("-inf")))
        floor = lin_w * m - 1.0
        if GIVEN_TAU:
            floor = tl.minimum(floor, given)
        kept = tl.zeros((ROWS,), tl.int32)
        tl.debug_barrier()  # the survivors other lanes stored above are visible
        for j in range(0, tl.max(cnt), BLOCK_N):
            src = out_row[:, None] * CAP + j + t[None, :]
            ok = (j + t[None, :]) < cnt[:, None]
            s = tl.load(cand_s + src, mask=ok, other=float("-inf"))
            pos = tl.load(cand_i + src, mask=ok, other=0)
            keep = (ok & (lin_w * s > floor[:, None])).to(tl.int32)
            dst = out_row[:, None] * CAP + kept[:, None] + tl.cumsum(keep, axis=1) - keep
            tl.debug_barrier()  # every lane has read its chunk before any lane overwrites it
            tl.store(cand_s + dst, s, mask=keep == 1)
            tl.store(cand_i + dst, pos, mask=keep == 1)
            kept += tl.sum(keep, axis=1)
        # −1: this split scored a NaN, the row's output is NaN (the τ kernel checks the sign)
        tl.store(cand_n + out_row, tl.where(tl.max(nan_seen, axis=1) > 0, -1, kept), mask=gmask)


@triton.jit
def _excess(comp_s, base, total, z_reg, lin, tau, inv_power, KIND: tl.constexpr, BLOCK: tl.constexpr,
            IN_REGS: tl.constexpr):
    """f(τ) = Σ ρ(z − τ) − 1 and its derivative −Σ ρ'(z − τ) over the gathered survivors
    (float64): from ``z_reg`` when they are held in registers, else streamed from ``comp_s``."""
    if IN_REGS:
        f_sum = tl.sum(rho(z_reg - tau, inv_power, KIND))
        slope_sum = tl.sum(rho_slope(z_reg - tau, inv_power, KIND))
    else:
        r = tl.arange(0, BLOCK)
        f = tl.zeros((BLOCK,), tl.float64)
        slope = tl.zeros((BLOCK,), tl.float64)
        for off in range(0, total, BLOCK):
            z = tl.load(comp_s + base + off + r, mask=off + r < total, other=float("-inf")).to(tl.float64) * lin
            f += rho(z - tau, inv_power, KIND)
            slope += rho_slope(z - tau, inv_power, KIND)
        f_sum = tl.sum(f)
        slope_sum = tl.sum(slope)
    return f_sum - 1.0, -slope_sum


@triton.jit
def _add3_min(a0, a1, a2, a3, b0, b1, b2, b3):
    return a0 + b0, a1 + b1, a2 + b2, tl.minimum(a3, b3)


@triton.jit
def _shifted_sums(comp_s, base, total, z_reg, lin, x, BLOCK: tl.constexpr, IN_REGS: tl.constexpr):
    """(#{z > x}, Σ (z − x), Σ (z − x)², min z) over the survivors above x (float64), in one
    reduction (sums of the shifted u = z − x: no cancellation between large Σz² and x²). The
    search from below and the bisection's exact finish both use it."""
    if IN_REGS:
        sup = z_reg > x
        u = tl.where(sup, z_reg - x, 0.0)
        cnt, s1, s2, zmin = tl.reduce((tl.where(sup, 1.0, 0.0), u, u * u, tl.where(sup, z_reg, float("inf"))), 0,
                                      _add3_min)
    else:
        r = tl.arange(0, BLOCK)
        c_acc = tl.zeros((BLOCK,), tl.float64)
        s1_acc = tl.zeros((BLOCK,), tl.float64)
        s2_acc = tl.zeros((BLOCK,), tl.float64)
        m_acc = tl.full((BLOCK,), float("inf"), tl.float64)
        for off in range(0, total, BLOCK):
            z = tl.load(comp_s + base + off + r, mask=off + r < total, other=float("-inf")).to(tl.float64) * lin
            sup = z > x
            u = tl.where(sup, z - x, 0.0)
            c_acc += tl.where(sup, 1.0, 0.0)
            s1_acc += u
            s2_acc += u * u
            m_acc = tl.minimum(m_acc, tl.where(sup, z, float("inf")))
        cnt, s1, s2, zmin = tl.reduce((c_acc, s1_acc, s2_acc, m_acc), 0, _add3_min)
    return cnt, s1, s2, zmin


@triton.jit
def _support_tau(cnt, s1, s2, KIND: tl.constexpr):
    """The exact τ if the support is the ``cnt`` scores with sums s1 = Σz, s2 = Σz² (α = 2:
    Σ (z − τ) = 1; α = 1.5: Σ (z − τ)² = 1, its smaller root), as the sort-based reference
    computes it. Scores shifted by x give τ − x."""
    k = tl.maximum(cnt, 1.0)
    if KIND == 2:
        return (s1 - 1.0) / k
    else:
        mean = s1 / k
        ss = tl.maximum(s2 - k * mean * mean, 0.0)
        return mean - tl.sqrt(tl.maximum((1.0 - ss) / k, 0.0))


@triton.jit
def _exact_from_below(comp_s, base, total, z_reg, lin, floor, zmax, ITERS: tl.constexpr, KIND: tl.constexpr,
                      BLOCK: tl.constexpr, IN_REGS: tl.constexpr):
    """(τ, found) for α = 2 or 1.5 without bisection. From x = floor <= τ (the top token's
    weight is at most 1), the support S = {z > x} is a superset of the true one; the exact
    formula over S gives τ_S, and τ_S = τ exactly when every z in S is above τ_S (if S held a
    token with z <= τ, the formula — which counts its (z − τ)² or (z − τ) as if it had weight —
    would land at or above that z). Otherwise x moves up by a Newton step of
    f(x) = Σ [z − x]_+^(1/(α−1)) − 1 (convex, decreasing: the step stays <= τ; for α = 2 it is
    Michelot's τ_S itself) and S shrinks. The acceptance relies on x <= τ throughout (then the
    tokens outside S carry no weight at τ); a start or a step above τ could accept a wrong τ_S.
    At most ITERS rounds (near-ties can stall it:
    ``found`` is then False and the caller bisects)."""
    x = floor
    tau = floor
    found = tl.full((), 0, tl.int32)
    it = tl.full((), 0, tl.int32)
    while (it < ITERS) & (found == 0):
        cnt, s1, s2, zmin = _shifted_sums(comp_s, base, total, z_reg, lin, x, BLOCK, IN_REGS)
        tau = x + _support_tau(cnt, s1, s2, KIND)
        if KIND == 2:
            step = tau
        else:
            step = x + (s2 - 1.0) / tl.maximum(2.0 * s1, 1e-300)
        found = (zmin > tau).to(tl.int32)
        x = tl.minimum(tl.maximum(step, x), zmax)
        it += 1
    return tau, found


@triton.jit
def _solve_tau(comp_s, base, total, z_reg, lin, inv_power, floor, zmax, given, refine_iters,
               TAU_MODE: tl.constexpr, BISECT_ITERS: tl.constexpr, EXACT_ITERS: tl.constexpr, KIND: tl.constexpr,
               BLOCK: tl.constexpr, IN_REGS: tl.constexpr):
    """τ over the survivors (TAU_EXACT): for α = 1.5 and 2 the exact support found from below
    (``_exact_from_below``), else — or when that stalls — bisection then the exact support
    formula; the given τ (TAU_GIVEN), or safeguarded Newton from it (TAU_REFINED, see
    ``entmaxkv.refine``)."""
    if TAU_MODE == 0:
        found = tl.full((), 0, tl.int32)
        tau = floor
        # α = 1.5, 2: the exact support from below in a few rounds (no loop at all for 0 rounds:
        # Triton 3.6 fails to compile the while loop with a bound of 0 for sm_90)
        if (KIND != 3) and (EXACT_ITERS > 0):
            tau, found = _exact_from_below(comp_s, base, total, z_reg, lin, floor, zmax, EXACT_ITERS, KIND,
                                           BLOCK, IN_REGS)
        if found == 0:  # any α, or a stalled search: bisection
            lo = floor
            hi = zmax - tl.exp2(-lin * tl.log2(total.to(tl.float64)))  # f(hi) <= 0: each weight <= 1/total
            for _ in range(BISECT_ITERS):
                mid = (lo + hi) / 2
                f_mid, _unused = _excess(comp_s, base, total, z_reg, lin, mid, inv_power, KIND, BLOCK, IN_REGS)
                lo = tl.where(f_mid >= 0, mid, lo)
                hi = tl.where(f_mid >= 0, hi, mid)
            tau = (lo + hi) / 2
            if KIND != 3:
                # exact τ from the support found by bisection (as the sort-based reference),
                # from sums shifted by the bisection's τ (the search's helper)
                cnt, s1, s2, _zmin = _shifted_sums(comp_s, base, total, z_reg, lin, tau, BLOCK, IN_REGS)
                tau = tau + _support_tau(cnt, s1, s2, KIND)
    else:
        tau = given
        if TAU_MODE == 2:
            # safeguarded Newton from a point <= the root (see gaussian.refine_tau)
            f_given, _unused = _excess(comp_s, base, total, z_reg, lin, given, inv_power, KIND, BLOCK, IN_REGS)
            x = tl.where(f_given >= 0, tl.maximum(given, zmax - 1.0), zmax - 1.0)
            for _ in range(refine_iters):
                fx, dfx = _excess(comp_s, base, total, z_reg, lin, x, inv_power, KIND, BLOCK, IN_REGS)
                step = fx / tl.maximum(-dfx, 1e-300)
                x = tl.minimum(tl.maximum(x + step, x), zmax)
            fx, _unused = _excess(comp_s, base, total, z_reg, lin, x, inv_power, KIND, BLOCK, IN_REGS)
            tau = tl.where(tl.abs(fx) <= tl.abs(f_given), x, given)
    return tau


@triton.jit
def _solve_in_registers(comp_s, base, total, lin, inv_power, floor, zmax, given, refine_iters,
                        TAU_MODE: tl.constexpr, BISECT_ITERS: tl.constexpr, EXACT_ITERS: tl.constexpr,
                        KIND: tl.constexpr, BLOCK: tl.constexpr, REGS: tl.constexpr):
    """``_solve_tau`` on the ``total`` <= REGS compacted survivors held in a register block of
    REGS lanes (z = lin·s in float64, −inf past the survivors)."""
    rr = tl.arange(0, REGS)
    z_reg = tl.load(comp_s + base + rr, mask=rr < total, other=float("-inf")).to(tl.float64) * lin
    return _solve_tau(comp_s, base, total, z_reg, lin, inv_power, floor, zmax, given, refine_iters,
                      TAU_MODE, BISECT_ITERS, EXACT_ITERS, KIND, BLOCK, True)


@triton.jit
def _tau_kernel(
    v_pages, page_table, tau_in, cand_s, cand_i, cand_n, part_m, part_l, part_acc,
    comp_s, comp_i, out, tau_out, fits,
    alpha, H, G, P, D, CAP, refine_iters,
    S: tl.constexpr, NSPLIT: tl.constexpr, BLOCK_SPLIT: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK: tl.constexpr, GATHER: tl.constexpr, BLOCK_REGS: tl.constexpr, SMALL_REGS: tl.constexpr,
    V_ROWS: tl.constexpr, TAU_MODE: tl.constexpr,
    BISECT_ITERS: tl.constexpr, EXACT_ITERS: tl.constexpr, KIND: tl.constexpr, WORK: tl.constexpr,
    PAGED: tl.constexpr, HAS_FITS: tl.constexpr, WITH_OUTPUT: tl.constexpr = True, PDL: tl.constexpr = False,
    SUPPORT_FIRST: tl.constexpr = False, SUPPORT_BLOCK: tl.constexpr = 128,
):
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)  # b·Hq + hq
    hq_total = H * G
    b = row // hq_total
    bh = row // G  # (b, kv head)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    splits = tl.arange(0, BLOCK_SPLIT)
    smask = splits < NSPLIT + 1
    nan_out = tl.full((), 0, tl.int1)  # a row whose token did not fit reports NaN
    if HAS_FITS:
        nan_out = tl.load(fits + b) == 0
    m_split = tl.load(part_m + row * (NSPLIT + 1) + splits, mask=smask, other=float("-inf")).to(tl.float64)
    m_all = tl.max(m_split)

    if KIND == 0:
        l_split = tl.load(part_l + row * (NSPLIT + 1) + splits, mask=smask, other=0.0).to(tl.float64)
        w = tl.where(m_split == float("-inf"), 0.0, tl.exp(m_split - m_all))
        total_l = tl.sum(l_split * w)
        if WITH_OUTPUT:
            # every split's partial sum in one [splits, D] load (a loop of NSPLIT + 1 dependent
            # loads cost ~13 µs at B = 1 on the H200: 33 splits)
            part = tl.load(part_acc + (row * (NSPLIT + 1) + splits[:, None]) * D + d[None, :],
                           mask=smask[:, None] & dmask[None, :], other=0.0).to(tl.float64)
            acc = tl.sum(part * w[:, None], axis=0)
            value = tl.where(nan_out, float("nan"), acc / total_l)
            tl.store(out + row * D + d, value.to(WORK).to(out.dtype.element_ty), mask=dmask)
        tl.store(tau_out + row, m_all + tl.log(total_l))
    else:
        lin = tl.cast(alpha, tl.float64) - 1.0
        inv_power = 1.0 / lin
        zmax = lin * m_all
        floor = zmax - 1.0
        given = floor
        if TAU_MODE != 0:
            # a given τ keeps the top token in the support (as the reference does)
            given = tl.minimum(tl.load(tau_in + row).to(tl.float64), zmax - 1e-9 * (1.0 + tl.abs(zmax)))
            floor = tl.minimum(floor, given)

        # gather the survivors of every split that can still have weight, GATHER slots of
        # every split a load (a loop over the splits, one dependent load each, cost 12–16 µs
        # of a TopK step at α = 1.5 on the H200 whenever a split held more than one load)
        base = row * (NSPLIT + 1) * CAP
        n_split = tl.load(cand_n + row * (NSPLIT + 1) + splits, mask=smask, other=0)
        # a split that scored a NaN (count −1) makes the row NaN: NaN in, NaN out, as dense
        # entmax gives (the flag, not arithmetic: maximum() drops NaN on the GPU)
        scored_nan = tl.min(n_split) < 0
        nan_out = nan_out | scored_nan
        n_split = tl.maximum(n_split, 0)
        total = 0
        for off in range(0, tl.max(n_split), GATHER):
            slot = off + tl.arange(0, GATHER)
            src2 = base + splits[:, None] * CAP + slot[None, :]
            ok2 = slot[None, :] < n_split[:, None]
            s2 = tl.load(cand_s + src2, mask=ok2, other=float("-inf"))
            pos2 = tl.load(cand_i + src2, mask=ok2, other=0)
            keep2 = tl.reshape((ok2 & (s2.to(tl.float64) * lin > floor)).to(tl.int32), (BLOCK_SPLIT * GATHER,))
            kept2 = tl.sum(keep2)
            if kept2 > 0:  # most loads keep nothing: no scan, no stores
                at2 = base + total + tl.cumsum(keep2, axis=0) - keep2
                tl.store(comp_s + at2, tl.reshape(s2, (BLOCK_SPLIT * GATHER,)), mask=keep2 == 1)
                tl.store(comp_i + at2, tl.reshape(pos2, (BLOCK_SPLIT * GATHER,)), mask=keep2 == 1)
            total += kept2
        tl.debug_barrier()  # the compacted survivors are visible to every lane

        if total <= SMALL_REGS:  # the usual case: a few survivors, held in a small register block
            tau = _solve_in_registers(comp_s, base, total, lin, inv_power, floor, zmax, given, refine_iters,
                                      TAU_MODE, BISECT_ITERS, EXACT_ITERS, KIND, BLOCK, SMALL_REGS)
        elif total <= BLOCK_REGS:  # held in registers
            tau = _solve_in_registers(comp_s, base, total, lin, inv_power, floor, zmax, given, refine_iters,
                                      TAU_MODE, BISECT_ITERS, EXACT_ITERS, KIND, BLOCK, BLOCK_REGS)
        else:
            tau = _solve_tau(comp_s, base, total, lin, lin, inv_power, floor, zmax, given, refine_iters,
                             TAU_MODE, BISECT_ITERS, EXACT_ITERS, KIND, BLOCK, False)

        if WITH_OUTPUT:  # weights on the support, V read for those tokens only
            walk = total  # survivors the V loop reads: all, or the support moved to the front
            if SUPPORT_FIRST:
                if total > V_ROWS:
                    walk = _support_to_front(comp_s, comp_i, base, total, lin, tau, SUPPORT_BLOCK)
            acc = tl.zeros((BLOCK_D,), tl.float64)
            r = tl.arange(0, V_ROWS)
            norm = tl.zeros((V_ROWS,), tl.float64)
            for off in range(0, walk, V_ROWS):
                ok = off + r < walk
                z = tl.load(comp_s + base + off + r, mask=ok, other=float("-inf")).to(tl.float64) * lin
                live = ok & (z > tau)
                p = tl.where(live, rho(z - tau, inv_power, KIND), 0.0)
                pos = tl.load(comp_i + base + off + r, mask=live, other=0)
                if PAGED:
                    phys = tl.load(page_table + b * P + pos // S, mask=live, other=0)
                else:
                    phys = pos // S
                vrow = (bh * P + phys) * S + pos % S
                v = tl.load(v_pages + vrow[:, None] * D + d[None, :], mask=live[:, None] & dmask[None, :],
                            other=0.0)
                acc += tl.sum(p[:, None] * v.to(WORK).to(tl.float64), axis=0)  # bf16 -> fp64 via fp32
                norm += p
            value = tl.where(nan_out, float("nan"), acc / tl.sum(norm))
            tl.store(out + row * D + d, value.to(WORK).to(out.dtype.element_ty), mask=dmask)
        tl.store(tau_out + row, tl.where(scored_nan, float("nan"), tau))


@triton.jit
def _support_to_front(comp_s, comp_i, base, total, lin, tau, BLOCK: tl.constexpr):
    """Move a row's survivors whose weight is non-zero (lin·s > τ) to the front of its scratch
    (comp_s / comp_i from ``base``), in order, BLOCK survivors a load; returns how many. In
    place: a block's tokens go to slots below its own end (every lane has read the block
    before any writes), and later blocks are read from slots above it."""
    kept = 0
    for off in range(0, total, BLOCK):
        slot = off + tl.arange(0, BLOCK)
        ok = slot < total
        s = tl.load(comp_s + base + slot, mask=ok, other=float("-inf"))
        pos = tl.load(comp_i + base + slot, mask=ok, other=0)
        keep = (ok & (s.to(tl.float64) * lin > tau)).to(tl.int32)
        at = base + kept + tl.cumsum(keep, axis=0) - keep
        tl.debug_barrier()  # the block is read by every lane before any lane writes over it
        tl.store(comp_s + at, s, mask=keep == 1)
        tl.store(comp_i + at, pos, mask=keep == 1)
        kept += tl.sum(keep)
    tl.debug_barrier()  # the moved tokens are visible to every lane
    return kept


@triton_op("entmaxkv::sparse_decode", mutates_args=())
def sparse_decode(
    q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, page_table: torch.Tensor | None,
    pages: torch.Tensor, n_pages: torch.Tensor, seq_lens: torch.Tensor, alibi_slopes: torch.Tensor | None,
    tau_in: torch.Tensor | None, score_floor: torch.Tensor | None, fits: torch.Tensor | None, alpha: float,
    scale: float, dense: bool, tau_mode: int, refine_iters: int, with_output: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entmax attention of q over the listed pages plus the page holding the newest token.

    Args:
        q: [B, Hq, D] contiguous, in the cache dtype (Hq = Hkv·G).
        k_pages, v_pages: [B, Hkv, P, S, D] contiguous.
        page_table: [B, P] int32, logical page -> physical page, or None for the identity
            (today's cache: no lookup is made).
        pages: [B, Hkv, M] int32 logical full pages to attend (never the newest page; padding −1);
            n_pages: [B, Hkv] int32, entries used. Ignored when ``dense`` (every full page
            before the newest one is attended).
        seq_lens: [B] int64, lengths including the newest token (>= 1).
        alibi_slopes: optional [Hq]; tau_in: [B, Hq] float64 when tau_mode is TAU_GIVEN or
            TAU_REFINED (it is lowered to keep the top token: min(τ, z_max − 1e-9·(1 + |z_max|)));
        score_floor: optional [B, Hq] work dtype, a score that some attended token provably
            reaches (rounding included): only tokens that can be in the support are kept
            from the first page on (without it, from the running maximum).
        fits: optional [B] bool, whether the step's token fitted in the cache (the append's
            ``fits``): rows of a sequence where it did not get NaN outputs.
        alpha in [1, 2] (rounded to float32 inside the kernels: exact for 1, 1.25, 1.5, 2);
        scale: score scale; refine_iters: Newton steps for TAU_REFINED.
        with_output: False for τ alone — V is not read and ``out`` is [B, Hq, 0].
    Returns ``(out [B, Hq, D] in q's dtype, tau [B, Hq] float64)``; τ is the exact threshold
    over the attended tokens (TAU_EXACT), or the one used; for softmax the log-sum-exp.
    A NaN score among the attended tokens makes that head's output and τ NaN, for every α; a
    NaN in a page not attended cannot be seen, nor (α > 1) a NaN value of a token with zero
    weight (its V is never read; the dense reference's matmul gives NaN there: 0·NaN).
    """
    b, hq, d = q.shape
    _, hkv, p, s, _ = k_pages.shape
    if s & (s - 1):
        raise ValueError(f"sparse_decode: k_pages [B, Hkv, P, S, D] needs a page size S that is a power of two, got {s}")
    g = hq // hkv
    m = pages.shape[-1]
    kind = alpha_kind(alpha)
    work = work_dtype_of(k_pages.dtype)
    wtl = tl.float64 if work == torch.float64 else tl.float32
    capacity = p if dense else m
    entmax = kind != SOFTMAX
    nsplit = num_splits(b, hkv, capacity, p, s, q.device, entmax)
    wave = first_wave(q.device, b * hkv, capacity, p)
    _, warps, stages = scoring_shape(b * hkv, capacity, p)
    cap = max(triton.cdiv(capacity, nsplit), 1) * s  # survivors a split can hold
    rows = b * hq * (nsplit + 1)
    cand_s = torch.empty((rows * cap if entmax else 1,), dtype=work, device=q.device)
    cand_i = torch.empty((rows * cap if entmax else 1,), dtype=torch.int32, device=q.device)
    cand_n = torch.empty((rows,), dtype=torch.int32, device=q.device)
    part_m = torch.empty((rows,), dtype=work, device=q.device)
    part_l = torch.empty((rows,), dtype=work, device=q.device)
    part_acc = torch.empty((rows * d if not entmax else 1,), dtype=work, device=q.device)
    native = q.is_cuda and k_pages.dtype in (torch.float16, torch.bfloat16)
    given = tau_mode != TAU_EXACT
    paged = page_table is not None
    if page_table is None:
        page_table = seq_lens  # never read
    slopes = alibi_slopes if alibi_slopes is not None else part_m
    tau_src = tau_in if tau_in is not None else part_m
    floor_src = score_floor if score_floor is not None else part_m
    if work == torch.float64:  # kernels get float scalars as float32: scale q exactly here instead
        q, scale = q * scale, 1.0
    dot_rows = max(16, next_pow2(g))  # tl.dot takes at least 16
    # PDL for list launches of few rows and the rest apart (``pdl.PDL_MODULES``: the first on, the second off)
    pdl_module = "sparse_decode" if not dense and b * hkv < PDL_ROWS_BELOW else "sparse_decode_dense"
    run_max = run_max_init(b * hq if entmax else 1, work, bool(KEYED_MAX), q.device)
    wrap_triton(_scores_kernel)[(b * hkv, nsplit + 1)](
        q, k_pages, v_pages, page_table, pages, n_pages, seq_lens, slopes, tau_src, floor_src, run_max,
        cand_s, cand_i, cand_n, part_m, part_l, part_acc,
        scale, alpha - 1.0 if entmax else 1.0, hkv, g, p, m, cap, 0 if EXCHANGE_AT_START else wave,
        D=d, S=s, G_PAD=dot_rows, ROWS=min(dot_rows, max(2, next_pow2(g))) if entmax and FIRST_ROWS else dot_rows,
        BLOCK_D=max(16, next_pow2(d)),
        BLOCK_N=max(16, next_pow2(max(s, tokens_per_iter(entmax, capacity)))), NSPLIT=nsplit, DENSE=dense, PAGED=paged,
        HAS_ALIBI=alibi_slopes is not None, GIVEN_TAU=given and entmax, HAS_FLOOR=score_floor is not None,
        KIND=kind, WORK=wtl, NATIVE=native, WIDE=needs_wide_offsets(p, s, d), FINAL_EXCHANGE=bool(FINAL_EXCHANGE),
        SPARSE_EXCHANGE=bool(SPARSE_EXCHANGE), KEYED_MAX=bool(KEYED_MAX), SKIP_BY_ROW_MAX=bool(SKIP_BY_ROW_MAX),
        num_warps=warps, **({} if stages is None else {"num_stages": stages}),
        **pdl_kwargs(q, pdl_module)
    )
    out = torch.empty((b, hq, d if with_output else 0), dtype=q.dtype, device=q.device)
    tau = torch.empty((b, hq), dtype=torch.float64, device=q.device)
    comp_s = torch.empty_like(cand_s)
    comp_i = torch.empty_like(cand_i)
    wrap_triton(_tau_kernel)[(b * hq,)](
        v_pages, page_table, tau_src, cand_s, cand_i, cand_n, part_m, part_l, part_acc,
        comp_s, comp_i, out, tau, fits if fits is not None else seq_lens,
        alpha, hkv, g, p, d, cap, refine_iters,
        S=s, NSPLIT=nsplit, BLOCK_SPLIT=next_pow2(nsplit + 1), BLOCK_D=next_pow2(d), BLOCK=ROWS_PER_ITER,
        GATHER=GATHER, BLOCK_REGS=BLOCK_REGS, SMALL_REGS=max(SMALL_REGS, 1), V_ROWS=V_ROWS,
        TAU_MODE=tau_mode if entmax else 0, BISECT_ITERS=bisection_steps(work),
        EXACT_ITERS=EXACT_ITERS,
        KIND=kind, WORK=wtl, PAGED=paged, HAS_FITS=fits is not None, WITH_OUTPUT=with_output,
        SUPPORT_FIRST=bool(V_SUPPORT_FIRST), SUPPORT_BLOCK=SUPPORT_BLOCK, num_warps=TAU_WARPS,
        **pdl_kwargs(q, pdl_module)
    )
    return out, tau


@sparse_decode.register_fake
def _(q, k_pages, v_pages, page_table, pages, n_pages, seq_lens, alibi_slopes, tau_in, score_floor, fits, alpha,
      scale, dense, tau_mode, refine_iters, with_output=True):
    out = torch.empty_like(q) if with_output else q.new_empty((*q.shape[:2], 0))
    return out, q.new_empty(q.shape[:2], dtype=torch.float64)


register_batch_rule(sparse_decode, (0, 1, 2, 3, 4, 5, 6, 8, 9, 10))  # vmap folds into the batch dimension
