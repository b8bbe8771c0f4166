"""The tensor-core path of ``code_bounds`` (``code_scan.USE_DOT``, float32 work) against its
own error bound, the CUDA-core path and exact float64 scores.

Under Triton's interpreter ``tl.dot`` is a numpy float32 matmul, not the tensor cores'
accumulation, so these tests check the algebra and the bound's terms: the power-of-two
scale, A = q·step in float16 as hi + lo (8 bits; 4 bits with ``HI_ONLY`` off) or hi alone
(4 bits), ε's extra term of each form, |s − ŝ| <= ε on inputs built to need every term. The
hardware's accumulation is tested by the ``gpu`` tests at the end (skipped without CUDA).
Mutations each test below catches: A rounded to fp16 without the lo part in the split form,
or hi alone's relative term replaced by the split's or doubled
(``test_midpoint_keys_fill_the_interval_of_either_form``, by over 10× ε's rounding margin), the
kernel adding another term than ``dot_margins``' (``test_eps_on_dyadic_inputs_is_exact``:
equality with ``dot_extra``, which reads ``dot_margins``), the two scans launched with
different forms (``test_both_scans_take_the_same_path``), a wrong scale exponent or unscaling
(the dyadic test's exact ŝ; the per-head magnitudes test). Not on the CPU: the absolute term
(2^−k) matters only where float16 subnormals are flushed to zero, and the G = 1 padding only on
the GPU (the ``gpu`` tests at the end fail without it on the H200: session 22, call 7).
"""

import math

import pytest
import torch

import entmaxkv as ekv
from helpers import fresh_seed, kernel_launches
from test_kernels_codes import (
    PAGE, assert_eps_matches, coded_pages, coded_setup, dot_extra, rounding_part, run_bounds, score_tolerance)

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import entmaxkv.kernels.code_scan as code_scan  # noqa: E402
from entmaxkv.reference import token_scores  # noqa: E402


@pytest.fixture(autouse=True)
def dot_path(monkeypatch):
    """Every test here is of the tensor-core path (the default; set here so that the tests keep
    testing it if the default changes)."""
    monkeypatch.setattr(code_scan, "USE_DOT", True)


def crafted_cache(keys: torch.Tensor, bits: int = 4) -> ekv.PagedKVCache:
    """A float32 coded cache holding ``keys`` [B, Hkv, T, D] (T a multiple of PAGE) plus one
    token, so that every page of ``keys`` is coded."""
    b, h, t, d = keys.shape
    k = torch.cat([keys, torch.zeros(b, h, 1, d, dtype=keys.dtype)], dim=2)
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=h, head_dim=d, capacity=t + PAGE, page_size=PAGE,
                                   dtype=torch.float32, key_bits=bits)
    return ekv.prefill(empty, k.float(), torch.zeros_like(k).float(), [t + 1] * b)


def float64_scores(cache, q, scale):
    """[B, Hkv, G, P·S] scale·q·k in float64 from the stored keys (the slots of ŝ)."""
    b, hq = q.shape[:2]
    h = cache.num_kv_heads
    keys = cache.k_pages.double().reshape(b, h, -1, cache.head_dim)
    return torch.einsum("bhgd,bhnd->bhgn", q[:, :, 0].double().reshape(b, h, hq // h, -1), keys) * scale


def check_interval(cache, q, scale, eps, s_hat, msg):
    """|s − ŝ| <= ε on every coded token, for the reference's scores and float64 ones."""
    tokens = coded_pages(cache).expand_as(eps).repeat_interleave(cache.page_size, -1)
    radius = eps.double().repeat_interleave(cache.page_size, -1)
    for scores in (token_scores(cache, q, scale).double(), float64_scores(cache, q, scale)):
        gap = (scores - s_hat.double()).abs() - radius
        assert bool((gap[tokens] <= 0).all()), (msg, float(gap[tokens].max()))


@pytest.mark.parametrize("hi_only", [False, True])
def test_midpoint_keys_fill_the_interval_of_either_form(hi_only, monkeypatch):
    """Keys exactly halfway between two codes (round half to even: the error is +step/2 in
    every channel, where q > 0), and q_d = (1 + 2^-11 − 2^-20)·2^i, so that A = q·step
    rounded to fp16 alone loses 2^-11 − 2^-20 of A per channel, times the code (12 or 14).
    Hi + lo keeps A exactly: |s − ŝ| is ε less its rounding margin, and hi alone would miss
    by over 10× that margin. Hi alone (``HI_ONLY``) adds that loss to |s − ŝ|, which its
    ``dot_margins`` term (2^4·2^-11 of A a channel) covers with (16 − code)·2^-11 to spare:
    the split form's term fails this, and twice hi alone's leaves 4× the slack asserted."""
    monkeypatch.setattr(code_scan, "HI_ONLY", hi_only)
    assert code_scan.splits_a(4) != hi_only
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, h, group, d, pages = 2, 2, 2, 32, 3
    step = torch.pow(2.0, torch.randint(-4, 5, (b, h, pages, 1, d), generator=g).double())
    codes = torch.tensor([0.0, 15.0, 14.5, 12.5]).reshape(1, 1, 1, PAGE, 1)  # min, max, two midpoints
    keys = (codes * step + torch.randint(-3, 4, (b, h, pages, 1, d), generator=g) * step).reshape(b, h, -1, d)
    cache = crafted_cache(keys)
    q = (1 + 2.0**-11 - 2.0**-20) * torch.pow(2.0, torch.randint(-6, 7, (b, h * group, 1, d), generator=g).double())
    scale = 0.125
    page_max, eps, s_hat = run_bounds(cache, q.float(), scale, None)
    assert code_scan.uses_dot(torch.float32, d, 4, group)  # 4 bits: one dot per nibble, K = D/2
    check_interval(cache, q.float(), scale, eps, s_hat, seed)
    # the test can fail: on the midpoints |s − ŝ| is within 0.3% of ε (its rounding margin,
    # r·M + the extra term, <= 0.1%), while fp16 A alone would miss by >= 12·(2^-11 − 2^-20)·A
    # per channel (1.2% of step/2); hi alone, within (16 − 12)·2^-11 / (1/2 + 16·2^-11) = 0.39%
    # of ε plus the rounding margin (0.2% at most here: M <= 18·step), and twice its term would
    # leave >= 1.9%
    tokens = coded_pages(cache).expand_as(eps).repeat_interleave(PAGE, -1)
    tokens &= (torch.arange(tokens.shape[-1]) % PAGE >= 2)  # the midpoint tokens
    exact = float64_scores(cache, q.float(), scale)
    radius = eps.double().repeat_interleave(PAGE, -1)
    slack = ((radius - (exact - s_hat.double()).abs()) / radius)[tokens]
    most = 7e-3 if hi_only else 3e-3
    assert 0 <= float(slack.min()) and float(slack.max()) < most, (seed, float(slack.min()), float(slack.max()))


@pytest.mark.parametrize("group", [1, 3, 4])
@pytest.mark.parametrize("hi_only", [False, True])
def test_eps_on_dyadic_inputs_is_exact(group, hi_only, monkeypatch):
    """Keys kmin + c·2^j (exact codes, no quantisation error), |q| a power of two per head,
    scale 1/4: every sum either path computes is exact, so ŝ equals the float64 score and ε
    equals the reference's ε plus the extra term of ``dot_margins`` exactly (0 on the
    CUDA-core path) — dropping or changing that term breaks the equality. A = q·step is a
    power of two, so hi alone (``HI_ONLY``) is exact too, with its own wider term."""
    monkeypatch.setattr(code_scan, "HI_ONLY", hi_only)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, h, d, pages = 2, 2, 32, 3
    j = torch.randint(-4, 5, (b, h, pages, 1, 1), generator=g).double()
    c = torch.randint(0, 16, (b, h, pages, PAGE, d), generator=g).double()
    c[:, :, :, 0], c[:, :, :, 1] = 0, 15  # every channel of every page spans the 16 codes
    keys = ((c - 8) * torch.pow(2.0, j)).reshape(b, h, -1, d)
    cache = crafted_cache(keys)
    sign = torch.randint(0, 2, (b, h * group, 1, d), generator=g).double() * 2 - 1
    q = (sign * torch.pow(2.0, torch.randint(-5, 6, (b, h * group, 1, 1), generator=g).double())).float()
    scale = 0.25
    from entmaxkv.keycodes import code_scores

    want_s, want_eps = code_scores(cache, q, scale)
    exact = float64_scores(cache, q, scale)
    coded = coded_pages(cache).expand_as(want_eps)
    tokens = coded.repeat_interleave(PAGE, -1)
    for dot in (True, False):
        code_scan.USE_DOT = dot
        try:
            page_max, eps, s_hat = run_bounds(cache, q, scale, None)
        finally:
            code_scan.USE_DOT = True
        on_dot = dot and code_scan.uses_dot(torch.float32, d, 4, group)  # G = 1: hi alone only
        none = torch.zeros_like(want_eps, dtype=torch.float64)
        extra = dot_extra(cache, q, scale) if on_dot else none
        assert bool((extra[coded] > 0).all()) == on_dot
        assert torch.equal(s_hat.double()[tokens], exact[tokens]), (seed, dot)
        assert torch.equal(eps.double()[coded], want_eps.double()[coded] + extra[coded]), (seed, dot)


@pytest.mark.parametrize("dtype,bits,kind", [
    (torch.float32, 4, "huge_range"), (torch.float16, 8, "outliers"), (torch.bfloat16, 4, "fp16_extremes"),
    (torch.float32, 8, "offset_tiny_spread"), (torch.float16, 4, "constant"),
])
def test_heads_of_huge_and_tiny_magnitude(dtype, bits, kind):
    """Each head of a group its own power-of-two scale: query heads scaled by 1e-36 (max |A|
    below 2^-113: the clamped exponent), 1e-20, 1, 1e12, with channels spanning 1e-6..1e6
    within a head. The interval holds, ε is the reference's plus ``dot_extra``, ŝ within the
    rounding part (plus ``dot_extra``: hi alone's error of A) of the reference's — and of the
    CUDA-core path's."""
    seed = fresh_seed()
    group, d = 4, 32
    cache, q, _, g = coded_setup(seed, dtype, bits, group, False, d=d, batch=2, kind=kind, q_scale=1.0)
    heads = torch.tensor([1e-36, 1e-20, 1.0, 1e12], dtype=torch.float64).repeat(q.shape[1] // group)
    channels = torch.logspace(-6, 6, d, dtype=torch.float64)[torch.randperm(d, generator=g)]
    q = q.double() * heads[None, :, None, None] * channels
    if kind in ("huge_range", "fp16_extremes"):  # keep scores finite in float32
        q = q * 1e-6
    q = q.float()  # float32 whatever the cache's dtype (fp16 cannot hold these magnitudes)
    scale = 1 / math.sqrt(d)
    from entmaxkv.keycodes import code_scores

    page_max, eps, s_hat = run_bounds(cache, q, scale, None)
    want_s, want_eps = code_scores(cache, q, scale)
    coded = coded_pages(cache).expand_as(eps)
    tokens = coded.repeat_interleave(PAGE, -1)
    assert_eps_matches(eps, want_eps, cache, q, scale, coded, seed)
    tol = score_tolerance(cache, q, scale).repeat_interleave(PAGE, -1)  # rounding + hi alone's error of A
    assert bool(((s_hat.double() - want_s.double()).abs() - tol)[tokens].le(0).all()), seed
    check_interval(cache, q, scale, eps, s_hat, seed)
    code_scan.USE_DOT = False
    try:
        _, eps_cc, s_cc = run_bounds(cache, q, scale, None)
    finally:
        code_scan.USE_DOT = True
    # the CUDA-core path within the rounding part of the reference, this one within tol
    both = tol + rounding_part(cache, q, scale).repeat_interleave(PAGE, -1)
    assert bool(((s_hat.double() - s_cc.double()).abs() - both)[tokens].le(0).all()), seed
    assert_eps_matches(eps, eps_cc, cache, q, scale, coded, seed)



@pytest.mark.parametrize("bits", [4, 8])
def test_a_subnormal_step_does_not_overflow_the_float16_operand(bits):
    """A channel whose keys are 0, L·2^−149 and 10·2^−149 (L = 2^bits − 1; float32 subnormals: its
    step is 2^−149, whose fl(step/2) rounds to 0 and whose r·M underflows) under a query of 2^45:
    A = q·step = 2^−104 is a normal float, so a power of two taken from anything that missed the
    channel (a sum over the channels' fl(step/2): T = 0 -> k = 126) would make A·2^k = 2^22 and
    overflow float16 (page_max inf, ŝ NaN; an independent review's counterexample to session 53's
    2^k from ε's sum). ŝ equals the scores (the codes are exact here) and the page best is finite."""
    d, page, group, t = 32, PAGE, 2, 3 * PAGE + 1
    keys = torch.zeros(1, 1, t, d, dtype=torch.float64)
    keys[..., 0] = torch.tensor([0.0, 2.0 ** bits - 1, 10.0] * t)[:t] * 2.0 ** -149
    cache = ekv.prefill(ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=t + 8, page_size=page,
                                               dtype=torch.float32, key_bits=bits), keys.float(), keys.float(), [t])
    assert code_scan.uses_dot(torch.float32, d, bits, group)
    q = torch.full((1, group, 1, d), 2.0 ** 45, dtype=torch.float32)
    page_max, eps, s_hat = run_bounds(cache, q, 1.0, None)
    coded = coded_pages(cache).expand_as(eps)
    tokens = coded.repeat_interleave(PAGE, -1)
    exact = float64_scores(cache, q, 1.0)
    assert bool(torch.isfinite(page_max[coded]).all()) and bool(torch.isfinite(eps[coded]).all())
    assert torch.equal(s_hat.double()[tokens], exact[tokens])
    assert torch.equal(page_max.double()[coded], exact.reshape(exact.shape[:-1] + (-1, PAGE)).amax(-1)[coded])


@pytest.mark.parametrize("dtype,bits,group,alibi", [(torch.float32, 4, 2, False), (torch.bfloat16, 8, 4, True)])
def test_exact_step_on_the_dot_path_equals_dense_entmax(dtype, bits, group, alibi):
    """``Exact`` through the kernel ops with the tensor-core path (D = 32: ``uses_dot``), on
    structured keys over ragged lengths with page edges: the output equals dense entmax, every
    row certified; with capacity 1 the overflowing rows are flagged and attend every page."""
    from test_keycodes import coded_cache as float_cache, structured

    seed = fresh_seed()
    lens = [23, 12]  # ragged; the second row a whole number of pages before the step
    stream, k, v = structured(seed % 10_000, lens, 2, group, 32, dtype)
    cache = float_cache(k, v, lens, bits, dtype)
    assert code_scan.uses_dot(torch.float32, cache.head_dim, bits, group)
    q, kn, vn = (x.to(dtype) for x in stream.step())
    slopes = torch.rand(2 * group, generator=torch.Generator().manual_seed(seed)) * 0.1 if alibi else None
    for capacity in (1, 10_000):
        config = ekv.DecodeConfig(1.5, ekv.Exact(top_tokens=2, max_candidates=capacity), backend="triton")
        new, out, info = ekv.decode_step(cache.fork(), q, kn, vn, config, alibi_slopes=slopes, with_info=True)
        dense, _ = ekv.dense_decode(new, q, 1.5, alibi_slopes=slopes)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out.double(), dense.double(), rtol=tol, atol=tol, msg=str(seed))
        assert bool(info.certified.all()), seed
        if capacity == 1:
            over = info.overflow[:, ::group]
            pages = new.live_page_mask().sum(-1)[:, None].expand_as(info.pages_per_kv_head)
            assert torch.equal(info.pages_per_kv_head[over], pages[over]), seed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kind", ["random", "outliers", "huge_range", "constant", "fp16_extremes",
                                  "offset_tiny_spread", "midpoints"])
@pytest.mark.parametrize("hi_only", [False, True])
def test_tensor_core_interval_holds_on_cuda(dtype, bits, kind, hi_only, monkeypatch):
    """The tensor cores' own accumulation against the bound: |s − ŝ| <= ε from float64 scores
    of the stored keys and from the reference's, D = 128, G = 4, on adversarial keys and query
    heads of magnitude 1e-30 .. 1e8 with channels spanning 1e-4..1e4 (float32 q); ε is the reference's
    plus ``dot_extra``, and the CUDA-core path (USE_DOT off) agrees within the rounding part.
    Both forms of A (``HI_ONLY``: hi alone for 4 bits, its wider margin in ``dot_extra``)."""
    monkeypatch.setattr(code_scan, "HI_ONLY", hi_only)
    from test_keycodes import adversarial_keys
    from entmaxkv.keycodes import code_scores

    g = torch.Generator().manual_seed(bits * 31 + len(kind))
    b, h, group, d, t = 2, 2, 4, 128, 16 * 40 + 5
    if kind == "midpoints":  # every key halfway between two codes of a page spanning [0, 15·step]
        step = torch.pow(2.0, torch.randint(-6, 3, (b, h, 41, 1, d), generator=g).double())
        c = torch.randint(0, 15, (b, h, 41, 16, d), generator=g).double() + 0.5
        c[:, :, :, 0], c[:, :, :, 1] = 0, 15
        k = (c * step).reshape(b, h, -1, d)[:, :, :t]
        if dtype != torch.float32:
            k = k.clamp(max=6e4)
    else:
        k = adversarial_keys(kind, g, b, h, t, d)
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=h, head_dim=d, capacity=t + 16, page_size=16,
                                   dtype=dtype, key_bits=bits, device="cuda")
    cache = ekv.prefill(empty, k.to(dtype).cuda(), k.to(dtype).cuda(), [t, t - 37])
    heads = torch.tensor([1e-30, 1e-3, 1.0, 1e8], dtype=torch.float64).repeat(h)
    channels = torch.logspace(-4, 4, d, dtype=torch.float64)[torch.randperm(d, generator=g)]
    q = torch.randn(b, h * group, 1, d, generator=g, dtype=torch.float64) * heads[None, :, None, None] * channels
    if kind in ("outliers", "huge_range", "fp16_extremes"):
        q = q * 1e-8  # float32 scores stay finite
    q = q.float().cuda()
    scale = d ** -0.5
    page_max, eps, s_hat = run_bounds(cache, q, scale, None)
    want_s, want_eps = code_scores(cache, q, scale)
    coded = coded_pages(cache).expand_as(eps)
    tokens = coded.repeat_interleave(16, -1)
    assert_eps_matches(eps, want_eps, cache, q, scale, coded, kind)
    exact = float64_scores(cache, q, scale)
    radius = eps.double().repeat_interleave(16, -1)
    for scores in (token_scores(cache, q, scale).double(), exact):
        gap = (scores - s_hat.double()).abs() - radius
        assert bool((gap[tokens] <= 0).all()), (kind, float(gap[tokens].max()))
    code_scan.USE_DOT = False
    try:
        _, eps_cc, s_cc = run_bounds(cache, q, scale, None)
    finally:
        code_scan.USE_DOT = True
    tol = score_tolerance(cache, q, scale) + rounding_part(cache, q, scale)  # each path's from the reference
    gap = (s_hat.double() - s_cc.double()).abs() - tol.repeat_interleave(16, -1)
    assert bool(gap[tokens].le(0).all()), (kind, float(gap[tokens].max()))


def test_uses_dot_takes_the_tensor_cores_only_where_the_bound_holds(monkeypatch):
    """float32 work, W = D·bits/8 a power of two >= 16 (no zero-padded dot terms), G >= 2, and
    G = 1 (padded) only with hi alone (4 bits, ``HI_ONLY`` and ``PAD_SINGLE_HEAD``)."""
    f32, f64 = torch.float32, torch.float64
    for d, bits in ((32, 4), (64, 4), (128, 4), (256, 4), (16, 8), (32, 8), (128, 8)):
        assert code_scan.uses_dot(f32, d, bits, 2) and code_scan.uses_dot(f32, d, bits, 8), (d, bits)
        assert code_scan.uses_dot(f32, d, bits, 1) == (bits == 4), (d, bits)  # MHA: hi alone, padded
        assert not code_scan.uses_dot(f64, d, bits, 4), (d, bits)  # float64: CUDA cores always
        for knob in ("HI_ONLY", "PAD_SINGLE_HEAD"):  # either off: MHA on the CUDA cores
            with monkeypatch.context() as patch:
                patch.setattr(code_scan, knob, False)
                assert not code_scan.uses_dot(f32, d, bits, 1), (d, bits, knob)
    for d, bits in ((16, 4), (24, 4), (31, 4), (63, 4), (80, 4), (96, 4), (8, 8), (20, 8), (80, 8), (96, 8)):
        assert not code_scan.uses_dot(f32, d, bits, 4), (d, bits)  # padded or short dots


@pytest.mark.parametrize("dtype,d,bits,group", [
    (torch.float16, 32, 4, 2), (torch.float16, 32, 4, 1), (torch.bfloat16, 16, 8, 3), (torch.float32, 24, 4, 4),
    (torch.float64, 32, 4, 2), (torch.float32, 16, 8, 1),
])
@pytest.mark.parametrize("hi_only", [False, True])
def test_both_scans_take_the_same_path(dtype, d, bits, group, hi_only, monkeypatch):
    """``code_candidates`` rescans with pass 1's formulas, so it must take the path and form
    ``code_bounds`` took (their ε differ by ``dot_margins``' term, which the candidate tests'
    rounding band would hide): what each kernel is launched with — ``USE_DOT``, the head tile
    ``GP``, ``SPLIT`` and the term (``dot_rel``, ``dot_abs``), recorded — equals
    ``scoring_form`` for the shape, whose head tile is at least 2 on the tensor cores. Mutations
    caught: either launcher computing any of them from other arguments (another group size,
    split margins with hi alone, an unpadded head tile at G = 1)."""
    monkeypatch.setattr(code_scan, "HI_ONLY", hi_only)
    seen = {}
    names = ("USE_DOT", "GP", "SPLIT", "dot_rel", "dot_abs")

    def record_form(kernel, bound):
        if "USE_DOT" in bound:
            seen.setdefault(kernel.fn.__name__, set()).add(tuple(bound[n] for n in names))

    cache, q, slopes, _ = coded_setup(fresh_seed(), dtype, bits, group, False, d=d, batch=2)
    args = (q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes)
    with kernel_launches(record_form):
        page_max, eps = code_scan.code_bounds(*args, bits, 0.3, False)[:2]
        tau_low = torch.zeros(page_max.shape[:3], dtype=torch.float64)
        code_scan.code_candidates(*args, page_max, eps, tau_low, bits, 0.3, 0.5, 64)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    form = code_scan.scoring_form(work, d, bits, group)
    want = (form.dot, form.heads, form.split, form.rel, form.abs)
    assert seen == {"_code_bounds_kernel": {want}, "_code_candidates_kernel": {want}}, (seen, want)
    assert form.dot == code_scan.uses_dot(work, d, bits, group) and form.split == code_scan.splits_a(bits)
    assert (form.rel, form.abs) == code_scan.dot_margins(bits, form.split)
    assert form.heads == (max(2, triton.next_power_of_2(group)) if form.dot else triton.next_power_of_2(group))
    assert form.dot == (dtype != torch.float64 and d * bits in (128, 256, 512, 1024, 2048)
                        and (group >= 2 or (bits == 4 and hi_only))), form


@triton.jit
def _unpack_kernel(codes, low_out, high_out, S: tl.constexpr, BW: tl.constexpr, BLOCK_P: tl.constexpr,
                   NATIVE: tl.constexpr):
    """``_nibbles_half`` of a [BLOCK_P, S, BW] byte tile, both halves stored."""
    at = (tl.arange(0, BLOCK_P)[:, None, None] * S + tl.arange(0, S)[None, :, None]) * BW + tl.arange(0, BW)[None, None, :]
    low, high = code_scan._nibbles_half(tl.load(codes + at), NATIVE)
    tl.store(low_out + at, low)
    tl.store(high_out + at, high)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("native", [True, False])
def test_nibble_unpack_on_cuda_equals_torch(native):
    """``_nibbles_half``'s inline PTX (CUDA) and its plain form: every byte value at every
    position of a 4-byte pack, in the scan's tile shape [BLOCK_P, S, BW]: (byte & 15, byte >> 4)
    as float16, exactly. Mutations caught: a PRMT selector or a mask off by a byte or a nibble,
    a wrong power of two for the high nibble."""
    g = torch.Generator().manual_seed(fresh_seed())
    for block_p, s, bw in ((2, 16, 64), (4, 4, 16)):
        codes = torch.randint(0, 256, (block_p, s, bw), generator=g, dtype=torch.uint8)
        for shift in range(4):  # each byte value at each position of a 4-byte pack
            codes.view(-1)[shift: shift + 1024: 4][:256] = torch.arange(256, dtype=torch.uint8)[: codes.numel() // 4]
        codes = codes.cuda()
        low = torch.full(codes.shape, float("nan"), dtype=torch.float16, device="cuda")
        high = torch.full_like(low, float("nan"))
        _unpack_kernel[(1,)](codes, low, high, S=s, BW=bw, BLOCK_P=block_p, NATIVE=native)
        assert torch.equal(low, (codes & 15).half()) and torch.equal(high, (codes >> 4).half())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("group, hi_only", [(1, False), (1, True), (2, False), (2, True), (3, True), (8, False),
                                             (8, True)])
@pytest.mark.parametrize("d", [64, 128])
def test_every_group_size_agrees_with_the_cuda_core_path(group, hi_only, d, monkeypatch):
    """The path ``code_bounds`` takes for each GQA group size (``uses_dot``: the tensor cores for
    G >= 2; for G = 1 with its head tile padded to two where A is hi alone, else the CUDA
    cores) against the CUDA-core path on CUDA: page_max and ŝ within 1e-4·ε (the two paths'
    roundings) plus ``dot_extra`` (hi alone's error), ε no smaller. The tensor-core path at
    G = 1 unpadded was off by 4–10 ε on the H200 (session 21): the padding dropped
    (``_heads_padded``) fails this test."""
    monkeypatch.setattr(code_scan, "HI_ONLY", hi_only)
    g = torch.Generator().manual_seed(fresh_seed())
    hkv, t = 2, 16 * 50 + 5
    k = torch.randn(1, hkv, t, d, generator=g).half().cuda()
    empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=hkv, head_dim=d, capacity=t + 16, dtype=torch.float16,
                                   key_bits=4, device="cuda")
    cache = ekv.prefill(empty, k, k, [t])
    q = torch.randn(1, hkv * group, 1, d, generator=g).half().cuda()
    assert code_scan.uses_dot(torch.float32, d, 4, group) == (group >= 2 or hi_only)
    page_max, eps, s_hat = run_bounds(cache, q, d ** -0.5, None)
    extra = dot_extra(cache, q, d ** -0.5)  # 0 on the CUDA-core path
    code_scan.USE_DOT = False
    try:
        pm_cc, eps_cc, s_cc = run_bounds(cache, q, d ** -0.5, None)
    finally:
        code_scan.USE_DOT = True
    coded = coded_pages(cache).expand_as(eps)
    tokens = coded.repeat_interleave(16, -1)
    allowed = 1e-4 * eps_cc.double() + extra
    gap = ((page_max.double() - pm_cc.double()).abs() / allowed)[coded]
    assert float(gap.max()) < 1, (group, d, float(gap.max()))
    gap = (s_hat.double() - s_cc.double()).abs() / allowed.repeat_interleave(16, -1)
    assert float(gap[tokens].max()) < 1, (group, d, float(gap[tokens].max()))
    assert bool((eps.double() >= eps_cc.double() * (1 - 1e-6))[coded].all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("alibi", [False, True])
def test_exact_with_codes_on_cuda_at_every_group_size_equals_dense(group, alibi):
    """``Exact`` with 4-bit codes on CUDA at G = 1 (MHA: both scans on the padded tensor-core
    path) and G = 2, D = 128, fp16, ragged lengths: ``code_candidates``' lists against the
    reference's reach (``check_candidates``), and the whole step certified and equal to dense
    entmax on the same cache (float64) within fp16 rounding; with capacity 1 the overflowing
    rows are flagged. Session 21's unpadded G = 1 path gave certified outputs 1.6 away from
    dense on the H200, which this catches."""
    from test_kernels_codes import append_token, check_candidates, cuda_cache
    from entmaxkv.keycodes import code_scores

    stream, cache = cuda_cache(torch.float16, 4, hq=4 * group, hkv=4, seed=5 + group + 2 * alibi)
    q, kn, vn = stream.step()
    assert code_scan.scoring_form(torch.float32, 128, 4, group).dot
    slopes = torch.rand(4 * group, device="cuda") * 0.01 if alibi else None
    scale = 128 ** -0.5
    after, _ = append_token(cache.fork(), kn, vn)
    want_s, _ = code_scores(after, q, scale, slopes)
    tokens = coded_pages(after).repeat_interleave(after.page_size, -1)
    tau_low = (0.5 * (torch.where(tokens, want_s, -1e9).amax(-1).double() - 1.0)).contiguous()
    check_candidates(after, q, scale, slopes, tau_low, 1.5, 10_000, (group, alibi))
    for capacity in (1, 512):
        config = ekv.DecodeConfig(1.5, ekv.Exact(max_candidates=capacity), backend="triton")
        new, out, info = ekv.decode_step(cache.fork(), q, kn, vn, config, alibi_slopes=slopes, with_info=True)
        dense, _ = ekv.dense_decode(new.to(torch.float64), q.double(), 1.5,
                                    alibi_slopes=None if slopes is None else slopes.double())
        assert bool(info.certified.all()), (group, alibi, capacity)
        torch.testing.assert_close(out.double(), dense, rtol=1e-2, atol=2e-3, msg=f"G={group} capacity={capacity}")
        if capacity == 1:
            assert bool(info.overflow.any()), "capacity 1 must overflow some row"
