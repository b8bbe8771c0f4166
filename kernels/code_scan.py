"""``entmaxkv::code_bounds`` and ``entmaxkv::code_candidates``: the scans over the key codes
behind certified-exact ``Exact`` (``entmaxkv.exact_codes``), without a token-score tensor.

Every token i of a coded page p (a full page other than the newest) has the score interval
of ``entmaxkv.keycodes``, computed here from the same tensors with the same formulas:

    step_pd = (kmax_pd − kmin_pd)·fl(1/(2^bits − 1))           (one rounded product, as torch)
    ŝ_i     = scale · (q·kmin_p + Σ_d (q_d·step_pd)·code_id)  (+ slope·(i − newest position))
    ε_p     = scale · Σ_d |q_d|·(step_pd/2 + r·M_pd)          (+ 8·eps·|slope|·span)

with r = 8·eps + 6·γ and γ = 2(D+2)·eps of the work dtype. Only the order of the D-term sums
differs from the torch reference, so ŝ and ε agree with it within the rounding of a D-term
dot product, and the certificate's argument holds unchanged: r·M covers the rounding of ŝ
computed in any order (the reference's and this one's), so |s̃_i − ŝ_i| <= ε_p here too.

Tensor cores (``USE_DOT``, ``uses_dot``: float32 work whose dots' K terms are exactly the D
channels, K >= 16, no zero padding — the accumulation bound below counts D terms — and GQA
groups of G >= 2, or MHA (G = 1, the head tile padded to two) with 4 bits; float64 work,
other head dims and MHA with 8 bits keep the CUDA-core code, which ``USE_DOT = False``
selects for every dtype). Per page p and head g the
code part Σ_d A_gd·code_d, A = fl(q·step) as above, is a product [S, D] x [D, G] whose codes
are exact in float16; A is not. So per (page, head) A is scaled by 2^k, k from the exponent
of max_d |A_gd| so that max_d |A_gd|·2^k lies in [2^14, 2^15) (k clamped to [−126, 126],
2^±k normal floats; the clamp only makes the max smaller), and x = A·2^k is split into
x_hi = fp16(x) and x_lo = fp16(x − x_hi) (x − x_hi is exact in float32). Two float32-
accumulated dots with the codes, and ŝ = scale·(q·kmin + (dot_hi + dot_lo)·2^−k). For 4 bits
(``HI_ONLY``, ``splits_a``) x_hi alone: one dot, ŝ = scale·(q·kmin + dot_hi·2^−k). Two new
errors, with u = 2^−24 and L = 2^bits − 1 the largest code:

1. The split's residual, bounded and added to ε. Per element |x − h − l| <= 2^−22·|x| + 2^−13,
   h and l the float16 values the tensor core uses (the rounded ones, or 0 for a subnormal if
   the hardware flushes them): |x| < 2^15 never overflows float16; if |x| >= 2^−14, h is
   normal, |x − h| <= 2^−11·|x|, and l is within 2^−11·|x − h| of x − h (normal l) or
   2^−14 (subnormal or flushed); if |x| < 2^−14, h + l is within 2^−14 + 2^−25 of x either
   way (and x underflowing float32 costs 2^−150 more). Times the codes, unscaled:
   Σ_d |A_gd − (h_d + l_d)·2^−k|·code_d <= L·(2^−22·Σ_d |A_gd| + D·2^−13·2^−k). ε adds
   scale·(2^bits·2^−22·Σ_d |q_d|·step_pd + D·2^bits·2^−13·2^−k) (``dot_margins``): the factor
   2^bits/L >= 16/15 also covers |A| = |q|·step's rounding, the term's own float32 rounding,
   dot_hi's error on the absolute parts of |h| (below) and an underflowing 2^−k unscaling
   (<= 2^−150). The split's term is ~8·10^−6 of ε's step/2 part for 4 bits (2^−18 of
   Σ_d |q_d|·step_pd) and ~1.2·10^−4 of ε for 8 bits (measured: ε_dot / ε_cores 1.00012–1.00015).
   Hi alone: per element |x − h| <= 2^−11·|x| + 2^−14 (h normal for |x| >= 2^−14; below,
   h is within 2^−25 of x, or 0 if flushed), so ε adds scale·(2^bits·2^−11·Σ_d |q_d|·step_pd +
   D·2^bits·2^−14·2^−k) (``dot_margins(bits, split=False)``), the same argument with its 16/15:
   ~1.56% of ε for 4 bits (measured ε_dot / ε_cores 1.01556 on the H200), which buys one dot
   pair a page instead of two; for 8 bits it would be 25%, so 8 bits keep the split.
   Mutations ``tests/test_code_dot.py`` catches: fp16 A without lo in the split form, either
   form's relative term dropped or made too small or too large (the midpoint test, each form),
   the kernel adding a term other than ``dot_margins``' (the dyadic test's equality), the two
   scans launched with different forms (``test_both_scans_take_the_same_path``). The absolute
   term only matters where float16 subnormals are flushed, which the interpreter does not do:
   nothing on the CPU fails if it is dropped.
2. The tensor cores' float32 accumulation, covered by the existing r·M. Assumed of the
   hardware (not a published specification of Hopper): products of float16 inputs are exact
   (11 × 4 or 8 significant bits fit float32), and a K-term product sum into a float32
   accumulator is within K·2^−22·Σ_k |a_k·b_k| of the exact sum: each addition off by at most
   two float32 ulps of the running sum of magnitudes. That holds for round-to-nearest or
   truncation in any order, and for blocks of n >= 2 products aligned to the block's largest
   exponent with the low bits truncated ((n + 2) ulps a block, as Fasi, Higham, Mikaitis and
   Pranesh 2021 measured on V100, T4 and A100). The ``gpu`` test of ``tests/test_code_dot.py``
   checks the interval on the H200's tensor cores on adversarial inputs. Then, with
   Σ_d |A_gd|·code_d <= L·(1 + u)·Σ_d |q_d|·step_pd <= 2(1 + 5u)·Σ_d |q_d|·M_pd
   (L·step <= (1 + u)^3·(kmax − kmin) <= 2(1 + u)^3·M: the span's subtraction, fl(1/L) and the
   product each round once), ŝ's error besides (1), in units of u·Σ_d |q_d|·M_pd:
   (D + 1) q·kmin (IEEE) + 2 A's product + 8D·(1 + 2^−10) dot_hi + 8D·2^−11 dot_lo + 2 the
   hi + lo add (both absent for hi alone) + 3 adding q·kmin + 3 the scale, i.e. <= 9.02·D +
   11 — and the CUDA-core
   path's margin for ŝ's rounding is 3γ = 12(D + 2)·u (r = 8·eps + 6γ: 4·eps for the code's
   rounding, γ for the reference's, 3γ for ŝ). 9.02·D + 11 <= 12·D + 24 for every D, so r
   is unchanged and |s̃_i − ŝ_i| <= ε_p holds on this path too.

Why A is split and not the codes' side (B = code·step in float16, one [G, D] x [D, BLOCK_P·S]
dot over all the program's pages with q shared): B rounds each of S·D elements a page (4×
the G·D of A at G = 4), q is not exact in float16 either (hi + lo on both sides: 3–4
dots), and B needs float16's range per element. With A split the codes stay exact and the
proof is the two items above; the dots are batched over the BLOCK_P pages, [BLOCK_P, S, K]
x [BLOCK_P, K, GP] ``tl.dot`` (M = 16 tokens, N = G padded by the compiler: min_dot_size is
(1, 1, 16) for 16-bit inputs). 4 bits: K = D/2, one dot for the low nibbles (even channels)
and one for the high ones (odd channels), chained in one accumulator (the same D-term sum,
in another order); 8 bits: K = D. hi and lo: 2·D/16 mma a page; hi alone (4 bits): D/16.
Layout (what made this path faster than the CUDA-core one, session 21): q is read as a
[G, BLOCK_P, D] tile (every page the same rows, heads outermost) and viewed as [BLOCK_P, G,
D], so that a thread holds every head of its pages' channels; the statistics of all D
channels are read at once, contiguously, in the matching [BLOCK_P, D] layout, so that the
per-channel work (step's product, the radius) runs once a channel and not once per
head thread, and A, q·kmin and ε's sum are formed there; hi and lo are split into even and
odd channels afterwards (a reshape). On CUDA the code bytes become float16 by inline PTX
(``_nibbles_half``: ten instructions for eight codes) and the statistics pass an opaque move
(``_pinned``) before their broadcast over the heads. Static SASS a page (sm_90a, 4 bits,
D = 128, G = 4, 2 pages / 1 warp): 1288 before, 712 after, against the CUDA-core path's 1004;
628 with hi alone (86 registers, from 155; session 22).

1. ``code_bounds``: one pass over the codes of every coded page, for all G query heads of
   a KV group per program (a page's codes and statistics are read once per group). Writes
   per (head, page) the best ŝ and ε: page_max ± ε is the best token's lower / upper bound
   (max_i (ŝ_i ± ε) = max_i ŝ_i ± ε: rounding is monotone). The token scores are written
   only when asked (``with_scores``, for tests and diagnostics). On request: the newest
   page's best score and |score| scale (``page_bounds``' ``_newest_page``: in the seed's
   chunk launch, its first program a row, or in a launch of one program per row without the
   seed; with ``NEWEST_IN_SCAN`` one more program per row of this launch instead, the row's
   first, unless the seed's τ needs the newest page's scores), the τ seed — per head, the best
   page by page_max − ε
   in each residue class mod K — from two more launches that read page_max and ε back:
   (row, chunk) programs each reduce SEED_CHUNK pages to their best per (head, class),
   packed so that the max of the chunks' results is the row's (larger bound first, then the
   lower page), into a scratch; then one program per row takes that max and lists the
   pages once each, with their |score| scale from kmin/kmax (no atomics: the same seed,
   bit for bit, whatever order the programs ran in and however the row is chunked).
2. ``code_candidates``: given τ_low per head (or the seed's τ from ``code_bounds``, which it
   lowers to the safe bound of ``KernelOps._safe_tau`` itself), a second pass that first checks each page's
   best upper bound against τ_low and rescans the codes of only the pages that can hold a
   candidate — tokens with lin·(ŝ + ε) > τ_low for some head of the group, compared in
   float64 like the reference (ŝ and ε by pass 1's path and formulas, ``USE_DOT``). It
   appends them to a fixed-capacity list per (sequence, KV head) through an atomic counter (list order across programs is unspecified; the count
   is exact, and nothing is written past the capacity: the caller flags count > capacity),
   marks the pages holding a candidate and appends them to a page list (another counter).
   The row's last program to finish writes the row's counts and the lists' −1 padding, and
   when the count exceeds the capacity it lists and marks every coded page instead
   (``Exact``'s fallback): the attention needs no page selection. Other rows' lists and
   lengths are what the atomic appends wrote: they depend on no ordering between programs.
   One fill a call (the [3, B·Hkv] counters: candidates, pages, programs finished).

Pass 1: grid (B·Hkv, ceil(P / BLOCK_P)). A program loads BLOCK_P pages' codes once as a
[BLOCK_P, S, bytes] tile, unpacked in registers to [BLOCK_P, S, D] (4 bits: the two nibbles
of byte j become channels 2j and 2j+1 side by side in the same thread, so q and the
statistics are read as contiguous rows), plus their kmin/kmax; the CUDA-core path loops over
the G query heads of the KV group with broadcast-multiply and ``tl.sum`` reductions, the
tensor-core path takes the G heads at once (4 bits: the low and high nibbles as two float16
tiles [BLOCK_P, S, D/2], not interleaved; batched dots): per head and page one max over S
tokens and one ε are written (no token scores).
A block with no coded page costs one store per head. With ``NEWEST_IN_SCAN`` and the newest
page the grid has one more program per row, program 0. The seed: grid (B·Hkv, ceil(P /
SEED_CHUNK) + 1) (the + 1, program 0 of a row, reads the newest page's S·D keys, unless
``NEWEST_IN_SCAN``), then (B·Hkv,) (the merge, the list and the seed's τ); it reads page_max and ε ([B, Hkv, G, P] twice) and writes and reads back
a [B·Hkv, chunks, G, K] int64 scratch. On the H200 at 128K (``benchmarks/keycodes_gpu.py``,
2026-11-29, the newest page in the scan's launch): bare 127.5 µs, with the newest page 148.7,
with the seed 137.1, both (the step's call) 157.9 — it was 180 with the seed from one program
per row and the newest page's program last. The newest page cost ~21 µs inside the scan's
launch, although its program ran first and its specialisation had the bare scan's registers
(168) and shared memory: not explained; out of the scan it costs ~4 µs (perf-log row 47).
Pass 2: grid (B·Hkv, ceil(P / SPAN)).
A program first reads only the pass-1 bounds of its SPAN pages (2·G floats a page) and is
done if none reaches τ_low; otherwise it rescans the codes of the reaching pages only, in
tiles of BLOCK_P of them (a loop over the reaching pages, not over the span). Bytes per step:
codes + kmin/kmax of every coded page once (pass 1), then only candidate pages' again (pass 2),
plus [B, Hkv, G, P] floats three times.
Work: CUDA-core path, G·D multiply-adds per token in float32; codes become floats by an
integer or and one subtraction (exact), not an int-to-float conversion — in place in int32
words of the codes (``WORD_CODES``: a mask and the or in one LOP3, no shift for most codes). Tensor-core path
(the default for float32 work): G·D products a page for A (and for q·kmin and ε, as before),
codes to float16 by the same or-and-subtract (float16, packed two a register), 2·D/16 mma a
page (D/16 with hi alone).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import (alpha_kind, candidate_count, code_step, next_pow2, register_batch_rule, rho,
                                     work_dtype_of)
from entmaxkv.kernels.page_scores import _newest_page, newest_slack, rounding_gamma
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs
from entmaxkv.kernels.quest_select import _float64_of, float64_words
from entmaxkv.kernels.sparse_decode import _add3_min, _support_tau, bisection_gap
from entmaxkv.kernels.threshold_search import _ordered

__all__ = ["code_bounds", "code_candidates", "code_radius_factor", "dot_margins", "scoring_form", "splits_a",
           "uses_dot"]

# Launch configurations. code_bounds, CUDA-core path, tuned on the H200 at 128K, 4 bits, 32/8
# heads (`python benchmarks/tune_kernels.py --context 131072 --codes-only --bits 4`, 2026-11-29):
# 2 pages / 2 warps 128 µs, 4 / 4 131, 4 / 2 132, 8 / 8 139, 4 / 8 267, 1 / 8 620;
# code_candidates 19–32 µs in every configuration on needle data (16 candidates a head).
# The tensor-core path (``USE_DOT``), measured on the H200 at 128K (keycodes_gpu.py, needle
# data, 4 bits, 2026-11-29, session 7) at 4 pages / 2 warps: code_bounds bare 151.4 µs against
# the CUDA-core path's 128.0 at 2 / 2, the step 248.2 against 234.7 µs (the same certified
# outputs). Its launch was chosen from ptxas (sm_90a, D = 128, 4 bits, G = 4, the bare scan,
# compiled with the launcher's 16-byte alignment of pointers and of W and D): registers and
# SASS instructions a page (one warp's straight-line code × warps / pages; a static count, slow
# paths included): 2 / 2 80 / 1584, 4 / 4 80 / 1712, 8 / 8 86 / 1960, 4 / 2 137 / 1348, 8 / 4
# 128 / 1476; the CUDA-core path at its 2 / 2: 164 / 1416 (byte codes; words: 1328, WORD_CODES).
# The dots did not cut the instruction count then (the codes' unpacking to float16 and the
# operands' moves through shared memory took what the FMAs gave back; 16 HMMA a page): the
# CUDA-core path stayed the default until session 21's layout (the module docstring; 712 SASS a
# page at 2 / 1). `tune_kernels.py` sweeps these two constants for whichever path USE_DOT picks.
# Session 8 (keycodes_gpu.py, needle data, 128K, 4 bits, the newest page out of the scan,
# 2026-11-29): 2 pages / 1 warp 112.7 µs as the step calls it (bare 101.9) against 136.4 (125.4)
# at 2 / 2; the step 188.9 against 211.8 µs.
# Session 21 (keycodes_gpu.py --paths dot,cores, needle data, 4 bits, 2026-12-01), the tensor-core
# path's new layout against the CUDA-core path, both at 2 pages / 1 warp: code_bounds bare at
# 128K, B = 1: 78.3 µs against 102.1 (4 / 1: 97.8, 4 / 2: 81.0, 8 / 2: 100.1); B = 16 at 64K:
# 614.4 against 853.0; the step 138.5 against 164.9 µs (B = 1, 128K) and 711.5 against 960.5
# (B = 16, 64K), the same certified outputs. Call 4, the parts' A/B at 2 / 1 (128K, B = 1, bare):
# pinned statistics 82.2 µs, without the pins 94.4 (the same SASS count), the nibbles as plain
# Triton code 94.6 (852 SASS a page), the 12- or 10-instruction PTX the same time.
BLOCK_P = 2  # pages per code_bounds program
NUM_WARPS = 1
# code_candidates: a program checks the pass-1 bounds of CANDIDATE_SPAN pages at once (at long
# contexts most spans hold no candidate: one load per head and the program is done) and
# rescans the codes of reaching pages in tiles of CANDIDATE_BLOCK_P pages. Registers as above:
# 1 page / 4 warps: 112; 2 / 4: 226 (fewer programs fit an SM for the skip path). Since the
# loop runs over the reaching pages only (session 12), a longer span pays off; on the H200
# (keycodes_gpu.py --contexts 65536,131072 --paths cores, needle data, 4 bits, `--variants
# "base;CANDIDATE_SPAN=32;CANDIDATE_SPAN=128"`, 2026-11-30) code_candidates alone at 128K: 32
# pages 17.5 µs, 64 15.2, 128 21.0 (64K: 15.5, 15.2, 19.5); before the one-fill change (call 3):
# 16 23.4, 64 19.4, 128 23.0, 256 24.3; the loop over all the span's tiles at 16: 27.6 (session 11).
CANDIDATE_SPAN = 64
CANDIDATE_BLOCK_P = 1
CANDIDATE_WARPS = 2
# The tensor-core path of code_bounds and code_candidates (float32 work with dots of K >= 16,
# ``uses_dot``; the module docstring has its error bound), the default since session 21 (faster
# on the H200, above). False: the CUDA-core path for every dtype (float64 work always takes it;
# benchmarks/keycodes_gpu.py times both).
USE_DOT = True
# On CUDA, the tensor-core path's inline-PTX forms (``_nibbles_half``, ``_pinned``); False: the
# same values by plain Triton code (slower, session 21 call 4).
NATIVE_CODES = True
# the τ seed, two launches after the scan: grid (B·Hkv, chunks) where a program reduces
# SEED_CHUNK pages' page_max and ε to its per-(head, class) best, then one program per row that
# takes the max over its chunks and lists the seed. At 128K (8196 pages a row) 256 pages make
# 33 chunks a row; the single program per row it replaces walked all 8196 pages alone (8
# programs on a 132-SM GPU). Measured on the H200 (keycodes_gpu.py --seed-chunk, needle data,
# 128K, 4 bits, 2026-11-29): the seed adds 9.6 µs to the bare scan at 256 pages a chunk, 14.0
# at 512, 17.1 at 1,024 (the single program per row: ~35); the step 258 -> 233 µs. No atomics: an atomic max per page and a finished-program counter
# cost 166 µs of code_bounds' 296 at 128K on the H200, and a counter needs a zero fill. Both
# launches read [G, ROUNDS, K] tiles of about SEED_TILE values (ROUNDS class rows of a chunk,
# or ROUNDS chunks' entries).
SEED_CHUNK = 256
SEED_TILE = 4096
SEED_WARPS = 4
# The seed's τ (``_seed_tau``): for α = 1.5 and 2, at most SEED_TAU_ROUNDS rounds of the exact
# support searched from below (``sparse_decode``'s search: each round one reduction; the loop
# ends when every head of the row has settled); for other α,
# SEED_TAU_STEPS bisection steps over [z_max − 1, z_max] keeping the lower end. Either stops at
# a valid lower bound of that τ (bisection: within 2^−30 of it after 30 steps). Rounds needed,
# simulated on 24 values (8 slots and 16 newest) drawn 20,000 times each from normal, uniform
# and wide uniform distributions (``sum(... >= ...)`` acceptance): after 4 rounds 0.1-16% of
# the heads were not settled (τ up to 7e-3 low), after 6 none; 8 leaves room.
SEED_TAU_ROUNDS = 8
SEED_TAU_STEPS = 30
# Where the newest page's best score and |score| scale are computed (``k_pages`` given). False,
# the default: out of the scan's launch — in the seed's chunk launch, its first program a row,
# when the seed is asked for (the merge after it reads the page's scores for the seed's τ), else
# in a launch of its own, grid (B·Hkv,).
# True: one more program per row in the scan's launch (program 0 of the row), the form measured
# at ~21 µs of the 157.9 µs step call at 128K on the H200 (2026-11-29), for no known reason.
# Both run the same ``_newest_page``; `python benchmarks/keycodes_gpu.py --contexts 131072 --paths
# cores --variants "base;NEWEST_IN_SCAN=True"` times the two in one run. Timed on the H200
# (session 8, perf-log row 47): code_bounds as the step calls it 158.4 -> 136.4 µs, the newest
# page's part 21 -> 4 µs; the Exact-with-codes step 234.2 -> 211.8 µs.
NEWEST_IN_SCAN = False
# The CUDA-core scans (float32 work) read the code bytes as int32 words and take each code out
# of its word in place (one LOP3 and one FADD a code, ``_word_tile``) instead of byte by byte
# (a byte extract, a mask and a shift, the or, the FADD). The same codes: the same ŝ and ε, bit
# for bit. False: the byte form. Static SASS instructions a page of code_bounds as the step
# calls it (sm_90a, D = 128, G = 4, fp16, `python benchmarks/code_scan_registers.py --kernel
# _code_bounds_kernel --sass --launch 2,2`, 2026-11-29; registers in brackets, no spills):
#   4 bits, 2 pages / 2 warps: bytes 1416 (164), words 1328 (164) — LOP3/SHF/PRMT/SGXT 270 -> 166
#   4 bits, 2 / 1: bytes 1096 (252), words 1004 (254); 1 / 1: bytes 1320 (124), words 1232 (125)
#   8 bits, 2 / 2: bytes 1408 (128, 4 bytes spilled), words 1392 (128); 2 / 1: bytes 1060 (217),
#   words 1040 (255)
# Of the 1328 at 2 / 2: FFMA 308 (256 the dot products), FADD/FMUL/FMNMX 222 (64 the codes'
# subtraction), LOP3/SHF 166 (64 the codes' or), IMAD/IADD3/LEA 140, LDS/STS 104 and BAR 63
# (the per-head move of q·step into the code tile's layout and the cross-warp max), SHFL 64.
# One warp a program (NUM_WARPS = 1) holds two tokens of a page a thread and drops the
# barriers: fewest instructions, though 254 registers (8 warps an SM). On the H200 (session 8,
# perf-log rows 47-48): the words -2 µs; one warp 136.4 -> 112.7 µs as the step calls it.
WORD_CODES = True
# code_bounds' CUDA-core head loop: True, unrolled (G copies of a head's ~190 instructions,
# straight-line code); False, one copy run G times — the same instructions executed (within the
# loop's few), a kernel about half the size: static SASS at 2 pages / 2 warps 1328 -> 768
# instructions (2 / 1: 2008 -> 1128; code_scan_registers.py --set UNROLL_HEADS=False). Each
# program runs its whole kernel once, so the size is what every program fetches (the guess was
# that instruction fetch binds the scan). The loop body
# is 191 instructions a page (2 / 1: 148): executed, ~1341 against 1328 (2 / 1: 1008 against
# 1004). Timed on the H200 (session 8, perf-log row 48): +1.6 µs at 2 / 1, +25 at 2 / 2 — the
# kernel's size is not what binds the scan; the unrolled form stays the default.
UNROLL_HEADS = True


def uses_dot(work: torch.dtype, head_dim: int, bits: int, group: int) -> bool:
    """Whether ``code_bounds`` and ``code_candidates`` score on tensor cores: ``USE_DOT`` for
    float32 work (float64 has no tensor-core path and keeps the exact CUDA-core code) when
    - the code bytes per token W = D·bits/8 are a power of two >= 16 (D = 32, 64, 128, 256 for
      4 bits; 16 .. 256 for 8 bits): the dots' K terms are exactly the D channels, with no
      zero-padded terms, which the accumulation bound of the module docstring (8·D·u) does not
      count; other head dims (20, 80, 96, ...) take the CUDA-core path;
    - the KV group has G >= 2 query heads, or G = 1 (MHA) with ``PAD_SINGLE_HEAD`` where A is
      not split (``splits_a``: 4 bits), its head tile padded to two (``_heads_padded``)."""
    width = head_dim * bits // 8
    return (bool(USE_DOT) and work == torch.float32 and head_dim * bits == 8 * width and width >= 16
            and width & (width - 1) == 0 and (group >= 2 or (bool(PAD_SINGLE_HEAD) and not splits_a(bits))))


# G = 1 on the tensor cores with the head tile padded to two (GP = 2, one head of zeros). At
# GP = 1 the path gave wrong scores on the H200 (ŝ off by 4–10 ε, Triton 3.6; right in the
# interpreter; session 21) while a lone N = 1 dot of the same shape is right there (session
# 22, ``benchmarks/small_n_dot_gpu.py``): the composition at a size-1 head dim, avoided by the
# padding (right on the H200: ``test_every_group_size_agrees_with_the_cuda_core_path``).
# Measured at 128K, B = 1, 32/32, 4 bits, needles (session 22): the step 298.2 µs on the CUDA
# cores, 338.8 padded with hi + lo, 252.1 padded with hi alone — so G = 1 takes the tensor
# cores only where A is not split (``uses_dot``). False: MHA on the CUDA cores always.
PAD_SINGLE_HEAD = True


def _heads_padded(use_dot: bool, group: int) -> int:
    """GP, the kernels' head tile: G to a power of two, and at least 2 on the tensor cores."""
    return max(next_pow2(group), 2) if use_dot else next_pow2(group)


# 4 bits: A·2^k as float16 hi alone, no lo part and no second pair of dots (``splits_a``). The
# residual term of ε grows from 2^−18 to 2^−7 of Σ_d |q_d|·step_pd, ε's step/2 part being
# 2^−1 of it: ε 1.56% wider (measured: ε_dot / ε_cores 1.01556). 8 bits keep hi + lo (2^−3
# would be 25%). Measured on the H200, needles, 32/8, α = 1.5 (session 22, the same run):
# the step at B = 1 64K / 128K 101.9 / 140.2 µs with hi + lo, 93.6 / 122.7 hi alone; at
# B = 16 718.4 / 1351.9 -> 577.0 / 1056.3; the same candidates, outputs bit for bit equal.
# False: hi + lo for every bit width.
HI_ONLY = True


def splits_a(bits: int) -> bool:
    """Whether the tensor-core path splits A·2^k into float16 hi + lo (else hi alone)."""
    return bits == 8 or not HI_ONLY


def dot_margins(bits: int, split: bool = True) -> tuple[float, float]:
    """(rel, abs) of the tensor-core path's extra ε, scale·(rel·Σ_d |q_d|·step_pd + D·abs·2^−k):
    split (hi + lo): 2^bits·2^−22 and 2^bits·2^−13, above (2^bits − 1) times the split's
    per-element residual 2^−22·|A| + 2^−13·2^−k (the module docstring); hi alone: 2^bits·2^−11
    and 2^bits·2^−14, above (2^bits − 1)·(2^−11·|A| + 2^−14·2^−k) (|x − fp16(x)| <= 2^−11·|x|
    for |x| >= 2^−14, <= 2^−14 below, flushed or not). Powers of two: exact as float32 arguments."""
    return (2.0 ** (bits - 22), 2.0 ** (bits - 13)) if split else (2.0 ** (bits - 11), 2.0 ** (bits - 14))


class ScoringForm(NamedTuple):
    """How both scans score a shape (``scoring_form``): the tensor cores or not, the head tile,
    A split or hi alone, and the ε term (rel, abs) of ``dot_margins`` that goes with it."""

    dot: bool
    heads: int
    split: bool
    rel: float
    abs: float


def scoring_form(work: torch.dtype, head_dim: int, bits: int, group: int) -> ScoringForm:
    """The one place ``code_bounds`` and ``code_candidates`` take their path from, so that pass
    2 rescans with pass 1's formulas and ε (from this module's constants at call time)."""
    dot, split = uses_dot(work, head_dim, bits, group), splits_a(bits)
    return ScoringForm(dot, _heads_padded(dot, group), split, *dot_margins(bits, split))


def code_radius_factor(dtype: torch.dtype, head_dim: int) -> float:
    """r of ``keycodes.code_radius`` for the work dtype: 8·eps + 6·γ, exactly (an integer
    times eps, so a float32 kernel argument carries it without rounding)."""
    eps = torch.finfo(dtype).eps
    return 8 * eps + 6 * (2.0 * (head_dim + 2) * eps)


def _alibi_eps(dtype: torch.dtype, num_pages: int, page_size: int) -> float:
    """8·eps·span of ``keycodes.code_scores`` (a power of two times an integer: exact)."""
    return 8 * torch.finfo(dtype).eps * float(num_pages * page_size)


@triton.jit
def _as_work(code, WORK: tl.constexpr):
    """int32 codes in [0, 255] -> the same integers in the work dtype, exactly."""
    if WORK == tl.float32:
        # 2^23 + c carries c in its low mantissa bits: or-ing the code into the bits of 2^23 and
        # subtracting 2^23 is exact, on the full-rate pipes (int -> float conversion is 1/8 rate)
        return (code | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
    else:
        return code.to(WORK)


@triton.jit
def _page_stats(k_min, k_max, page_row, d, live, r, D, BITS: tl.constexpr, WORK: tl.constexpr):
    """kmin, step and radius [BLOCK_P, BD] of the pages ``page_row`` (= bh·P + p) [BLOCK_P];
    0 on masked pages and channels past D."""
    mask = live[:, None] & (d < D)[None, :]
    stat = page_row[:, None] * D + d[None, :]
    kmin = tl.load(k_min + stat, mask=mask, other=0.0).to(WORK)
    kmax = tl.load(k_max + stat, mask=mask, other=0.0).to(WORK)
    step = code_step(kmin, kmax, BITS, WORK)  # the encoding's step
    return kmin, step, step / 2 + r * tl.maximum(tl.abs(kmin), tl.abs(kmax))


@triton.jit
def _field(w, f23, SHIFT: tl.constexpr, BITS: tl.constexpr):
    """The code in bits [SHIFT, SHIFT + BITS) of the int32 words ``w`` as float32, exactly, for
    SHIFT + BITS <= 23: or-ing the field, in place, into the bits of 2^(23 − SHIFT) gives
    2^(23 − SHIFT) + code (its mantissa's unit there is 2^−SHIFT), and the subtraction of
    2^(23 − SHIFT) is exact (Sterbenz). One LOP3 and one FADD a code: no shift to the low bits.
    ``f23``: the bits of 2^23 (0x4B000000) as a runtime int32 — a constant would be folded into
    the or's immediate, and the mask's and the or's two immediates cost two LOP3s; from a
    register they are one."""
    magic = f23 - (SHIFT << 23)  # the bits of 2^(23 − SHIFT)
    field = w & (((1 << BITS) - 1) << SHIFT)
    return (field | magic).to(tl.float32, bitcast=True) - magic.to(tl.float32, bitcast=True)


@triton.jit
def _word_tile(codes, row, live, W, f23, S: tl.constexpr, BW: tl.constexpr, BLOCK_P: tl.constexpr,
               BITS: tl.constexpr):
    """``_code_tile`` of float32 work from the code bytes read as int32 words (W % 4 == 0 and
    the codes 4-byte aligned: ``WORDS``): word m holds bytes 4m..4m+3, little-endian, i.e.
    channels 8m + k at bits 4k (4 bits) or 4m + k at bits 8k (8 bits). Fields wholly below bit
    23 are taken in place (``_field``); the rest after one shift of the word by 20 (4 bits) or
    16 (8 bits). The fields are joined so that channel d lands at d, as ``_code_tile``'s."""
    m = tl.arange(0, BW // 4)
    words = tl.load(codes.to(tl.pointer_type(tl.int32)) + row[:, :, None] * (W // 4) + m[None, None, :],
                    mask=live[:, None, None] & (m < W // 4)[None, None, :], other=0)
    return _word_fields(words, f23, S, BW // 4, BLOCK_P, BITS)


@triton.jit
def _word_fields(words, f23, S: tl.constexpr, NW: tl.constexpr, BLOCK_P: tl.constexpr, BITS: tl.constexpr):
    """The codes of the int32 words [BLOCK_P, S, NW] as float32 [BLOCK_P, S, 8·NW] (4 bits) or
    [BLOCK_P, S, 4·NW] (8 bits), the code of word m's field k at 8m + k (4m + k): ``_word_tile``'s
    unpacking of any run of whole words."""
    if BITS == 4:
        # channels 8m + 5, 6, 7 (bits 20, 24, 28) taken from the word shifted by 20, at bits 0, 4,
        # 8 (the sign bits are masked off; the field at bit 0 compiles to a bit-field extract, SHF
        # + SGXT, before the or. A shift by 12 would take each field in place, one instruction
        # less a word: session 9 measured it only with the token-group form, since removed)
        top = words >> 20
        c0, c1 = _field(words, f23, 0, 4), _field(words, f23, 4, 4)
        c2, c3 = _field(words, f23, 8, 4), _field(words, f23, 12, 4)
        c4, c5 = _field(words, f23, 16, 4), _field(top, f23, 0, 4)
        c6, c7 = _field(top, f23, 4, 4), _field(top, f23, 8, 4)
        # [..., i, j, l] = c_{4i + 2j + l}: row-major, channel 8m + k at 8m + k
        tile = tl.join(tl.join(tl.join(c0, c4), tl.join(c2, c6)), tl.join(tl.join(c1, c5), tl.join(c3, c7)))
        return tl.reshape(tile, (BLOCK_P, S, 8 * NW))
    else:
        top = words >> 16
        c0, c1 = _field(words, f23, 0, 8), _field(words, f23, 8, 8)
        c2, c3 = _field(top, f23, 0, 8), _field(top, f23, 8, 8)
        tile = tl.join(tl.join(c0, c2), tl.join(c1, c3))  # [..., i, j] = c_{2i + j}
        return tl.reshape(tile, (BLOCK_P, S, 4 * NW))


@triton.jit
def _code_tile(codes, page_row, live, W, S: tl.constexpr, BW: tl.constexpr, BLOCK_P: tl.constexpr,
               BITS: tl.constexpr, WORK: tl.constexpr, WORDS: tl.constexpr = False, f23=0):
    """The codes of BLOCK_P pages as a work-dtype tile [BLOCK_P, S, BD], channel d at d (4 bits:
    BD = 2·BW, the low and high nibble of byte j side by side as channels 2j and 2j+1, kept in
    the same thread; 8 bits: BD = BW). Masked pages (``live`` False) are not read: code 0.
    ``WORDS`` (float32 work only): the same values from int32 words (``_word_tile``; ``f23``
    the bits of 2^23, ``_field``)."""
    tok = tl.arange(0, S)
    row = page_row[:, None] * S + tok[None, :]  # [BLOCK_P, S] token rows of the code storage
    if WORDS:
        return _word_tile(codes, row, live, W, f23, S, BW, BLOCK_P, BITS)
    j = tl.arange(0, BW)
    mask = live[:, None, None] & (j < W)[None, None, :]
    byte = tl.load(codes + row[:, :, None] * W + j[None, None, :], mask=mask, other=0).to(tl.int32)
    if BITS == 8:
        return _as_work(byte, WORK)
    else:
        return tl.reshape(tl.join(_as_work(byte & 15, WORK), _as_work(byte >> 4, WORK)), (BLOCK_P, S, 2 * BW))


@triton.jit
def _head_scores(q, qrow, p, q_pos, slopes, hslot, scale, alibi_eps, code, d, kmin, step, radius, D,
                 S: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """ŝ [BLOCK_P, S] and ε [BLOCK_P] of one query head (row ``qrow`` of q) over the pages p:
    ŝ = scale·(q·kmin + Σ_d (q_d·step_d)·code_d) (+ ALiBi), ε = scale·Σ_d |q_d|·radius_d (+ ALiBi)."""
    qv = tl.load(q + qrow * D + d, mask=d < D, other=0.0).to(WORK)[None, :]
    base = tl.sum(qv * kmin, axis=1)
    dot = tl.sum(code * (qv * step)[:, None, :], axis=2)
    s_hat = (base[:, None] + dot) * scale
    eps = tl.sum(tl.abs(qv) * radius, axis=1) * scale
    if HAS_ALIBI:
        slope = tl.load(slopes + hslot).to(WORK)
        tok = tl.arange(0, S)
        s_hat += slope * (p[:, None] * S + tok[None, :] - q_pos).to(WORK)
        eps += tl.abs(slope) * tl.cast(alibi_eps, WORK)
    return s_hat, eps


@triton.jit
def _as_half(code):
    """int32 codes in [0, 255] -> the same integers in float16, exactly: 2^10 + c carries c in
    the low mantissa bits (an or and one subtraction instead of a 1/4-rate conversion)."""
    return (code | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1024.0


@triton.jit
def _nibbles_half(byte, NATIVE: tl.constexpr):
    """uint8 code bytes -> (byte & 15, byte >> 4) as float16, exactly. ``NATIVE`` (CUDA): four
    bytes a register; one PRMT spreads a byte pair into the two halves of a register, and each
    nibble is or-ed, in place, into a float16 whose mantissa's unit is 1 there: 2^10 + c for
    the low nibble (bits 0-3), 2^6 + c for the high one (bits 4-7, units of 2^-4), and one
    HSUB2 a pair takes the power of two off (exact). Ten instructions for eight codes."""
    if NATIVE:
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 p01, p23, t, lo, hi;
            mov.b32 lo, 0x64006400;
            mov.b32 hi, 0x54005400;
            prmt.b32 p01, $4, 0, 0x4140;
            prmt.b32 p23, $4, 0, 0x4342;
            lop3.b32 t, p01, 0x000F000F, lo, 0xea;
            sub.f16x2 $0, t, lo;
            lop3.b32 t, p23, 0x000F000F, lo, 0xea;
            sub.f16x2 $1, t, lo;
            lop3.b32 t, p01, 0x00F000F0, hi, 0xea;
            sub.f16x2 $2, t, hi;
            lop3.b32 t, p23, 0x00F000F0, hi, 0xea;
            sub.f16x2 $3, t, hi;
            }""",
            constraints="=r,=r,=r,=r,r", args=[byte], dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    else:
        return (byte & 15).to(tl.float16), (byte >> 4).to(tl.float16)


@triton.jit
def _pinned(x, NATIVE: tl.constexpr):
    """x (float32) through an opaque move on CUDA (``NATIVE``). The statistics pass through it
    before their broadcast over the heads: the same static SASS count, but 82.2 against 94.4 µs
    for the bare scan at 128K on the H200 (session 21, call 4) — it keeps the compiler from
    moving their loads and arithmetic into the broadcast's schedule."""
    if NATIVE:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=False, pack=1)
    else:
        return x


@triton.jit
def _channel_terms(q, qrows, gi, d, kmin, step, radius, dot_rel, D, G: tl.constexpr, WORK: tl.constexpr):
    """For the channels d [n] of the pages (kmin, step, radius [BLOCK_P, n]): q·kmin and ε's sum
    Σ |q|·spread, spread = radius + dot_rel·step [BLOCK_P, GP] and A = q·step [BLOCK_P, GP, n].
    Heads past G are zero."""
    # q read as a [GP, BLOCK_P, n] tile (every page the same rows; heads outermost, so that a
    # thread holds every head of its pages and channels) and viewed as [BLOCK_P, GP, n]
    qg = tl.load(q + qrows[:, None, None] * D + d[None, None, :] + 0 * kmin.to(tl.int32)[None, :, :],
                 mask=(gi < G)[:, None, None] & (d < D)[None, None, :], other=0.0).to(WORK)
    qg = tl.permute(qg, (1, 0, 2))
    base = tl.sum(kmin[:, None, :] * qg, axis=2)
    spread = radius + step * tl.cast(dot_rel, WORK)  # the residual's relative part, folded into the radius
    eps = tl.sum(spread[:, None, :] * tl.abs(qg), axis=2)
    a = step[:, None, :] * qg  # as the CUDA-core path's q·step, [BLOCK_P, GP, n]
    return base, eps, a


@triton.jit
def _split_half(a, up):
    """A·2^k [BLOCK_P, GP, n] (``up`` = 2^k [BLOCK_P, GP]) as float16 hi + lo [BLOCK_P, n, GP]
    (a − hi is exact in float32), the dot's right operand."""
    a = a * up[:, :, None]
    hi = a.to(tl.float16)
    return tl.permute(hi, (0, 2, 1)), tl.permute((a - hi.to(tl.float32)).to(tl.float16), (0, 2, 1))


@triton.jit
def _scale_of(scale, scale_t, WORK: tl.constexpr):
    """The scale in the work dtype: float64 from a one-element tensor (kernels get float
    arguments as float32), float32 from the argument itself (no fill launched for it)."""
    if WORK == tl.float64:
        return tl.load(scale_t)
    else:
        return tl.cast(scale, tl.float32)


@triton.jit
def _seed_slots_of(page_max, eps, bh, lo, hi, P, G: tl.constexpr, SLOTS: tl.constexpr, GP: tl.constexpr,
                   KP: tl.constexpr, ROUNDS: tl.constexpr):
    """[GP, KP] int64: per query head of row ``bh`` and residue class r = p mod SLOTS, the best
    page p in [lo, hi) by its code lower bound page_max − ε (as float32), packed as
    (ordered bound + 2^31) · 2^31 + (P − p): larger bound first, then the lower page — so the
    max of two ranges' results is their union's, bit for bit; 0 for an empty class (every
    page's value is > 0). Reads pass 1's outputs, ``ROUNDS`` pages of each class at a time
    (pages p = (j + i)·SLOTS + r as a [GP, ROUNDS, KP] tile, from the class row holding lo)."""
    gi = tl.arange(0, GP)[:, None, None]
    ii = tl.arange(0, ROUNDS)[None, :, None]
    ri = tl.arange(0, KP)[None, None, :]
    heads = (bh.to(tl.int64) * G + gi) * P
    best = tl.zeros((GP, KP), tl.int64)
    for j in range(lo // SLOTS, tl.cdiv(hi, SLOTS), ROUNDS):
        p = (j + ii) * SLOTS + ri
        live = (gi < G) & (ri < SLOTS) & (p >= lo) & (p < hi)
        low = (tl.load(page_max + heads + p, mask=live, other=0.0)
               - tl.load(eps + heads + p, mask=live, other=0.0)).to(tl.float32)
        key = _ordered(low, tl.int32, 32).to(tl.int64) + 2147483648
        packed = tl.where(live, (key << 31) | (P - p).to(tl.int64), 0)
        best = tl.maximum(best, tl.max(packed, axis=1))
    return best


@triton.jit
def _seed_list(packed, q, k_min, k_max, seed_pages, seed_count, seed_mag, scale_w, bh, P, D,
               G: tl.constexpr, SLOTS: tl.constexpr, GP: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr,
               WORK: tl.constexpr):
    """The seed of row ``bh`` from its slots ``packed`` [GP, KP] (``_seed_slots_of``): the
    slots' pages, each once, as a list [G·SLOTS] (−1 padded) with its count, and per head the
    |score| scale of the listed pages, scale·Σ_d |q_d|·max(|kmin_pd|, |kmax_pd|) (what
    ``page_scores`` calls absmax). A page two heads chose appears once (it can only sit in the
    same slot of both)."""
    gi = tl.arange(0, GP)
    ri = tl.arange(0, KP)
    ok = (gi < G)[:, None] & (ri < SLOTS)[None, :]
    page = tl.where(ok & (packed > 0), P - (packed & 2147483647), -1)  # [GP, KP]
    dup = tl.zeros((GP, KP), tl.int1)
    for g in tl.static_range(G):  # the same page in the same slot of an earlier head
        earlier = tl.sum(tl.where(gi[:, None] == g, page, 0), axis=0)  # [KP] head g's row
        dup |= (page == earlier[None, :]) & (gi[:, None] > g)
    keep = (page >= 0) & ~dup
    flat = tl.reshape(keep.to(tl.int32), (GP * KP,))
    pages = tl.reshape(page, (GP * KP,))
    at = tl.cumsum(flat, axis=0) - flat
    n = tl.sum(flat, axis=0)
    i = tl.arange(0, GP * KP)
    out = bh.to(tl.int64) * (G * SLOTS)
    tl.store(seed_pages + out + at, pages.to(tl.int32), mask=flat == 1)
    tl.store(seed_pages + out + i, tl.full((GP * KP,), -1, tl.int32), mask=(i >= n) & (i < G * SLOTS))
    tl.store(seed_count + bh, n)
    # |score| scale of the listed pages, from kmin/kmax (inputs: nothing another program wrote)
    d = tl.arange(0, BD)
    live = flat == 1
    stat = (bh.to(tl.int64) * P + tl.where(live, pages, 0))[:, None] * D + d[None, :]
    smask = live[:, None] & (d < D)[None, :]
    kabs = tl.maximum(tl.abs(tl.load(k_min + stat, mask=smask, other=0.0).to(WORK)),
                      tl.abs(tl.load(k_max + stat, mask=smask, other=0.0).to(WORK)))
    for g in tl.static_range(G):
        qrow = bh.to(tl.int64) * G + g
        qa = tl.abs(tl.load(q + qrow * D + d, mask=d < D, other=0.0).to(WORK))
        mag = tl.sum(qa[None, :] * kabs, axis=1) * scale_w
        tl.store(seed_mag + qrow, tl.max(tl.where(live, mag, 0.0), axis=0))


@triton.jit
def _dot_scores(q, codes, k_min, k_max, slopes, scale_w, r, alibi_eps, dot_rel, dot_abs, bh, p, page_row, live, length,
                H, D, W, S: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BW: tl.constexpr,
                BLOCK_P: tl.constexpr, BITS: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr,
                NATIVE: tl.constexpr = False, SPLIT: tl.constexpr = True):
    """ŝ [BLOCK_P, S, GP] and ε [BLOCK_P, GP] of the G query heads of row ``bh`` over the pages
    p (``live`` ones read; heads past G are zero), with tensor cores.

    Per (page, head): A = q·step (float32), scaled by 2^k with 2^k·max_d |A_d| in [2^14, 2^15)
    (k clamped to [−126, 126]), split into float16 hi +
    lo (``SPLIT``) or rounded to float16 alone (4 bits, ``splits_a``), float32-accumulated dots
    with the exact float16
    codes, unscaled by 2^−k; ε adds that rounding's residual, scale·(dot_rel·Σ_d |q_d|·step_pd
    + D·dot_abs·2^−k) (``dot_margins`` of the form; the bound is in the module docstring).
    4 bits: the low and the high nibbles of the code bytes are two dots over the even and the
    odd channels (no interleaving of the codes: the K order of a dot is free), chained in one
    accumulator per part."""
    gi = tl.arange(0, GP)
    qrows = bh.to(tl.int64) * G + gi
    tok = tl.arange(0, S)
    j = tl.arange(0, BW)
    row = page_row[:, None] * S + tok[None, :]  # [BLOCK_P, S] token rows of the code storage
    byte = tl.load(codes + row[:, :, None] * W + j[None, None, :], mask=live[:, None, None] & (j < W)[None, None, :],
                   other=0)
    r_w = tl.cast(r, WORK)
    # every channel's statistics at once (contiguous loads), computed in their own layout
    dd = tl.arange(0, BW * (8 // BITS))  # 4 bits: channel 2j in the low nibble of byte j, 2j + 1 in the high one
    kmin, step, radius = _page_stats(k_min, k_max, page_row, dd, live, r_w, D, BITS, WORK)
    kmin, step, radius = _pinned(kmin, NATIVE), _pinned(step, NATIVE), _pinned(radius, NATIVE)
    base, eps, a = _channel_terms(q, qrows, gi, dd, kmin, step, radius, dot_rel, D, G, WORK)
    # 2^k from the exponent e of max_d |A|: biased exponent E = 268 − e puts it in [2^14, 2^15); E in
    # [1, 253] keeps 2^k and 2^−k normal float32 numbers. (From ε's sum, which is reduced anyway, there
    # is no max over D — 476 -> 456 static SASS a page — but it was no faster: perf-log row 165)
    top = tl.max(tl.abs(a), axis=2)
    big = tl.minimum(tl.maximum(268 - ((top.to(tl.int32, bitcast=True) >> 23) & 255), 1), 253)
    up = (big << 23).to(tl.float32, bitcast=True)  # 2^k
    down = ((254 - big) << 23).to(tl.float32, bitcast=True)  # 2^−k
    if SPLIT:
        hi, lo = _split_half(a, up)
    else:  # hi alone: ε's residual term is the wider one of ``dot_margins(bits, split=False)``
        hi = tl.permute((a * up[:, :, None]).to(tl.float16), (0, 2, 1))
    if BITS == 8:
        code = _as_half(byte.to(tl.int32))
        part = tl.dot(code, hi, out_dtype=tl.float32)  # [BLOCK_P, S, GP]
        if SPLIT:
            part += tl.dot(code, lo, out_dtype=tl.float32)
    else:  # channel 2j in the low nibble of byte j, 2j + 1 in the high one
        low, high = _nibbles_half(byte, NATIVE)
        hi, hi2 = tl.split(tl.reshape(hi, (BLOCK_P, BW, 2, GP)).permute(0, 1, 3, 2))
        part = tl.dot(high, hi2, tl.dot(low, hi, out_dtype=tl.float32), out_dtype=tl.float32)
        if SPLIT:
            lo, lo2 = tl.split(tl.reshape(lo, (BLOCK_P, BW, 2, GP)).permute(0, 1, 3, 2))
            part += tl.dot(high, lo2, tl.dot(low, lo, out_dtype=tl.float32), out_dtype=tl.float32)
    s_hat = (base[:, None, :] + part * down[:, None, :]) * scale_w
    eps = (eps + (D * tl.cast(dot_abs, WORK)) * down) * scale_w
    if HAS_ALIBI:
        slope = tl.load(slopes + (bh % H) * G + gi, mask=gi < G, other=0.0).to(WORK)  # [GP]
        pos = (p[:, None] * S + tok[None, :] - (length - 1)).to(WORK)  # [BLOCK_P, S]
        s_hat += slope[None, None, :] * pos[:, :, None]
        eps += tl.abs(slope)[None, :] * tl.cast(alibi_eps, WORK)
    return s_hat, eps


@triton.jit
def _code_block_dot(q, codes, k_min, k_max, slopes, page_max, eps_out, s_hat_out, scale_w, r, alibi_eps, dot_rel,
                    dot_abs, bh, p, page_row, in_range, live, length, H, P, D, W, S: tl.constexpr,
                    G: tl.constexpr, GP: tl.constexpr, BW: tl.constexpr, BLOCK_P: tl.constexpr,
                    BITS: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr, WITH_SCORES: tl.constexpr,
                    NATIVE: tl.constexpr = False, SPLIT: tl.constexpr = True):
    """``_code_bounds_kernel``'s work on the pages p with tensor cores (``_dot_scores``), the G
    heads at once: page_max and ε [BLOCK_P, GP] stores, ŝ [BLOCK_P, S, GP] if WITH_SCORES."""
    s_hat, eps = _dot_scores(q, codes, k_min, k_max, slopes, scale_w, r, alibi_eps, dot_rel, dot_abs, bh, p, page_row,
                             live, length, H, D, W, S, G, GP, BW, BLOCK_P, BITS, WORK, HAS_ALIBI, NATIVE, SPLIT)
    gi = tl.arange(0, GP)
    tok = tl.arange(0, S)
    out = (bh.to(tl.int64) * G + gi[None, :]) * P + p[:, None]  # [BLOCK_P, GP]
    heads = in_range[:, None] & (gi < G)[None, :]
    tl.store(page_max + out, tl.where(live[:, None], tl.max(s_hat, axis=1), float("-inf")), mask=heads)
    tl.store(eps_out + out, tl.where(live[:, None], eps, 0.0), mask=heads)
    if WITH_SCORES:
        tl.store(s_hat_out + out[:, None, :] * S + tok[None, :, None], s_hat,
                 mask=(live[:, None] & (gi < G)[None, :])[:, None, :])


@triton.jit
def _head_block(q, slopes, page_max, eps_out, s_hat_out, scale_w, alibi_eps, bh, g, p, in_range, live, length, H, P,
                D, code, d, kmin, step, radius, S: tl.constexpr, G: tl.constexpr, WORK: tl.constexpr,
                HAS_ALIBI: tl.constexpr, WITH_SCORES: tl.constexpr):
    """Query head g of row bh over the pages p (codes and statistics given): page_max and ε
    [BLOCK_P] stores, ŝ [BLOCK_P, S] if WITH_SCORES."""
    qrow = bh.to(tl.int64) * G + g
    s_hat, eps = _head_scores(q, qrow, p, length - 1, slopes, (bh % H) * G + g, scale_w, alibi_eps,
                              code, d, kmin, step, radius, D, S, WORK, HAS_ALIBI)
    out = qrow * P + p
    best = tl.max(s_hat, axis=1)
    # pages without codes: no token can be chosen from them
    tl.store(page_max + out, tl.where(live, best, float("-inf")), mask=in_range)
    tl.store(eps_out + out, tl.where(live, eps, 0.0), mask=in_range)
    if WITH_SCORES:
        tok = tl.arange(0, S)
        tl.store(s_hat_out + out[:, None] * S + tok[None, :], s_hat, mask=live[:, None])


@triton.jit
def _code_block_cores(q, codes, k_min, k_max, slopes, page_max, eps_out, s_hat_out, scale_w, r, alibi_eps, f23, bh, p,
                      page_row, in_range, live, length, H, P, D, W, S: tl.constexpr, G: tl.constexpr,
                      BW: tl.constexpr, BD: tl.constexpr, BLOCK_P: tl.constexpr, BITS: tl.constexpr,
                      WORK: tl.constexpr, HAS_ALIBI: tl.constexpr, WITH_SCORES: tl.constexpr, WORDS: tl.constexpr,
                      UNROLL_HEADS: tl.constexpr):
    """``_code_bounds_kernel``'s work on the pages p on CUDA cores, head by head
    (``UNROLL_HEADS``: G copies of the head's code; else one copy in a loop)."""
    r_w = tl.cast(r, WORK)
    # the pages' codes and statistics are read once and serve every head of the group
    code = _code_tile(codes, page_row, live, W, S, BW, BLOCK_P, BITS, WORK, WORDS, f23)
    d = tl.arange(0, BD)
    kmin, step, radius = _page_stats(k_min, k_max, page_row, d, live, r_w, D, BITS, WORK)
    if UNROLL_HEADS:
        for g in tl.static_range(G):
            _head_block(q, slopes, page_max, eps_out, s_hat_out, scale_w, alibi_eps, bh, g, p, in_range, live, length,
                        H, P, D, code, d, kmin, step, radius, S, G, WORK, HAS_ALIBI, WITH_SCORES)
    else:
        for g in range(G):
            _head_block(q, slopes, page_max, eps_out, s_hat_out, scale_w, alibi_eps, bh, g, p, in_range, live, length,
                        H, P, D, code, d, kmin, step, radius, S, G, WORK, HAS_ALIBI, WITH_SCORES)


@triton.jit
def _no_codes(page_max, eps_out, bh, p, in_range, P, G: tl.constexpr, BLOCK_P: tl.constexpr, WORK: tl.constexpr):
    """A block with no coded page: −inf and 0, one store per head."""
    for g in tl.static_range(G):
        out = (bh.to(tl.int64) * G + g) * P + p
        tl.store(page_max + out, tl.full((BLOCK_P,), float("-inf"), WORK), mask=in_range)
        tl.store(eps_out + out, tl.zeros((BLOCK_P,), WORK), mask=in_range)


@triton.jit
def _code_bounds_kernel(
    q, codes, k_min, k_max, seq_lens, slopes, scale_t, k_pages,
    page_max, eps_out, s_hat_out, newest_max, newest_mag, newest_floor,
    scale, slack, r, alibi_eps, dot_rel, dot_abs, f23, P, H: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
    S: tl.constexpr, G: tl.constexpr, BW: tl.constexpr, BD: tl.constexpr, BLOCK_P: tl.constexpr,
    BITS: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr, WITH_SCORES: tl.constexpr,
    WITH_NEWEST: tl.constexpr, USE_DOT: tl.constexpr, GP: tl.constexpr, WORDS: tl.constexpr,
    UNROLL_HEADS: tl.constexpr, NATIVE: tl.constexpr = False,
    SPLIT: tl.constexpr = True, PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    bh = tl.program_id(0)
    b = bh // H
    length = tl.load(seq_lens + b).to(tl.int32)
    coded = candidate_count(length, S, P)  # full pages before the one holding the newest token
    scale_w = _scale_of(scale, scale_t, WORK)
    if WITH_NEWEST:
        # the extra program is the row's first, so that it is dispatched with the first code
        # blocks rather than after all of them (its dependent loads would end the kernel)
        if tl.program_id(1) == 0:
            _newest_page(q, k_pages, slopes, newest_max, newest_mag, newest_max, newest_floor, scale_w, slack, bh, H,
                         P, D, length, S, G, S, BD, WORK, HAS_ALIBI, False)
        block = tl.program_id(1) - 1  # −1: the newest page's program, which writes no page
    else:
        block = tl.program_id(1)
    p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    in_range = (p >= 0) & (p < P)
    live = in_range & (p < coded)
    page_row = bh.to(tl.int64) * P + p
    has_codes = (block >= 0) & (block * BLOCK_P < coded)
    if USE_DOT:  # a static branch: the other path is not compiled
        if has_codes:  # tensor cores: the G heads at once
            _code_block_dot(q, codes, k_min, k_max, slopes, page_max, eps_out, s_hat_out, scale_w, r, alibi_eps,
                            dot_rel, dot_abs, bh, p, page_row, in_range, live, length, H, P, D, W, S, G, GP, BW,
                            BLOCK_P, BITS, WORK, HAS_ALIBI, WITH_SCORES, NATIVE, SPLIT)
        else:
            _no_codes(page_max, eps_out, bh, p, in_range, P, G, BLOCK_P, WORK)
    else:
        if has_codes:
            _code_block_cores(q, codes, k_min, k_max, slopes, page_max, eps_out, s_hat_out, scale_w, r, alibi_eps, f23,
                              bh, p, page_row, in_range, live, length, H, P, D, W, S, G, BW, BD, BLOCK_P, BITS,
                              WORK, HAS_ALIBI, WITH_SCORES, WORDS, UNROLL_HEADS)
        else:
            _no_codes(page_max, eps_out, bh, p, in_range, P, G, BLOCK_P, WORK)


@triton.jit
def _newest_kernel(q, k_pages, seq_lens, slopes, scale_t, newest_max, newest_mag, newest_floor, scale, slack, H, P, D,
                   S: tl.constexpr,
                   G: tl.constexpr, BD: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr,
                   PDL: tl.constexpr = False):
    """Grid (B·Hkv,): the newest page's best score and |score| scale of row ``bh``
    (``_newest_page``), when ``code_bounds`` runs no seed to carry it."""
    pdl_enter(PDL)
    bh = tl.program_id(0)
    length = tl.load(seq_lens + bh // H).to(tl.int32)
    _newest_page(q, k_pages, slopes, newest_max, newest_mag, newest_max, newest_floor, _scale_of(scale, scale_t, WORK),
                 slack, bh, H, P, D, length, S, G, S, BD, WORK, HAS_ALIBI, False)


@triton.jit
def _seed_chunk_kernel(page_max, eps, seq_lens, best, q, k_pages, slopes, scale_t, newest_max, newest_mag, newest_s,
                       newest_floor, scale, slack, H, P, D, NCH, CHUNK, S: tl.constexpr, G: tl.constexpr,
                       SLOTS: tl.constexpr, GP: tl.constexpr, KP: tl.constexpr, ROUNDS: tl.constexpr, BD: tl.constexpr = 16,
                       WORK: tl.constexpr = tl.float32, WITH_NEWEST: tl.constexpr = False,
                       HAS_ALIBI: tl.constexpr = False, STORE_SCORES: tl.constexpr = False,
                       PDL: tl.constexpr = False):
    """Grid (B·Hkv, NCH + WITH_NEWEST): program (bh, c) writes best[bh, c] [GP, KP],
    ``_seed_slots_of`` over the coded pages of chunk c, [c·CHUNK, (c+1)·CHUNK); 0 (empty) where
    it holds none — every entry is written, so the merge reads no stale value. ``WITH_NEWEST``:
    program (bh, 0) scores the row's newest page instead (``_newest_page``; with
    ``STORE_SCORES`` its slot scores into ``newest_s`` for the seed's τ), chunk c is program
    c + 1 — dispatched first, so that its chain of loads runs beside the chunks'."""
    pdl_enter(PDL)
    bh = tl.program_id(0)
    c = tl.program_id(1)
    length = tl.load(seq_lens + bh // H).to(tl.int32)
    if WITH_NEWEST:  # a static branch: without it no newest-page code is compiled
        c -= 1
        if c < 0:
            _newest_page(q, k_pages, slopes, newest_max, newest_mag, newest_s, newest_floor,
                         _scale_of(scale, scale_t, WORK), slack, bh, H,
                         P, D, length, S, G, S, BD, WORK, HAS_ALIBI, STORE_SCORES)
    if c >= 0:
        coded = candidate_count(length, S, P)
        lo = c * CHUNK
        packed = _seed_slots_of(page_max, eps, bh, lo, tl.minimum(lo + CHUNK, coded), P, G, SLOTS, GP, KP, ROUNDS)
        gi = tl.arange(0, GP)[:, None]
        ri = tl.arange(0, KP)[None, :]
        tl.store(best + ((bh.to(tl.int64) * NCH + c) * GP + gi) * KP + ri, packed)


@triton.jit
def _seed_merge_kernel(
    q, k_min, k_max, scale_t, best, seed_pages, seed_count, seed_mag, newest_s, page_max, eps, seed_tau, scale, alpha,
    P, D, NCH,
    S: tl.constexpr, G: tl.constexpr, BD: tl.constexpr, WORK: tl.constexpr, SLOTS: tl.constexpr, GP: tl.constexpr,
    KP: tl.constexpr, ROUNDS: tl.constexpr, WITH_NEWEST: tl.constexpr = False, WITH_TAU: tl.constexpr = False,
    KIND: tl.constexpr = 1, STEPS: tl.constexpr = SEED_TAU_STEPS, TAU_ROUNDS: tl.constexpr = SEED_TAU_ROUNDS,
    PDL: tl.constexpr = False,
):
    """Grid (B·Hkv,). Program bh: the max over row bh's NCH chunk entries of
    ``_seed_chunk_kernel`` (``ROUNDS`` chunks at a time) is the row's packed seed, as one pass
    over all its pages would give it; then ``_seed_list``; with ``WITH_TAU`` the seed's τ
    (``_seed_tau``: of the slots' lower bounds and, ``WITH_NEWEST``, of the newest page's
    scores the chunk launch stored in ``newest_s``)."""
    pdl_enter(PDL)
    bh = tl.program_id(0)
    packed = _merge_row(q, k_min, k_max, best, seed_pages, seed_count, seed_mag, _scale_of(scale, scale_t, WORK), bh,
                        P, D, NCH, G, BD, WORK, SLOTS, GP, KP, ROUNDS)
    if WITH_TAU:  # a static branch
        _seed_tau(packed, page_max, eps, newest_s, seed_tau, alpha, bh, P, S, G, GP, KP, SLOTS, WITH_NEWEST, KIND,
                  STEPS, TAU_ROUNDS)


@triton.jit
def _merge_row(q, k_min, k_max, best, seed_pages, seed_count, seed_mag, scale_w, bh, P, D, NCH, G: tl.constexpr,
               BD: tl.constexpr, WORK: tl.constexpr, SLOTS: tl.constexpr, GP: tl.constexpr, KP: tl.constexpr,
               ROUNDS: tl.constexpr):
    """Row bh's seed: the max over its NCH chunk entries of ``_seed_chunk_kernel`` (``ROUNDS``
    chunks at a time), then ``_seed_list``. Returns the packed slots [GP, KP]."""
    gi = tl.arange(0, GP)[:, None, None]
    ci = tl.arange(0, ROUNDS)[None, :, None]
    ri = tl.arange(0, KP)[None, None, :]
    packed = tl.zeros((GP, KP), tl.int64)
    for c0 in range(0, NCH, ROUNDS):
        c = c0 + ci
        entry = tl.load(best + ((bh.to(tl.int64) * NCH + c) * GP + gi) * KP + ri, mask=c < NCH, other=0)
        packed = tl.maximum(packed, tl.max(entry, axis=1))
    _seed_list(packed, q, k_min, k_max, seed_pages, seed_count, seed_mag, scale_w, bh, P, D, G, SLOTS, GP, KP, BD, WORK)
    return packed


@triton.jit
def _seed_tau(packed, page_max, eps, newest_s, seed_tau, alpha, bh, P, S: tl.constexpr, G: tl.constexpr,
              GP: tl.constexpr, KP: tl.constexpr, SLOTS: tl.constexpr, WITH_NEWEST: tl.constexpr, KIND: tl.constexpr,
              STEPS: tl.constexpr, ROUNDS: tl.constexpr):
    """Row bh's seed τ [G] (float64, in units of z = (α−1)·s, as ``sparse_decode``'s τ): for
    each query head, a lower bound of the entmax threshold of the values z of its own slots'
    pages — the code lower bound of each page's best token, page_max − ε (in the work dtype, as
    ``exact_codes`` takes it) — and (``WITH_NEWEST``) of its newest page's scores (``newest_s``
    [Hq·S] of the row). Each value is at most (up to rounding) some distinct token's score, so
    this τ is at most the τ of those tokens' scores (τ rises with every score) and so at most
    the dense τ; ``code_candidates`` lowers it by the rounding margin (γ·M with M at least the
    listed pages' |score| scale, which bounds |page_max − ε| up to ε's small radius, plus τ's
    own error with an absolute term: it covers the subtraction's rounding, <= eps·|z|).
    α = 1.5 and 2 (``ROUNDS``): from x = z_max − 1 <= τ, the exact support search from below
    of ``sparse_decode._exact_from_below`` on every head at once (the support formula over
    {z > x}, accepted when its smallest value is at or above the result; else a Newton step of the
    convex f(x) = Σ ρ(z − x) − 1 from below), rounds until every head has settled; a head not
    settled after ``ROUNDS`` keeps its last x (<= τ). Other α: bisection on f from
    [z_max − 1, z_max] (f >= 0 at z_max − 1: the top value alone gives 1), ``STEPS`` times,
    keeping the lower end (f >= 0 there)."""
    gi = tl.arange(0, GP)
    ri = tl.arange(0, KP)
    lin = tl.cast(alpha, tl.float64) - 1.0  # as sparse_decode: α as a float32 argument, then α − 1
    inv_power = 1.0 / lin
    ok = (gi < G)[:, None] & (ri < SLOTS)[None, :] & (packed > 0)
    page = tl.where(ok, P - (packed & 2147483647), 0)
    at = (bh.to(tl.int64) * G + gi)[:, None] * P + page
    low = tl.load(page_max + at, mask=ok, other=0.0) - tl.load(eps + at, mask=ok, other=0.0)
    z = tl.where(ok, low.to(tl.float64) * lin, float("-inf"))  # [GP, KP]
    top = tl.max(z, axis=1)
    if WITH_NEWEST:
        si = tl.arange(0, S)
        fresh = tl.load(newest_s + (bh.to(tl.int64) * G + gi)[:, None] * S + si[None, :], mask=(gi < G)[:, None],
                        other=float("-inf")).to(tl.float64) * lin  # [GP, S], −inf past the length
        top = tl.maximum(top, tl.max(fresh, axis=1))
    if KIND == 3:
        lo = top - 1.0
        hi = top
        for _ in tl.static_range(STEPS):
            mid = (lo + hi) * 0.5
            f = tl.sum(rho(z - mid[:, None], inv_power, KIND), axis=1)
            if WITH_NEWEST:
                f += tl.sum(rho(fresh - mid[:, None], inv_power, KIND), axis=1)
            lo = tl.where(f >= 1.0, mid, lo)
            hi = tl.where(f >= 1.0, hi, mid)
        tau = lo
    else:
        x = top - 1.0
        tau = x
        found = gi >= G  # [GP]: the padding heads count as settled
        it = tl.full((), 0, tl.int32)
        while (it < ROUNDS) & (tl.min(found.to(tl.int32), axis=0) == 0):  # until every head settled
            it += 1
            cnt, s1, s2, zmin = _sums_above(z, x)
            if WITH_NEWEST:
                c2, t1, t2, m2 = _sums_above(fresh, x)
                cnt, s1, s2, zmin = cnt + c2, s1 + t1, s2 + t2, tl.minimum(zmin, m2)
            settled = x + _support_tau(cnt, s1, s2, KIND)
            if KIND == 2:
                step = settled
            else:
                step = x + (s2 - 1.0) / tl.maximum(2.0 * s1, 1e-300)
            # settled when every value of the set is at or above the formula's result t: then
            # Σ_S ρ(z − t) = 1, f(t) >= 0 with every other value, so t <= τ (t = τ when the set
            # holds the support; >= also settles values sitting exactly at τ)
            newly = (zmin >= settled) & ~found
            tau = tl.where(newly, settled, tau)
            found = found | newly
            x = tl.where(found, x, tl.minimum(tl.maximum(step, x), top))
        tau = tl.where(found, tau, x)
    tl.store(seed_tau + bh.to(tl.int64) * G + gi, tau, mask=gi < G)


@triton.jit
def _sums_above(z, x):
    """Per row of z [R, N] (float64): (#{z > x}, Σ (z − x), Σ (z − x)², min z) over the values
    above x [R] — ``sparse_decode._shifted_sums`` on a tile of rows."""
    sup = z > x[:, None]
    u = tl.where(sup, z - x[:, None], 0.0)
    return tl.reduce((tl.where(sup, 1.0, 0.0), u, u * u, tl.where(sup, z, float("inf"))), 1, _add3_min)


def _seed(q: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor, seq_lens: torch.Tensor, scale_t: torch.Tensor,
          page_max: torch.Tensor, eps: torch.Tensor, scale: float, slots: int, page_size: int, bd: int, work_tl,
          newest: tuple | None = None, alpha: float = 0.0
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The τ seed of ``code_bounds`` from its page_max and ε [B, Hkv, G, P]: the chunk launch
    into a scratch [B·Hkv, NCH, GP, KP] int64, then the per-row merge and list ->
    (seed_pages [B, Hkv, G·K] int32, seed_count [B, Hkv] int32, seed_mag [B, Hkv, G],
    seed_tau [B, Hkv, G] float64 for α > 1, else [0]).
    ``newest``: (slopes or None, k_pages, newest_max, newest_mag, newest_floor) — the chunk
    launch's first program a row also writes the newest page's outputs (and with α > 1 its scores, which
    enter the seed's τ)."""
    b, hkv, g, p = page_max.shape
    gp, kp = next_pow2(g), next_pow2(slots)
    rounds = max(1, SEED_TILE // (gp * kp))
    # the class rows a chunk spans at most (aligned chunks: exactly; others: one more where a
    # chunk starts inside a row): a smaller tile where it covers a whole chunk (any size is correct)
    spans = SEED_CHUNK // slots if SEED_CHUNK % slots == 0 else triton.cdiv(SEED_CHUNK - 1, slots) + 1
    chunk_rounds = min(rounds, next_pow2(spans))
    nch = triton.cdiv(p, SEED_CHUNK)
    best = torch.empty((b * hkv, nch, gp, kp), dtype=torch.int64, device=q.device)
    seed_pages = torch.empty((b, hkv, g * slots), dtype=torch.int32, device=q.device)
    seed_count = torch.empty((b, hkv), dtype=torch.int32, device=q.device)
    seed_mag = torch.empty((b, hkv, g), dtype=page_max.dtype, device=q.device)
    with_tau = alpha > 1.0
    seed_tau = torch.empty((b, hkv, g) if with_tau else (0,), dtype=torch.float64, device=q.device)
    newest_s = torch.empty((b * hkv * g * page_size if with_tau and newest is not None else 1,), dtype=page_max.dtype,
                           device=q.device)
    slopes, k_pages, newest_max, newest_mag, newest_floor = newest if newest is not None else (None,) + (page_max,) * 4
    wrap_triton(_seed_chunk_kernel)[(b * hkv, nch + (newest is not None))](
        page_max, eps, seq_lens, best, q, k_pages, slopes if slopes is not None else page_max, scale_t, newest_max,
        newest_mag, newest_s, newest_floor, scale, newest_slack(page_max.dtype, k_min.shape[-1]), hkv, p,
        k_min.shape[-1], nch, SEED_CHUNK,
        S=page_size, G=g, SLOTS=slots, GP=gp, KP=kp, ROUNDS=chunk_rounds, BD=bd, WORK=work_tl,
        WITH_NEWEST=newest is not None, HAS_ALIBI=slopes is not None, STORE_SCORES=with_tau and newest is not None,
        num_warps=SEED_WARPS, **pdl_kwargs(q, "code_scan"),
    )
    wrap_triton(_seed_merge_kernel)[(b * hkv,)](
        q, k_min, k_max, scale_t, best, seed_pages, seed_count, seed_mag, newest_s, page_max, eps,
        seed_tau if with_tau else seed_mag, scale, alpha if with_tau else 2.0, p, k_min.shape[-1], nch,
        S=page_size, G=g, BD=bd, WORK=work_tl, SLOTS=slots, GP=gp, KP=kp, ROUNDS=rounds,
        WITH_NEWEST=newest is not None, WITH_TAU=with_tau, KIND=alpha_kind(alpha) if with_tau else 1,
        STEPS=SEED_TAU_STEPS, TAU_ROUNDS=SEED_TAU_ROUNDS, num_warps=SEED_WARPS, **pdl_kwargs(q, "code_scan"),
    )
    return seed_pages, seed_count, seed_mag, seed_tau


@triton.jit
def _head_tau(tau_low, g, GP: tl.constexpr):
    """τ_low of head g from the group's vector [GP]."""
    return tl.sum(tl.where(tl.arange(0, GP) == g, tau_low, 0.0), axis=0)


@triton.jit
def _reaching(page_max, eps_in, tau_low, c, bh, p, coded, P, G: tl.constexpr, GP: tl.constexpr):
    """[len(p)] pages whose best upper bound reaches τ_low ([GP], the group's) for some head of
    the group: the pass-1 bounds only (2·G floats a page), compared in float64 like the
    reference."""
    hit = tl.zeros(p.shape, tl.int1)
    for g in tl.static_range(G):
        qrow = bh.to(tl.int64) * G + g
        best = tl.load(page_max + qrow * P + p, mask=p < P, other=float("-inf"))
        spread = tl.load(eps_in + qrow * P + p, mask=p < P, other=0.0)
        # kept unless provably at or below τ_low: a NaN bound or τ_low (a NaN key) keeps the page
        hit |= ~(c * (best + spread).to(tl.float64) - _head_tau(tau_low, g, GP) <= 0)
    return hit & (p < coded)


@triton.jit
def _tau_margin(tau, seed_count, seed_mag, newest_mag, slopes, c, bh, H, length, gamma, alibi_round, span, bisect,
                S: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """[GP] ``KernelOps._safe_tau`` of the group's seed τ (``tau`` [GP] float64, ``code_bounds``'
    over the seed pages' lower bounds and the newest page), in the same float64 operations:
    lowered by (α−1)·γ·M for the values' rounding (M: the largest |score| scale of the seed
    pages' and the newest page's tokens, ALiBi added: it bounds |page_max − ε| too, up to ε's
    small radius, so it covers that subtraction's rounding, <= eps32·|page_max − ε|, many
    times over) and by τ's own error, 16·n·eps64·(|τ| + (α−1)·M + 1) + eps32·(α−1)·M (+ the
    bisection's; n = seed_count·S + the newest page's tokens is at least the values used)."""
    gi = tl.arange(0, GP)
    row = bh.to(tl.int64) * G + gi
    gm = gi < G
    mag = tl.maximum(tl.load(seed_mag + row, mask=gm, other=0.0), tl.load(newest_mag + row, mask=gm, other=0.0))
    mag = mag.to(tl.float64)
    rounding = tl.cast(gamma, tl.float64) * mag
    if HAS_ALIBI:
        slope = tl.abs(tl.load(slopes + (bh % H) * G + gi, mask=gm, other=0.0).to(tl.float64))
        rounding = rounding + tl.cast(alibi_round, tl.float64) * slope * tl.cast(span, tl.float64)
        mag = mag + slope * tl.cast(span, tl.float64)
    newest_tokens = length - ((length - 1) // S) * S
    n = (tl.load(seed_count + bh).to(tl.int64) * S + newest_tokens).to(tl.float64)
    eps64 = 2.220446049250313e-16  # 2^-52, exact in the float32 literal too
    eps32 = 1.1920928955078125e-07  # 2^-23
    own = 16.0 * n * eps64 * (tl.abs(tau) + c * mag + 1.0) + eps32 * c * mag + tl.cast(bisect, tl.float64)
    return tau - c * rounding - own


@triton.jit
def _finish_row(counters, count, index, page_mask, page_list, page_count, bh, rows, coded, P, C,
                BLOCK: tl.constexpr):
    """Run by the row's last program (the others have finished: their appends precede their
    count of finished programs, and the counters are read with atomics): the row's candidate
    and page counts, and on a row whose candidates overflowed the capacity C every coded page,
    listed in order and marked, instead (the fallback ``Exact`` attends); then the −1 padding of
    the candidate list past its entries and of the page list past its pages. Rows that did not
    overflow keep what the atomic appends wrote, whatever order the programs ran in."""
    n = tl.atomic_add(counters + bh, 0)
    row = bh.to(tl.int64) * P
    if n > C:
        for start in range(0, coded, BLOCK):
            p = start + tl.arange(0, BLOCK)
            tl.store(page_list + row + p, p.to(tl.int32), mask=p < coded)
            tl.store(page_mask + row + p, tl.full((BLOCK,), 1, tl.int1), mask=p < coded)
        pages = coded
    else:
        pages = tl.atomic_add(counters + rows + bh, 0)
    tl.store(count + bh, n)
    tl.store(page_count + bh, pages)
    for start in range(tl.minimum(n, C), C, BLOCK):
        i = start + tl.arange(0, BLOCK)
        tl.store(index + bh.to(tl.int64) * C + i, tl.full((BLOCK,), -1, tl.int32), mask=i < C)
    for start in range(pages, P, BLOCK):
        p = start + tl.arange(0, BLOCK)
        tl.store(page_list + row + p, tl.full((BLOCK,), -1, tl.int32), mask=p < P)


@triton.jit
def _code_candidates_kernel(
    q, codes, k_min, k_max, seq_lens, slopes, scale_t, page_max, eps_in, tau_in,
    seed_count, seed_mag, newest_mag, index, count, page_mask, tau_out, page_list, page_count, counters,
    lin_high, lin_middle, lin_low, scale, r, alibi_eps, gamma, alibi_round, span_f, bisect, dot_rel, dot_abs, f23,
    P, D, W, C, H: tl.constexpr,
    S: tl.constexpr, G: tl.constexpr, BW: tl.constexpr, BD: tl.constexpr, SPAN: tl.constexpr,
    BLOCK_P: tl.constexpr, BITS: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr,
    MARGIN: tl.constexpr, GP: tl.constexpr, USE_DOT: tl.constexpr, WORDS: tl.constexpr, NATIVE: tl.constexpr = False,
    SPLIT: tl.constexpr = True, PDL: tl.constexpr = False,
):
    pdl_enter(PDL)
    bh = tl.program_id(0)
    b = bh // H
    length = tl.load(seq_lens + b).to(tl.int32)
    coded = candidate_count(length, S, P)
    c = _float64_of(lin_high, lin_middle, lin_low)  # float64 α − 1, as the reference multiplies
    rows = tl.num_programs(0)  # counters: [3, rows], candidates, pages and programs finished per row
    gi = tl.arange(0, GP)
    tau_low = tl.load(tau_in + bh.to(tl.int64) * G + gi, mask=gi < G, other=0.0)  # [GP] float64
    if MARGIN:  # τ over the seed -> a safe lower bound (every program of the row computes the same)
        tau_low = _tau_margin(tau_low, seed_count, seed_mag, newest_mag, slopes, c, bh, H, length, gamma,
                              alibi_round, span_f, bisect, S, G, GP, HAS_ALIBI)
        if tl.program_id(1) == 0:
            tl.store(tau_out + bh.to(tl.int64) * G + gi, tau_low, mask=gi < G)
    first_page = tl.program_id(1) * SPAN
    span = first_page + tl.arange(0, SPAN)
    # the span's pages whose pass-1 bounds reach τ_low (2·G floats a page: most spans have none),
    # and each one's rank among them: the codes of only these pages are read, BLOCK_P at a time
    reach = _reaching(page_max, eps_in, tau_low, c, bh, span, coded, P, G, GP).to(tl.int32)  # [SPAN]
    n_reach = tl.sum(reach, axis=0)
    holds = tl.zeros((SPAN,), tl.int32)  # the span's pages holding a candidate
    if n_reach > 0:
        scale_w = _scale_of(scale, scale_t, WORK)
        r_w = tl.cast(r, WORK)
        rank = tl.cumsum(reach, axis=0) - reach
        for t in range(0, n_reach, BLOCK_P):  # tiles of the reaching pages, in page order
            want = t + tl.arange(0, BLOCK_P)
            pick = (reach == 1)[None, :] & (rank[None, :] == want[:, None])  # [BLOCK_P, SPAN]: one page a row
            p = tl.sum(tl.where(pick, span[None, :], 0), axis=1)
            hit = want < n_reach
            page_row = bh.to(tl.int64) * P + p
            if USE_DOT:  # pass 1's formulas and ε (``_dot_scores``), the G heads at once
                s_all, eps_all = _dot_scores(q, codes, k_min, k_max, slopes, scale_w, r, alibi_eps, dot_rel,
                                             dot_abs, bh, p, page_row, hit, length, H, D, W, S, G, GP, BW,
                                             BLOCK_P, BITS, WORK, HAS_ALIBI, NATIVE, SPLIT)
                high = (s_all + eps_all[:, None, :]).to(tl.float64)  # [BLOCK_P, S, GP]
                gi = tl.arange(0, GP)
                reach_g = ~(c * high - tau_low[None, None, :] <= 0) & (gi < G)[None, None, :]  # NaN: kept
                cand = tl.max(reach_g.to(tl.int32), axis=2) > 0  # any head of the group
            else:
                code = _code_tile(codes, page_row, hit, W, S, BW, BLOCK_P, BITS, WORK, WORDS, f23)
                d = tl.arange(0, BD)
                kmin, step, radius = _page_stats(k_min, k_max, page_row, d, hit, r_w, D, BITS, WORK)
                cand = tl.zeros((BLOCK_P, S), tl.int1)
                for g in tl.static_range(G):
                    qrow = bh.to(tl.int64) * G + g
                    s_hat, eps = _head_scores(q, qrow, p, length - 1, slopes, (bh % H) * G + g, scale_w,
                                              alibi_eps, code, d, kmin, step, radius, D, S, WORK, HAS_ALIBI)
                    high = (s_hat + eps[:, None]).to(tl.float64)
                    cand |= ~(c * high - _head_tau(tau_low, g, GP) <= 0)  # any head of the group; NaN: kept
            cand = (cand & hit[:, None]).to(tl.int32)
            n_page = tl.sum(cand, axis=1)
            holds += tl.sum(tl.where(pick & (n_page > 0)[:, None], 1, 0), axis=0)
            n = tl.sum(n_page, axis=0)
            if n > 0:
                first = tl.atomic_add(counters + bh, n)
                # slots: the tile's share of the list in page order, then token order within a page
                slot = first + (tl.cumsum(n_page, axis=0) - n_page)[:, None] + tl.cumsum(cand, axis=1) - cand
                tok = tl.arange(0, S)
                tl.store(index + bh.to(tl.int64) * C + slot, (p[:, None] * S + tok[None, :]).to(tl.int32),
                         mask=(cand == 1) & (slot < C))
                # the pages holding a candidate, appended to the row's page list (the attention's)
                has = (n_page > 0).to(tl.int32)
                at = tl.atomic_add(counters + rows + bh, tl.sum(has, axis=0)) + tl.cumsum(has, axis=0) - has
                tl.store(page_list + bh.to(tl.int64) * P + at, p.to(tl.int32), mask=has == 1)
    tl.store(page_mask + bh.to(tl.int64) * P + span, holds > 0, mask=span < P)
    # the row's last program to finish: on an overflowed row, every coded page instead
    tl.debug_barrier()  # every lane's appends are issued before the count says this program is done
    done = tl.atomic_add(counters + 2 * rows + bh, 1)
    if done == tl.num_programs(1) - 1:
        _finish_row(counters, count, index, page_mask, page_list, page_count, bh, rows, coded, P, C, 1024)


F23 = 0x4B000000  # the bits of 2^23, a kernel argument (``_field``)


def _words(k_codes: torch.Tensor, work: torch.dtype, head_dim: int, bits: int, group: int) -> bool:
    """Whether the CUDA-core scans read the codes as int32 words (``WORD_CODES``, ``_word_tile``):
    float32 work off the tensor-core path, W % 4 == 0, and 4-byte aligned contiguous codes
    (the allocator's alignment; a view must start on a multiple of 4 bytes)."""
    return (bool(WORD_CODES) and work == torch.float32 and not uses_dot(work, head_dim, bits, group)
            and k_codes.shape[-1] % 4 == 0 and k_codes.is_contiguous() and k_codes.storage_offset() % 4 == 0)


def _launch_args(q: torch.Tensor, k_codes: torch.Tensor, k_min: torch.Tensor, bits: int):
    b, hkv, p, s, w = k_codes.shape
    d = k_min.shape[-1]
    g = q.shape[1] // hkv
    work = work_dtype_of(k_min.dtype)
    bw = next_pow2(w)  # byte columns of a tile; channels: two a byte for 4 bits
    consts = dict(S=s, G=g, BW=bw, BD=2 * bw if bits == 4 else bw, BITS=bits,
                  WORK=tl.float64 if work == torch.float64 else tl.float32)
    return b, hkv, p, s, w, d, g, work, consts


def _scale_tensor(scale: float, work: torch.dtype, dummy: torch.Tensor) -> torch.Tensor:
    """The scale as a one-element float64 tensor (a fill, not a copy) where the kernel reads
    it so (float64 work); else ``dummy``, never read."""
    return torch.full((1,), scale, dtype=torch.float64, device=dummy.device) if work == torch.float64 else dummy


@triton_op("entmaxkv::code_bounds", mutates_args=())
def code_bounds(
    q: torch.Tensor, k_codes: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor, seq_lens: torch.Tensor,
    alibi_slopes: torch.Tensor | None, bits: int, scale: float, with_scores: bool,
    k_pages: torch.Tensor | None = None, seed_slots: int = 0, alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 1: ``(page_max, eps, s_hat, newest_max, newest_mag, seed_pages, seed_count, seed_mag,
    seed_tau, newest_floor)``.

    q: [B, Hq, D] contiguous (Hq = Hkv·G); k_codes: [B, Hkv, P, S, W] uint8 (``keycodes``
    layout for ``bits`` 4 or 8); k_min/k_max: [B, Hkv, P, D] in the cache dtype; seq_lens: [B]
    (after the step's append); alibi_slopes: optional [Hq].
    page_max: [B, Hkv, G, P] work dtype, max_i ŝ_i over each coded page, −inf elsewhere;
    eps: [B, Hkv, G, P] ε_p of coded pages, 0 elsewhere; s_hat: [B, Hkv, G, P·S] ŝ of the
    tokens of coded pages (other slots unwritten) if ``with_scores``, else [0].
    With ``k_pages`` ([B, Hkv, P, S, D], the cache's keys: only each sequence's newest page is
    read, by one program per row) also newest_max / newest_mag / newest_floor [B, Hkv, G] work
    dtype: the newest page's best score, its |score| scale and the score floor
    newest_max − ``newest_slack``·newest_mag (``page_bounds``' outputs of the same names); else
    all three [0].
    With ``seed_slots`` K > 0 also a τ seed chosen in the same pass (no selection over the
    pages afterwards): for each query head and each residue class r of the pages mod K, the
    coded page with the largest code lower bound page_max − ε (compared as float32; ties to
    the lower page). seed_pages: [B, Hkv, G·K] int32, those pages each once (a page several
    heads chose is listed once), −1 padded; seed_count: [B, Hkv] int32, pages listed;
    seed_mag: [B, Hkv, G] work dtype, max over the listed pages of
    scale·Σ_d |q_d|·max(|kmin_pd|, |kmax_pd|) (0 if none): the |score| scale of their tokens
    (``page_scores``' absmax). Else the three are [0].
    With a seed and ``alpha`` > 1 also seed_tau: [B, Hkv, G] float64, a lower bound of the entmax
    threshold (in units of (α−1)·score, as ``sparse_decode``'s τ) of the code lower bounds
    page_max − ε of each head's own K seed pages and (with ``k_pages``) of its newest page's
    scores: no key is read for it (``_seed_tau``; the rounding margin is ``code_candidates``');
    the newest page is then scored in the seed's chunk launch, whatever ``NEWEST_IN_SCAN`` says.
    Else [0].
    """
    b, hkv, p, s, w, d, g, work, consts = _launch_args(q, k_codes, k_min, bits)
    page_max = torch.empty((b, hkv, g, p), dtype=work, device=q.device)
    eps = torch.empty_like(page_max)
    s_hat = torch.empty((b, hkv, g, p * s) if with_scores else (0,), dtype=work, device=q.device)
    with_newest = k_pages is not None
    newest_max = torch.empty((b, hkv, g) if with_newest else (0,), dtype=work, device=q.device)
    newest_mag = torch.empty_like(newest_max)
    newest_floor = torch.empty_like(newest_max)
    slack = newest_slack(work, d)
    k = max(int(seed_slots), 0)
    if alpha > 1.0 and not k:
        raise ValueError(f"code_bounds: alpha (the seed's τ) needs seed_slots > 0, got {seed_slots}")
    if not k:
        seed_pages = torch.empty((0,), dtype=torch.int32, device=q.device)
        seed_count = torch.empty((0,), dtype=torch.int32, device=q.device)
        seed_mag = torch.empty((0,), dtype=work, device=q.device)
        seed_tau = torch.empty((0,), dtype=torch.float64, device=q.device)
    slopes = alibi_slopes if alibi_slopes is not None else page_max  # never read without ALiBi
    scale_t = _scale_tensor(scale, work, page_max)
    # the newest page as the scan's program 0 of each row (not when the seed's τ needs its scores)
    in_scan = with_newest and bool(NEWEST_IN_SCAN) and not (k and alpha > 1.0)
    grid = (b * hkv, triton.cdiv(p, BLOCK_P) + (1 if in_scan else 0))
    form = scoring_form(work, d, bits, g)
    # Hkv, D and W as constants (one specialisation a model, as G and BD already are): the row's
    # sequence bh // Hkv and the statistics' and codes' row offsets compile to shifts and
    # immediates — 520 -> 480 static SASS a page (sm_90a, 4 bits, G = 4, 2 pages / 1 warp;
    # ``benchmarks/code_scan_registers.py``). ``code_candidates`` takes Hkv alone as a constant
    # (with D and W too its loop grew: 1,728 -> 1,832 a page).
    wrap_triton(_code_bounds_kernel)[grid](
        q, k_codes, k_min, k_max, seq_lens, slopes, scale_t,
        k_pages if in_scan else page_max, page_max, eps, s_hat if with_scores else page_max,
        newest_max if in_scan else page_max, newest_mag if in_scan else page_max,
        newest_floor if in_scan else page_max, scale, slack, code_radius_factor(work, d), _alibi_eps(work, p, s),
        form.rel, form.abs, F23, p, hkv, d, w,
        HAS_ALIBI=alibi_slopes is not None, WITH_SCORES=with_scores, WITH_NEWEST=in_scan,
        USE_DOT=form.dot, GP=form.heads, BLOCK_P=BLOCK_P, num_warps=NUM_WARPS,
        WORDS=_words(k_codes, work, d, bits, g), UNROLL_HEADS=bool(UNROLL_HEADS), NATIVE=q.is_cuda and bool(NATIVE_CODES),
        SPLIT=form.split, **pdl_kwargs(q, "code_scan"), **consts,
    )
    newest = (alibi_slopes, k_pages, newest_max, newest_mag, newest_floor) if with_newest and not in_scan else None
    if k:  # the newest page, if asked for and not in the scan, in the seed's chunk launch
        seed_pages, seed_count, seed_mag, seed_tau = _seed(q, k_min, k_max, seq_lens, scale_t, page_max, eps, scale, k,
                                                           s, consts["BD"], consts["WORK"], newest, alpha)
    elif newest is not None:  # else in a launch of its own, at the scan's warps (the same layout)
        wrap_triton(_newest_kernel)[(b * hkv,)](
            q, k_pages, seq_lens, slopes, scale_t, newest_max, newest_mag, newest_floor, scale, slack, hkv, p, d, S=s,
            G=g,
            BD=consts["BD"], WORK=consts["WORK"], HAS_ALIBI=alibi_slopes is not None, num_warps=NUM_WARPS,
            **pdl_kwargs(q, "code_scan"))
    return page_max, eps, s_hat, newest_max, newest_mag, seed_pages, seed_count, seed_mag, seed_tau, newest_floor


@code_bounds.register_fake
def _(q, k_codes, k_min, k_max, seq_lens, alibi_slopes, bits, scale, with_scores, k_pages=None, seed_slots=0,
      alpha=0.0):
    b, hkv, p, s, _ = k_codes.shape
    g = q.shape[1] // hkv
    k = max(int(seed_slots), 0)
    work = work_dtype_of(k_min.dtype)
    page_max = q.new_empty((b, hkv, g, p), dtype=work)
    newest = q.new_empty((b, hkv, g) if k_pages is not None else (0,), dtype=work)
    return (page_max, torch.empty_like(page_max), q.new_empty((b, hkv, g, p * s) if with_scores else (0,), dtype=work),
            newest, torch.empty_like(newest), q.new_empty((b, hkv, g * k) if k else (0,), dtype=torch.int32),
            q.new_empty((b, hkv) if k else (0,), dtype=torch.int32), q.new_empty((b, hkv, g) if k else (0,), dtype=work),
            q.new_empty((b, hkv, g) if k and alpha > 1.0 else (0,), dtype=torch.float64), torch.empty_like(newest))


@triton_op("entmaxkv::code_candidates", mutates_args=())
def code_candidates(
    q: torch.Tensor, k_codes: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor, seq_lens: torch.Tensor,
    alibi_slopes: torch.Tensor | None, page_max: torch.Tensor, eps: torch.Tensor, tau_low: torch.Tensor,
    bits: int, scale: float, lin: float, capacity: int, seed_count: torch.Tensor | None = None,
    seed_mag: torch.Tensor | None = None, newest_mag: torch.Tensor | None = None, alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 2: ``(index, count, page_mask, tau_used, page_list, page_count)`` of the tokens with
    lin·(ŝ + ε) > τ_low for some head of the group.

    Inputs as ``code_bounds`` plus its ``page_max`` and ``eps`` and tau_low: [B, Hkv, G]
    float64; lin: α − 1 >= 0; capacity: C. index: [B, Hkv, C] int32 token slots (p·S + j),
    unordered, −1 in unused entries; count: [B, Hkv] int32, candidates found (may exceed C:
    then only C are listed); page_mask: [B, Hkv, P] bool, the pages holding a candidate — on a
    row whose candidates overflowed (count > C) every coded page instead (``Exact``'s
    fallback); page_list: [B, Hkv, P] int32, the same pages as a list for ``sparse_decode``
    (unordered, −1 padded), page_count: [B, Hkv] int32.
    With ``seed_count`` ([B, Hkv] int32), ``seed_mag`` and ``newest_mag`` ([B, Hkv, G], as
    ``code_bounds`` gives them; newest_mag may come from ``page_bounds``) and ``alpha``,
    ``tau_low`` is instead ``code_bounds``' seed τ (of the seed pages' code lower bounds and
    the newest page's scores), and the op lowers it to the safe bound of
    ``KernelOps._safe_tau`` itself (per-row arithmetic that would otherwise be ~20 small
    torch launches); tau_used: [B, Hkv, G] float64, that bound. Without them tau_used is [0].
    """
    if not lin >= 0:
        raise ValueError(f"code_candidates: lin = α − 1 must be >= 0, got {lin}")
    b, hkv, p, s, w, d, g, work, consts = _launch_args(q, k_codes, k_min, bits)
    # the lists, counts and padding are written by the kernel (the padding and the counts by
    # each row's last program): one fill a call, the counters'
    index = torch.empty((b, hkv, capacity), dtype=torch.int32, device=q.device)
    count = torch.empty((b, hkv), dtype=torch.int32, device=q.device)
    page_mask = torch.empty((b, hkv, p), dtype=torch.bool, device=q.device)
    margin = seed_count is not None
    if margin and (seed_mag is None or newest_mag is None):
        raise ValueError("code_candidates: seed_count needs seed_mag and newest_mag [B, Hkv, G]")
    tau_used = torch.empty((b, hkv, g) if margin else (0,), dtype=torch.float64, device=q.device)
    page_list = torch.empty((b, hkv, p), dtype=torch.int32, device=q.device)
    page_count = torch.empty((b, hkv), dtype=torch.int32, device=q.device)
    # per row: the candidates' and the pages' append counters, and the programs finished
    counters = torch.zeros((3, b * hkv), dtype=torch.int32, device=q.device)
    slopes = alibi_slopes if alibi_slopes is not None else page_max
    span = max(CANDIDATE_SPAN, CANDIDATE_BLOCK_P)
    # the margin's constants, each exact as a float32 kernel argument (an integer times a power of two)
    bisect = bisection_gap(alpha, work)
    form = scoring_form(work, d, bits, g)  # pass 1's
    # at least one program a row: its last one writes the counts and the lists (also with P = 0)
    wrap_triton(_code_candidates_kernel)[(b * hkv, max(1, triton.cdiv(p, span)))](
        q, k_codes, k_min, k_max, seq_lens, slopes, _scale_tensor(scale, work, page_max), page_max, eps,
        tau_low, seed_count if margin else count, seed_mag if margin else page_max,
        newest_mag if margin else page_max, index, count, page_mask, tau_used if margin else tau_low, page_list,
        page_count, counters, *float64_words(lin + 0.0),  # compared in float64: exact α − 1 (−0.0 as +0.0)
        scale, code_radius_factor(work, d), _alibi_eps(work, p, s), rounding_gamma(work, d),
        4 * torch.finfo(work).eps, float(p * s), bisect, form.rel, form.abs, F23, p, d, w, capacity, hkv,
        HAS_ALIBI=alibi_slopes is not None, SPAN=span, BLOCK_P=CANDIDATE_BLOCK_P, num_warps=CANDIDATE_WARPS,
        MARGIN=margin, GP=form.heads, USE_DOT=form.dot,
        WORDS=_words(k_codes, work, d, bits, g),
        NATIVE=q.is_cuda and bool(NATIVE_CODES), SPLIT=form.split,
        **pdl_kwargs(q, "code_scan"), **consts,
    )
    return index, count, page_mask, tau_used, page_list, page_count


@code_candidates.register_fake
def _(q, k_codes, k_min, k_max, seq_lens, alibi_slopes, page_max, eps, tau_low, bits, scale, lin, capacity,
      seed_count=None, seed_mag=None, newest_mag=None, alpha=0.0):
    b, hkv, p = k_codes.shape[:3]
    g = q.shape[1] // hkv
    return (q.new_empty((b, hkv, capacity), dtype=torch.int32), q.new_empty((b, hkv), dtype=torch.int32),
            q.new_empty((b, hkv, p), dtype=torch.bool),
            q.new_empty((b, hkv, g) if seed_count is not None else (0,), dtype=torch.float64),
            q.new_empty((b, hkv, p), dtype=torch.int32), q.new_empty((b, hkv), dtype=torch.int32))


# vmap folds into the batch dimension (q, codes, statistics, lengths; bounds and τ_low too)
register_batch_rule(code_bounds, (0, 1, 2, 3, 4, 9))
register_batch_rule(code_candidates, (0, 1, 2, 3, 4, 6, 7, 8, 13, 14, 15))
