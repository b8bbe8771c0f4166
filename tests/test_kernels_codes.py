"""The key-code scan ops (``entmaxkv.kernels.code_scan``, under Triton's interpreter on the
CPU) against the torch reference (``keycodes.code_scores``, ``exact_codes``).

Oracles: the reference's ŝ and ε (equal up to the order of a D-term sum: the tolerance is
ε's own rounding part, scale·|q|·r·M), the reference's and plain float64 token scores for
the interval itself, and the reference's candidate rule applied to its own ŝ. Fresh inputs
every run (the seed is in the failure message); ragged lengths landing on page edges; GQA;
ALiBi; 4- and 8-bit codes; buffers the ops allocate are poisoned (NaN / −7).
"""

import dataclasses
import math
import random

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.backend import build_step
from entmaxkv.exact_codes import code_candidates as reference_candidates
from entmaxkv.keycodes import code_radius, code_scores, code_steps, encode_keys
from entmaxkv.newest_page import newest_page_scores
from entmaxkv.state import append_token
from entmaxkv.synthetic import SyntheticStream
from helpers import fresh_seed
from naive import naive_threshold
from test_keycodes import adversarial_keys, naive_scores

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels.code_scan import (  # noqa: E402
    code_bounds, code_candidates, code_radius_factor, dot_margins, splits_a, uses_dot)
from entmaxkv.kernels.page_scores import newest_slack  # noqa: E402

def lengths(seed: int, batch: int, page_size: int) -> list[int]:
    """Ragged lengths landing 0/1/S−1/S/S+1 tokens into a page (some with no coded page)."""
    g = random.Random(seed)
    return [page_size * g.randrange(0, 5) + g.choice([0, 1, page_size - 1, page_size, page_size + 1]) + 1
            for _ in range(batch)]


def coded_cache(seed, lens, hkv, d, page, bits, dtype, kind="random", capacity=None):
    g = torch.Generator().manual_seed(seed)
    b, t = len(lens), max(lens)
    k = adversarial_keys(kind, g, b, hkv, t, d)
    v = torch.randn(b, hkv, t, d, generator=g, dtype=torch.float64)
    capacity = capacity or t + 2 * page
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=capacity, page_size=page,
                                   dtype=dtype, key_bits=bits)
    return ekv.prefill(cache, k.to(dtype), v.to(dtype), lens)


HKV, PAGE = 2, 4  # the KV heads and page size of coded_setup's caches


def coded_setup(seed, dtype, bits, group, alibi, d=16, batch=3, kind="random", q_scale=2.0, lens=None,
                capacity=None):
    """What the scan tests run on, drawn from ``seed``: a coded cache (``coded_cache``: HKV KV
    heads, pages of PAGE tokens) over ``lens`` (default: ragged ``lengths`` of ``batch`` rows),
    a query [B, HKV·group, 1, d] (N(0, q_scale²) in float64, then ``dtype``) and ALiBi slopes
    [HKV·group] in [0, 0.2) or None -> (cache, q, slopes, g), g the generator for more draws."""
    lens = lens if lens is not None else lengths(seed, batch, PAGE)
    cache = coded_cache(seed, lens, HKV, d, PAGE, bits, dtype, kind, capacity)
    g = torch.Generator().manual_seed(seed + 1)
    q = (torch.randn(len(lens), HKV * group, 1, d, generator=g, dtype=torch.float64) * q_scale).to(dtype)
    slopes = torch.rand(HKV * group, generator=g) * 0.2 if alibi else None
    return cache, q, slopes, g


def coded_pages(cache) -> torch.Tensor:
    """[B, 1, 1, P] bool: full pages other than the one holding the newest token."""
    page = torch.arange(cache.num_pages, device=cache.device)
    return (page[None, :] < ((cache.seq_lens - 1).clamp_min(0) // cache.page_size)[:, None])[:, None, None, :]


def rounding_part(cache, q, scale):
    """[B, Hkv, G, P] scale·|q|·r·M: the part of ε that covers rounding — how far two
    computations of ŝ that differ in summation order may disagree."""
    wdt = torch.float64 if cache.dtype == torch.float64 else torch.float32
    mag = torch.maximum(cache.k_min.to(wdt).abs(), cache.k_max.to(wdt).abs())
    qg = q[:, :, 0].reshape(cache.batch, cache.num_kv_heads, -1, cache.head_dim).to(wdt).abs()
    return torch.einsum("bhgd,bhpd->bhgp", qg, code_radius_factor(wdt, cache.head_dim) * mag).double() * scale


def dot_extra(cache, q, scale):
    """[B, Hkv, G, P] float64: what the tensor-core path of ``code_bounds`` adds to ε (0 when it
    does not run), from its definition: scale·(rel·Σ_d |q_d|·step_pd + D·abs·2^−k) with 2^k the
    power of two putting max_d |q_d·step_pd| (float32, as the kernel's) in [2^14, 2^15), k in
    [−126, 126] (``code_scan.dot_margins``; the module docstring)."""
    wdt = torch.float64 if cache.dtype == torch.float64 else torch.float32
    d = cache.head_dim
    qg = q[:, :, 0].reshape(cache.batch, cache.num_kv_heads, -1, d).to(wdt)
    if not uses_dot(wdt, d, cache.key_bits, qg.shape[2]):
        return torch.zeros(qg.shape[:3] + (cache.num_pages,), dtype=torch.float64, device=q.device)
    step = code_steps(cache.k_min, cache.k_max, cache.key_bits)  # [B, Hkv, P, D] float32
    rel, dab = dot_margins(cache.key_bits, splits_a(cache.key_bits))
    top = (qg[:, :, :, None, :] * step[:, :, None, :, :]).abs().amax(-1)  # [B, Hkv, G, P]
    e = (top.view(torch.int32) >> 23) & 255
    down = torch.pow(2.0, (127 - (268 - e).clamp(1, 253)).double())
    sums = torch.einsum("bhgd,bhpd->bhgp", qg.abs().double(), step.double())
    return scale * (rel * sums + d * dab * down)


def score_tolerance(cache, q, scale):
    """[B, Hkv, G, P] float64: how far the op's ŝ may be from the reference's — the rounding
    part, plus on the tensor-core path the error of its float16 A, which ``dot_extra`` bounds
    (and adds to ε): 2^bits·2^−22 of Σ_d |q_d|·step_pd with hi + lo, 2^bits·2^−11 with hi alone."""
    return rounding_part(cache, q, scale) + dot_extra(cache, q, scale)


def assert_eps_matches(eps, want_eps, cache, q, scale, coded, msg):
    """The op's ε against the reference's ``want_eps``: a sum of non-negative terms in another
    order (relative error <= γ each way), plus ``dot_extra`` on the tensor-core path."""
    gamma = 2 * (cache.head_dim + 2) * torch.finfo(eps.dtype).eps
    extra = dot_extra(cache, q, scale)
    got, want = eps[coded].double(), want_eps[coded].double()
    low, high = want * (1 - 2 * gamma), (want + extra[coded]) * (1 + 2 * gamma)
    assert bool(((got >= low) & (got <= high)).all()), (msg, float((got - high).max()), float((low - got).max()))


def run_bounds(cache, q, scale, slopes, with_scores=True):
    return code_bounds(q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes,
                       cache.key_bits, scale, with_scores)[:3]


# ---- pass 1: ŝ, ε and the per-page best ------------------------------------------------------


BOUNDS_CASES = [  # (dtype, bits, group, alibi): each dtype and bit width, GQA (3: padded heads), ALiBi
    (torch.float32, 4, 1, False), (torch.float32, 8, 4, True), (torch.float16, 4, 2, True),
    (torch.float16, 8, 3, False), (torch.bfloat16, 4, 3, True), (torch.bfloat16, 8, 1, False),
    (torch.float64, 4, 4, False), (torch.float64, 8, 2, True),
]


@pytest.mark.parametrize("dtype,bits,group,alibi", BOUNDS_CASES)
def test_code_bounds_equal_the_reference(dtype, bits, group, alibi, poison):
    seed = fresh_seed()
    d, page = 24, PAGE
    cache, q, slopes, _ = coded_setup(seed, dtype, bits, group, alibi, d=d)
    scale = 0.3
    page_max, eps, s_hat = run_bounds(cache, q, scale, slopes)
    want_s, want_eps = code_scores(cache, q, scale, slopes)
    coded = coded_pages(cache).expand_as(eps)
    tokens = coded.repeat_interleave(page, -1)
    tol = score_tolerance(cache, q, scale)
    gap = (s_hat.double() - want_s.double()).abs() - tol.repeat_interleave(page, -1)
    assert bool((gap[tokens] <= 0).all()), (seed, float(gap[tokens].max()))
    assert_eps_matches(eps, want_eps, cache, q, scale, coded, seed)
    # the page best is the max of the op's own ŝ, bit for bit; −inf and 0 where nothing is coded
    best = s_hat.reshape(*s_hat.shape[:3], -1, page).amax(-1)
    assert torch.equal(page_max[coded], best[coded]), seed
    assert bool((page_max[~coded] == float("-inf")).all()) and bool((eps[~coded] == 0).all()), seed


@pytest.mark.parametrize("dtype,bits,kind", [
    (torch.float16, 4, "outliers"), (torch.bfloat16, 8, "constant"), (torch.float32, 4, "huge_range"),
    (torch.float16, 8, "fp16_extremes"), (torch.float32, 8, "offset_tiny_spread"),
    (torch.float64, 4, "offset_tiny_spread"), (torch.bfloat16, 4, "outliers"),
])
def test_kernel_interval_holds_on_adversarial_keys(dtype, bits, kind):
    """|s − ŝ| <= ε with the op's own ŝ and ε, for the reference's scores and exact float64
    ones (without ALiBi) — the certificate's premise, on keys that stress it (D = 32: float32
    work takes the tensor-core path, ``code_scan.uses_dot``)."""
    seed = fresh_seed()
    d, page = 32, PAGE
    cache, q, _, _ = coded_setup(seed, dtype, bits, 2, False, d=d, batch=2, kind=kind, q_scale=3.0)
    scale = 1 / math.sqrt(d)
    _, eps, s_hat = run_bounds(cache, q, scale, None)
    from entmaxkv.reference import token_scores

    ref = token_scores(cache, q, scale).double()
    exact = naive_scores(cache, q).reshape(ref.shape)
    tokens = coded_pages(cache).expand_as(eps).repeat_interleave(page, -1)
    radius = eps.double().repeat_interleave(page, -1)
    for scores in (ref, exact):
        gap = (scores - s_hat.double()).abs() - radius
        assert bool((gap[tokens] <= 0).all()), (seed, kind, float(gap[tokens].max()))


# ---- pass 1's seed and newest page (what lets the step skip page_bounds and the seed selection) --


def naive_class_seed(low: torch.Tensor, slots: int) -> list[set[int]]:
    """Per (b, h, g) head: {the page with the largest float32 ``low`` in each class p mod slots,
    the lowest such page on ties} over pages with low > −inf — a plain loop, the oracle of
    ``exact_codes.class_seed``."""
    out = []
    b, hkv, g, p = low.shape
    for i in range(b):
        for j in range(hkv):
            for h in range(g):
                chosen = set()
                for r in range(slots):
                    pages = [x for x in range(r, p, slots) if float(low[i, j, h, x]) > float("-inf")]
                    if pages:
                        key = [float(low[i, j, h, x].float()) for x in pages]
                        chosen.add(pages[key.index(max(key))])  # index(): the first, i.e. the lower page
                out.append(chosen)
    return out


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_class_seed_equals_a_loop(slots):
    from entmaxkv.exact_codes import class_seed

    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 4, (2, 2, 3, 11), generator=g).double()  # many ties
    low[0, 1, :, 5:] = float("-inf")  # pages without codes
    low[1, 0, 2] = float("-inf")
    got = class_seed(low, slots)
    assert got.shape == (2, 2, 3 * slots)
    want = naive_class_seed(low, slots)
    for n, (i, j, h) in enumerate((i, j, h) for i in range(2) for j in range(2) for h in range(3)):
        row = got[i, j, h * slots:(h + 1) * slots]
        assert set(row[row >= 0].tolist()) == want[n], (seed, i, j, h)


SEED_CASES = [  # (dtype, bits, group, alibi, slots, SEED_CHUNK): every dtype, GQA 1/2/4 (3: padded heads),
    # P not a multiple; chunks of 2 or 3 pages (rows of 3 to 8 pages: up to 4 chunks, the last one
    # ragged; fewer pages than classes: classes empty in some chunks) and the default (one chunk)
    (torch.float32, 4, 1, False, 1, 2), (torch.float16, 8, 2, True, 3, 2), (torch.bfloat16, 4, 4, False, 2, 3),
    (torch.float64, 8, 3, True, 8, 3), (torch.float32, 8, 4, True, 5, 2), (torch.float16, 4, 2, False, 1, 512),
]


# the same cases with the α of the seed's τ
SEED_TAU_CASES = [case + (alpha,) for case, alpha in zip(SEED_CASES, [1.5, 2.0, 1.25, 1.5, 2.0, 1.3])]


@pytest.mark.parametrize("dtype,bits,group,alibi,slots,chunk,alpha", SEED_TAU_CASES)
def test_code_bounds_seed_and_newest_page_equal_the_reference(dtype, bits, group, alibi, slots, chunk, alpha, poison,
                                                              monkeypatch):
    """``code_bounds(..., k_pages, slots, alpha)``: the seed is ``class_seed`` of the op's own
    page_max − ε (bit for bit: the same values), each page listed once, −1 padded, with rows
    of several seed chunks (``SEED_CHUNK`` patched small); its magnitude is the pages' |score|
    scale; the newest page's best score and scale are ``newest_page``'s up to the rounding of
    a dot product; the seed's τ is the entmax threshold of each head's own slots' page_max − ε
    and its newest page's scores (float64 oracle), within the bisection's 2^−30 below it and
    the newest scores' rounding."""
    import entmaxkv.kernels.code_scan as cs
    from entmaxkv.exact_codes import class_seed
    from entmaxkv.newest_page import newest_page_magnitude

    monkeypatch.setattr(cs, "SEED_CHUNK", chunk)
    seed = fresh_seed()
    hkv, d = HKV, 16
    cache, q, slopes, _ = coded_setup(seed, dtype, bits, group, alibi, d=d)
    scale = 0.3
    out = code_bounds(q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes,
                      cache.key_bits, scale, False, cache.k_pages, slots, alpha)
    page_max, eps, _, newest_max, newest_mag, pages, count, mag, seed_tau, newest_floor = out
    want = class_seed(page_max - eps, slots)  # [B, Hkv, G·K], a page once per head that chose it
    wdt = eps.dtype
    kabs = torch.maximum(cache.k_min.double().abs(), cache.k_max.double().abs())
    qabs = q[:, :, 0].double().abs().reshape(3, hkv, group, d)
    gamma = 2 * (d + 2) * torch.finfo(wdt).eps
    for i in range(3):
        for j in range(hkv):
            n = int(count[i, j])
            listed = pages[i, j, :n].tolist()
            assert len(listed) == len(set(listed)), (seed, i, j, listed)  # each page once
            assert set(listed) == set(x for x in want[i, j].tolist() if x >= 0), (seed, i, j)
            assert bool((pages[i, j, n:] == -1).all()), (seed, i, j)
            # magnitude: max over the listed pages of scale·|q|·max(|kmin|, |kmax|), per head
            per_page = scale * torch.einsum("gd,pd->gp", qabs[i, j], kabs[i, j, listed]) if listed else None
            ref = per_page.amax(-1) if listed else torch.zeros(group, dtype=torch.float64)
            torch.testing.assert_close(mag[i, j].double(), ref, rtol=2 * gamma, atol=0, msg=str(seed))
    # every head's best page is in the seed (the class seed's point)
    low = torch.where(coded_pages(cache), page_max - eps, float("-inf"))
    best = low.float().argmax(-1)  # [B, Hkv, G]
    has = low.amax(-1) > float("-inf")
    listed = pages_to_mask_of(pages, cache.num_pages)
    assert bool(listed.gather(-1, best.reshape(3, hkv, -1))[has].all()), seed
    # the newest page: the torch computation's best score and scale, up to a dot product's rounding
    want_max = newest_page_scores(cache, q, scale, slopes).amax(-1)
    want_mag = newest_page_magnitude(cache, q, scale)
    assert torch.equal(torch.isneginf(newest_max), torch.isneginf(want_max)), seed
    fin = torch.isfinite(want_max)
    assert bool(((newest_max - want_max)[fin].abs() <= 2 * gamma * want_mag[fin] + 1e-30).all()), seed
    torch.testing.assert_close(newest_mag, want_mag.to(wdt), rtol=2 * gamma, atol=0, msg=str(seed))
    floor = torch.add(newest_max, newest_mag, alpha=-newest_slack(wdt, d))  # KernelOps' torch floor, to the bit
    torch.testing.assert_close(newest_floor, floor, rtol=0, atol=0, msg=str(seed))
    check_seed_tau(cache, q, scale, slopes, page_max, eps, want, want_mag, seed_tau, slots, alpha, gamma, seed)


def check_seed_tau(cache, q, scale, slopes, page_max, eps, seed_list, newest_mag, seed_tau, slots, alpha, gamma, info):
    """``code_bounds``' seed τ [B, Hkv, G] is the entmax threshold (float64 oracle) of each
    head's own slots' page_max − ε (its row of the class seed ``seed_list``) and its newest
    page's scores: never above it beyond the newest scores' rounding (2γ·their |score| scale),
    never below it by more than the bisection's 2^−29 (other α; 1.5 and 2 search the exact
    support)."""
    b, hkv, group = seed_tau.shape
    own = seed_list.to(page_max.device).reshape(b, hkv, group, slots)
    low = torch.where(own >= 0, (page_max - eps).gather(-1, own.clamp_min(0)), float("-inf")).double()
    fresh = newest_page_scores(cache, q, scale, slopes).double()
    lin = float(torch.tensor(alpha, dtype=torch.float32)) - 1  # α reaches the kernel as a float32
    oracle = naive_threshold(lin * torch.cat([low, fresh], -1).cpu(), 1 / lin)
    slack = lin * 2 * gamma * newest_mag.double().cpu() + 1e-12 * (1 + oracle.abs())
    tau = seed_tau.cpu()
    assert tau.dtype == torch.float64
    assert bool((tau <= oracle + slack).all()), (info, tau - oracle)
    assert bool((tau >= oracle - 2.0**-29 - slack).all()), (info, tau - oracle)



@pytest.mark.parametrize("block_p", [1, 2, 4])
@pytest.mark.parametrize("in_scan", [False, True])
def test_code_bounds_runs_the_newest_page_once_per_row(block_p, in_scan, monkeypatch, poison):
    """The newest page runs once per row, in its program 0, and reads no codes.
    ``NEWEST_IN_SCAN``: in the scan's launch (dispatched before the code blocks, not after
    them), the code blocks the bare launch's shifted by one program; else — and always when
    the seed's τ (``alpha``) needs its scores — outside the scan (the seed's chunk launch, or
    its own launch without the seed), the code blocks exactly the bare launch's.
    page_max and ε equal the bare launch's bit for bit (poisoned buffers: no block skipped),
    and newest_max / newest_mag / newest_floor are the same bits in every form (one
    ``_newest_page``). The interpreter calls the kernel's helpers through the module's globals, so wrappers there
    see the program ids."""
    import triton.language as tl

    import entmaxkv.kernels.code_scan as cs

    monkeypatch.setattr(cs, "BLOCK_P", block_p)
    monkeypatch.setattr(cs, "NEWEST_IN_SCAN", in_scan)
    seen = {"newest": [], "codes": [], "merge": []}

    def recording(name, helper):
        def run(*args, **kwargs):
            seen[name].append((int(tl.program_id(0)), int(tl.program_id(1))))
            return helper(*args, **kwargs)
        return run

    monkeypatch.setattr(cs, "_newest_page", recording("newest", cs._newest_page))
    monkeypatch.setattr(cs, "_code_tile", recording("codes", cs._code_tile))
    monkeypatch.setattr(cs, "_seed_list", recording("merge", cs._seed_list))
    seed = fresh_seed()
    cache, q, slopes, _ = coded_setup(seed, torch.float32, 4, 2, True)
    args = (q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes, 4, 0.3, False)
    rows = cache.batch * HKV
    outs, codes, shifts = [], [], []
    for slots, alpha in ((2, 1.5), (2, 0.0), (0, 0.0)):  # the step's call, the seed without τ, no seed
        for runs in seen.values():
            runs.clear()
        outs.append(code_bounds(*args, cache.k_pages, slots, alpha))
        codes.append(set(seen["codes"]))
        shifts.append(1 if in_scan and not alpha else 0)
        assert sorted(seen["newest"]) == [(bh, 0) for bh in range(rows)], (seed, slots, seen["newest"])
        # the seed's list once a row, by the merge (none without the seed)
        assert sorted(seen["merge"]) == ([(bh, 0) for bh in range(rows)] if slots else []), (seed, seen["merge"])
    seen["newest"].clear()
    seen["codes"].clear()
    bare = code_bounds(*args)
    assert seen["newest"] == [], seed
    for full, blocks, shift in zip(outs, codes, shifts):
        assert blocks == {(bh, j + shift) for bh, j in seen["codes"]}, (seed, sorted(blocks))
        assert torch.equal(full[0], bare[0]) and torch.equal(full[1], bare[1]), seed
    # one _newest_page, whichever program runs it: the same bits (and the other form's too)
    monkeypatch.setattr(cs, "NEWEST_IN_SCAN", not in_scan)
    other = code_bounds(*args, cache.k_pages, 0)
    for a, b in ((outs[0], outs[1]), (outs[0], outs[2]), (outs[0], other)):
        assert torch.equal(a[3], b[3]) and torch.equal(a[4], b[4]) and torch.equal(a[9], b[9]), seed


def pages_to_mask_of(pages: torch.Tensor, num_pages: int) -> torch.Tensor:
    from entmaxkv.conventions import pages_to_mask

    return pages_to_mask(pages, num_pages)


@pytest.mark.parametrize("dtype,bits,group,alibi,alpha", [
    (torch.float32, 4, 2, False, 1.5), (torch.float16, 8, 4, True, 1.3), (torch.bfloat16, 4, 1, True, 2.0),
    (torch.float32, 8, 3, False, 1.25),
])
def test_code_candidates_margin_equals_the_torch_tau_bound(dtype, bits, group, alibi, alpha, poison):
    """With the seed's count and magnitudes, ``code_candidates`` lowers the seed's τ (``code_bounds``'
    own) exactly as ``KernelOps._safe_tau`` does (the same float64 operations: equal to the last
    bits here; α = 1.3 and 1.25 add the bisection term), and selects with that bound."""
    seed = fresh_seed()
    cache, q, slopes, _ = coded_setup(seed, dtype, bits, group, alibi)
    step = build_step(cache, q, alpha, 0.3, slopes, kernels=True, needs_sigma=False, needs_page_scores=False)
    ops = step.ops
    args = (ops.q, cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes)
    page_max, eps, _, newest_max, newest_mag, pages, count, mag, tau, floor = code_bounds(*args, bits, 0.3, False,
                                                                                          cache.k_pages, 3, alpha)
    ops.adopt_newest_page(newest_max, newest_mag, floor)
    index, n, page_mask, got, _, _ = code_candidates(*args, page_max, eps, tau, bits, 0.3, alpha - 1, 10_000, count,
                                                     mag, newest_mag, alpha)
    want = ops._safe_tau(tau, mag, count)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-300, msg=str(seed))
    assert bool((got < tau).all()), seed
    # and the candidates are those of that bound
    plain = code_candidates(*args, page_max, eps, want.contiguous(), bits, 0.3, alpha - 1, 10_000)
    assert torch.equal(n, plain[1]) and torch.equal(page_mask, plain[2]), seed


# ---- pass 2: candidates ---------------------------------------------------------------------


def reference_reach(cache, q, scale, slopes, tau_low, alpha):
    """[B, Hkv, N] max over the group of lin·(ŝ + ε) − τ_low from the torch scan (−inf off
    the coded pages): the reference's candidate rule."""
    s_hat, eps = code_scores(cache, q, scale, slopes)
    high = s_hat + eps.repeat_interleave(cache.page_size, -1)
    tokens = coded_pages(cache).repeat_interleave(cache.page_size, -1)
    high = torch.where(tokens, high, torch.full_like(high, float("-inf")))
    return ((alpha - 1) * high.double() - tau_low.unsqueeze(-1)).amax(2)


def check_candidates(cache, q, scale, slopes, tau_low, alpha, capacity, seed):
    page_max, eps, _ = run_bounds(cache, q, scale, slopes, with_scores=False)
    index, count, page_mask, _, page_list, page_count = code_candidates(
        q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max,
                                                 cache.seq_lens, slopes, page_max, eps, tau_low, cache.key_bits, scale,
                                                 alpha - 1, capacity)
    reach = reference_reach(cache, q, scale, slopes, tau_low, alpha).cpu()
    # ŝ + ε off the reference's by the score tolerance and ε's extra term
    band = (alpha - 1) * (score_tolerance(cache, q, scale) + dot_extra(cache, q, scale)).amax(2)
    band = band.repeat_interleave(cache.page_size, -1).cpu()
    index, count, page_mask = index.cpu(), count.cpu(), page_mask.cpu()
    sure, maybe = reach > band, reach > -band  # identical up to the rounding of ŝ
    for i in range(cache.batch):
        for j in range(cache.num_kv_heads):
            listed = [int(x) for x in index[i, j] if x >= 0]
            n = int(count[i, j])
            assert len(listed) == len(set(listed)) == min(n, capacity), (seed, i, j)
            assert all(bool(maybe[i, j, x]) for x in listed), (seed, i, j)
            assert int(sure[i, j].sum()) <= n <= int(maybe[i, j].sum()), (seed, i, j)
            assert bool((index[i, j, len(listed):] == -1).all()), (seed, i, j)
            if n <= capacity:  # complete: every sure candidate listed, the pages are theirs
                assert set(sure[i, j].nonzero().flatten().tolist()) <= set(listed), (seed, i, j)
                pages = torch.zeros(cache.num_pages, dtype=torch.bool)
                pages[[x // cache.page_size for x in listed]] = True
                assert torch.equal(page_mask[i, j], pages), (seed, i, j)
            else:  # overflow: the fallback, every coded page
                assert torch.equal(page_mask[i, j], coded_pages(cache)[i, 0, 0].cpu()), (seed, i, j)
            # the page list: the mask's pages, each once (on an overflowed row every coded page in
            # order), then −1
            used = int(page_count[i, j])
            in_list = page_list[i, j, :used].tolist()
            assert len(in_list) == len(set(in_list)), (seed, i, j)
            assert set(in_list) == set(page_mask[i, j].nonzero().flatten().tolist()), (seed, i, j)
            assert used == int(page_mask[i, j].sum()), (seed, i, j)
            assert bool((page_list[i, j, used:] == -1).all()), (seed, i, j)
            if n > capacity:
                assert in_list == list(range(int(coded_pages(cache)[i, 0, 0].sum()))), (seed, i, j)
    return count


@pytest.mark.parametrize("dtype,bits,group,alibi,alpha", [
    (torch.float32, 4, 1, False, 1.5), (torch.float16, 8, 2, True, 2.0), (torch.float64, 4, 4, False, 1.25),
    (torch.float32, 8, 2, False, 1.3), (torch.bfloat16, 4, 3, True, 1.5),
])
def test_code_candidates_equal_the_reference(dtype, bits, group, alibi, alpha, poison):
    seed = fresh_seed()
    page = PAGE
    cache, q, slopes, g = coded_setup(seed, dtype, bits, group, alibi, d=32)  # float32 work: the dot path
    # τ_low across the scores' range: some rows keep most tokens, some few or none
    s_hat, _ = code_scores(cache, q, 0.3, slopes)
    top = torch.where(coded_pages(cache).repeat_interleave(page, -1), s_hat, -1e9).amax(-1).double()
    tau_low = (alpha - 1) * (top - torch.rand(top.shape, generator=g, dtype=torch.float64) * 3)
    count = check_candidates(cache, q, 0.3, slopes, tau_low.contiguous(), alpha, 10_000, seed)
    small = max(1, int(count.max()) // 2)  # overflow: the true count, a full list of real candidates
    small_count = check_candidates(cache, q, 0.3, slopes, tau_low.contiguous(), alpha, small, seed)
    assert torch.equal(small_count, count), seed


# ---- the whole Exact-with-codes selection: kernel path vs reference path --------------------


@pytest.mark.parametrize("bits,group,alibi,capacity", [(4, 2, False, 512), (8, 4, True, 3), (4, 1, True, 0)])
def test_kernel_path_candidates_equal_the_reference_path(bits, group, alibi, capacity):
    """``exact_codes.code_candidates`` on ``KernelOps`` and ``ReferenceOps``: the same seed,
    τ_low within the two τ bounds' margins, the same candidates up to rounding, the same
    overflow flags."""
    seed = fresh_seed()
    hkv, d, page = 2, 16, 4
    lens = [n + 12 for n in lengths(seed, 2, page)]
    stream = SyntheticStream(batch=2, num_kv_heads=hkv, group=group, head_dim=d, seed=seed % 10_000,
                             dtype=torch.float64)
    k, v = stream.prompt(max(lens))
    empty = ekv.PagedKVCache.empty(batch=2, num_kv_heads=hkv, head_dim=d, capacity=max(lens) + 8, page_size=page,
                                   dtype=torch.float32, key_bits=bits)
    cache = ekv.prefill(empty, k.float(), v.float(), lens)
    q, kn, vn = (x.float() for x in stream.step())
    cache, _ = append_token(cache, kn, vn)
    slopes = torch.rand(hkv * group, generator=torch.Generator().manual_seed(seed)) * 0.05 if alibi else None
    found = {}
    for kernels in (False, True):
        step = build_step(cache, q, 1.5, 0.25, slopes, kernels=kernels, needs_sigma=False)
        found[kernels] = reference_candidates(step, 4, capacity)
    ref, ker = found[False], found[True]
    assert torch.equal(ref.seed_pages, ker.seed_pages), seed
    # two safe lower bounds of the same τ whose rounding margins differ (kernels: γ·|score|
    # scale per page; reference: per token), both a few γ·|score| below τ
    tau_gap = (ker.tau_low - ref.tau_low).abs().amax(-1)  # [B, Hkv]
    assert bool((tau_gap <= 1e-3 * (1 + ref.tau_low.abs().amax(-1))).all()), (seed, tau_gap)
    reach = reference_reach(cache, q, 0.25, slopes, ref.tau_low, 1.5)
    ends = score_tolerance(cache, q, 0.25) + dot_extra(cache, q, 0.25)  # ŝ + ε's distance from the reference's
    band = 0.5 * ends.amax(2).repeat_interleave(page, -1) + tau_gap[..., None]
    near = ((reach.abs() <= band).sum(-1) > 0)  # rows with a token on the edge may differ by it
    assert torch.equal(ker.count[~near], ref.count[~near]), seed
    assert torch.equal(ker.overflow[~near], ref.overflow[~near]), seed
    ok = ~ref.overflow & ~near
    for i, j in ok.nonzero().tolist():
        assert sorted(ker.index[i, j][ker.index[i, j] >= 0].tolist()) == \
            sorted(ref.index[i, j][ref.index[i, j] >= 0].tolist()), (seed, i, j)
        assert torch.equal(ker.page_mask[i, j], ref.page_mask[i, j]), (seed, i, j)
    assert bool((ker.index[..., :-1] <= ker.index[..., 1:]).logical_or(ker.index[..., 1:] < 0).all())


def test_ops_batch_under_vmap():
    """vmap over two caches folds into one launch per op and equals a loop."""
    seed = fresh_seed()
    caches = [coded_cache(seed + i, [21, 14], 2, 8, 4, 4, torch.float32) for i in range(2)]
    q = torch.randn(2, 2, 4, 8, generator=torch.Generator().manual_seed(seed))

    def bounds(qq, codes, kmin, kmax, lens):
        return code_bounds(qq, codes, kmin, kmax, lens, None, 4, 0.3, False)

    stack = [torch.stack([getattr(c, f) for c in caches]) for f in ("k_codes", "k_min", "k_max", "seq_lens")]
    got = torch.func.vmap(bounds)(q, *stack)
    for i, c in enumerate(caches):
        want = bounds(q[i], c.k_codes, c.k_min, c.k_max, c.seq_lens)
        for x, y in zip(got[:2], want[:2]):
            assert torch.equal(x[i], y), seed


# ---- on the GPU (the real compiler) -------------------------------------------------------------


def cuda_cache(dtype, bits, b=2, hq=16, hkv=4, n=3000, seed=0, slack=64):
    stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=128, seed=seed, dtype=dtype,
                             device="cuda")
    k, v = stream.prompt(n)
    lens = [n - (i * 37) % (n // 2) for i in range(b)]  # ragged, crossing page edges
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=128, capacity=n + slack, dtype=dtype,
                                   device="cuda", key_bits=bits)
    return stream, ekv.prefill(empty, k, v, lens)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("alibi", [False, True])
def test_newest_page_on_cuda_is_the_same_bits_in_every_launch(dtype, alibi, monkeypatch):
    """The compiled newest page (``_newest_page``) in the scan's launch (``NEWEST_IN_SCAN``), in
    the seed's merge (other warps: ``SEED_WARPS``) and in its own launch: newest_max,
    newest_mag and newest_floor bit for bit the same (on CPU the interpreter cannot see the
    layouts that set a reduction's order); page_max and ε the bare launch's."""
    import entmaxkv.kernels.code_scan as cs

    stream, cache = cuda_cache(dtype, 4, seed=5)
    q, kn, vn = stream.step()
    cache, _ = append_token(cache, kn, vn)
    slopes = torch.rand(16, device="cuda") * 0.01 if alibi else None
    args = (q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes, 4, 128 ** -0.5,
            False)
    bare = code_bounds(*args)
    outs = []
    for in_scan in (True, False):
        monkeypatch.setattr(cs, "NEWEST_IN_SCAN", in_scan)
        for slots in (8, 0):
            out = code_bounds(*args, cache.k_pages, slots)
            assert torch.equal(out[0], bare[0]) and torch.equal(out[1], bare[1]), (in_scan, slots)
            outs.append((out[3], out[4], out[9]))
    for got in outs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(got, outs[0]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("alibi", [False, True])
def test_code_scan_on_cuda_matches_the_reference(dtype, bits, alibi):
    stream, cache = cuda_cache(dtype, bits, seed=bits + 2 * alibi)
    q, kn, vn = stream.step()
    cache, _ = append_token(cache, kn, vn)
    slopes = torch.rand(16, device="cuda") * 0.01 if alibi else None
    scale = 128 ** -0.5
    page_max, eps, s_hat = run_bounds(cache, q, scale, slopes)
    want_s, want_eps = code_scores(cache, q, scale, slopes)
    coded = coded_pages(cache).expand(eps.shape)
    tokens = coded.repeat_interleave(cache.page_size, -1)
    tol = score_tolerance(cache, q, scale).repeat_interleave(cache.page_size, -1)
    gap = ((s_hat.double() - want_s.double()).abs() - tol)[tokens]
    assert bool((gap <= 0).all()), float(gap.max())
    assert_eps_matches(eps, want_eps, cache, q, scale, coded, "cuda")
    best = s_hat.reshape(*s_hat.shape[:3], -1, cache.page_size).amax(-1)
    assert torch.equal(page_max[coded], best[coded])
    from entmaxkv.reference import token_scores

    ref = token_scores(cache, q, scale, slopes).double()
    radius = eps.double().repeat_interleave(cache.page_size, -1)
    assert bool(((ref - s_hat.double()).abs() - radius)[tokens].le(0).all())  # the interval holds
    top = torch.where(tokens, want_s, -1e9).amax(-1).double()
    tau_low = (0.5 * (top - 1.0)).contiguous()
    count = check_candidates(cache, q, scale, slopes, tau_low, 1.5, 10_000, 0)
    check_candidates(cache, q, scale, slopes, tau_low, 1.5, max(1, int(count.max()) // 2), 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bits", [4, 8])
def test_exact_with_codes_graph_replay_no_sync_no_torch_scan(bits, monkeypatch):
    """The kernel step never calls the torch scan, has no host sync, and a CUDA graph of it
    replays equal to eager steps across page edges; every step certified and equal to dense."""
    import entmaxkv.exact_codes as exact_codes
    from entmaxkv.compiled import GraphedDecodeStep

    def boom(*args, **kwargs):
        raise AssertionError("torch code scan called on the CUDA path")

    monkeypatch.setattr(exact_codes, "code_scores", boom)
    stream, cache = cuda_cache(torch.float16, bits, b=2, hq=8, hkv=2, n=2000, seed=9, slack=128)
    config = ekv.DecodeConfig(1.5, ekv.Exact())
    decoder = GraphedDecodeStep(cache.fork(), config, num_q_heads=8, compile=False)
    eager = cache.fork()
    for _ in range(40):  # crosses page edges: codes of completed pages are written in the graph too
        q, k, v = stream.step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = decoder(q, k, v).clone()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        eager, want, info = ekv.decode_step(eager, q, k, v, config, with_info=True)
        assert torch.equal(got, want)
        assert bool(info.certified.all())
        dense, _ = ekv.dense_decode(eager, q, 1.5)
        assert float((want.double() - dense.double()).abs().max()) < 3e-3
    assert torch.equal(decoder.cache.k_codes, eager.k_codes)


@pytest.mark.parametrize("with_info", [False, True])
def test_kernel_step_overflow_rows_fall_back_to_every_page(with_info):
    """On the kernel path ``code_candidates`` lists the attended pages itself: a row whose
    candidates overflow attends every full page (its last program rewrites the list), the
    others their candidates' pages; the output equals dense entmax either way."""
    from test_keycodes import coded_cache as float_cache, structured

    seed = fresh_seed()
    lens = [61, 47]
    stream, k, v = structured(seed % 10_000, lens, 2, 2, 16, torch.float32)
    cache = float_cache(k.float(), v.float(), lens, 4, torch.float32)
    q, kn, vn = (x.float() for x in stream.step())
    for capacity in (1, 10_000):
        config = ekv.DecodeConfig(1.5, ekv.Exact(top_tokens=2, max_candidates=capacity), backend="triton")
        new, out, info = ekv.decode_step(cache.fork(), q, kn, vn, config, with_info=True)
        if not with_info:  # the same step without the page-level certificate (no page_bounds)
            _, out = ekv.decode_step(cache.fork(), q, kn, vn, config)
        dense, _ = ekv.dense_decode(new, q, 1.5)
        torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5, msg=str(seed))
        assert info.certified.all(), seed
        over = info.overflow[:, ::2]
        assert bool(over.any()) if capacity == 1 else not bool(over.any()), seed
        pages = new.live_page_mask().sum(-1)[:, None].expand_as(info.pages_per_kv_head)
        assert torch.equal(info.pages_per_kv_head[over], pages[over]), seed


# ---- opcheck, compile, vmap through the step ------------------------------------------------


def test_opcheck_the_code_scan_ops():
    cache = coded_cache(3, [23, 10], 2, 8, 4, 4, torch.float32)
    q = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(3))
    args = (q, cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens)
    page_max, eps = code_bounds(*args, None, 4, 0.3, False)[:2]
    tau = torch.full((2, 2, 2), -0.5, dtype=torch.float64)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        torch.library.opcheck(torch.ops.entmaxkv.code_bounds.default, (*args, None, 4, 0.3, False))
        torch.library.opcheck(torch.ops.entmaxkv.code_candidates.default,
                              (*args, torch.rand(4) * 0.1, page_max, eps, tau, 4, 0.3, 0.5, 7))
        # the step's forms: the newest page and the seed; the τ margin applied by the op
        full = code_bounds(*args, None, 4, 0.3, False, cache.k_pages, 3)
        torch.library.opcheck(torch.ops.entmaxkv.code_bounds.default, (*args, None, 4, 0.3, False, cache.k_pages, 3))
        torch.library.opcheck(torch.ops.entmaxkv.code_candidates.default,
                              (*args, None, page_max, eps, tau, 4, 0.3, 0.5, 7, full[6], full[7], full[4], 1.5))


def test_compiled_exact_with_codes_through_the_ops_equals_eager():
    stream = SyntheticStream(batch=2, num_kv_heads=2, group=2, head_dim=16, seed=4, dtype=torch.float32)
    k, v = stream.prompt(40)
    empty = ekv.PagedKVCache.empty(batch=2, num_kv_heads=2, head_dim=16, capacity=64, page_size=4, key_bits=4,
                                   dtype=torch.float32)
    cache = ekv.prefill(empty, k, v, [40, 27])
    q, kn, vn = stream.step()
    config = ekv.DecodeConfig(1.5, ekv.Exact(top_tokens=2, max_candidates=8), backend="triton")
    _, want = ekv.decode_step(cache.fork(), q, kn, vn, config)
    step = torch.compile(ekv.decode_step, fullgraph=True, backend="aot_eager")
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        _, got = step(cache.fork().without_host_len(), q, kn, vn, config)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_vmap_exact_with_codes_through_the_ops_equals_a_loop():
    """vmap over caches with key codes, vmap's per-example fallback off: every op on the
    kernel path of Exact with codes has a batch rule; equal to a Python loop."""
    seed = fresh_seed()
    caches = []
    for i in range(2):
        cache = coded_cache(seed + i, lengths(seed + i, 2, 4), 2, 8, 4, 4, torch.float32)
        caches.append(cache.with_capacity(48).without_host_len())
    g = torch.Generator().manual_seed(seed)
    steps = [tuple(torch.randn(2, h, 1, 8, generator=g) for h in (4, 2, 2)) for _ in range(2)]
    config = ekv.DecodeConfig(1.5, ekv.Exact(top_tokens=2, max_candidates=6), backend="triton")
    want = [ekv.decode_step(c.fork(), *s, config)[1] for c, s in zip(caches, steps)]
    stacked = torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *[c.fork() for c in caches])
    q, k, v = (torch.stack(x) for x in zip(*steps))
    torch._C._functorch._set_vmap_fallback_enabled(False)  # an op without a batch rule now raises
    try:
        _, got = torch.func.vmap(lambda c, q, k, v: ekv.decode_step(c, q, k, v, config))(stacked, q, k, v)
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(True)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-6, atol=1e-6, msg=f"seed {seed}")


# ---- launch blocks, head-dim edges and the append kernel's codes -----------------------------


def assert_bounds_match_the_reference(cache, q, scale, slopes, seed):
    """The checks of ``test_code_bounds_equal_the_reference`` on any cache: ŝ within the
    rounding part, ε within 2γ, page_max = the max of the op's own ŝ, −inf / 0 off the codes."""
    page_max, eps, s_hat = run_bounds(cache, q, scale, slopes)
    want_s, want_eps = code_scores(cache, q, scale, slopes)
    coded = coded_pages(cache).expand_as(eps)
    tokens = coded.repeat_interleave(cache.page_size, -1)
    gap = (s_hat.double() - want_s.double()).abs() - score_tolerance(cache, q, scale).repeat_interleave(
        cache.page_size, -1)
    assert bool((gap[tokens] <= 0).all()), (seed, float(gap[tokens].max()))
    assert_eps_matches(eps, want_eps, cache, q, scale, coded, seed)
    best = s_hat.reshape(*s_hat.shape[:3], -1, cache.page_size).amax(-1)
    assert torch.equal(page_max[coded], best[coded]), seed
    assert bool((page_max[~coded] == float("-inf")).all()) and bool((eps[~coded] == 0).all()), seed


@pytest.mark.parametrize("block_p,dtype,bits,group,alibi,d,dot", [
    (1, torch.float32, 4, 1, False, 16, False), (2, torch.float16, 8, 2, True, 16, False),
    (8, torch.bfloat16, 4, 4, True, 16, False), (2, torch.float32, 4, 2, False, 15, False),
    (8, torch.float64, 8, 1, True, 13, False), (4, torch.float16, 4, 4, False, 9, False),
    (2, torch.float32, 4, 2, True, 32, True), (4, torch.float16, 8, 4, False, 32, True),
])
def test_scan_ops_on_any_page_block_and_head_dim(block_p, dtype, bits, group, alibi, d, dot, monkeypatch, poison):
    """Both passes with the launch blocks (``BLOCK_P``, the candidates' tile and span) not
    dividing the page count P (and P not dividing them), odd head dims (4 bits: a last byte with
    one channel), GQA G = 1, 2, 4, and the tensor-core path (``USE_DOT``: float32 work, D = 32)
    of both passes: against the reference, as the tests above check them."""
    import entmaxkv.kernels.code_scan as cs

    monkeypatch.setattr(cs, "USE_DOT", dot)
    assert cs.uses_dot(torch.float32, d, bits, group) == dot  # the dot cases do take the tensor-core path
    monkeypatch.setattr(cs, "BLOCK_P", block_p)
    monkeypatch.setattr(cs, "CANDIDATE_BLOCK_P", block_p)
    monkeypatch.setattr(cs, "CANDIDATE_SPAN", 2 * block_p)  # several spans of two tiles, the last one partial
    seed = fresh_seed()
    page = PAGE
    lens = lengths(seed, 3, page)
    pages = max(lens) // page + 1  # several blocks, the last one partial
    while pages <= block_p or (block_p > 1 and pages % block_p == 0):
        pages += 1
    cache, q, slopes, g = coded_setup(seed, dtype, bits, group, alibi, d=d, lens=lens, capacity=pages * page)
    assert cache.num_pages == pages, cache.num_pages
    assert_bounds_match_the_reference(cache, q, 0.3, slopes, seed)
    s_hat, _ = code_scores(cache, q, 0.3, slopes)
    top = torch.where(coded_pages(cache).repeat_interleave(page, -1), s_hat, -1e9).amax(-1).double()
    tau_low = (0.5 * (top - torch.rand(top.shape, generator=g, dtype=torch.float64) * 3)).contiguous()
    count = check_candidates(cache, q, 0.3, slopes, tau_low, 1.5, 10_000, seed)
    check_candidates(cache, q, 0.3, slopes, tau_low, 1.5, max(1, int(count.max()) // 2), seed)


@pytest.mark.parametrize("capacity", [0, 1, 10_000])
def test_code_candidates_on_rows_without_coded_pages(capacity, poison):
    """Rows whose every token is in the newest page (length <= S: no coded page) beside a row
    with several, at capacities 0, 1 and more than every token: the empty rows count 0
    candidates and 0 pages, with lists of −1 and no page marked (written by each row's last
    program: the outputs come from ``torch.empty``, poisoned here)."""
    seed = fresh_seed()
    page = PAGE
    lens = [page, 1, 5 * page + 3]
    cache, q, slopes, g = coded_setup(seed, torch.float32, 4, 2, False, d=16, lens=lens, capacity=8 * page)
    page_max, eps, _ = run_bounds(cache, q, 0.3, slopes, with_scores=False)
    tau_low = torch.full((3, cache.num_kv_heads, 2), -1e9, dtype=torch.float64)  # every coded token a candidate
    index, count, page_mask, _, page_list, page_count = code_candidates(
        q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes, page_max, eps,
        tau_low, cache.key_bits, 0.3, 0.5, capacity)
    for i in (0, 1):
        assert (count[i] == 0).all() and (page_count[i] == 0).all(), seed
        assert (index[i] == -1).all() and (page_list[i] == -1).all() and not page_mask[i].any(), seed
    tokens = 5 * page  # the full row: 5 coded pages, every token a candidate
    assert (count[2] == tokens).all(), seed
    if capacity < tokens:  # overflow: every coded page, in order
        assert (page_count[2] == 5).all() and (page_list[2, :, :5] == torch.arange(5)).all(), seed
    assert (index[2, :, min(tokens, capacity):] == -1).all() and (page_list[2, :, 5:] == -1).all(), seed


def test_code_candidates_refuses_a_negative_lin():
    cache, q, slopes, _ = coded_setup(fresh_seed(), torch.float32, 4, 1, False, d=16)
    page_max, eps, _ = run_bounds(cache, q, 0.3, slopes, with_scores=False)
    tau_low = torch.zeros(cache.batch, cache.num_kv_heads, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="lin"):
        code_candidates(q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes,
                        page_max, eps, tau_low, cache.key_bits, 0.3, -0.5, 4)


def tie_keys(g, b, h, t, d):
    """Keys on the half-integer grid of [0, 15] with every page spanning it exactly: for 4 bits
    step = 1 and (k − kmin)/step hits .5 exactly (round half to even decides the code)."""
    k = torch.randint(0, 31, (b, h, t, d), generator=g).double() / 2
    k[:, :, 0::4], k[:, :, 1::4] = 0.0, 15.0  # every page of 4 holds 0 and 15 in each channel
    return k


def product_tie_keys(g, b, h, t, d, dtype, bits):
    """Keys at exact half steps of ``code_steps``' step where it differs from the IEEE quotient
    (kmax − kmin)/(2^bits − 1): every page spans [0, span] for a span of each channel drawn so
    that fl(span·fl(1/L)) != fl(span/L) and the step's low bits are zero (so (j + 1/2)·step is
    exact), keys (j + 1/2)·step with j < L. The codes are round-half-even ties under the
    product step and not under the quotient: an encoder or a scan that divides differs."""
    levels = 2**bits - 1
    wdt = torch.float64 if dtype == torch.float64 else torch.float32
    span = (torch.rand(100_000, generator=g, dtype=torch.float64) * 8 + 8).to(wdt)
    step = span * torch.full_like(span, 1.0 / levels)
    words = step.view(torch.int64 if wdt == torch.float64 else torch.int32)
    free = 6 if bits == 4 else 10  # zero low bits: (2j + 1)·step fits the mantissa
    ok = (step != span / torch.full_like(span, float(levels))) & ((words & ((1 << free) - 1)) == 0)
    assert int(ok.sum()) >= d
    span, step = span[ok][:d].double(), step[ok][:d].double()
    k = (torch.randint(0, levels, (b, h, t, d), generator=g).double() + 0.5) * step
    k[:, :, 0::4], k[:, :, 1::4] = 0.0, span  # every page of 4 spans [0, span] in each channel
    return k


@pytest.mark.parametrize("dtype,bits,kind,d", [
    (torch.float32, 4, "ties", 16), (torch.float16, 4, "outliers", 15), (torch.bfloat16, 8, "constant", 16),
    (torch.float16, 8, "fp16_extremes", 9), (torch.float64, 4, "huge_range", 16), (torch.float32, 8, "random", 8),
    (torch.bfloat16, 4, "offset_tiny_spread", 13), (torch.float64, 8, "ties", 16),
    (torch.float32, 4, "product_ties", 16), (torch.float32, 8, "product_ties", 16), (torch.float64, 4, "product_ties", 16),
])
def test_append_op_writes_the_codes_of_completed_pages_as_torch_does(dtype, bits, kind, d):
    """Decode steps on the kernel path (codes written by the ``append_token`` op) and on the
    torch path (``keycodes.encode_keys``) leave bit-identical code storage, across page edges,
    ragged lengths and a row that reaches its capacity; pages not completed keep their bytes."""
    from entmaxkv.backend import append

    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    hkv, page, steps = 2, 4, 9
    lens = [3, 6, 12]  # complete a page at the first, third, ... step; the last row fills up
    capacity = 20
    t = max(lens)
    make = {"ties": tie_keys, "product_ties": lambda *a: product_tie_keys(*a, dtype, bits)}.get(
        kind, lambda *a: adversarial_keys(kind, *a))
    k = make(g, 3, hkv, t + steps, d)
    v = torch.randn(3, hkv, t, d, generator=g, dtype=torch.float64)
    empty = ekv.PagedKVCache.empty(batch=3, num_kv_heads=hkv, head_dim=d, capacity=capacity, page_size=page,
                                   dtype=dtype, key_bits=bits)
    start = ekv.prefill(empty, k[:, :, :t].to(dtype), v.to(dtype), lens)
    # poison the codes of pages not full yet: a page completed later must get all its bytes written
    start.k_codes[~start.full_page_mask()[:, None, :, None, None].expand_as(start.k_codes)] = 0xA5
    caches = {True: start.fork(), False: start.fork()}
    caches[True] = dataclasses.replace(caches[True], k_codes=start.k_codes.clone(), k_pages=start.k_pages.clone(),
                                       k_min=start.k_min.clone(), k_max=start.k_max.clone())
    for i in range(steps):
        rows = torch.stack([k[b, :, min(lens[b] + i, t + steps - 1)] for b in range(3)])[:, :, None]
        kn, vn = rows.to(dtype), torch.randn(3, hkv, 1, d, generator=g).to(dtype)
        for kernels in (True, False):
            caches[kernels], _ = append(caches[kernels], kn, vn, kernels)
    ker, ref = caches[True], caches[False]
    assert ker.seq_lens.tolist() == ref.seq_lens.tolist() == [12, 15, 20], ker.seq_lens
    assert torch.equal(ker.k_min, ref.k_min) and torch.equal(ker.k_max, ref.k_max), seed
    assert torch.equal(ker.k_codes, ref.k_codes), (seed, (ker.k_codes != ref.k_codes).nonzero()[:5].tolist())
    # and the codes are those of the stored keys and statistics (not only equal to each other)
    full = ker.full_page_mask()[:, None, :, None, None].expand_as(ker.k_codes)
    want = encode_keys(ker.k_pages, ker.k_min, ker.k_max, bits)
    assert torch.equal(ker.k_codes[full], want[full]), seed
    assert bool((ker.k_codes[~full] == 0xA5).all()), seed  # nothing written outside completed pages


@pytest.mark.parametrize("dtype,bits", [(torch.float32, 4), (torch.float32, 8), (torch.float64, 4)])
def test_scan_scores_with_the_encoders_step_bit_for_bit(dtype, bits):
    """On ``product_tie_keys`` (the product step and the quotient differ in every channel) a
    one-hot query makes ŝ one product kmin + code·step, exact in both: ``code_bounds``' ŝ
    equals ``keycodes.code_scores``' bit for bit only if the scan computes the encoder's step
    (a scan that divides, or uses another constant, differs). D = 16 and one query head a KV
    head take the CUDA-core path at each of these bit widths (the tensor-core one rounds A)."""
    g = torch.Generator().manual_seed(fresh_seed())
    d, page, n = 16, 4, 12
    k = product_tie_keys(g, 1, 1, n, d, dtype, bits)
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=16, page_size=page, dtype=dtype,
                                   key_bits=bits)
    cache = ekv.prefill(cache, k.to(dtype), torch.zeros_like(k).to(dtype), [n])
    coded = 2 * page  # pages 0 and 1 (page 2 holds the newest token)
    for c in range(d):
        q = torch.zeros(1, 1, 1, d, dtype=dtype)
        q[..., c] = 1.0
        s_hat = code_bounds(q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, None,
                            bits, 1.0, True)[2]
        want = code_scores(cache, q, 1.0)[0]
        assert torch.equal(s_hat[..., :coded], want[..., :coded]), c


def test_kernel_step_encodes_no_page_in_torch_and_sorts_nothing(monkeypatch):
    """On the kernel path the append op writes a completed page's codes (the torch encoder is
    never called) and the candidate list is ordered only when read: a step dispatches no sort.
    Without ``with_info`` it reads no page statistics (no ``page_bounds``: ``code_bounds``
    gives the seed, its magnitude and the newest page) and runs no ``select_pages`` (the scan
    ops list the seed and the attended pages), and compares no candidate count with the list's
    capacity (the overflow flag is computed where the info reads it: ``Selection.overflowed``).
    The step still equals the torch path's, and the codes are the torch encoder's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import entmaxkv.keycodes as keycodes

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls: list[str] = []
            self.seen: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func))
            self.calls.append(str(func))
            return func(*args, **(kwargs or {}))

    seed = fresh_seed()
    stream = SyntheticStream(batch=2, num_kv_heads=2, group=2, head_dim=16, seed=seed % 10_000, dtype=torch.float32)
    k, v = stream.prompt(31)
    empty = ekv.PagedKVCache.empty(batch=2, num_kv_heads=2, head_dim=16, capacity=48, page_size=4, key_bits=4,
                                   dtype=torch.float32)
    cache = ekv.prefill(empty, k, v, [31, 22])
    ref = ekv.prefill(ekv.PagedKVCache.empty(batch=2, num_kv_heads=2, head_dim=16, capacity=48, page_size=4,
                                             key_bits=4, dtype=torch.float32), k, v, [31, 22])
    config = ekv.DecodeConfig(1.5, ekv.Exact(top_tokens=2, max_candidates=8), backend="triton")
    torch_config = ekv.DecodeConfig(1.5, ekv.Exact(top_tokens=2, max_candidates=8), backend="torch")
    encode = keycodes.encode_keys
    for _ in range(3):  # row 0 completes a page at the first step, row 1 at the third
        q, kn, vn = stream.step()
        ref, want = ekv.decode_step(ref, q, kn, vn, torch_config)

        def boom(*args, **kwargs):
            raise AssertionError("torch key encoder called on the kernel path")

        monkeypatch.setattr(keycodes, "encode_keys", boom)
        ops = Ops()
        with ops:
            cache, got = ekv.decode_step(cache, q, kn, vn, config)
        monkeypatch.setattr(keycodes, "encode_keys", encode)
        assert not any(name.startswith("aten.sort") for name in ops.seen), sorted(ops.seen)
        assert "entmaxkv.page_bounds.default" not in ops.seen, sorted(ops.seen)
        assert "entmaxkv.select_pages.default" not in ops.seen, sorted(ops.seen)
        assert not any(name.startswith("aten.gt") for name in ops.seen), sorted(ops.seen)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"seed {seed}")
    assert torch.equal(cache.k_codes, ref.k_codes), seed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("launch", [(1, 2, 8, 1, 2), (2, 4, 16, 2, 4), (4, 8, 32, 2, 4), (8, 4, 64, 4, 4),
                                    (2, 1, 16, 1, 2), (1, 1, 16, 1, 1)])
@pytest.mark.parametrize("bits", [4, 8])
def test_code_scan_on_cuda_at_every_swept_launch(launch, bits, monkeypatch):
    """The compiled kernels at launch constants ``tune_kernels.py`` sweeps (BLOCK_P, NUM_WARPS,
    CANDIDATE_SPAN, CANDIDATE_BLOCK_P, CANDIDATE_WARPS), D = 128, G = 4, ALiBi, against the
    reference: the interpreter cannot see layout or register-allocation effects of a tile."""
    import entmaxkv.kernels.code_scan as cs

    for name, value in zip(("BLOCK_P", "NUM_WARPS", "CANDIDATE_SPAN", "CANDIDATE_BLOCK_P", "CANDIDATE_WARPS"), launch):
        monkeypatch.setattr(cs, name, value)
    stream, cache = cuda_cache(torch.float16, bits, seed=11 + bits)
    q, kn, vn = stream.step()
    cache, _ = append_token(cache, kn, vn)
    slopes = torch.rand(16, device="cuda") * 0.01
    scale = 128 ** -0.5
    assert_bounds_match_the_reference(cache, q, scale, slopes, launch)
    want_s, _ = code_scores(cache, q, scale, slopes)
    tokens = coded_pages(cache).repeat_interleave(cache.page_size, -1)
    top = torch.where(tokens, want_s, -1e9).amax(-1).double()
    tau_low = (0.5 * (top - 1.0)).contiguous()
    count = check_candidates(cache, q, scale, slopes, tau_low, 1.5, 10_000, launch)
    check_candidates(cache, q, scale, slopes, tau_low, 1.5, max(1, int(count.max()) // 2), launch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("chunk,slots", [(7, 8), (16, 8), (64, 5), (512, 8)])
def test_code_bounds_seed_on_cuda_over_chunks(chunk, slots, monkeypatch):
    """The compiled seed launches (``SEED_CHUNK`` pages a chunk: up to 28 chunks a row, chunks
    not a multiple of K) give ``class_seed`` of the op's own page_max − ε, each page once, and
    the seed's τ of those bounds and the newest page (``check_seed_tau``); the newest page's
    program (program 0) leaves page_max and ε equal to the bare launch's."""
    import entmaxkv.kernels.code_scan as cs
    from entmaxkv.exact_codes import class_seed

    monkeypatch.setattr(cs, "SEED_CHUNK", chunk)
    stream, cache = cuda_cache(torch.float16, 4, seed=chunk)
    q, kn, vn = stream.step()
    cache, _ = append_token(cache, kn, vn)
    args = (q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, None, 4, 128 ** -0.5,
            False)
    page_max, eps, _, _, newest_mag, pages, count, _, tau, _ = code_bounds(*args, cache.k_pages, slots, 1.5)
    bare = code_bounds(*args)
    assert torch.equal(page_max, bare[0]) and torch.equal(eps, bare[1])
    want = class_seed(page_max - eps, slots).cpu()
    gamma = 2 * (cache.head_dim + 2) * torch.finfo(torch.float32).eps
    check_seed_tau(cache, q, 128 ** -0.5, None, page_max, eps, want, newest_mag, tau, slots, 1.5, gamma, chunk)
    pages, count = pages.cpu(), count.cpu()
    for i in range(cache.batch):
        for j in range(cache.num_kv_heads):
            listed = pages[i, j, :int(count[i, j])].tolist()
            assert len(listed) == len(set(listed)), (i, j, listed)
            assert set(listed) == set(x for x in want[i, j].tolist() if x >= 0), (i, j)
            assert bool((pages[i, j, int(count[i, j]):] == -1).all()), (i, j)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kind", ["random", "ties", "outliers"])
def test_append_op_codes_on_cuda_equal_torch(dtype, bits, kind):
    """The compiled append kernel's codes (step's product, an IEEE division, round half to even)
    equal the torch encoder's bit for bit on CUDA, D = 128, over 40 steps crossing page edges."""
    from entmaxkv.backend import append

    g = torch.Generator().manual_seed(bits + len(kind))
    b, hkv, t, steps = 2, 4, 300, 40
    make = tie_keys if kind == "ties" else lambda *a: adversarial_keys(kind, *a)
    k = make(g, b, hkv, t + steps, 128).to(dtype).cuda()
    v = torch.randn(b, hkv, t, 128, generator=g).to(dtype).cuda()
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=128, capacity=t + steps, dtype=dtype,
                                   device="cuda", key_bits=bits)
    start = ekv.prefill(empty, k[:, :, :t], v, [t, t - 37])
    ker = dataclasses.replace(start.fork(), k_pages=start.k_pages.clone(), k_codes=start.k_codes.clone(),
                              k_min=start.k_min.clone(), k_max=start.k_max.clone())
    ref = start.fork()
    for i in range(steps):
        kn = torch.stack([k[r, :, int(ref.seq_lens[r])] for r in range(b)])[:, :, None]
        vn = torch.randn(b, hkv, 1, 128, generator=g).to(dtype).cuda()
        ker, _ = append(ker, kn, vn, True)
        ref, _ = append(ref, kn, vn, False)
    assert torch.equal(ker.k_min, ref.k_min) and torch.equal(ker.k_max, ref.k_max)
    assert torch.equal(ker.k_codes, ref.k_codes), (ker.k_codes != ref.k_codes).nonzero()[:5].tolist()
