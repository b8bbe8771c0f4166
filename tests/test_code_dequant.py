"""The decoded-key tensor-core path of ``code_bounds`` (``code_scan.DEQUANT_DOT``, float16 caches)
against its own error bound, the reference and exact float64 scores.

ŝ = scale·(q·m + q·x), m = kmin + h·step the page's centre, x = (code − h)·step rounded to
float16, the q·x part a float32-accumulated dot; ε = scale·Σ_d |q_d|·(radius + 2^−10·(kmax −
kmin) + 2^−22·M + 2^−25) (``code_scan.dequant_radius``). Under Triton's interpreter ``tl.dot``
is a float32 matmul, so the CPU tests check the algebra, the decoding's float16 rounding and
ε's terms; the ``gpu`` tests check the tensor cores' accumulation too. Mutations the tests
catch: the margin dropped (``test_interval_holds``: the float16 rounding of x alone exceeds
what the reference's ε covers on wide pages), x decoded about kmin instead of the centre
(overflow to inf on fp16 extremes), ε not the reference's plus the margin (equality within
ε's own rounding)."""

import math

import pytest
import torch

import entmaxkv as ekv
from helpers import fresh_seed
from test_kernels_codes import PAGE, coded_pages, coded_setup, run_bounds
from test_keycodes import adversarial_keys

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import entmaxkv.kernels.code_scan as code_scan  # noqa: E402
from entmaxkv.keycodes import code_radius  # noqa: E402
from entmaxkv.reference import token_scores  # noqa: E402

KINDS = ["random", "outliers", "huge_range", "constant", "fp16_extremes", "offset_tiny_spread"]


@pytest.fixture(autouse=True)
def dequant_path(monkeypatch):
    """Every test here is of the decoded-key path, which is not the default (not yet timed)."""
    monkeypatch.setattr(code_scan, "DEQUANT_DOT", True)


def float64_scores(cache, q, scale):
    """[B, Hkv, G, P·S] scale·q·k in float64 from the stored keys (the slots of ŝ)."""
    b, hq = q.shape[:2]
    h = cache.num_kv_heads
    keys = cache.k_pages.double().reshape(b, h, -1, cache.head_dim)
    return torch.einsum("bhgd,bhnd->bhgn", q[:, :, 0].double().reshape(b, h, hq // h, -1), keys) * scale


def want_eps(cache, q, scale):
    """[B, Hkv, G, P] float64: ε from the definition, scale·Σ_d |q_d|·dequant_radius."""
    radius = code_scan.dequant_radius(code_radius(cache, cache.key_bits), cache.k_min, cache.k_max)
    qg = q[:, :, 0].reshape(cache.batch, cache.num_kv_heads, -1, cache.head_dim).abs().double()
    return torch.einsum("bhgd,bhpd->bhgp", qg, radius.double()) * scale


def check(cache, q, scale, slopes, msg):
    assert code_scan.uses_dequant(q[:, :, 0], cache.k_min, 1 << (cache.k_codes.shape[-1] - 1).bit_length())
    page_max, eps, s_hat = run_bounds(cache, q, scale, slopes)
    coded = coded_pages(cache).expand_as(eps)
    tokens = coded.repeat_interleave(cache.page_size, -1)
    # ε: the definition's, up to its own float32 rounding (a D-term sum of non-negative terms)
    gamma = 2 * (cache.head_dim + 2) * torch.finfo(torch.float32).eps
    want = want_eps(cache, q, scale)
    if slopes is None:
        got = eps.double()[coded]
        assert bool(((got - want[coded]).abs() <= 2 * gamma * want[coded]).all()), msg
    # the interval, for the reference's scores and exact float64 ones
    radius = eps.double().repeat_interleave(cache.page_size, -1)
    scores = [token_scores(cache, q, scale, slopes).double()]
    if slopes is None:
        scores.append(float64_scores(cache, q, scale))
    for s in scores:
        gap = (s - s_hat.double()).abs() - radius
        assert bool((gap[tokens] <= 0).all()), (msg, float(gap[tokens].max()))
    best = s_hat.reshape(*s_hat.shape[:3], -1, cache.page_size).amax(-1)
    assert torch.equal(page_max[coded], best[coded]), msg
    assert bool(torch.isfinite(s_hat[tokens]).all()), msg
    return eps, s_hat, tokens


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("group,alibi", [(4, False), (3, True), (1, False)])
def test_interval_holds(bits, kind, group, alibi):
    seed = fresh_seed()
    d = 32
    cache, q, slopes, _ = coded_setup(seed, torch.float16, bits, group, alibi, d=d, batch=2, kind=kind, q_scale=3.0)
    check(cache, q, 1 / math.sqrt(d), slopes, (seed, kind))


def test_the_margin_is_needed():
    """Pages whose keys sit on the float16 grid at a large offset with a wide range: x's
    float16 rounding is up to 2^−12 of the range a channel, which the reference's ε (step/2 +
    r·M) covers only for the codes' own error — on keys halfway between two codes (the codes'
    error is step/2 exactly) ŝ without the margin would fall outside it. Checks the path's ε
    is strictly larger than the reference's there, and that the interval holds with it."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, h, group, d, pages = 2, 2, 4, 32, 4
    step = torch.pow(2.0, torch.randint(0, 6, (b, h, pages, 1, d), generator=g).double())
    c = torch.randint(0, 15, (b, h, pages, PAGE, d), generator=g).double() + 0.5  # midpoints
    c[:, :, :, 0], c[:, :, :, 1] = 0, 15
    keys = (c * step - 7.5 * step + 3.0 * step).reshape(b, h, -1, d).clamp(-6e4, 6e4)
    k = torch.cat([keys, torch.zeros(b, h, 1, d, dtype=keys.dtype)], dim=2)
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=h, head_dim=d, capacity=k.shape[2] + PAGE,
                                   page_size=PAGE, dtype=torch.float16, key_bits=4)
    cache = ekv.prefill(empty, k.half(), torch.zeros_like(k).half(), [k.shape[2]] * b)
    q = ((1 + 2.0**-11) * torch.pow(2.0, torch.randint(-8, -2, (b, h * group, 1, d), generator=g).double())).half()
    eps, s_hat, tokens = check(cache, q, 0.125, None, seed)
    from entmaxkv.keycodes import code_scores

    _, ref_eps = code_scores(cache, q, 0.125)
    coded = coded_pages(cache).expand_as(eps)
    assert bool((eps.double()[coded] > ref_eps.double()[coded]).all()), seed
    # how much of ε the decoded scores use: the margin is not vacuous
    exact = float64_scores(cache, q, 0.125)
    used = ((exact - s_hat.double()).abs() / eps.double().repeat_interleave(PAGE, -1))[tokens]
    assert float(used.max()) <= 1.0, seed


def test_exact_with_codes_on_the_path_equals_dense():
    """A whole Exact-with-codes decode through the ops on the decoded-key path: every row
    certified and equal to dense entmax (the path's ε is a valid bound for the certificate)."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, hkv, group, d, t = 2, 2, 4, 32, 16 * 9 + 5
    k = adversarial_keys("outliers", g, b, hkv, t, d)
    v = torch.randn(b, hkv, t, d, generator=g, dtype=torch.float64)
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=t + 32, dtype=torch.float16,
                                   key_bits=4)
    cache = ekv.prefill(empty, k.half(), v.half(), [t, t - 21])
    for alpha in (1.5, 2.0):
        config = ekv.DecodeConfig(alpha, ekv.Exact(), backend="triton")
        state = cache.fork()
        for _ in range(3):
            q = (torch.randn(b, hkv * group, 1, d, generator=g, dtype=torch.float64) * 2).half()
            kn, vn = (torch.randn(b, hkv, 1, d, generator=g, dtype=torch.float64).half() for _ in range(2))
            new, out, info = ekv.decode_step(state, q, kn, vn, config, with_info=True)
            dense, _ = ekv.dense_decode(new, q, alpha, d ** -0.5)
            torch.testing.assert_close(out.double(), dense.double(), rtol=2e-3, atol=2e-3, msg=str(seed))
            assert bool(info.certified.all()), seed
            state = new


def test_decoding_error_fits_the_margin_and_needs_it():
    """The path's ŝ against the exactly decoded score scale·q·(kmin + code·step) (float64): the
    gap must fit ε's non-quantisation part, scale·Σ|q|·(r·M + margin) — and, with q's signs
    aligned to x's float16 rounding errors on one token, it exceeds the reference's rounding
    part scale·Σ|q|·r·M alone: without the margin ε would not cover it."""
    from entmaxkv.keycodes import code_steps, unpack_codes

    seed = fresh_seed()
    d = 32
    cache, _, _, _ = coded_setup(seed, torch.float16, 4, 1, False, d=d, batch=1, kind="random",
                                 lens=[PAGE * 3 + 2])
    codes = unpack_codes(cache.k_codes, 4, d).float()  # [1, Hkv, P, S, D]
    step = code_steps(cache.k_min, cache.k_max, 4)  # float32, the kernel's
    x = codes * step[..., None, :] - (step * 7.5)[..., None, :]  # the interpreter's float32 steps
    err = x.half().double() - (codes.double() - 7.5) * step.double()[..., None, :]
    target = err[:, :, 0, 0]  # [1, Hkv, D]: the first token of page 0
    q = torch.where(target >= 0, 1.0, -1.0)[:, :, None, :].repeat_interleave(1, 1).half()  # [1, Hq, 1, D]
    scale = 0.125
    _, eps, s_hat = run_bounds(cache, q, scale, None)
    decoded = cache.k_min.double()[..., None, :] + codes.double() * step.double()[..., None, :]
    exact = torch.einsum("bhd,bhpsd->bhps", q[:, :, 0].double(), decoded).reshape(1, cache.num_kv_heads, 1, -1)
    gap = (s_hat.double() - exact * scale).abs()[..., 0]  # [1, Hkv, 1]: the target token
    top = torch.maximum(cache.k_min.double().abs(), cache.k_max.double().abs())[:, :, 0]  # page 0's M
    r = code_scan.code_radius_factor(torch.float32, d)
    rounding = scale * (q[:, :, 0].double().abs() * r * top).sum(-1)[:, :, None]
    margin = scale * (q[:, :, 0].double().abs() * (code_scan.dequant_radius(
        torch.zeros_like(top).float(), cache.k_min[:, :, 0], cache.k_max[:, :, 0]).double() + r * top)).sum(-1)
    assert bool((gap > rounding).all()), (seed, gap, rounding)
    assert bool((gap <= margin[:, :, None]).all()), (seed, gap, margin)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kind", KINDS + ["midpoints"])
def test_interval_holds_on_cuda(bits, kind):
    """The tensor cores' accumulation against the bound: D = 128, G = 4, adversarial keys,
    query heads of magnitude 1e-4 .. 1e2 with channels spanning 1e-2..1e2 (float16 q), ragged
    rows; ε the definition's, |s − ŝ| <= ε for float64 and the reference's scores."""
    g = torch.Generator().manual_seed(bits * 31 + len(kind))
    b, h, group, d, t = 2, 2, 4, 128, 16 * 40 + 5
    if kind == "midpoints":  # every key halfway between two codes of a page spanning [0, 15·step]
        step = torch.pow(2.0, torch.randint(-6, 3, (b, h, 41, 1, d), generator=g).double())
        c = torch.randint(0, 15, (b, h, 41, 16, d), generator=g).double() + 0.5
        c[:, :, :, 0], c[:, :, :, 1] = 0, 15
        k = (c * step).reshape(b, h, -1, d)[:, :, :t].clamp(max=6e4)
    else:
        k = adversarial_keys(kind, g, b, h, t, d)
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=h, head_dim=d, capacity=t + 16, page_size=16,
                                   dtype=torch.float16, key_bits=bits, device="cuda")
    cache = ekv.prefill(empty, k.half().cuda(), k.half().cuda(), [t, t - 37])
    heads = torch.tensor([1e-4, 1e-2, 1.0, 1e2], dtype=torch.float64).repeat(h)
    channels = torch.logspace(-2, 2, d, dtype=torch.float64)[torch.randperm(d, generator=g)]
    q = torch.randn(b, h * group, 1, d, generator=g, dtype=torch.float64) * heads[None, :, None, None] * channels
    if kind in ("outliers", "huge_range", "fp16_extremes"):
        q = q * 1e-4  # float32 scores stay finite
    q = q.clamp(-6e4, 6e4).half().cuda()
    check(cache, q, d ** -0.5, None, kind)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_exact_with_codes_on_cuda_equals_dense():
    from entmaxkv.synthetic import SyntheticStream

    b, hkv, group, d, n = 2, 4, 4, 128, 4000
    stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=group, head_dim=d, seed=5, dtype=torch.float16,
                             device="cuda")
    k, v = stream.prompt(n)
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=n + 64, dtype=torch.float16,
                                   key_bits=4, device="cuda")
    state = ekv.prefill(empty, k, v, [n, n - 29])
    for alpha in (1.5, 2.0):
        config = ekv.DecodeConfig(alpha, ekv.Exact(), backend="triton")
        for _ in range(20):  # crosses page edges
            q, kn, vn = stream.step()
            new, out, info = ekv.decode_step(state, q, kn, vn, config, with_info=True)
            dense, _ = ekv.dense_decode(new, q, alpha, d ** -0.5)
            torch.testing.assert_close(out.double(), dense.double(), rtol=2e-3, atol=2e-3)
            assert bool(info.certified.all())
            state = new
