"""``entmaxkv::page_scores``: per-page score statistics for every query head of a KV group,
in one pass over the page statistics (what selectors consume; never per token).

For a full page p and query head h (scores s = scale·q·k, work dtype float32 or float64):

    upper[h, p]  = scale·(relu(q)·kmax_p + min(q, 0)·kmin_p) + γ·absmax[h, p]   (+ ALiBi max)
                   a *safe* upper bound of every score in the page (the Quest bound inflated
                   by the rounding error γ = 2(D+2)·eps of a D-term dot product);
    absmax[h, p] = scale·|q|·max(|kmin_p|, |kmax_p|, ν) >= |s| for every token of the page:
                   the scale of the rounding error of any score computed in the page and of
                   the stored mean's (ν, below);
    mean[h, p]   = scale·q·mean_p (+ ALiBi at the page centre): a score some token attains,
                   up to ``mean_slack(...)·absmax`` (the stored mean is rounded);
    sigma[h, p]  = scale·sqrt(Σ_d q_d²·std_pd²) (+ ALiBi spread): the Gaussian model's σ,
                   only when ``with_sigma``.

Grid (B·Hkv, ceil(P / BLOCK_P)); programs past the last full page exit at once, so the work
is proportional to the tokens held, not to the capacity. Entries of pages that are not full
are not written (they are undefined: callers mask them).
Bytes: kmin + kmax (+ mean with ``with_mean``, + std with ``with_sigma``) of the full pages,
read once for the whole GQA group, all in the cache dtype: 2·2·D bytes a page and KV head for
fp16/bf16 (TopK, which reads no mean), 3·2·D with the mean, 4·2·D with the std too.

The CUDA-core forms were taken for instruction-bound (at 128K the fp16 TopK form read ~1.6 TB/s
of 4.25 on the H200; but see the tensor-core form below). ``CHUNK`` picks the page block's
form: 0, the whole-D tile, where 16 threads share a page row and each of the 4·G row sums ends
in 4 shuffle rounds; CHUNK > 0
(``_page_block_chunked``), CHUNK channels at a time with CHUNK/8 threads a row (fp16/bf16),
sums kept inside each thread until one 2-round reduction at the end: 164 instead of 283
static sm_90a instructions a page for fp16 with the mean (bf16: 150 / 255; without the mean
110 / 192), measured by ``benchmarks/page_bounds_sass.py``; on the H200 the chunked form took
the TopK step at 128K, α = 1 from 78.6 to 74.8 µs, and alone without the mean 11.9 µs
(perf-log row 46). Both sum the same
D products in different orders, which γ and ``mean_slack`` allow.

The tensor-core form (``USE_DOT``, ``_page_block_dot``; float16/bfloat16 statistics and queries,
with σ too since session 48: ``SIGMA_DOT``) multiplies the stored statistics [BLOCK_P, D] by the
group's queries [D, G] in float32-accumulated dots: 40 static instructions a page without the
mean instead of 110, 56 with it instead of 164. Yet ncu on the H200 (TopK step, 128K, B = 1,
32/8; session 13) timed one block a program at 18.3 µs, as the chunked form: both read at ~1.9
TB/s, the chunked form at IPC 2.46, this one at 0.93 — the page block was not issue-bound but
waiting on its loads (one-shot programs, 15 warps an SM). What moved it is a program taking
``DOT_ITERS`` blocks in turn with their loads pipelined (``DOT_STAGES``): the TopK step at B =
16, 64K, 250.8 → 211.5 µs (0.27× → 0.23× SDPA), at B = 1, 128K 65.1 → 62.9. The upper bound
carries 3γ·absmax here: the extra 2γ covers the dots' float32 accumulation under the model
``code_scan``'s tensor-core path documents (see ``_page_block_dot``).

The mean is stored in the cache dtype (``state.page_statistics``): mean_scores of a rounded
mean can exceed every score of the page, by at most (unit roundoff)·absmax, and every use of
``mean`` as an attained score subtracts ``mean_slack(work, S, D)·absmax`` (the derivation is
there). ν covers fp16 means in the subnormal range (|m| < 2^-14), where rounding is absolute
(2^-25), not relative: ν = 2^-17 makes 2^-8·ν >= 2^-25. It is 0 for other dtypes (bf16 means
below 2^-126 are float32 underflow, outside the rounding model everywhere in this library).

``entmaxkv::page_bounds`` is the same kernel with one more program per row that scores the
slots of the page holding the newest token exactly (its statistics are not final) and
writes, per query head, their best score and their |score| scale:

    newest_max[h] = max over the newest page's tokens of s (ALiBi included; −inf if none),
    newest_mag[h] = max over those tokens of scale·|q|·|k| (0 if none),
    newest_scores[h, i] = the score of slot i of that page (−inf past the length),
    newest_floor[h] = newest_max[h] − newest_slack·newest_mag[h] (a score the attention computes
                      for some newest-page token: the score floor, without a torch launch),

what a TopK step needs of that page (``newest_page.newest_page_scores(...).amax(-1)`` and
``newest_page_magnitude``, up to the order of the dot products' sums), without torch glue.
A second op rather than new outputs of ``page_scores``: that op's four outputs are a contract.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import multiprocessors, next_pow2, register_batch_rule, work_dtype_of
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs

__all__ = ["page_scores", "page_bounds", "rounding_gamma", "mean_slack", "mean_floor", "uses_dot", "dot_iters"]

# pages per program and warps, CHUNK = 32 (CHUNK = 0: 8 / 2). On the H200 (TopK step, 32K and
# 128K, session 8, step_variants_gpu.py) 16 / 2, 32 / 4 and 64 / 4 were within ±2 µs of 32 / 2.
# With σ (the Gaussian step, which took this form on every cache until session 48, and still
# does on float32 and float64 caches; B = 16, 32/8, fp16, 128K,
# needles; session 17 call 2) 2 warps 1,000.2 µs, 4 warps 934.2, CHUNK 16 at 2 warps 954.3,
# 64-page blocks 1,163.4 (call 3, 64K: 538.7 at 2 warps, 515.0 at 4; call 5, 128K: 990.1 / 938.4),
# the same outputs. Not taken: at 4 warps the gpu test of the forms against the float64 oracle
# failed (calls 3 to 6) — σ's 4 warps beside the lean form's 2 gave another upper bound in its
# last bits (the forms' bit-for-bit contract), and 4 warps for every form still broke a bit-for-
# bit check on fp16 subnormal keys (d = 40, one head; within the tolerances, not investigated)
BLOCK_P = 32
NUM_WARPS = 2
# Channels a program takes at a time (0: the whole head dimension in one tile). See
# ``_page_block_chunked``: the sums over D then run mostly inside each thread.
CHUNK = 32
# The tensor-core form (``_page_block_dot``) for float16/bfloat16 statistics and queries (with σ
# too where ``SIGMA_DOT``, below): DOT_BLOCK_P pages a program, DOT_WARPS warps (static sm_90a
# SASS a page, fp16 with the mean: 56 at 64 / 4, 54 at 128 / 4 with 100 B of spill, 92 at 64 /
# 8). ncu on the H200 (TopK step, 128K, B = 1, 32/8, session 13): the chunked form 18.3 µs at
# 1.9 TB/s, IPC 2.46, 110 SASS instructions a page (45 FFMA, 20 FMNMX, 16 conversions), 23%
# occupancy; this form, one block a program, 18.3 µs at 1.87 TB/s, IPC 0.93 (25% occupancy, set
# by shared memory)
USE_DOT = True
DOT_BLOCK_P = 64
DOT_WARPS = 4
# page blocks a program of the tensor-core form takes in turn, and the software pipeline's
# stages over them (``tl.range``'s num_stages: the next blocks' statistics load, by cp.async,
# while one block's dots run), where the grid keeps at least one program an SM (``dot_iters``).
# On the H200 (TopK step, step_variants_gpu.py, session 13 call 3; µs, the CUDA-core form /
# one block a program / 4 blocks 3 stages): B = 16 32/8 64K α = 1.5 250.8 / 237.6 / 211.5
# (8 blocks: 216.6); B = 1 128K α = 1 65.1 / 65.7 / 62.9 (2 stages 64.0; 32-page blocks, 8 in
# turn 66.3); B = 1 32K 32.1 / 32.9 / 32.9, the same outputs
DOT_ITERS = 4
DOT_STAGES = 3
# ... with the mean, three statistics a stage (48 KB of shared memory at 64-page blocks, D =
# 128 fp16: 144 KB at 3 stages): two stages. On the H200 (Exact step, B = 16, 32/8, fp16, 64K, needles;
# session 17 call 2): 3 stages 363.2 µs, 2 345.5, 4 362.1; 8 blocks in turn 357.7, 8 warps
# 399.8, 32-page blocks 500.1 (128: past the shared memory); the same outputs
DOT_STAGES_WITH_MEAN = 2
# σ (the Gaussian selector) on the tensor-core form too (``_page_block_dot``: q²·std² as a tf32
# dot), not the CUDA-core σ form (``_page_block_chunked``; float32 and float64 caches keep it).
# The CUDA-core σ form holds 233 registers a thread at 2 warps: 4 programs an SM, 12% of the
# warps, and under ncu (H100, B = 16, 128K, session 48) it waits on its loads (1.9 warps stalled
# on a long scoreboard an issue; 42% of the issue slots used) and reads at 55% of DRAM peak
# where the form without σ on tensor cores reads at 83%. The tensor-core σ form, one block a
# program (``DOT_ITERS_WITH_SIGMA``; with 4 blocks in turn it spills 200 B a thread) took the
# Gaussian step on needles on the H100 from 541.2 / 910.9 µs to 449.1 / 710.2 at B = 16, 64K /
# 128K, and 143.6 → 132.2 at B = 1, 128K (101.5 → 102.9 at 64K), the same outputs (perf-log row
# 153; rows 90 and 149: with tf32x3, or 4 blocks in turn, it had been slower or 3–8% faster).
SIGMA_DOT = True
# where SIGMA_DOT is on, σ² as one "tf32" dot (True) instead of "tf32x3" (float32 to rounding):
# σ² then carries tf32's input rounding, within (1 + 2^-10)² − 1 of its nonnegative terms, so σ
# within 2^-10·σ more (the oracle test's ``dot_sigma_tf32`` form, on the GPU; tf32x3 costs three
# dots: rows 90 and 149)
SIGMA_ONE_PASS = True
# page blocks a σ program of the tensor-core form takes in turn where ``dot_iters`` loops (4,
# ``DOT_ITERS``, spill 200 B a thread for sm_90a and ran 823.7 µs against 706.3 at B = 16 128K)
DOT_ITERS_WITH_SIGMA = 1
# the tensor-core σ form's head dimension in this many chunks (``_page_block_dot_chunks``; at most
# BLOCK_D / 16, tl.dot's smallest K): ptxas for sm_90a (fp16, G = 4, with the mean) 168 registers a
# thread at 1, 144 at 2, 120 at 4 (3, 3 and 4 programs an SM of 4 warps; session 54). Not yet timed on
# a GPU, so 1 (the unchunked form): raw-2026-12-07-s54/call5.sh times 4 as ``page_scores.SIGMA_D_CHUNKS=4``.
# Its dots sum in another order than the unchunked forms': upper, absmax and the mean within the same
# rounding model, but not bit for bit equal to the forms without σ (the tests check each against the oracle)
SIGMA_D_CHUNKS = 1


def rounding_gamma(dtype: torch.dtype, head_dim: int) -> float:
    """Relative error bound of a length-D dot product plus one scaling, with slack (the same
    γ as ``entmaxkv.bounds``)."""
    return 2.0 * (head_dim + 2) * torch.finfo(dtype).eps


# The unit roundoff of the stored mean for a float32-work cache: bf16's (2^-8), the coarsest
# statistics dtype with float32 work (fp16: 2^-11; float32: no rounding beyond the compute's).
# Ops that see only work-dtype page scores (``quest_select``) cannot tell fp16 from bf16, so
# the slack takes the coarsest; a lower floor only lets a few more survivors through.
MEAN_UNIT_ROUNDOFF = 2.0 ** -8


def mean_slack(work: torch.dtype, page_size: int, head_dim: int) -> float:
    """c such that ``mean[h, p] − c·absmax[h, p]`` is at most the computed score of some token
    of full page p: what a score floor or an attained score L_h subtracts from a mean score.

    With M_d = max(|kmin_d|, |kmax_d|) (absmax = scale·Σ_d |q_d|·max(M_d, ν)) and m the exact
    mean (max_i q·k_i >= q·m: m is a convex combination of the keys):
    - the mean computed (float64, rounded to float32; before: float32 sums) is within
      S·eps·M_d of m per channel: ``2·S·eps`` covers it with room;
    - rounding it to the cache dtype moves channel d by at most u·M_d, u the cache dtype's
      unit roundoff (2^-11 fp16, 2^-8 bf16; 0 for float32/float64 caches): both roundings
      are monotone and kmin_d, kmax_d are representable, so the stored mean stays in
      [kmin_d, kmax_d]. Below fp16's normal range the error is 2^-25 at most, <= 2^-8·ν;
    - the mean score and the attained token's score are D-term dot products, γ·absmax each
      (γ = 2(D+2)·eps): ``4·(D+2)·eps``.
    So c >= (2S + 4(D+2))·eps + u, with u = 2^-8 for float32 work (bf16's, which covers fp16)
    and 0 for float64 (a float64 cache keeps float64 statistics), rounded up to a power of two:
    then c·absmax is exact (above the subnormals), and mean − c·absmax rounds the same whether
    it is one fused multiply-subtract (what the GPU compiles ``quest_select``'s floor to) or a
    product and a difference (torch's ``KernelOps.score_floor``). With c itself the two differed
    by one float32 ulp on the H200 at 128K (2026-11-29), where the torch composition is meant
    to give the same floor bit for bit."""
    u = 0.0 if work == torch.float64 else MEAN_UNIT_ROUNDOFF
    return _power_of_two_above((2 * page_size + 4 * (head_dim + 2)) * torch.finfo(work).eps + u)


def newest_slack(work: torch.dtype, head_dim: int) -> float:
    """c such that ``newest_max − c·magnitude`` is a score the attention computes for some
    newest-page token: 2γ (the best score's own rounding and the attention's, γ·magnitude
    each) rounded up to a power of two, for the reason of ``mean_slack``: c·magnitude is then
    exact, so the floor rounds the same as one fused multiply-subtract (``quest_select`` on the
    GPU), a product and a difference (the interpreter), or ``torch.add(..., alpha=−c)`` (the
    torch composition, fused on the CPU). With 2γ itself the CPU's torch and the interpreter
    differed by one float32 ulp (CI, 2026-12-02, seed 904010017 of
    ``test_quest_select_finds_keys_that_only_the_tail_holds``)."""
    return _power_of_two_above(2 * rounding_gamma(work, head_dim))


def _power_of_two_above(c: float) -> float:
    """The least power of two >= c > 0."""
    mantissa, exponent = math.frexp(c)  # c = mantissa·2^exponent, mantissa in [0.5, 1)
    return math.ldexp(1.0, exponent - 1 if mantissa == 0.5 else exponent)


def mean_floor(stats_dtype: torch.dtype) -> float:
    """ν of ``absmax`` for a cache whose mean is stored in ``stats_dtype``: 2^-17 for fp16
    (2^-8·ν covers the 2^-25 absolute rounding of a subnormal fp16 mean), 0 otherwise."""
    return 2.0 ** -17 if stats_dtype == torch.float16 else 0.0


@triton.jit
def _page_scores_kernel(
    q, k_min, k_max, k_mean, k_std, seq_lens, slopes, k_pages,
    upper, absmax, mean, sigma, newest_max, newest_mag, newest_scores, newest_floor,
    scale, slack, gamma, alibi_eps, nu, H, P, D,
    S: tl.constexpr, G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    WORK: tl.constexpr, HAS_ALIBI: tl.constexpr, WITH_SIGMA: tl.constexpr, WITH_NEWEST: tl.constexpr,
    HAS_NU: tl.constexpr, WITH_MEAN: tl.constexpr, CHUNK: tl.constexpr, VEC: tl.constexpr, DOT: tl.constexpr = False,
    GD: tl.constexpr = 16, DOT_F32: tl.constexpr = False, ITERS: tl.constexpr = 1, STAGES: tl.constexpr = 1,
    PDL: tl.constexpr = False, SIGMA_ONE_PASS: tl.constexpr = False, D_CHUNKS: tl.constexpr = 1,
):
    pdl_enter(PDL)
    bh = tl.program_id(0)
    block = tl.program_id(1)
    b = bh // H
    length = tl.load(seq_lens + b).to(tl.int32)
    full = length // S
    if WITH_NEWEST:
        if block == tl.num_programs(1) - 1:  # the extra program: the newest page, token by token
            _newest_page(q, k_pages, slopes, newest_max, newest_mag, newest_scores, newest_floor, scale, slack, bh, H,
                         P, D, length, S, G,
                         BLOCK_S, BLOCK_D, WORK, HAS_ALIBI, True)
    if DOT:
        if block * BLOCK_P * ITERS < full:
            if D_CHUNKS > 1:
                _page_block_dot_chunks(q, k_min, k_max, k_mean, k_std, slopes, upper, absmax, mean, sigma, scale,
                                       gamma, alibi_eps, nu, bh, block, H, P, D, length, full, S, G, GD, BLOCK_P,
                                       BLOCK_D, WORK, HAS_ALIBI, HAS_NU, WITH_MEAN, WITH_SIGMA, DOT_F32, ITERS, STAGES,
                                       SIGMA_ONE_PASS, D_CHUNKS)
            else:
                _page_block_dot(q, k_min, k_max, k_mean, k_std, slopes, upper, absmax, mean, sigma, scale, gamma,
                                alibi_eps, nu, bh, block, H, P, D, length, full, S, G, GD, BLOCK_P, BLOCK_D, WORK,
                                HAS_ALIBI, HAS_NU, WITH_MEAN, WITH_SIGMA, DOT_F32, ITERS, STAGES, SIGMA_ONE_PASS)
    elif CHUNK > 0:
        if block * BLOCK_P < full:
            _page_block_chunked(q, k_min, k_max, k_mean, k_std, slopes, upper, absmax, mean, sigma, scale, gamma,
                                alibi_eps, nu, bh, block, H, P, D, length, full, S, G, BLOCK_P, BLOCK_D, CHUNK, VEC,
                                WORK, HAS_ALIBI, WITH_SIGMA, HAS_NU, WITH_MEAN)
    elif block * BLOCK_P < full:
        scale_w = tl.cast(scale, WORK)
        d = tl.arange(0, BLOCK_D)
        p = block * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < full
        dmask = d < D
        stat = (bh.to(tl.int64) * P + p)[:, None] * D + d[None, :]
        smask = pmask[:, None] & dmask[None, :]
        # fp16/bf16 products are exact in float32: converting first loses nothing
        kmin = tl.load(k_min + stat, mask=smask, other=0.0).to(WORK)
        kmax = tl.load(k_max + stat, mask=smask, other=0.0).to(WORK)
        kabs = tl.maximum(tl.abs(kmin), tl.abs(kmax))
        if WITH_MEAN:
            kabs_mean = tl.maximum(kabs, tl.cast(nu, WORK))  # absmax's: also the stored mean's rounding scale
            kmean = tl.load(k_mean + stat, mask=smask, other=0.0).to(WORK)
        if WITH_SIGMA:
            kstd = tl.load(k_std + stat, mask=smask, other=0.0).to(WORK)
            kvar = kstd * kstd
        # one pass over the page statistics serves every query head of the group
        for g in tl.static_range(G):
            qrow = (bh * G + g).to(tl.int64)
            qv = tl.load(q + qrow * D + d, mask=dmask, other=0.0).to(WORK)[None, :]
            u = tl.sum(tl.maximum(qv, 0.0) * kmax + tl.minimum(qv, 0.0) * kmin, axis=1)
            mag = tl.sum(tl.abs(qv) * kabs, axis=1) * scale_w
            u = u * scale_w + tl.cast(gamma, WORK) * mag
            mu, var = u, u  # placeholders: stored only WITH_MEAN / WITH_SIGMA
            if WITH_MEAN:
                if HAS_NU:  # fp16 statistics: ν >= |key| where the mean's rounding is absolute
                    mag = tl.sum(tl.abs(qv) * kabs_mean, axis=1) * scale_w
                mu = tl.sum(qv * kmean, axis=1) * scale_w
            if WITH_SIGMA:
                var = tl.sum(qv * qv * kvar, axis=1) * (scale_w * scale_w)
            _store_head(upper, absmax, mean, sigma, slopes, u, mag, mu, var, bh, g, qrow, p, pmask, length, alibi_eps,
                        H, P, S, G, WORK, HAS_ALIBI, WITH_MEAN, WITH_SIGMA)


@triton.jit
def _chunk_sum(acc, x, FIRST: tl.constexpr, BLOCK_P: tl.constexpr, CHUNK: tl.constexpr, VEC: tl.constexpr):
    """acc [BLOCK_P, CHUNK // VEC] + x summed over each thread's VEC channels (x: [BLOCK_P,
    CHUNK], or [BLOCK_P, CHUNK, 2] for two products a channel): the VEC channels a thread loads
    together, so the sum stays inside the thread (no shuffle) and compiles to one chain of fused
    multiply-adds. ``FIRST``: acc is not read (the first chunk: no zeros to add)."""
    s = tl.sum(tl.reshape(x, [BLOCK_P, CHUNK // VEC, x.numel // (BLOCK_P * (CHUNK // VEC))]), axis=2)
    if FIRST:
        return s
    return acc + s


@triton.jit
def _page_block_chunked(q, k_min, k_max, k_mean, k_std, slopes, upper, absmax, mean, sigma, scale, gamma, alibi_eps, nu,
                        bh, block, H, P, D, length, full, S: tl.constexpr, G: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, VEC: tl.constexpr, WORK: tl.constexpr,
                        HAS_ALIBI: tl.constexpr, WITH_SIGMA: tl.constexpr, HAS_NU: tl.constexpr,
                        WITH_MEAN: tl.constexpr):
    """``_page_scores_kernel``'s page block, CHUNK channels at a time.

    The whole-D tile spreads a page row over 16 threads (8 fp16 channels each), so every one of
    the 4·G sums a page ends in 4 shuffle rounds. Here a [BLOCK_P, CHUNK] tile has CHUNK/VEC
    threads a row: each sum adds a thread's VEC products in registers chunk by chunk into
    [BLOCK_P, CHUNK/VEC] partial sums (one per thread and row), and only those are summed
    across threads, once, at the end (log2(CHUNK/VEC) rounds). The same quantities in another
    summation order: γ and ``mean_slack`` hold for any order of a D-term dot product."""
    scale_w = tl.cast(scale, WORK)
    c = tl.arange(0, CHUNK)
    p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < full
    stat_row = (bh.to(tl.int64) * P + p) * D  # [BLOCK_P]
    zero = tl.zeros([BLOCK_P, CHUNK // VEC], WORK)
    acc_u, acc_mag, acc_nu, acc_mu, acc_var = (), (), (), (), ()  # one partial sum per query head
    for g in tl.static_range(G):
        acc_u, acc_mag, acc_nu, acc_mu, acc_var = acc_u + (zero,), acc_mag + (zero,), acc_nu + (zero,), \
            acc_mu + (zero,), acc_var + (zero,)
    for start in tl.static_range(0, BLOCK_D, CHUNK):
        d = start + c
        dmask = d < D
        stat = stat_row[:, None] + d[None, :]
        smask = pmask[:, None] & dmask[None, :]
        # fp16/bf16 products are exact in float32: converting first loses nothing
        kmin = tl.load(k_min + stat, mask=smask, other=0.0).to(WORK)
        kmax = tl.load(k_max + stat, mask=smask, other=0.0).to(WORK)
        kabs = tl.maximum(tl.abs(kmin), tl.abs(kmax))
        if WITH_MEAN:
            kmean = tl.load(k_mean + stat, mask=smask, other=0.0).to(WORK)
            kabs_mean = tl.maximum(kabs, tl.cast(nu, WORK))  # absmax's: also the stored mean's rounding scale
        if WITH_SIGMA:
            kstd = tl.load(k_std + stat, mask=smask, other=0.0).to(WORK)
            kvar = kstd * kstd
        new_u, new_mag, new_nu, new_mu, new_var = (), (), (), (), ()
        for g in tl.static_range(G):
            # [1, CHUNK]: the tiles' own layout, broadcast over the rows in registers
            qv = tl.load(q + (bh * G + g).to(tl.int64) * D + d[None, :], mask=dmask[None, :], other=0.0).to(WORK)
            # relu(q)·kmax and min(q, 0)·kmin side by side: one chain of products for the sum
            both = tl.join(tl.maximum(qv, 0.0) * kmax, tl.minimum(qv, 0.0) * kmin)
            new_u += (_chunk_sum(acc_u[g], both, start == 0, BLOCK_P, CHUNK, VEC),)
            new_mag += (_chunk_sum(acc_mag[g], tl.abs(qv) * kabs, start == 0, BLOCK_P, CHUNK, VEC),)
            if WITH_MEAN and HAS_NU:  # fp16 statistics: ν >= |key| where the mean's rounding is absolute
                new_nu += (_chunk_sum(acc_nu[g], tl.abs(qv) * kabs_mean, start == 0, BLOCK_P, CHUNK, VEC),)
            else:
                new_nu += (zero,)
            if WITH_MEAN:
                new_mu += (_chunk_sum(acc_mu[g], qv * kmean, start == 0, BLOCK_P, CHUNK, VEC),)
            else:
                new_mu += (zero,)
            if WITH_SIGMA:
                new_var += (_chunk_sum(acc_var[g], qv * qv * kvar, start == 0, BLOCK_P, CHUNK, VEC),)
            else:
                new_var += (zero,)
        acc_u, acc_mag, acc_nu, acc_mu, acc_var = new_u, new_mag, new_nu, new_mu, new_var
    for g in tl.static_range(G):
        qrow = (bh * G + g).to(tl.int64)
        mag = tl.sum(acc_mag[g], axis=1) * scale_w
        u = tl.sum(acc_u[g], axis=1) * scale_w + tl.cast(gamma, WORK) * mag
        mu, var = u, u  # placeholders: stored only WITH_MEAN / WITH_SIGMA
        if WITH_MEAN:
            if HAS_NU:
                mag = tl.sum(acc_nu[g], axis=1) * scale_w
            mu = tl.sum(acc_mu[g], axis=1) * scale_w
        if WITH_SIGMA:
            var = tl.sum(acc_var[g], axis=1) * (scale_w * scale_w)
        _store_head(upper, absmax, mean, sigma, slopes, u, mag, mu, var, bh, g, qrow, p, pmask, length, alibi_eps, H, P,
                    S, G, WORK, HAS_ALIBI, WITH_MEAN, WITH_SIGMA)


@triton.jit
def _dot(a, b, F32: tl.constexpr):
    """a @ b accumulated in float32; ``F32``: float32 operands multiplied exactly (the
    interpreter's stand-in for bfloat16 ones, whose products are exact in float32 too)."""
    if F32:
        return tl.dot(a, b, input_precision="ieee", out_dtype=tl.float32)
    return tl.dot(a, b, out_dtype=tl.float32)


@triton.jit
def _dot_acc(a, b, acc, F32: tl.constexpr):
    """acc + a @ b accumulated in float32 (``_dot`` continuing a chain)."""
    if F32:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float32)
    return tl.dot(a, b, acc, out_dtype=tl.float32)


@triton.jit
def _query_tiles(q, qrows, d, dmask, heads, G: tl.constexpr, D, DOT_F32: tl.constexpr):
    """The group's queries [len(d), GD] over the channels d (heads past G and channels past D
    zero) and relu(q), min(q, 0), |q| of them, in q's dtype (float32 with ``DOT_F32``)."""
    qt = tl.load(q + qrows[None, :] * D + d[:, None], mask=dmask[:, None] & (heads < G)[None, :], other=0.0)
    if DOT_F32:  # the interpreter's bfloat16 arithmetic is broken: exact float32 there
        qt = qt.to(tl.float32)
    # max, min and abs of stored values are stored values: the casts back (Triton computes a
    # bfloat16 maximum in float32) change nothing
    zero = tl.zeros_like(qt)
    return qt, tl.maximum(qt, zero).to(qt.dtype), tl.minimum(qt, zero).to(qt.dtype), tl.abs(qt).to(qt.dtype)


@triton.jit
def _page_block_dot(q, k_min, k_max, k_mean, k_std, slopes, upper, absmax, mean, sigma, scale, gamma, alibi_eps, nu,
                    bh, block, H, P, D, length, full, S: tl.constexpr, G: tl.constexpr, GD: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr,
                    HAS_NU: tl.constexpr, WITH_MEAN: tl.constexpr, WITH_SIGMA: tl.constexpr, DOT_F32: tl.constexpr,
                    ITERS: tl.constexpr, STAGES: tl.constexpr, SIGMA_ONE_PASS: tl.constexpr = False):
    """``_page_scores_kernel``'s page block on tensor cores: the page statistics [BLOCK_P, D]
    (float16 or bfloat16, as stored) times the group's queries [D, GD] (the same dtype, heads
    past G zero) in float32-accumulated ``tl.dot`` calls — relu(q) with kmax, min(q, 0) with kmin,
    |q| with max(|kmin|, |kmax|) (and with max(·, ν), and q with the mean) — with no
    conversion of the statistics and no per-head loop. The inputs are exact (the
    statistics are used as stored, q in its own dtype, max/abs/relu are exact) and their
    products fit float32; only the accumulation's order and rounding differ from the other
    forms. The launcher passes 3γ (3γ·absmax on ``upper``). Under the model ``code_scan``'s
    tensor-core path documents, a float32-accumulated K-term product sum is within
    2K·eps·Σ|a·b| of the exact one (eps = 2^-23); Triton compiles the Quest bound's two dots
    and their sum into one chain of 2D products (the second dot accumulates into the first),
    so its error is at most 4D·eps·absmax/scale, and the extra 2γ = (4D + 8)·eps covers it and
    the scaling: ``upper`` here is at least the exact Quest bound plus γ·absmax (the CUDA-core
    forms guarantee the exact bound plus γ·absmax less their own D-term rounding). ``absmax``
    and the mean are single D-term dots, within 2D·eps <= γ of theirs (``mean_slack`` assumes
    γ). (Review of session 13: the first form's 2γ assumed two separate dots.)

    σ² (``WITH_SIGMA``, where ``SIGMA_DOT`` lets σ take this form) is std² [BLOCK_P, D] times
    q² [D, GD], both float32 and exact (squares of 11- or 8-bit significands: at most 22 bits;
    for bf16, within float32's range of squares, |x| in [2^-63, 2^64]), in one ``tf32`` dot
    (``SIGMA_ONE_PASS``, the default; below) or, with that off, in a ``tf32x3`` dot:
    each operand splits exactly into a high and a low tf32 part (11 bits each), and the dot
    drops only the low-low products (2^-22 of a term). Its three D-term dots run as one chain
    of 3D products (as the Quest bound's two run as one of 2D), so under the model above σ² is
    within (6D + 4)·eps·σ² (in practice nearer 2D·eps: the low parts' dots are 2^-11 of the
    sum), σ within (3D + 2)·eps·σ < 1.5·γ·σ (the CUDA-core forms: γ·σ; the test allows 4γ·σ).
    ``SIGMA_ONE_PASS``: one ``tf32`` dot; each operand loses at most 2^-10 of itself (tf32
    keeps 10 fraction bits, rounded or truncated), every term is nonnegative, so σ² is within
    a factor (1 ± 2^-10)² of the sum above and σ within 2^-10·σ + 2^-21·σ of it, which the
    test's 4γ·σ more than covers past the 2^-10 it adds. The interpreter runs every dot as a
    float32 matmul: only the GPU test can see the precision."""
    scale_w = tl.cast(scale, WORK)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    heads = tl.arange(0, GD)
    qrows = (bh * G + heads).to(tl.int64)  # [GD]
    qt, q_pos, q_neg, qabs = _query_tiles(q, qrows, d, dmask, heads, G, D, DOT_F32)
    q_sq = qt.to(tl.float32) * qt.to(tl.float32)  # exact: an 11-bit significand squared
    for i in tl.range(0, ITERS, num_stages=STAGES):
        p = (block * ITERS + i) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < full
        stat = (bh.to(tl.int64) * P + p)[:, None] * D + d[None, :]
        smask = pmask[:, None] & dmask[None, :]
        kmin = tl.load(k_min + stat, mask=smask, other=0.0)  # [BLOCK_P, BLOCK_D], the stored dtype
        kmax = tl.load(k_max + stat, mask=smask, other=0.0)
        if DOT_F32:
            kmin, kmax = kmin.to(tl.float32), kmax.to(tl.float32)
        quest = _dot(kmax, q_pos, DOT_F32) + _dot(kmin, q_neg, DOT_F32)  # [BLOCK_P, GD]
        kabs = tl.maximum(tl.abs(kmin), tl.abs(kmax)).to(kmin.dtype)
        mag = _dot(kabs, qabs, DOT_F32) * scale_w
        u = quest * scale_w + tl.cast(gamma, WORK) * mag
        mu = u  # a placeholder: stored only WITH_MEAN
        if WITH_MEAN:
            kmean = tl.load(k_mean + stat, mask=smask, other=0.0)
            if DOT_F32:
                kmean = kmean.to(tl.float32)
            if HAS_NU:  # fp16 statistics: ν >= |key| where the mean's rounding is absolute
                kabs_nu = tl.maximum(kabs, tl.full(kabs.shape, nu, kabs.dtype)).to(kabs.dtype)
                mag = _dot(kabs_nu, qabs, DOT_F32) * scale_w
            mu = _dot(kmean, qt, DOT_F32) * scale_w
        var = u  # a placeholder: stored only WITH_SIGMA
        if WITH_SIGMA:
            kstd = tl.load(k_std + stat, mask=smask, other=0.0).to(tl.float32)
            if SIGMA_ONE_PASS:
                var = tl.dot(kstd * kstd, q_sq, input_precision="tf32", out_dtype=tl.float32) * (scale_w * scale_w)
            else:
                var = tl.dot(kstd * kstd, q_sq, input_precision="tf32x3", out_dtype=tl.float32) * (scale_w * scale_w)
        # every head's [BLOCK_P] column at once: [BLOCK_P, 1] pages against [1, GD] heads
        _store_head(upper, absmax, mean, sigma, slopes, u, mag, mu, var, bh, heads[None, :], qrows[None, :],
                    p[:, None], pmask[:, None] & (heads < G)[None, :], length, alibi_eps, H, P, S, G, WORK, HAS_ALIBI,
                    WITH_MEAN, WITH_SIGMA)


@triton.jit
def _page_block_dot_chunks(q, k_min, k_max, k_mean, k_std, slopes, upper, absmax, mean, sigma, scale, gamma, alibi_eps,
                           nu, bh, block, H, P, D, length, full, S: tl.constexpr, G: tl.constexpr, GD: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr,
                           HAS_NU: tl.constexpr, WITH_MEAN: tl.constexpr, WITH_SIGMA: tl.constexpr,
                           DOT_F32: tl.constexpr, ITERS: tl.constexpr, STAGES: tl.constexpr,
                           SIGMA_ONE_PASS: tl.constexpr, D_CHUNKS: tl.constexpr):
    """``_page_block_dot`` with the head dimension in D_CHUNKS chunks of BLOCK_D / D_CHUNKS
    channels (``SIGMA_D_CHUNKS``, the σ form only): each chunk's statistics are loaded and its dots
    accumulate into the chunks' before — the same products in one chain per quantity, so the
    rounding model of ``_page_block_dot`` holds unchanged — with a quarter (at 4 chunks) of the
    statistics' tiles in registers at once: 120 registers a thread for sm_90a (fp16, G = 4, the
    mean and σ) against 168, 4 programs an SM against 3 (session 54, not yet timed)."""
    scale_w = tl.cast(scale, WORK)
    heads = tl.arange(0, GD)
    qrows = (bh * G + heads).to(tl.int64)  # [GD]
    CH: tl.constexpr = BLOCK_D // D_CHUNKS
    for i in tl.range(0, ITERS, num_stages=STAGES):
        p = (block * ITERS + i) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < full
        quest = tl.zeros((BLOCK_P, GD), tl.float32)
        mag = tl.zeros((BLOCK_P, GD), tl.float32)
        mag_nu = tl.zeros((BLOCK_P, GD), tl.float32)
        mu = tl.zeros((BLOCK_P, GD), tl.float32)
        var = tl.zeros((BLOCK_P, GD), tl.float32)
        for c in tl.static_range(D_CHUNKS):
            d = c * CH + tl.arange(0, CH)
            dmask = d < D
            qt, q_pos, q_neg, qabs = _query_tiles(q, qrows, d, dmask, heads, G, D, DOT_F32)
            stat = (bh.to(tl.int64) * P + p)[:, None] * D + d[None, :]
            smask = pmask[:, None] & dmask[None, :]
            kmin = tl.load(k_min + stat, mask=smask, other=0.0)  # [BLOCK_P, CH], the stored dtype
            kmax = tl.load(k_max + stat, mask=smask, other=0.0)
            if DOT_F32:
                kmin, kmax = kmin.to(tl.float32), kmax.to(tl.float32)
            quest = _dot_acc(kmin, q_neg, _dot_acc(kmax, q_pos, quest, DOT_F32), DOT_F32)
            kabs = tl.maximum(tl.abs(kmin), tl.abs(kmax)).to(kmin.dtype)
            mag = _dot_acc(kabs, qabs, mag, DOT_F32)
            if WITH_MEAN:
                kmean = tl.load(k_mean + stat, mask=smask, other=0.0)
                if DOT_F32:
                    kmean = kmean.to(tl.float32)
                if HAS_NU:  # fp16 statistics: ν >= |key| where the mean's rounding is absolute
                    kabs_nu = tl.maximum(kabs, tl.full(kabs.shape, nu, kabs.dtype)).to(kabs.dtype)
                    mag_nu = _dot_acc(kabs_nu, qabs, mag_nu, DOT_F32)
                mu = _dot_acc(kmean, qt, mu, DOT_F32)
            if WITH_SIGMA:
                q_sq = qt.to(tl.float32) * qt.to(tl.float32)  # exact: an 11-bit significand squared
                kstd = tl.load(k_std + stat, mask=smask, other=0.0).to(tl.float32)
                if SIGMA_ONE_PASS:
                    var = tl.dot(kstd * kstd, q_sq, var, input_precision="tf32", out_dtype=tl.float32)
                else:
                    var = tl.dot(kstd * kstd, q_sq, var, input_precision="tf32x3", out_dtype=tl.float32)
        mag = mag * scale_w
        u = quest * scale_w + tl.cast(gamma, WORK) * mag
        if WITH_MEAN:
            if HAS_NU:
                mag = mag_nu * scale_w
            mu = mu * scale_w
        else:
            mu = u  # a placeholder: stored only WITH_MEAN
        if WITH_SIGMA:
            var = var * (scale_w * scale_w)
        else:
            var = u  # a placeholder: stored only WITH_SIGMA
        _store_head(upper, absmax, mean, sigma, slopes, u, mag, mu, var, bh, heads[None, :], qrows[None, :],
                    p[:, None], pmask[:, None] & (heads < G)[None, :], length, alibi_eps, H, P, S, G, WORK, HAS_ALIBI,
                    WITH_MEAN, WITH_SIGMA)


@triton.jit
def _store_head(upper, absmax, mean, sigma, slopes, u, mag, mu, var, bh, g, qrow, p, pmask, length, alibi_eps, H, P,
                S: tl.constexpr, G: tl.constexpr, WORK: tl.constexpr, HAS_ALIBI: tl.constexpr,
                WITH_MEAN: tl.constexpr, WITH_SIGMA: tl.constexpr):
    """Query head g's page quantities [BLOCK_P] of the pages p (``qrow`` = bh·G + g; or, from
    ``_page_block_dot``, g and qrow [1, GD] and p [BLOCK_P, 1]: every head at once): with ALiBi
    the page's largest bias on the upper bound (inflated by its rounding), the page-centre bias
    on the mean and the positions' variance on σ²; then stored (absmax and mean only WITH_MEAN,
    σ only WITH_SIGMA)."""
    if HAS_ALIBI:
        slope = tl.load(slopes + (bh % H) * G + g, mask=g < G, other=0.0).to(WORK)  # g: a head or [1, GD] heads
        qpos_t = length - 1
        first = (p * S - qpos_t).to(WORK)
        last = (p * S + S - 1 - qpos_t).to(WORK)
        bias = tl.maximum(slope * first, slope * last)
        u += bias + tl.cast(alibi_eps, WORK) * tl.abs(bias)
        if WITH_MEAN:
            mu += slope * (first + (S - 1) / 2)
        if WITH_SIGMA:
            var += slope * slope * ((S * S - 1) / 12)
    out = qrow * P + p
    tl.store(upper + out, u, mask=pmask)
    if WITH_MEAN:
        tl.store(absmax + out, mag, mask=pmask)
        tl.store(mean + out, mu, mask=pmask)
    if WITH_SIGMA:
        tl.store(sigma + out, tl.sqrt(var), mask=pmask)


@triton.jit
def _newest_page(q, k_pages, slopes, newest_max, newest_mag, newest_scores, newest_floor, scale, slack, bh, H, P, D,
                 length, S: tl.constexpr, G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                 WORK: tl.constexpr, HAS_ALIBI: tl.constexpr, STORE_SCORES: tl.constexpr):
    """The newest page's best score and |score| scale per query head of row bh, the score
    floor best − slack·scale (``newest_slack``: a power of two, so one rounding, the bits of
    ``torch.add(best, scale, alpha=−slack)``), and with ``STORE_SCORES`` its slot
    scores (−inf past the length) (scores as ``sparse_decode`` and the reference compute them:
    a D-term dot product, scaled)."""
    scale_w = tl.cast(scale, WORK)
    page = tl.maximum(length - 1, 0) // S
    slot = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    pos = page * S + slot
    valid = (slot < S) & (pos < length)
    dmask = d < D
    rows = (bh.to(tl.int64) * P + page) * S + slot
    k = tl.load(k_pages + rows[:, None] * D + d[None, :], mask=valid[:, None] & dmask[None, :], other=0.0).to(WORK)
    kabs = tl.abs(k)
    for g in tl.static_range(G):
        qrow = (bh * G + g).to(tl.int64)
        qv = tl.load(q + qrow * D + d, mask=dmask, other=0.0).to(WORK)[None, :]
        s = tl.sum(qv * k, axis=1) * scale_w
        if HAS_ALIBI:
            slope = tl.load(slopes + (bh % H) * G + g).to(WORK)
            s += slope * (pos - (length - 1)).to(WORK)
        mag = tl.sum(tl.abs(qv) * kabs, axis=1) * scale_w
        s = tl.where(valid, s, float("-inf"))
        if STORE_SCORES:
            tl.store(newest_scores + qrow * S + slot, s, mask=slot < S)
        best = tl.max(s, axis=0)
        size = tl.max(tl.where(valid, mag, 0.0), axis=0)
        tl.store(newest_max + qrow, best)
        tl.store(newest_mag + qrow, size)
        tl.store(newest_floor + qrow, best - size * slack)


def uses_dot(q: torch.Tensor, k_min: torch.Tensor, with_sigma: bool) -> bool:
    """Whether the page statistics go through ``_page_block_dot`` (tensor cores): ``USE_DOT``,
    float16 or bfloat16 statistics and queries of the same dtype (exact tensor-core inputs),
    σ only with ``SIGMA_DOT`` (on: q²·std² as one ``tf32`` dot, or ``tf32x3`` without
    ``SIGMA_ONE_PASS``) and a head dimension of at least 16 (``tl.dot``'s smallest K)."""
    return (bool(USE_DOT) and k_min.dtype in (torch.float16, torch.bfloat16) and q.dtype == k_min.dtype
            and (not with_sigma or bool(SIGMA_DOT)) and k_min.shape[-1] >= 16)


def sigma_chunks(head_dim: int) -> int:
    """``SIGMA_D_CHUNKS`` down to a power of two (a chunk's channels are one), at most
    next_pow2(D) / 16 (each chunk's dots need K >= 16)."""
    chunks = 1 << (max(int(SIGMA_D_CHUNKS), 1).bit_length() - 1)
    return max(1, min(chunks, next_pow2(head_dim) // 16))


def dot_iters(blocks: int, device: torch.device, with_sigma: bool = False) -> int:
    """Page blocks a tensor-core program takes in turn: ``DOT_ITERS`` (``DOT_ITERS_WITH_SIGMA``
    with σ) where the ``blocks`` (rows × page blocks) still make a program for every SM, else
    1 (at B = 1, 32/8 on the H200: from 128K up). The interpreter counts one SM: its tests see
    the loop. The blocks are the cache's capacity (shapes are static; the lengths live on the
    device): a cache preallocated far beyond what it holds gets the loop, and its filled pages
    then fall to a quarter of the programs (a program takes consecutive blocks) — not measured."""
    iters = DOT_ITERS_WITH_SIGMA if with_sigma else DOT_ITERS
    return iters if blocks >= iters * multiprocessors(device) else 1


def _launch(q, k_min, k_max, k_mean, k_std, seq_lens, alibi_slopes, k_pages, page_size, scale, with_sigma,
            with_newest, with_mean):
    b, hkv, p, d = k_min.shape
    g = q.shape[1] // hkv
    work = work_dtype_of(k_min.dtype)
    shape = (b, hkv, g, p)
    upper = torch.empty(shape, dtype=work, device=q.device)
    absmax = torch.empty(shape if with_mean else (0,), dtype=work, device=q.device)
    mean = torch.empty_like(absmax)
    sigma = torch.empty(shape if with_sigma else (0,), dtype=work, device=q.device)
    newest_max = torch.empty((b, hkv, g) if with_newest else (0,), dtype=work, device=q.device)
    newest_mag = torch.empty_like(newest_max)
    newest_scores = torch.empty((b, hkv, g, page_size) if with_newest else (0,), dtype=work, device=q.device)
    newest_floor = torch.empty_like(newest_max)
    if work == torch.float64:  # kernels get float scalars as float32: scale q exactly here instead
        q, scale = q * scale, 1.0
    slopes = alibi_slopes if alibi_slopes is not None else upper  # never read without ALiBi
    nu = mean_floor(k_mean.dtype)
    dot = uses_dot(q, k_min, with_sigma)
    block_p = DOT_BLOCK_P if dot else BLOCK_P
    iters = dot_iters(b * hkv * triton.cdiv(p, block_p), q.device, with_sigma) if dot else 1
    grid = (b * hkv, triton.cdiv(p, block_p * iters) + (1 if with_newest else 0))
    chunk = min(CHUNK, next_pow2(d))
    gamma = rounding_gamma(work, d) * (3 if dot else 1)  # ``_page_block_dot``: 2γ for the dots' accumulation
    wrap_triton(_page_scores_kernel)[grid](
        q, k_min, k_max, k_mean, k_std, seq_lens, slopes, k_pages if with_newest else upper,
        upper, absmax if with_mean else upper, mean if with_mean else upper, sigma if with_sigma else upper,
        newest_max if with_newest else upper,
        newest_mag if with_newest else upper, newest_scores if with_newest else upper,
        newest_floor if with_newest else upper, scale, newest_slack(work, d), gamma, 4 * torch.finfo(work).eps, nu,
        hkv, p, d,
        S=page_size, G=g, BLOCK_P=block_p, BLOCK_D=next_pow2(d), BLOCK_S=next_pow2(page_size),
        WORK=tl.float64 if work == torch.float64 else tl.float32,
        HAS_ALIBI=alibi_slopes is not None, WITH_SIGMA=with_sigma, WITH_NEWEST=with_newest, HAS_NU=nu > 0,
        WITH_MEAN=with_mean, CHUNK=chunk, VEC=min(16 // k_min.element_size(), max(chunk, 1)), DOT=dot,
        GD=max(16, next_pow2(g)), DOT_F32=not q.is_cuda and k_min.dtype == torch.bfloat16, ITERS=iters,
        STAGES=(DOT_STAGES_WITH_MEAN if with_mean or with_sigma else DOT_STAGES) if dot else 1,
        num_warps=DOT_WARPS if dot else NUM_WARPS, SIGMA_ONE_PASS=bool(SIGMA_ONE_PASS),
        D_CHUNKS=sigma_chunks(d) if dot and with_sigma else 1,
        **pdl_kwargs(q, "page_scores"),
    )
    return upper, absmax, mean, sigma, newest_max, newest_mag, newest_scores, newest_floor


@triton_op("entmaxkv::page_scores", mutates_args=())
def page_scores(
    q: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor, k_mean: torch.Tensor, k_std: torch.Tensor,
    seq_lens: torch.Tensor, alibi_slopes: torch.Tensor | None, page_size: int, scale: float, with_sigma: bool,
    with_mean: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Page statistics -> (upper, absmax, mean, sigma), each [B, Hkv, G, P] in the work dtype
    (sigma is [0] unless ``with_sigma``; absmax and mean are [0] without ``with_mean``: the
    mean is then not read, and upper costs two row sums a head instead of three or four).

    q: [B, Hq, D] contiguous, in the cache dtype, Hq = Hkv·G; page_size: S;
    k_min/k_max/k_mean/k_std: [B, Hkv, P, D] cache dtype; seq_lens: [B] int64 (the lengths *after*
    the step's append); alibi_slopes: optional [Hq] (bias slope·(position − newest position)).
    """
    return _launch(q, k_min, k_max, k_mean, k_std, seq_lens, alibi_slopes, None, page_size, scale, with_sigma,
                   False, with_mean)[:4]


@page_scores.register_fake
def _(q, k_min, k_max, k_mean, k_std, seq_lens, alibi_slopes, page_size, scale, with_sigma, with_mean=True):
    b, hkv, p, _ = k_min.shape
    shape = (b, hkv, q.shape[1] // hkv, p)
    work = work_dtype_of(k_min.dtype)
    upper = q.new_empty(shape, dtype=work)
    means = q.new_empty(shape if with_mean else (0,), dtype=work)
    return upper, means, torch.empty_like(means), q.new_empty(shape if with_sigma else (0,), dtype=work)


register_batch_rule(page_scores, (0, 1, 2, 3, 4, 5))  # vmap folds into the batch dimension


@triton_op("entmaxkv::page_bounds", mutates_args=())
def page_bounds(
    q: torch.Tensor, k_min: torch.Tensor, k_max: torch.Tensor, k_mean: torch.Tensor, k_std: torch.Tensor,
    seq_lens: torch.Tensor, alibi_slopes: torch.Tensor | None, k_pages: torch.Tensor, page_size: int, scale: float,
    with_sigma: bool, with_mean: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """``page_scores``' four outputs plus ``(newest_max, newest_mag)`` [B, Hkv, G],
    ``newest_scores`` [B, Hkv, G, S] (the newest page's slot scores, −inf past the length;
    what ``newest_page.newest_page_scores`` computes) and ``newest_floor`` [B, Hkv, G]
    (newest_max − ``newest_slack``·newest_mag), work dtype, from the same launch. k_pages:
    [B, Hkv, P, S, D] contiguous, the cache's keys (only each sequence's newest page is read).
    Other arguments as in ``page_scores``."""
    return _launch(q, k_min, k_max, k_mean, k_std, seq_lens, alibi_slopes, k_pages, page_size, scale, with_sigma,
                   True, with_mean)


@page_bounds.register_fake
def _(q, k_min, k_max, k_mean, k_std, seq_lens, alibi_slopes, k_pages, page_size, scale, with_sigma, with_mean=True):
    b, hkv, p, _ = k_min.shape
    shape = (b, hkv, q.shape[1] // hkv, p)
    work = work_dtype_of(k_min.dtype)
    upper = q.new_empty(shape, dtype=work)
    newest = q.new_empty(shape[:3], dtype=work)
    means = q.new_empty(shape if with_mean else (0,), dtype=work)
    return (upper, means, torch.empty_like(means),
            q.new_empty(shape if with_sigma else (0,), dtype=work), newest, torch.empty_like(newest),
            q.new_empty((*shape[:3], page_size), dtype=work), torch.empty_like(newest))


register_batch_rule(page_bounds, (0, 1, 2, 3, 4, 5, 7))
