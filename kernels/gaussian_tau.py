"""``entmaxkv::gaussian_tau``: the Gaussian page model's threshold τ̂, one program per
(sequence, query head), in float64 — one kernel, or two (the kept pages, then the solve:
``splits``) where the rows fill the GPU, or three where they leave SMs idle and rows are long
(the kept pages in (row, chunk) programs, then the solve: ``spreads``, from 8,192 pages a row).

Solves F(τ) = Σ_p n_p·E[ρ((α−1)·S_p − τ)] + Σ_i ρ((α−1)·s_i − τ) − 1 = 0 with
S_p ~ N(μ_p, σ_p²) over the candidate pages and s_i the newest page's exact scores: the root
that ``entmaxkv.gaussian.solve_gaussian_tau`` (the reference) brackets and bisects. The
reference's bracket ([top − 1, top], doubled while F(hi) > 0, at most ``expansions`` times)
is found the same way, from a low end at least as high (``_keep_pages``: a page's mean bounds
F from below by Jensen's inequality), but stops at the first F(hi) <= 0; inside it, safeguarded Newton steps
on (F + 1)^(α−1) − 1 (convex, decreasing and nearly linear: a Newton step from the left does
not pass the root, and α near 1 does not make it creep) replace the fixed bisection — 3–7
passes in a simulation of this loop on random mixtures (α = 2 down to 1.01) instead of
``expansions`` + ``iters`` = 80, each in float64 (erfc, exp). At most ``iters`` steps. The
passes read only the pages that can matter: one pass over every candidate page finds the top
score and the low end, a second copies to a scratch row the pages whose term at the low end
(the lowest τ the solve evaluates) a float32 bound cannot show to be at most ``NEGLIGIBLE``. The result agrees with
the reference's bisection midpoint to rounding (within 4e-15 there). Where a row keeps at most
``SHORT_P`` pages, Newton steps in float32 (``PRESOLVE``) first find a guess, and one float64 pass
at two points around it gives the bracket, from which two float64 steps reach the root: three
float64 passes instead of 6–9 (a guess that misses falls back to the bracket above). Where a row
keeps more (``PRESOLVE_LONG``: the stream, noise), the float32 steps pass over its kept pages in
blocks, and one float64 pass at the guess's left point starts the float64 steps, with the
reference's reach as the bracket's right end (8–10 float64 passes over every kept page before).
The moment E[[a + sZ]_+^(1/(α−1))] has closed forms for 1/(α−1) ∈ {1, 2, 3}; otherwise the same 64-node
Fejér rule over [max(−a/s, −10), 10], its nodes and weights computed once per program from an
arange (no table, nothing copied from the host).
Bytes: μ of every candidate page twice and σ once; the kept pages' (α−1)·μ, (α−1)·σ in float64
(written once, re-read from L2 on every pass) and the newest page's scores.
The normal cdf is the reference's 0.5·erfc(−d/√2), with an erfc of its own (``_erfc``: Triton
has none, and libdevice's does not run in the interpreter): 0.5·(1 + erf(d/√2)) cancels in the
far lower tail (d ≈ −4, wide pages), where it cost F ~1e-10 and moved the root by ~2e-10.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import candidate_count, multiprocessors, next_pow2, register_batch_rule
from entmaxkv.kernels.pdl import pdl_enter, pdl_kwargs
from entmaxkv.kernels.quest_select import _float64_of, float64_words

__all__ = ["gaussian_tau", "moment_kind", "splits", "spreads"]

QUAD_NODES = 64
QUAD_REACH = 10.0
# A page whose term n_p·E[ρ(...)] at the lowest τ the solve evaluates (the low end) is provably at
# most this (a bound, ``_keep_pages``) is left out of the bracket's and Newton's
# passes: its term stays below it at every τ evaluated, so a row's left-out terms add at most
# P·1e-30 to F — far below the rounding of F + 1 = 1 at the root (1.1e-16). Where few pages
# stand above the rest the passes then read a few pages, not all. The τ kernel alone on the
# H200 (benchmarks/gaussian_tau_gpu.py, 8,192 pages, 32/8, α = 1.5, 4 high pages a KV head
# among noise pages; session 16): B = 1 68.3 µs with the erfc-based cut, 46.1 with this bound,
# 156.7 keeping every page; B = 16 262.2 / 173.4 / 629.4. On noise alone every page is kept
# (212.8 µs at B = 1: as before).
NEGLIGIBLE = 1e-30
# Pages a block of the solve's passes takes where the kept pages fit in one, and always for
# the quadrature (α other than 2, 1.5, 4/3: a [block, 64-node] float64 tile). On the H200 (as
# above, α = 1.25, B = 1): 64 9.4 ms on noise pages and 118 µs with 4 high pages; 16 11.0 ms,
# 128 11.7 ms, 1,024 (the block session 15 gave every pass) 41.5 ms and 3.9 ms. For α = 1.5
# 64 and 256 were alike (46.1 / 45.9 µs).
SHORT_P = 64
# pages a program's loop takes at once, and its warps: each program reads its row's pages once
# per Newton step (float64 erfc and exp a page), one program a (sequence, query head) — 32 at
# B = 1, 32/8 — so a step is bound by one program's latency. The Gaussian step at 128K on the
# H200 (B = 1, 32/8, fp16; step_variants_gpu.py --contexts 131072 --selector Gaussian, α =
# 1.5 / 2, 2026-11-30): 128 pages and 4 warps 755.8 / 835.2 µs, 512 and 4 681.3 / 740.8, 1,024
# and 8 518.7 / 553.7, 2,048 and 16 491.7 / 522.4, 1,024 and 16 436.2 / 454.3 (the same outputs);
# at α = 1.5, 64K / 128K: 1,024 and 16 287.5 / 436.9, 1,024 and 32 300.3 / 452.8, 512 and 16
# 274.7 / 429.1 (not taken: the gpu tests ran on 1,024). Where the rows fill the GPU (B = 16:
# 512 programs), smaller programs were faster alone on needle moments, not on noise
# (gaussian_tau_gpu.py, 8,192 pages, 4 high pages a KV head / noise only; session 17 call 1):
# 1,024 and 16 173.8 / 850.5 µs, 512 and 8 111.0 / 861.0, 1,024 and 4 106.2 / 1,207.4; in the
# Gaussian step (needles, B = 16) 512 and 8 took 64K 538.6 → 515.0 µs (call 3, one run) but
# 128K 961.1 → 1,024.2 (calls 1 and 2, two runs): not taken until a same-run A/B at 128K
# (perf-log row 87)
BLOCK_P = 1024
TAU_WARPS = 16
# the one kernel's solve blocks: at most TAU_SOLVE_P pages (its float64 erfc spills past 1,024 at
# 16 warps for sm_90a: 24 B a thread at 1,024, 640 B at 2,048), whatever BLOCK_P the kept-pages
# passes take
TAU_SOLVE_P = 1024
# The split form (``splits``): where the rows (B·Hq) give every SM a program, the kept pages
# and the solve run as two kernels, ``KEEP_WARPS`` and ``SOLVE_WARPS`` warps, the solve's
# blocks ``SPLIT_SOLVE_P`` pages where a row keeps more than ``SHORT_P`` (the same arithmetic
# as the one kernel at these values). The one kernel holds the solve's float64 moment in every
# program — 128 registers a thread at 16 warps (ptxas for sm_90a, with spills), one program
# an SM — so at B = 16, 32/8 (512 rows) the kept pages' passes also run in four waves; alone
# (53 registers) they fit two programs an SM. On the H200 (session 46, perf-log row 150;
# ``benchmarks/results/raw-2026-12-06-s46``): the kernel alone on 8,192 needle-like pages,
# B = 16, 173.2 → 79.9 µs (67.9 with 4-warp kept-pages programs; τ̂ the same); the Gaussian
# step on needle inputs, B = 16, where rows keep many pages, 516.5 → 498.8 µs at 64K and
# 910.4 → 874.8 at 128K with a 16-warp solve of 1,024-page blocks (the same outputs) — but
# 585.1 / 1,143.5 with a 4-warp solve of 128-page blocks: the step's rows then kept up to
# 4,095 pages (a needle run split over two pages; the solve's low end top − 1). With the Jensen
# low end (perf-log row 151) they keep a few, and the narrow solve wins (H100, session 48,
# row 154; ``benchmarks/results/raw-2026-12-07-s48``): the kernel alone 160.8 → 86.6 µs, the
# Gaussian step on needles at B = 16 449.1 → 371.8 µs at 64K and 706–707 → 670 at 128K; on the
# synthetic stream, where rows keep most pages, 1,535.3 → 1,505.3 at 64K but 3,016.1 → 3,124.6
# at 128K (measured first in its process, which cost 38–54 µs elsewhere: not settled).
SPLIT = True
KEEP_WARPS = 16
SOLVE_WARPS = 4
SPLIT_SOLVE_P = 128
# The spread form (``spreads``): where the rows leave SMs idle (B = 1: 32 rows for 32/8 heads) the
# one kernel's two passes over a row's pages run in one program a row, block after block (at 128K,
# 8,192 pages: eight blocks of 1,024 twice, one load's latency after another). Here they run as
# (row, chunk) programs, SPREAD_WARPS warps, in blocks of SPREAD_P pages: the chunks' tops, then
# each chunk's kept pages to a segment of its own (every chunk takes the row's top from the chunks'
# tops), then one program a row joins the segments in page order and solves as the one kernel
# does, on the same kept pages in the same order (the same τ̂ bit for bit), at TAU_WARPS. A chunk
# is one block, or several where a row has more than SPREAD_CHUNKS blocks (past 256K tokens at 512
# pages), so that the join's [entries, chunks] tile (GATHER_TILE elements) takes at least 256
# entries a step: a row that keeps every page of 1M tokens joins them in 256 steps. Three launches
# instead of one; a second float64 scratch of 2·B·Hq·P elements (the segments). Predicted on the
# H100 at 128K, B = 1, needle inputs (the τ̂ kernel alone 46 µs, session 48): ~15 µs. Measured
# (session 50, H100, needles 4, perf-log row 156): the kernel alone at 8,192 pages 46.6 -> 40.5 µs
# (SPREAD_P 256 / 1,024: 40.6 / 41.0), at 4,096 level (40.3 / 40.3): the passes over the pages
# were ~12 µs of it, the solve over the few kept pages (a Newton step's float64 terms, one after
# another) the rest. The Gaussian step at B = 1: 128K 135.9 / 135.7 -> 128.1 µs, 64K 101.6 / 99.4
# -> 103.4 (two more launches for nothing). So on from SPREAD_MIN_PAGES pages a row (128K tokens at
# 16 a page), the measured win; below, the one kernel.
SPREAD = True
SPREAD_MIN_PAGES = 8192
SPREAD_P = 512
SPREAD_WARPS = 4
SPREAD_CHUNKS = 32
GATHER_TILE = 8192
# Newton in float32 before the float64 passes, where a row's kept pages fit one block (``_solve``):
# each float64 pass is a chain of float64 erfc, exps and divisions a page. On needle inputs the
# float64 passes a row (counted in the interpreter) go from 6–7 at α = 1.5 and 8–9 at α = 2 to 3.
# Measured (session 51, H100, perf-log row 158, same run without it): the kernel alone at 8,192
# pages, B = 1, 34.9 -> 27.1 µs (α = 1.5), 41.4 -> 28.9 (α = 2); the Gaussian step at B = 1 128K
# 116.0 -> 108.1 µs (0.61× SDPA) and 119.4 -> 102.6 (α = 2), 64K 92.0 -> 83.0; B = 16 and rows
# that keep every page level. (Predicted −16 µs at 128K from ~4 µs a float64 pass: a pass costs ~2.)
PRESOLVE = True
# the float64 bracket's half width around the float32 guess, relative to max(|guess|, 1): 32
# float32 ulps, small enough that two Newton steps from its left end reach the root to rounding.
# The guess's error is float32's error in F over |F'|: where pages are wide (|F'| small) it can
# exceed the margin, and the row falls back (correct, after the pre-solve's passes for nothing).
PRESOLVE_MARGIN = 2.0**-18
# The pre-solve for rows that keep more than ``SHORT_P`` pages (the stream; noise rows): float32
# passes over the kept pages, then one float64 pass at the guess's left point and two steps,
# instead of the bracket's and the steps' float64 passes over every kept page (8–10 on noise).
# Predicted (session 51, H100, B = 1, 8,192 noise pages a row, the kernel alone 224 µs): ~110 µs.
# Measured (same run without it, perf-log row 160): 222.8 -> 152.8 µs (α = 1.5), 326.9 -> 174.8
# (α = 2); B = 16 926.1 -> 705.6; the Gaussian step on the stream at B = 1 128K 428.8 -> 331 µs, at
# B = 16 64K 1,480.8 -> 1,272 (0.95× SDPA); needle rows level. Takes effect only with ``PRESOLVE`` on.
PRESOLVE_LONG = True


def splits(rows: int, device: torch.device) -> bool:
    """Whether τ̂ runs as two kernels (``SPLIT``): where the rows make at least one program an
    SM (the interpreter counts one SM: its tests see the split unless they patch this)."""
    return bool(SPLIT) and rows >= multiprocessors(device)


def spreads(rows: int, pages: int, device: torch.device) -> bool:
    """Whether τ̂ runs as the spread form's three kernels (``SPREAD``): where the rows leave
    SMs idle (not ``splits``) and a row has at least ``SPREAD_MIN_PAGES`` pages and more than
    one chunk of ``SPREAD_P``."""
    return bool(SPREAD) and not splits(rows, device) and pages > SPREAD_P and pages >= SPREAD_MIN_PAGES


def moment_kind(alpha: float) -> int:
    """1, 2 or 3 for the closed forms (1/(α−1) = 1, 2, 3), 0 for quadrature."""
    n = 1.0 / (alpha - 1.0)
    for k in (1, 2, 3):
        if abs(n - k) < 1e-9:
            return k
    return 0


@triton.jit
def _erfc(x):
    """erfc(x) in float64, elementwise, without the cancellation of 1 − erf(x) for large x:
    relative error below 4·2^−52 (8.9e-16) against mpmath at 40 digits on [−6, 26] (past
    26.5 the results are subnormal, past 27.3 they are 0; ``tests/test_kernel_edge_cases.py``).
    Measured, not proven: the largest of 400,000 random points was 3.17·2^−52 (at x = 25.3;
    3 points above 3·2^−52, 143 above 2.5·2^−52; 2026-11-29): a bound of 3·2^−52, claimed
    from a smaller sample, failed in CI (3.06 at x = 18.69). About five roundings of the
    result (t, the two exps, two products) plus the Clenshaw sum's make that size.
    For z = |x|: erfc(z) = t·exp(−z² + g(u)), t = 2/(2 + z), u = 2t − 1 = (2 − z)/(2 + z),
    where g(u) = log(erfc(z)/t) + z² is smooth on [−1, 1] (it tends to −log(2√π) as z → ∞):
    its Chebyshev series, 28 terms (the rest sum to 3.4e-18), summed by Clenshaw's
    recurrence. The coefficients were computed for this kernel with mpmath (60 digits,
    interpolation at 64 Chebyshev nodes); to the digits printed there they are those of
    Numerical Recipes' (3rd ed., §6.2) ``erfccheb``, which uses the same expansion. exp(−z²) is split as
    exp(−h²)·exp(−(z − h)(z + h)) with h = z rounded down to 26 bits (h² is exact), so that
    the rounding of z² (an absolute error of z²·2^−53 in the exponent) does not enter; and
    erfc(−z) = 2 − erfc(z)."""
    z = tl.minimum(tl.abs(x), 28.0)  # erfc(28) is 0 in float64; keeps inf out of the split
    u = (2.0 - z) / (2.0 + z)
    y2 = 2.0 * u
    d = tl.zeros_like(z) + (-2.816663087747177e-17)
    dd = tl.zeros_like(z)
    d, dd = y2 * d - dd + 1.210237189224279e-16, d
    d, dd = y2 * d - dd - 9.457494571291233e-17, d
    d, dd = y2 * d - dd - 1.5230282014571043e-15, d
    d, dd = y2 * d - dd + 7.106097613609237e-15, d
    d, dd = y2 * d - dd + 3.810905255189232e-16, d
    d, dd = y2 * d - dd - 1.1270822361367252e-13, d
    d, dd = y2 * d - dd + 3.130921399342958e-13, d
    d, dd = y2 * d - dd + 8.944879273090725e-13, d
    d, dd = y2 * d - dd - 6.886027526497553e-12, d
    d, dd = y2 * d - dd + 2.3940380830391146e-12, d
    d, dd = y2 * d - dd + 9.646791102015527e-11, d
    d, dd = y2 * d - dd - 2.273651222931836e-10, d
    d, dd = y2 * d - dd - 9.91364156493033e-10, d
    d, dd = y2 * d - dd + 5.059343495551469e-09, d
    d, dd = y2 * d - dd + 6.5290544390988515e-09, d
    d, dd = y2 * d - dd - 8.523809591492654e-08, d
    d, dd = y2 * d - dd + 1.5626441722066142e-08, d
    d, dd = y2 * d - dd + 1.3036558355805232e-06, d
    d, dd = y2 * d - dd - 1.6242900046470256e-06, d
    d, dd = y2 * d - dd - 2.0278578112534242e-05, d
    d, dd = y2 * d - dd + 4.252332480690777e-05, d
    d, dd = y2 * d - dd + 0.00036683949785276145, d
    d, dd = y2 * d - dd - 0.0009465953444820369, d
    d, dd = y2 * d - dd - 0.009561514786808632, d
    d, dd = y2 * d - dd + 0.019476473204185836, d
    d, dd = y2 * d - dd + 0.6419697923564902, d
    g = u * d - dd - 0.6513268598908547  # the c0/2 term
    h = (z.to(tl.int64, bitcast=True) & -134217728).to(tl.float64, bitcast=True)  # −2^27: 26 bits kept
    e = (2.0 / (2.0 + z)) * tl.exp(-h * h) * tl.exp(g - (z - h) * (z + h))
    return tl.where(x < 0, 2.0 - e, e)


@triton.jit
def _erfc32(x):
    """erfc(x) in float32, elementwise, for the pre-solve's guesses only (``PRESOLVE``): Numerical
    Recipes' ``erfcc`` (a Chebyshev fit of log(erfc(z)/t) + z², t = 1/(1 + z/2)). The fit's own
    relative error is below 1.2e-7; evaluated in float32 the rounding of z² in the exponent adds
    up to ~1e-5 relative for z near 8 (an independent review measured 9.4e-6 at x = 8.14 in
    numpy's float32; the GPU's float32 exp adds a little). Only the guess's quality depends on it."""
    z = tl.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = 0.17087277
    poly = poly * t - 0.82215223
    poly = poly * t + 1.48851587
    poly = poly * t - 1.13520398
    poly = poly * t + 0.27886807
    poly = poly * t - 0.18628806
    poly = poly * t + 0.09678418
    poly = poly * t + 0.37409196
    poly = poly * t + 1.00002368
    e = t * tl.exp(-z * z - 1.26551223 + t * poly)
    return tl.where(x < 0, 2.0 - e, e)


@triton.jit
def _moment(a, s, power, nodes, weights, KIND: tl.constexpr, F32: tl.constexpr = False):
    """E[[a + s·Z]_+^power] for Z ~ N(0, 1) and its derivative in a, elementwise over [BLOCK]
    (float64; ``F32``: float32 throughout, with ``_erfc32``): (value, slope)."""
    if F32:
        s_safe = tl.maximum(s, 1.1754943508222875e-38)
        d = a / s_safe
        cdf = 0.5 * _erfc32(-d * 0.7071067811865476)
    else:
        s_safe = tl.maximum(s, 2.2250738585072014e-308)
        d = a / s_safe
        cdf = 0.5 * _erfc(-d / 1.4142135623730951)  # as the reference: 0.5·erfc(−d/√2)
    pdf = tl.exp(-0.5 * d * d) * 0.3989422804014327
    first = a * cdf + s * pdf  # E[[a + sZ]_+]
    if KIND == 1:
        return first, cdf
    elif KIND == 2:
        second = (a * a + s * s) * cdf + a * s * pdf
        return second, 2.0 * first
    elif KIND == 3:
        second = (a * a + s * s) * cdf + a * s * pdf
        return (a * a * a + 3.0 * a * s * s) * cdf + (a * a + 2.0 * s * s) * s * pdf, 3.0 * second
    else:
        lower = tl.minimum(tl.maximum(-d, -10.0), 10.0)
        half = (10.0 - lower) / 2
        z = (lower + half)[:, None] + half[:, None] * nodes[None, :]
        x = tl.maximum(a[:, None] + s[:, None] * z, 0.0)
        log_x = tl.log(tl.where(x > 0, x, 1.0))
        bell = tl.exp(-0.5 * z * z) * weights[None, :]
        value = tl.where(x > 0, tl.exp(log_x * power), 0.0) * bell
        slope = tl.where(x > 0, tl.exp(log_x * (power - 1.0)), 0.0) * bell  # power − 1 >= 0 (α <= 2)
        norm = half * 0.3989422804014327
        return norm * tl.sum(value, axis=1), norm * power * tl.sum(slope, axis=1)


@triton.jit
def _token_terms(gap, power):
    """ρ(gap) = gap_+^power and its slope power·gap_+^(power−1), elementwise (a newest-page score's
    term at τ: gap = (α−1)·s − τ, −inf for an absent score), in gap's dtype."""
    gap = tl.maximum(gap, 0.0)
    log_gap = tl.log(tl.where(gap > 0, gap, 1.0))
    tokens = tl.where(gap > 0, tl.exp(log_gap * power), 0.0)
    return tokens, tl.where(gap > 0, power * tl.exp(log_gap * (power - 1.0)), 0.0)


@triton.jit
def _page_terms(kept_m, kept_s, n_kept, S, tau, power, nodes, weights, KIND: tl.constexpr, BLOCK_P: tl.constexpr,
                F32: tl.constexpr):
    """The kept pages' terms n_p·E[ρ(...)] at τ and their slopes, summed lane-wise over blocks of
    ``BLOCK_P`` pages read from the row's scratch: two [BLOCK_P] accumulators, float64 (``F32``:
    the differences to τ taken in float64, then the terms in float32)."""
    lanes = tl.arange(0, BLOCK_P)
    if F32:
        total = tl.zeros((BLOCK_P,), tl.float32)
        slope = tl.zeros((BLOCK_P,), tl.float32)
    else:
        total = tl.zeros((BLOCK_P,), tl.float64)
        slope = tl.zeros((BLOCK_P,), tl.float64)
    for start in range(0, n_kept, BLOCK_P):
        p = start + lanes
        ok = p < n_kept
        m = tl.load(kept_m + p, mask=ok, other=0.0, volatile=True)
        sd = tl.load(kept_s + p, mask=ok, other=0.0, volatile=True)
        if F32:
            value, rate = _moment((m - tau).to(tl.float32), sd.to(tl.float32), power, nodes, weights, KIND, True)
        else:
            value, rate = _moment(m - tau, sd, power, nodes, weights, KIND)
        total += tl.where(ok, S * value, 0.0)
        slope += tl.where(ok, S * rate, 0.0)
    return total, slope


@triton.jit
def _excess(kept_m, kept_s, n_kept, exact, row, S, tau, power, lin, nodes, weights,
            KIND: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr):
    """(F(τ), F'(τ)) for one (sequence, query head) over its kept pages (``kept_m``, ``kept_s``:
    the row's scratch of (α−1)·μ and (α−1)·σ, ``n_kept`` entries) and the newest page's exact
    scores: F(τ) = Σ_p n_p·E[ρ(...)] + Σ_i ρ(...) − 1, decreasing and convex in τ (ρ(x) =
    x_+^power, power >= 1)."""
    total, slope = _page_terms(kept_m, kept_s, n_kept, S, tau, power, nodes, weights, KIND, BLOCK_P, False)
    i = tl.arange(0, BLOCK_S)
    z = tl.load(exact + row * S + i, mask=i < S, other=float("-inf")).to(tl.float64) * lin
    tokens, token_slope = _token_terms(z - tau, power)
    return tl.sum(total) + tl.sum(tokens) - 1.0, -(tl.sum(slope) + tl.sum(token_slope))


@triton.jit
def _kept_excess(kept_m, kept_s, n_kept, exact, row, S, tau, power, lin, nodes, weights,
                 KIND: tl.constexpr, SOLVE_P: tl.constexpr, SHORT_P: tl.constexpr, BLOCK_S: tl.constexpr):
    """``_excess`` over blocks of ``SHORT_P`` pages where the kept pages fit in one (a pass is
    then one float64 erfc chain on few lanes) or the moment is a quadrature (its [block,
    nodes] tile: 64 × 64 float64 a block, not 1,024 × 64), else of ``SOLVE_P``."""
    if KIND == 0:
        f, slope = _excess(kept_m, kept_s, n_kept, exact, row, S, tau, power, lin, nodes, weights, KIND, SHORT_P,
                           BLOCK_S)
    elif n_kept <= SHORT_P:
        f, slope = _excess(kept_m, kept_s, n_kept, exact, row, S, tau, power, lin, nodes, weights, KIND, SHORT_P,
                           BLOCK_S)
    else:
        f, slope = _excess(kept_m, kept_s, n_kept, exact, row, S, tau, power, lin, nodes, weights, KIND, SOLVE_P,
                           BLOCK_S)
    return f, slope


@triton.jit
def _excess32(m, sd, ok, z, tau, power, nodes, weights, S, KIND: tl.constexpr):
    """``_excess`` in float32 over one block of kept pages already in registers (``m``, ``sd``
    float64 [SHORT_P], ``ok`` the entries in use) and the newest page's (α−1)-scaled scores
    ``z`` (float64 [BLOCK_S], −inf = absent): (F(τ), F'(τ)) as float32, for the pre-solve's
    guesses. The differences to τ are taken in float64, then rounded."""
    a = (m - tau).to(tl.float32)
    value, rate = _moment(a, sd.to(tl.float32), power, nodes, weights, KIND, True)
    tokens, token_slope = _token_terms((z - tau).to(tl.float32), power)
    total = tl.sum(tl.where(ok, S * value, 0.0)) + tl.sum(tokens)
    return total - 1.0, -(tl.sum(tl.where(ok, S * rate, 0.0)) + tl.sum(token_slope))


@triton.jit
def _excess_pair(kept_m, kept_s, n_kept, exact, row, S, tau_a, tau_b, power, lin, nodes, weights,
                 KIND: tl.constexpr, SHORT_P: tl.constexpr, BLOCK_S: tl.constexpr):
    """``_excess`` at two points in one pass, for a row whose kept pages fit one block of
    ``SHORT_P``: lanes [0, SHORT_P) take τ_a, the next SHORT_P τ_b (and the newest page's
    scores likewise), each sum over its own lanes — (F(τ_a), F'(τ_a), F(τ_b))."""
    lanes = tl.arange(0, 2 * SHORT_P)
    first = lanes < SHORT_P
    p = tl.where(first, lanes, lanes - SHORT_P)
    ok = p < n_kept
    m = tl.load(kept_m + p, mask=ok, other=0.0, volatile=True)
    sd = tl.load(kept_s + p, mask=ok, other=0.0, volatile=True)
    value, rate = _moment(m - tl.where(first, tau_a, tau_b), sd, power, nodes, weights, KIND)
    term = tl.where(ok, S * value, 0.0)
    term_slope = tl.where(ok, S * rate, 0.0)
    j = tl.arange(0, 2 * BLOCK_S)
    first_s = j < BLOCK_S
    i = tl.where(first_s, j, j - BLOCK_S)
    z = tl.load(exact + row * S + i, mask=i < S, other=float("-inf")).to(tl.float64) * lin
    tokens, token_slope = _token_terms(z - tl.where(first_s, tau_a, tau_b), power)
    f_a = tl.sum(tl.where(first, term, 0.0)) + tl.sum(tl.where(first_s, tokens, 0.0)) - 1.0
    d_a = -(tl.sum(tl.where(first, term_slope, 0.0)) + tl.sum(tl.where(first_s, token_slope, 0.0)))
    f_b = tl.sum(tl.where(first, 0.0, term)) + tl.sum(tl.where(first_s, 0.0, tokens)) - 1.0
    return f_a, d_a, f_b


@triton.jit
def _kept_excess32(kept_m, kept_s, n_kept, z, tau, power, nodes, weights, S, KIND: tl.constexpr,
                   BLOCK_P: tl.constexpr):
    """``_excess32`` over a row's kept pages in blocks of ``BLOCK_P`` read from its scratch,
    for rows that keep more than one block: (F(τ), F'(τ)) as float32."""
    total, slope = _page_terms(kept_m, kept_s, n_kept, S, tau, power, nodes, weights, KIND, BLOCK_P, True)
    tokens, token_slope = _token_terms((z - tau).to(tl.float32), power)
    return tl.sum(total) + tl.sum(tokens) - 1.0, -(tl.sum(slope) + tl.sum(token_slope))


@triton.jit
def _guess_excess(kept_m, kept_s, n_kept, m, sd, ok, z, tau, power, nodes, weights, S, KIND: tl.constexpr,
                  LONG: tl.constexpr, BLOCK_P: tl.constexpr):
    """The pre-solve's (F(τ), F'(τ)) in float32: over the one block of kept pages in registers
    (``m``, ``sd``, ``ok``: ``_excess32``), or (``LONG``) over the row's scratch in blocks of
    ``BLOCK_P`` (``_kept_excess32``)."""
    if LONG:
        f, slope = _kept_excess32(kept_m, kept_s, n_kept, z, tau, power, nodes, weights, S, KIND, BLOCK_P)
    else:
        f, slope = _excess32(m, sd, ok, z, tau, power, nodes, weights, S, KIND)
    return f, slope


@triton.jit
def _presolve(kept_m, kept_s, n_kept, exact, row, S, lo, iters, lin, nodes, weights, KIND: tl.constexpr,
              SHORT_P: tl.constexpr, BLOCK_S: tl.constexpr, LONG: tl.constexpr = False, BLOCK_P: tl.constexpr = 16):
    """A guess of the root in float64 from Newton steps on G in float32 (``PRESOLVE``) from the
    low end ``lo`` (F(lo) >= 0): at most ``iters`` steps, until a step is below
    2^−16·max(|τ|, 1) or F32 is no longer positive. For a row whose kept pages fit one block of
    ``SHORT_P`` (read once, here), or (``LONG``) over its kept pages in blocks of ``BLOCK_P``."""
    i = tl.arange(0, BLOCK_S)
    z = tl.load(exact + row * S + i, mask=i < S, other=float("-inf")).to(tl.float64) * lin
    power = (1.0 / lin).to(tl.float32)
    nodes32, weights32 = nodes.to(tl.float32), weights.to(tl.float32)
    p = tl.arange(0, SHORT_P)
    if LONG:
        ok = p < 0  # the block in registers is not used: the passes read the scratch
    else:
        ok = p < n_kept
    m = tl.load(kept_m + p, mask=ok, other=0.0, volatile=True)
    sd = tl.load(kept_s + p, mask=ok, other=0.0, volatile=True)
    x = lo
    f, slope = _guess_excess(kept_m, kept_s, n_kept, m, sd, ok, z, x, power, nodes32, weights32, S, KIND, LONG,
                             BLOCK_P)
    steps = 0
    while (f > 0) & (steps < iters):
        step = _norm_step(f, slope, power, True).to(tl.float64)
        x = x + step
        f, slope = _guess_excess(kept_m, kept_s, n_kept, m, sd, ok, z, x, power, nodes32, weights32, S, KIND, LONG,
                                 BLOCK_P)
        steps = tl.where(step <= 1.52587890625e-05 * tl.maximum(tl.abs(x), 1.0), iters, steps + 1)
    return x


@triton.jit
def _norm_step(f, slope, power, F32: tl.constexpr = False):
    """Newton step on G = (F + 1)^(1/power) − 1 at a point with F = f, F' = slope < 0:
    −G/G' = power·(M − M^(1 − 1/power)) / (−F') with M = F + 1 (> 0; M^... via exp/log), in
    float64 (``F32``: float32)."""
    tiny = 1.1754943508222875e-38 if F32 else 2.2250738585072014e-308
    m = tl.maximum(f + 1.0, tiny)
    g = power * (m - tl.exp(tl.log(m) * (1.0 - 1.0 / power)))
    return g / tl.maximum(-slope, tiny)


@triton.jit
def _quadrature_rule(KIND: tl.constexpr, NODES: tl.constexpr):
    """Fejér's first rule on [−1, 1] (as ``entmaxkv.gaussian.fejer_rule``): (nodes, weights)
    [NODES] float64, or zeros for the closed forms (their 32 serial float64 cosines are not
    computed)."""
    if KIND == 0:
        k = tl.arange(0, NODES).to(tl.float64)
        theta = (2.0 * k + 1.0) * (3.141592653589793 / (2 * NODES))
        acc = tl.zeros((NODES,), tl.float64)
        for j in range(1, NODES // 2 + 1):
            jj = j * 1.0
            acc += tl.cos(2.0 * jj * theta) / (4.0 * jj * jj - 1.0)
        nodes = tl.cos(theta)
        weights = (2.0 / NODES) * (1.0 - 2.0 * acc)
    else:
        nodes = tl.zeros((NODES,), tl.float64)
        weights = nodes
    return nodes, weights


@triton.jit
def _candidate_end(cand, b, P, S, LENGTHS: tl.constexpr):
    """How far sequence b's candidate pages reach: (len − 1) // S from its length (``LENGTHS``:
    ``cand`` holds the [B] lengths; the candidates are the full pages before the newest token's
    page; never past P, also for a length past the capacity), else P (``cand`` is a [B, P] mask).
    In the lengths' own integer type until clamped to P: an int64 length does not wrap."""
    if LENGTHS:
        end = candidate_count(tl.load(cand + b), S, P)
    else:
        end = P
    return end


@triton.jit
def _is_candidate(cand, b, P, end, p, LENGTHS: tl.constexpr):
    """Whether pages ``p`` of sequence b are candidates: p below ``end`` (``_candidate_end``;
    ``LENGTHS``), or set in the [B, P] mask (read as the bool it is)."""
    if LENGTHS:
        ok = p < end
    else:
        ok = (p < P) & tl.load(cand + b * P + p, mask=p < P, other=False)
    return ok


@triton.jit
def _block_tops(mu, cand, lin, row, b, P, end, p, LENGTHS: tl.constexpr):
    """(α−1)·μ of one block of a row's pages ``p`` in float64, −inf where a page is past P or
    not a candidate (``end``: ``_candidate_end``)."""
    ok = _is_candidate(cand, b, P, end, p, LENGTHS)
    return tl.where(ok, tl.load(mu + row * P + p, mask=ok, other=0.0).to(tl.float64) * lin, float("-inf"))


@triton.jit
def _newest_top(exact, lin, row, S, BLOCK_S: tl.constexpr):
    """The row's top (α−1)·s over the newest page's exact scores (−inf: none)."""
    i = tl.arange(0, BLOCK_S)
    return tl.max(tl.load(exact + row * S + i, mask=i < S, other=float("-inf")).to(tl.float64) * lin)


@triton.jit
def _low_end(top_page, top_exact, lin, S):
    """The solve's low end ``least`` from the top page's and the top newest score's (α−1)-scaled
    values (``_keep_pages``' comment)."""
    return tl.maximum(top_page - tl.exp(-lin * tl.log(lin * 0.0 + S)), top_exact - 1.0)


@triton.jit
def _cut_block(mu, sigma, cand, lin, least, row, b, P, S, end, p, kept_m, kept_s, NEGLIGIBLE: tl.constexpr,
               LENGTHS: tl.constexpr):
    """Copies, in page order, the (α−1)·μ and (α−1)·σ of the pages of block ``p`` that can
    matter at the low end ``least`` to ``kept_m`` / ``kept_s`` (the next free entries of the
    row's scratch) and returns how many (the float32 bound of ``_keep_pages``' comment)."""
    ok = _is_candidate(cand, b, P, end, p, LENGTHS)
    m = tl.load(mu + row * P + p, mask=ok, other=0.0).to(tl.float64) * lin
    sd = tl.load(sigma + row * P + p, mask=ok, other=0.0).to(tl.float64) * lin
    a = (m - least).to(tl.float32)
    s32 = sd.to(tl.float32)
    power32 = (1.0 / lin).to(tl.float32)
    delta = -a / s32
    log_bound = power32 * tl.log(power32 * s32 / (2.718281828459045 * delta)) - 0.5 * delta * delta
    negligible = (a < 0) & (a > float("-inf")) & (s32 < float("inf")) & (log_bound < tl.log(NEGLIGIBLE / S) - 1.0)
    keep = (ok & ~negligible).to(tl.int32)
    at = tl.cumsum(keep, axis=0) - keep
    tl.store(kept_m + at, m, mask=keep == 1)
    tl.store(kept_s + at, sd, mask=keep == 1)
    return tl.sum(keep)


@triton.jit
def _keep_pages(mu, sigma, cand, exact, lin, kept_mu, kept_sigma, row, b, P, S, BLOCK_P: tl.constexpr,
                BLOCK_S: tl.constexpr, NEGLIGIBLE: tl.constexpr, LENGTHS: tl.constexpr):
    """One (sequence, query head) row's top score top_all (float64: the largest (α−1)·μ of
    its candidate pages and (α−1)·s of the newest page's scores), the solve's low end
    ``least`` and the pages that can matter, their (α−1)·μ and (α−1)·σ written in page order
    to the row's scratch: (top_all, least, n_kept)."""
    # The top score, the low end, then the pages that can matter, to the row's scratch. The
    # low end is a τ with F(τ) >= 0, so the root is at or above it: F counts every entry's
    # term, each nonnegative, so F(τ) >= term − 1 for any one entry. A newest-page score s
    # gives ρ((α−1)·s − τ) >= 1 at τ = (α−1)·s − 1 (the reference's bracket end, top − 1); a
    # candidate page of mean μ gives, by Jensen's inequality (x ↦ x_+^p is convex for p =
    # 1/(α−1) >= 1), n_p·E[ρ((α−1)·S_p − τ)] >= n_p·((α−1)·μ − τ)_+^p = 1 at τ = (α−1)·μ −
    # n_p^(−(α−1)), n_p = S tokens — a quarter below the page's (α−1)·μ at α = 1.5 and S = 16, not a
    # whole unit. ``least`` is the larger of the two from the top entries (session 46: on needle
    # inputs a row whose top is a page, with top − 1 as the low end, kept every noise page —
    # 4,095 of 4,096 on one row at 64K — where this keeps at most 8). Every τ the solve
    # evaluates is at least ``least`` (the expansions and the Newton steps only move right of
    # it) and a page's term falls as τ rises, so a page whose term at
    # ``least`` is at most NEGLIGIBLE never adds more to F than that. The test is a bound, in
    # float32, not the term (its erfc, exps and divisions in float64 cost a pass as much as a
    # Newton step's):
    # with δ = −a/s > 0 (a = (α−1)·μ − τ, s = (α−1)·σ, p = 1/(α−1)), y^p·e^(−δy) <= (p/(eδ))^p
    # for y >= 0 gives
    #     n_p·E[(a + sZ)_+^p] = n_p·s^p·E[(Z − δ)_+^p] <= n_p·(p·s/(e·δ))^p·e^(−δ²/2),
    # and a page is left out when the log of that is below log(NEGLIGIBLE) − 1. The bound has
    # a spare factor ½ besides (the integral over y >= 0 of a normal density); the one-nat
    # margin covers float32's rounding of the log's terms up to ~1e4 in magnitude, and where
    # they are larger (α below ~1.01) an independent review's mpmath sweep found the true
    # terms of pages at the float32 cut hundreds of e-folds below it. Pages whose a is NaN,
    # −inf or beyond float32's range stay, as before this cut. (The top so far, in the same
    # pass, would also give a valid cut, but a loose one until the pass reaches the top page:
    # on the H200 the kernel took 103.6 µs instead of 46.1 on the needle-like moments of
    # ``NEGLIGIBLE``'s comment.)
    lanes = tl.arange(0, BLOCK_P)
    end = _candidate_end(cand, b, P, S, LENGTHS)  # blocks past it hold no candidate: not read
    top = tl.full((BLOCK_P,), float("-inf"), tl.float64)
    for start in range(0, end, BLOCK_P):
        top = tl.maximum(top, _block_tops(mu, cand, lin, row, b, P, end, start + lanes, LENGTHS))
    top_page, top_exact = tl.max(top), _newest_top(exact, lin, row, S, BLOCK_S)
    least = _low_end(top_page, top_exact, lin, S)
    kept_m = kept_mu + row * P
    kept_s = kept_sigma + row * P
    n_kept = 0
    for start in range(0, end, BLOCK_P):
        n_kept += _cut_block(mu, sigma, cand, lin, least, row, b, P, S, end, start + lanes, kept_m + n_kept,
                             kept_s + n_kept, NEGLIGIBLE, LENGTHS)
    return tl.maximum(top_page, top_exact), least, n_kept


@triton.jit
def _solve(kept_m, kept_s, n_kept, top_all, least, exact, row, S, iters, expansions, lin, nodes, weights,
           KIND: tl.constexpr, SOLVE_P: tl.constexpr, SHORT_P: tl.constexpr, BLOCK_S: tl.constexpr,
           PRESOLVE: tl.constexpr, MARGIN: tl.constexpr, PRESOLVE_LONG: tl.constexpr):
    """τ̂ of one row from its kept pages (``_keep_pages``: its top and low end ``least``) and
    the newest page's scores."""
    power = 1.0 / lin
    lo = least
    hi = top_all
    x = lo
    fx = top_all * 0.0
    dx = fx
    bracketed = False
    if PRESOLVE:
        # Where the kept pages fit one block: Newton in float32 first (``_presolve``), then one
        # pass of float64 terms at two points a margin of ``MARGIN``·max(|guess|, 1) either side of
        # its guess. If they bracket the root — F(a) >= 0 >= F(b), b within the reference's
        # reach (top + 2^expansions − 1) — they are the bracket, and the float64 steps below
        # start at a, where two reach the root to rounding: three float64 passes where the
        # bracket and steps from the low end took 6–9 (needle inputs, α = 2 to 1.25). Otherwise
        # (a guess off by more than the margin, or a root past the reach) as without it.
        reach = top_all + (tl.exp2(expansions * 1.0).to(tl.float64) - 1.0)
        if n_kept <= SHORT_P:
            guess = _presolve(kept_m, kept_s, n_kept, exact, row, S, lo, iters, lin, nodes, weights, KIND, SHORT_P,
                              BLOCK_S)
            margin = MARGIN * tl.maximum(tl.abs(guess), 1.0)
            a = tl.maximum(guess - margin, lo)
            b = guess + margin
            f_a, d_a, f_b = _excess_pair(kept_m, kept_s, n_kept, exact, row, S, a, b, power, lin, nodes, weights,
                                         KIND, SHORT_P, BLOCK_S)
            if (f_a >= 0) & (f_b <= 0) & (b <= reach):
                lo = a
                hi = b
                x = a
                fx = f_a
                dx = d_a
                bracketed = True
        elif PRESOLVE_LONG:
            # A row of more pages: a pass costs its pages' terms (throughput, not latency), so no
            # second point. If F(a) >= 0 the steps start at a with the reference's reach as the
            # bracket's right end (the root is below it, or the reference returns that end: so
            # do the steps, clamped there); otherwise as without it.
            if KIND == 0:  # the quadrature's [block, nodes] tile: blocks of SHORT_P, as ``_kept_excess``'
                guess = _presolve(kept_m, kept_s, n_kept, exact, row, S, lo, iters, lin, nodes, weights, KIND,
                                  SHORT_P, BLOCK_S, True, SHORT_P)
            else:
                guess = _presolve(kept_m, kept_s, n_kept, exact, row, S, lo, iters, lin, nodes, weights, KIND,
                                  SHORT_P, BLOCK_S, True, SOLVE_P)
            a = tl.maximum(guess - MARGIN * tl.maximum(tl.abs(guess), 1.0), lo)
            f_a, d_a = _kept_excess(kept_m, kept_s, n_kept, exact, row, S, a, power, lin, nodes, weights, KIND,
                                    SOLVE_P, SHORT_P, BLOCK_S)
            if (f_a >= 0) & (a < reach):
                lo = a
                hi = reach
                x = a
                fx = f_a
                dx = d_a
                bracketed = True
    if not bracketed:
        # The bracket: [least, top] (F(least) >= 0: ``_keep_pages``; the reference's is [top − 1,
        # top], no narrower, with the same root), doubled while F(hi) > 0 as the reference's —
        # stopping at the first F(hi) <= 0, after which the reference's remaining expansions
        # change nothing.
        width = top_all * 0.0 + 1.0
        f_hi, _ = _kept_excess(kept_m, kept_s, n_kept, exact, row, S, hi, power, lin, nodes, weights, KIND, SOLVE_P,
                               SHORT_P, BLOCK_S)
        grown = 0
        while (f_hi > 0) & (grown < expansions):
            lo = hi
            hi = hi + width
            width = 2.0 * width
            f_hi, _ = _kept_excess(kept_m, kept_s, n_kept, exact, row, S, hi, power, lin, nodes, weights, KIND,
                                   SOLVE_P, SHORT_P, BLOCK_S)
            grown += 1
        x = lo
        fx, dx = _kept_excess(kept_m, kept_s, n_kept, exact, row, S, x, power, lin, nodes, weights, KIND, SOLVE_P,
                              SHORT_P, BLOCK_S)
    # Safeguarded Newton from the left end, on G(τ) = (F(τ) + 1)^(α−1) − 1 rather than on F:
    # F + 1 is the p-th power (p = 1/(α−1)) of an L_p norm of (s − τ)_+ over the pages'
    # Gaussians and the exact scores, so G is that norm minus 1 — convex and decreasing like F,
    # but nearly linear where F behaves like (a − τ)^p (Newton on F then creeps, 1 − 1/p of the
    # distance a step: α near 1 and wide pages ran out of steps). A Newton step on G from a
    # point with G >= 0 does not pass the root (up to rounding); a step that would reach hi
    # bisects [x, hi) instead, and a point found past the root becomes the new hi. Done when
    # the correction at the new point, or the step itself, is below 4e-15·|τ| (the root to
    # rounding), or after ``iters`` steps. With M = F + 1 >= 1 the step is
    # G/G' = p·(M − M^(1 − 1/p)) / F'.
    result = x
    done = fx <= 0  # F(lo) = 0: lo is the root
    step = _norm_step(fx, dx, power)
    steps = 0
    while (~done) & (steps < iters):
        newton = x + step
        nxt = tl.where(newton < hi, newton, (x + hi) / 2)
        f_next, d_next = _kept_excess(kept_m, kept_s, n_kept, exact, row, S, nxt, power, lin, nodes, weights, KIND,
                                      SOLVE_P, SHORT_P, BLOCK_S)
        correction = _norm_step(f_next, d_next, power)  # signed: negative past the root
        tol = 4e-15 * tl.maximum(tl.abs(nxt), 1.0)
        done = (tl.abs(correction) <= tol) | (nxt - x <= tol)
        result = tl.minimum(tl.maximum(nxt + correction, x), hi)
        ahead = f_next >= 0  # still left of the root (or on it)
        hi = tl.where(ahead, hi, nxt)
        x = tl.where(ahead, nxt, x)
        fx = tl.where(ahead, f_next, fx)
        dx = tl.where(ahead, d_next, dx)
        step = tl.where(ahead, correction, step)  # _norm_step(fx, dx): the same value, not recomputed
        steps += 1
    return result


@triton.jit
def _gaussian_tau_kernel(
    mu, sigma, cand, exact, lin_hi, lin_mid, lin_lo, tau_out, kept_mu, kept_sigma, HQ, P, S, iters, expansions,
    KIND: tl.constexpr, BLOCK_P: tl.constexpr, SHORT_P: tl.constexpr, BLOCK_S: tl.constexpr, NODES: tl.constexpr,
    NEGLIGIBLE: tl.constexpr, SOLVE_P: tl.constexpr, PRESOLVE: tl.constexpr, MARGIN: tl.constexpr,
    PRESOLVE_LONG: tl.constexpr, LENGTHS: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """τ̂ of one (sequence, query head) a program: the kept pages, then the solve over them."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)  # b·Hq + h
    lin = _float64_of(lin_hi, lin_mid, lin_lo)  # α − 1 in float64 (a float argument would arrive as float32)
    nodes, weights = _quadrature_rule(KIND, NODES)
    top_all, least, n_kept = _keep_pages(mu, sigma, cand, exact, lin, kept_mu, kept_sigma, row, row // HQ, P, S,
                                         BLOCK_P, BLOCK_S, NEGLIGIBLE, LENGTHS)
    tl.debug_barrier()  # every thread's kept pages are stored before any is read
    result = _solve(kept_mu + row * P, kept_sigma + row * P, n_kept, top_all, least, exact, row, S, iters,
                    expansions, lin, nodes, weights, KIND, SOLVE_P, SHORT_P, BLOCK_S, PRESOLVE, MARGIN,
                    PRESOLVE_LONG)
    tl.store(tau_out + row, result)


@triton.jit
def _gaussian_keep_kernel(mu, sigma, cand, exact, lin_hi, lin_mid, lin_lo, kept_mu, kept_sigma, counts, tops, lows, HQ,
                          P, S, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr, NEGLIGIBLE: tl.constexpr,
                          LENGTHS: tl.constexpr, PDL: tl.constexpr = False):
    """The split form's first kernel: a row's kept pages, their count, its top and low end."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    lin = _float64_of(lin_hi, lin_mid, lin_lo)
    top_all, least, n_kept = _keep_pages(mu, sigma, cand, exact, lin, kept_mu, kept_sigma, row,
                                         row // HQ, P, S, BLOCK_P, BLOCK_S, NEGLIGIBLE, LENGTHS)
    tl.store(counts + row, n_kept)
    tl.store(tops + row, top_all)
    tl.store(lows + row, least)


@triton.jit
def _gaussian_solve_kernel(exact, lin_hi, lin_mid, lin_lo, tau_out, kept_mu, kept_sigma, counts, tops, lows, P, S,
                           iters, expansions, KIND: tl.constexpr, SOLVE_P: tl.constexpr, SHORT_P: tl.constexpr,
                           BLOCK_S: tl.constexpr, NODES: tl.constexpr, PRESOLVE: tl.constexpr,
                           MARGIN: tl.constexpr, PRESOLVE_LONG: tl.constexpr, PDL: tl.constexpr = False):
    """The split form's second kernel: a row's τ̂ from what ``_gaussian_keep_kernel`` kept."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    lin = _float64_of(lin_hi, lin_mid, lin_lo)
    nodes, weights = _quadrature_rule(KIND, NODES)
    result = _solve(kept_mu + row * P, kept_sigma + row * P, tl.load(counts + row), tl.load(tops + row),
                    tl.load(lows + row), exact, row, S, iters, expansions, lin, nodes, weights, KIND, SOLVE_P, SHORT_P,
                    BLOCK_S, PRESOLVE, MARGIN, PRESOLVE_LONG)
    tl.store(tau_out + row, result)


@triton.jit
def _gaussian_chunk_top_kernel(mu, cand, lin_hi, lin_mid, lin_lo, chunk_tops, HQ, P, S, CHUNKS, CHUNK_P,
                               BLOCK_P: tl.constexpr, LENGTHS: tl.constexpr, PDL: tl.constexpr = False):
    """The spread form's first kernel: the top (α−1)·μ of one chunk of a row's pages (CHUNK_P of
    them, in blocks of BLOCK_P) a program, to ``chunk_tops`` [rows, CHUNKS]."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    lin = _float64_of(lin_hi, lin_mid, lin_lo)
    lanes = tl.arange(0, BLOCK_P)
    top = tl.full((BLOCK_P,), float("-inf"), tl.float64)
    end = _candidate_end(cand, row // HQ, P, S, LENGTHS)
    for start in range(chunk * CHUNK_P, tl.minimum(chunk * CHUNK_P + CHUNK_P, end), BLOCK_P):
        top = tl.maximum(top, _block_tops(mu, cand, lin, row, row // HQ, P, end, start + lanes, LENGTHS))
    tl.store(chunk_tops + row * CHUNKS + chunk, tl.max(top))


@triton.jit
def _gaussian_chunk_keep_kernel(mu, sigma, cand, exact, lin_hi, lin_mid, lin_lo, chunk_tops, segments_mu,
                                segments_sigma, counts, tops, lows, HQ, P, S, CHUNKS, CHUNK_P, BLOCK_P: tl.constexpr,
                                BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, NEGLIGIBLE: tl.constexpr,
                                LENGTHS: tl.constexpr, PDL: tl.constexpr = False):
    """The spread form's second kernel: one chunk's kept pages, in page order, to the chunk's
    segment of the row's scratch (entries chunk·CHUNK_P on) and their count to ``counts``
    [rows, CHUNKS]; the row's top and low end (every chunk computes them alike from
    ``chunk_tops``; chunk 0 stores them)."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    lin = _float64_of(lin_hi, lin_mid, lin_lo)
    c = tl.arange(0, BLOCK_C)
    top_page = tl.max(tl.load(chunk_tops + row * CHUNKS + c, mask=c < CHUNKS, other=float("-inf")))
    top_exact = _newest_top(exact, lin, row, S, BLOCK_S)
    least = _low_end(top_page, top_exact, lin, S)
    segment_m = segments_mu + row * P + chunk * CHUNK_P
    segment_s = segments_sigma + row * P + chunk * CHUNK_P
    lanes = tl.arange(0, BLOCK_P)
    n = 0
    end = _candidate_end(cand, row // HQ, P, S, LENGTHS)
    for start in range(chunk * CHUNK_P, tl.minimum(chunk * CHUNK_P + CHUNK_P, end), BLOCK_P):
        n += _cut_block(mu, sigma, cand, lin, least, row, row // HQ, P, S, end, start + lanes, segment_m + n,
                        segment_s + n, NEGLIGIBLE, LENGTHS)
    tl.store(counts + row * CHUNKS + chunk, n)
    if chunk == 0:
        tl.store(tops + row, tl.maximum(top_page, top_exact))
        tl.store(lows + row, least)


@triton.jit
def _gaussian_gather_solve_kernel(exact, lin_hi, lin_mid, lin_lo, tau_out, segments_mu, segments_sigma, kept_mu,
                                  kept_sigma, counts, tops, lows, P, S, CHUNKS, CHUNK_P, iters, expansions,
                                  KIND: tl.constexpr, GATHER_P: tl.constexpr, BLOCK_C: tl.constexpr,
                                  SOLVE_P: tl.constexpr, SHORT_P: tl.constexpr, BLOCK_S: tl.constexpr,
                                  NODES: tl.constexpr, PRESOLVE: tl.constexpr, MARGIN: tl.constexpr,
                                  PRESOLVE_LONG: tl.constexpr, PDL: tl.constexpr = False):
    """The spread form's third kernel: a row's chunk segments joined, in page order, into its
    scratch row (so the solve reads the same kept pages in the same order as the one kernel's:
    the same τ̂, bit for bit), then its τ̂."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    in_chunk = tl.load(counts + row * CHUNKS + c, mask=c < CHUNKS, other=0)
    ends = tl.cumsum(in_chunk, axis=0)
    firsts = ends - in_chunk
    n_kept = tl.sum(in_chunk)
    lanes = tl.arange(0, GATHER_P)
    for start in range(0, n_kept, GATHER_P):
        i = start + lanes  # kept entries: entry i is in the chunk whose entries end first past i
        chunk = tl.sum((ends[None, :] <= i[:, None]).to(tl.int32), axis=1)
        first = tl.sum(tl.where(c[None, :] == chunk[:, None], firsts[None, :], 0), axis=1)
        source = row * P + chunk * CHUNK_P + i - first
        ok = i < n_kept
        tl.store(kept_mu + row * P + i, tl.load(segments_mu + source, mask=ok), mask=ok)
        tl.store(kept_sigma + row * P + i, tl.load(segments_sigma + source, mask=ok), mask=ok)
    tl.debug_barrier()  # every thread's entries are stored before any is read
    lin = _float64_of(lin_hi, lin_mid, lin_lo)
    nodes, weights = _quadrature_rule(KIND, NODES)
    result = _solve(kept_mu + row * P, kept_sigma + row * P, n_kept, tl.load(tops + row), tl.load(lows + row), exact,
                    row, S, iters, expansions, lin, nodes, weights, KIND, SOLVE_P, SHORT_P, BLOCK_S, PRESOLVE,
                    MARGIN, PRESOLVE_LONG)
    tl.store(tau_out + row, result)


def _candidates_arg(candidates: torch.Tensor, batch: int, pages: int) -> tuple[torch.Tensor, bool]:
    """``gaussian_tau``'s candidates as its kernels read them: ``(tensor, lengths)`` — the [B]
    lengths as they are, or the [B, P] mask as bool (no launch for a bool mask)."""
    if candidates.dim() == 1:
        if candidates.shape[0] != batch or candidates.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"candidates as lengths must be [B] = [{batch}] int32/int64, got "
                             f"{list(candidates.shape)} {candidates.dtype}")
        return candidates.contiguous(), True
    if tuple(candidates.shape) != (batch, pages):
        raise ValueError(f"candidates must be a [B, P] = [{batch}, {pages}] mask or [B] lengths, got "
                         f"{list(candidates.shape)}")
    return candidates.to(torch.bool).contiguous(), False


@triton_op("entmaxkv::gaussian_tau", mutates_args=())
def gaussian_tau(
    mu: torch.Tensor, sigma: torch.Tensor, candidates: torch.Tensor, exact_scores: torch.Tensor, alpha: float,
    iters: int, expansions: int,
) -> torch.Tensor:
    """τ̂ [B, Hkv, G] float64 of the Gaussian page model.

    mu, sigma: [B, Hkv, G, P] page score means and stds (work dtype; entries of pages that are
    not candidates are never read); candidates: [B, P] bool, the pages modelled (each holds
    page-size tokens, S = exact_scores.shape[-1]), or [B] integer sequence lengths: the
    candidates are then the full pages before the newest token's, p < (len − 1) // S
    (``Step.candidates``), found by the kernels from the lengths (no mask is built, and no
    block of pages past them is read); exact_scores: [B, Hkv, G, S] the newest
    page's exact scores (−inf = absent); alpha in (1, 2]; iters, expansions: fixed counts.
    Allocates a float64 scratch of 2·B·Hq·P elements for the kept pages' moments (33 MB at
    1M tokens, 32 query heads; only the kept pages' entries are written), and in the split
    form three B·Hq rows more (the kept count, the top and the low end); in the spread form
    another 2·B·Hq·P (the chunks' segments) and [B·Hq, chunks] tops and counts.
    """
    b, hkv, g, p = mu.shape
    s = exact_scores.shape[-1]
    tau = torch.empty((b, hkv, g), dtype=torch.float64, device=mu.device)
    lin = float64_words(alpha - 1.0)  # exact α − 1, three int arguments (no launch for a fill)
    kept_mu = torch.empty((b * hkv * g, p), dtype=torch.float64, device=mu.device)  # scratch
    kept_sigma = torch.empty_like(kept_mu)
    rows = b * hkv * g
    cand, lengths = _candidates_arg(candidates, b, p)
    block_p, block_s = min(BLOCK_P, max(16, next_pow2(p))), max(16, next_pow2(s))
    if splits(rows, mu.device):
        counts = torch.empty(rows, dtype=torch.int32, device=mu.device)
        tops = torch.empty(rows, dtype=torch.float64, device=mu.device)
        lows = torch.empty_like(tops)
        wrap_triton(_gaussian_keep_kernel)[(rows,)](
            mu, sigma, cand, exact_scores, *lin, kept_mu, kept_sigma, counts, tops, lows, hkv * g, p, s,
            BLOCK_P=block_p, BLOCK_S=block_s, NEGLIGIBLE=NEGLIGIBLE, LENGTHS=lengths, num_warps=KEEP_WARPS,
            **pdl_kwargs(mu, "gaussian_tau"))
        wrap_triton(_gaussian_solve_kernel)[(rows,)](
            exact_scores, *lin, tau, kept_mu, kept_sigma, counts, tops, lows, p, s, iters, expansions,
            KIND=moment_kind(alpha), SOLVE_P=min(SPLIT_SOLVE_P, max(16, next_pow2(p))), SHORT_P=SHORT_P,
            BLOCK_S=block_s, NODES=QUAD_NODES, PRESOLVE=bool(PRESOLVE), MARGIN=float(PRESOLVE_MARGIN),
            PRESOLVE_LONG=bool(PRESOLVE_LONG),
            num_warps=SOLVE_WARPS, **pdl_kwargs(mu, "gaussian_tau"))
        return tau
    if spreads(rows, p, mu.device):
        spread_p = min(SPREAD_P, next_pow2(p))
        chunks = min(triton.cdiv(p, spread_p), SPREAD_CHUNKS)
        chunk_p = triton.cdiv(triton.cdiv(p, chunks), spread_p) * spread_p  # whole blocks of spread_p
        chunks = triton.cdiv(p, chunk_p)
        block_c = max(2, next_pow2(chunks))
        chunk_tops = torch.empty((rows, chunks), dtype=torch.float64, device=mu.device)
        counts = torch.empty((rows, chunks), dtype=torch.int32, device=mu.device)
        tops = torch.empty(rows, dtype=torch.float64, device=mu.device)
        lows = torch.empty_like(tops)
        segments_mu, segments_sigma = torch.empty_like(kept_mu), torch.empty_like(kept_mu)
        wrap_triton(_gaussian_chunk_top_kernel)[(rows, chunks)](
            mu, cand, *lin, chunk_tops, hkv * g, p, s, chunks, chunk_p, BLOCK_P=spread_p, LENGTHS=lengths,
            num_warps=SPREAD_WARPS, **pdl_kwargs(mu, "gaussian_tau"))
        wrap_triton(_gaussian_chunk_keep_kernel)[(rows, chunks)](
            mu, sigma, cand, exact_scores, *lin, chunk_tops, segments_mu, segments_sigma, counts, tops, lows, hkv * g,
            p, s, chunks, chunk_p, BLOCK_P=spread_p, BLOCK_S=block_s, BLOCK_C=block_c, NEGLIGIBLE=NEGLIGIBLE,
            LENGTHS=lengths, num_warps=SPREAD_WARPS, **pdl_kwargs(mu, "gaussian_tau"))
        wrap_triton(_gaussian_gather_solve_kernel)[(rows,)](
            exact_scores, *lin, tau, segments_mu, segments_sigma, kept_mu, kept_sigma, counts, tops, lows, p, s,
            chunks, chunk_p, iters, expansions, KIND=moment_kind(alpha),
            GATHER_P=max(16, min(1024, GATHER_TILE // block_c)), BLOCK_C=block_c,
            SOLVE_P=min(TAU_SOLVE_P, block_p), SHORT_P=SHORT_P, BLOCK_S=block_s, NODES=QUAD_NODES,
            PRESOLVE=bool(PRESOLVE), MARGIN=float(PRESOLVE_MARGIN), PRESOLVE_LONG=bool(PRESOLVE_LONG),
            num_warps=TAU_WARPS, **pdl_kwargs(mu, "gaussian_tau"))
        return tau
    wrap_triton(_gaussian_tau_kernel)[(rows,)](
        mu, sigma, cand, exact_scores, *lin, tau, kept_mu, kept_sigma, hkv * g, p, s, iters, expansions,
        KIND=moment_kind(alpha), BLOCK_P=block_p, BLOCK_S=block_s, SHORT_P=SHORT_P, NODES=QUAD_NODES,
        NEGLIGIBLE=NEGLIGIBLE, SOLVE_P=min(TAU_SOLVE_P, block_p), PRESOLVE=bool(PRESOLVE),
        MARGIN=float(PRESOLVE_MARGIN), PRESOLVE_LONG=bool(PRESOLVE_LONG), LENGTHS=lengths, num_warps=TAU_WARPS,
        **pdl_kwargs(mu, "gaussian_tau"))
    return tau


@gaussian_tau.register_fake
def _(mu, sigma, candidates, exact_scores, alpha, iters, expansions):
    return mu.new_empty(mu.shape[:3], dtype=torch.float64)


register_batch_rule(gaussian_tau, (0, 1, 2, 3))  # vmap folds into the batch dimension
