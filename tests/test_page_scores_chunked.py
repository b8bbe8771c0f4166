"""``page_scores`` / ``page_bounds`` in both kernel forms (the whole-D tile, ``CHUNK = 0``, and
the chunked one) against a float64 oracle written here from the definitions, with the
rounding model's own tolerance (γ·absmax: a D-term dot product summed in any order), not a
loose relative one. Head dims that are and are not multiples of the chunk (masked channels),
several chunks, ragged rows over several programs (small BLOCK_P), groups of 1, 3 and 4,
ALiBi and σ, fp16 keys small enough for ν to set absmax, and ``with_mean=False``.
"""

import pytest
import torch

from entmaxkv.reference import group_queries
from helpers import fresh_seed, kernel_launches, make_cache

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels import page_scores as module  # noqa: E402
from entmaxkv.kernels.page_scores import mean_floor, page_bounds, page_scores, rounding_gamma, uses_dot  # noqa: E402

S = 16
SCALE = 0.3
ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICES = ["cpu", pytest.param("cuda", marks=ON_GPU)]


def oracle(cache, q, slopes, work):
    """float64 (upper, absmax, mean, sigma) [B, Hkv, G, P] from the definitions in the module
    docstring (the statistics and q converted exactly; γ of the work dtype)."""
    qg = group_queries(q.double()[:, :, None], cache.num_kv_heads)  # [B, Hkv, G, D]
    kmin, kmax, kmean, kstd = (getattr(cache, f).double() for f in ("k_min", "k_max", "k_mean", "k_std"))
    quest = (torch.einsum("bhgd,bhpd->bhgp", qg.clamp_min(0), kmax)
             + torch.einsum("bhgd,bhpd->bhgp", qg.clamp_max(0), kmin))
    kabs = torch.maximum(kmin.abs(), kmax.abs())
    mag = torch.einsum("bhgd,bhpd->bhgp", qg.abs(), kabs) * SCALE
    absmax = torch.einsum("bhgd,bhpd->bhgp", qg.abs(), kabs.clamp_min(mean_floor(cache.dtype))) * SCALE
    upper = quest * SCALE + rounding_gamma(work, cache.head_dim) * mag
    mean = torch.einsum("bhgd,bhpd->bhgp", qg, kmean) * SCALE
    var = torch.einsum("bhgd,bhpd->bhgp", qg.square(), kstd.square()) * SCALE ** 2
    if slopes is not None:
        slope = slopes.double().reshape(1, cache.num_kv_heads, -1, 1)
        first = torch.arange(cache.num_pages, dtype=torch.float64) * S - (cache.seq_lens.double() - 1)[:, None]
        first = first[:, None, None, :]
        bias = torch.maximum(slope * first, slope * (first + S - 1))
        upper = upper + bias
        mean = mean + slope * (first + (S - 1) / 2)
        var = var + slope.square() * (S * S - 1) / 12
    return upper, mag, absmax, mean, var.sqrt()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form, block_p", [(0, 4), (8, 4), (16, 8), (32, 4), ("dot", 16), ("dot2", 16),
                                           ("dot_sigma", 16), ("dot_sigma_tf32", 16), ("dot_sigma_chunks", 16),
                                           ("dot_sigma_chunks_x3", 16)])
@pytest.mark.parametrize("dtype, d, group, tiny", [
    (torch.float16, 24, 4, False), (torch.float16, 128, 4, False), (torch.float16, 40, 1, True),
    (torch.bfloat16, 128, 3, False), (torch.float32, 24, 3, False), (torch.float64, 40, 4, False)])
def test_page_scores_forms_equal_the_float64_oracle(form, block_p, dtype, d, group, tiny, device, poison, monkeypatch):
    """On CUDA too: the compiled kernels (fused multiply-adds or tensor cores, another
    schedule) stay within the same rounding model. ``form``: CHUNK of the CUDA-core forms, or
    the tensor-core form (float16/bfloat16 without σ; float32/float64 keep the chunked form),
    one page block a program or two in turn (``dot2``, on CUDA too, whatever the SM count:
    70 pages make 3 programs, the last one's second block past the row), or two in turn with σ
    on the tensor-core form too (``dot_sigma``: ``SIGMA_DOT``, a ``tf32x3`` dot; ``dot_sigma_tf32``:
    ``SIGMA_ONE_PASS`` too, one ``tf32`` dot, whose σ carries tf32's input rounding: within
    2^-10·σ more, ``_page_block_dot``; the interpreter's float32 dots cannot show it), and that
    form with the head dimension in chunks (``dot_sigma_chunks``: ``SIGMA_D_CHUNKS`` 4, as many as
    D allows, ``_page_block_dot_chunks``; ``dot_sigma_chunks_x3`` with ``tf32x3``)."""
    chunks = form in ("dot_sigma_chunks", "dot_sigma_chunks_x3")
    sigma_dot = form in ("dot_sigma", "dot_sigma_tf32") or chunks
    dot = form in ("dot", "dot2") or sigma_dot
    monkeypatch.setattr(module, "USE_DOT", dot)
    monkeypatch.setattr(module, "SIGMA_DOT", sigma_dot)
    monkeypatch.setattr(module, "SIGMA_ONE_PASS", form in ("dot_sigma_tf32", "dot_sigma_chunks"))
    monkeypatch.setattr(module, "SIGMA_D_CHUNKS", 4 if chunks else 1)
    assert not chunks or module.sigma_chunks(d) >= 2
    iters = 2 if form == "dot2" or sigma_dot else 1  # page blocks a program takes in turn
    monkeypatch.setattr(module, "dot_iters", lambda blocks, device, with_sigma=False: iters)
    monkeypatch.setattr(module, "DOT_BLOCK_P" if dot else "BLOCK_P", block_p)
    if not dot:
        monkeypatch.setattr(module, "CHUNK", form)
    seed = fresh_seed()
    hkv = 2
    # 9 and 5 full pages: rows of several programs, the last ragged (70 and 20 for the dot's
    # 16-page programs)
    lens = [S * 70 + 3, S * 20] if dot else [S * 9 + 3, S * 5]
    with_sigma = not dot or sigma_dot  # σ keeps the CUDA-core form unless SIGMA_DOT
    spread = 2.0 ** -20 if tiny else 3.0  # tiny: fp16 subnormal keys, absmax set by ν
    cache, _, _ = make_cache(seed, 2, hkv, d, S, lens, dtype=dtype, spread=spread)
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(2, hkv * group, d, generator=g, dtype=torch.float64) * 2).to(dtype)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    slopes = (torch.rand(hkv * group, generator=g, dtype=torch.float64) * 0.2).to(work) if group != 1 else None
    ran = cache.to(device=device)
    assert uses_dot(q, cache.k_min, with_sigma) == (dot and dtype in (torch.float16, torch.bfloat16))
    got = page_scores(q.to(device), ran.k_min, ran.k_max, ran.k_mean, ran.k_std, ran.seq_lens,
                      None if slopes is None else slopes.to(device), S, SCALE, with_sigma)
    upper, mag, absmax, mean, sigma = oracle(cache, q, slopes, work)
    full = cache.full_page_mask()[:, None, None, :].expand_as(upper)
    eps = torch.finfo(work).eps
    gamma = rounding_gamma(work, d)
    bias_err = 0.0 if slopes is None else 8 * eps * float(slopes.abs().max()) * S * cache.num_pages
    msg = f"seed {seed}"
    # each result is a D-term dot product (any order) plus a few roundings: within γ·absmax;
    # the tensor-core upper carries 2γ·absmax more (its chained 2D-term dot: ``_page_block_dot``)
    on_dot = uses_dot(q, cache.k_min, with_sigma)
    if on_dot:
        upper = upper + 2 * gamma * mag
    checks = [("upper", got[0], upper, 2 * gamma * absmax + bias_err), ("absmax", got[1], absmax, gamma * absmax),
              ("mean", got[2], mean, gamma * absmax + bias_err)]
    if with_sigma:
        tf32 = 2.0 ** -10 if on_dot and form in ("dot_sigma_tf32", "dot_sigma_chunks") else 0.0  # tf32's rounding
        checks.append(("sigma", got[3], sigma, (4 * gamma + tf32) * sigma))
    for name, x, want, tol in checks:
        assert x.dtype == work, name
        err = (x.double().cpu() - want).abs()
        assert bool((err[full] <= tol[full]).all()), f"{name} {msg}: {(err - tol)[full].max()}"
    if on_dot:  # the dots' extra 2γ: at least the exact Quest bound plus γ·absmax
        assert bool((got[0].double().cpu() >= upper - 2 * gamma * mag - bias_err)[full].all()), msg
    if tiny:  # ν, not the keys, sets absmax somewhere: the test sees whether ν is applied
        assert bool((absmax[full] > mag[full] * (1 + 4 * gamma)).any()), msg
    # page_bounds: the same page quantities, bit for bit (one kernel); without the mean (α = 1's
    # TopK step) the same upper, and the mean (NaN here) is not read
    q, slopes, full = q.to(device), None if slopes is None else slopes.to(device), full.to(device)
    bounds = page_bounds(q, ran.k_min, ran.k_max, ran.k_mean, ran.k_std, ran.seq_lens, slopes, ran.k_pages, S,
                         SCALE, with_sigma)
    for x, y in zip(bounds[:4] if with_sigma else bounds[:3], got):
        assert torch.equal(x[full], y[full]), msg
    lean = page_bounds(q, ran.k_min, ran.k_max, torch.full_like(ran.k_mean, float("nan")), ran.k_std, ran.seq_lens,
                       slopes, ran.k_pages, S, SCALE, False, False)
    if chunks and on_dot:  # the chunked σ form without the mean: its upper and σ as with it, bit for bit
        no_mean = page_bounds(q, ran.k_min, ran.k_max, torch.full_like(ran.k_mean, float("nan")), ran.k_std,
                              ran.seq_lens, slopes, ran.k_pages, S, SCALE, True, False)
        assert torch.equal(no_mean[0][full], got[0][full]) and torch.equal(no_mean[3][full], got[3][full]), msg
    if chunks:  # the chunked σ form sums in another order than the lean form: the
        # lean upper within the same rounding model, not bit for bit (``SIGMA_D_CHUNKS``)
        err = (lean[0].double().cpu() - upper).abs()
        assert bool((err[full.cpu()] <= (2 * gamma * absmax + bias_err)[full.cpu()]).all()), msg
        assert bool((lean[0].double().cpu() >= upper - 2 * gamma * mag - bias_err)[full.cpu()].all()), msg
    else:
        assert torch.equal(lean[0][full], got[0][full]), msg
    assert lean[1].numel() == 0 and lean[2].numel() == 0


def test_sigma_chunks_are_powers_of_two_of_at_least_16_channels(monkeypatch):
    """``sigma_chunks``: ``SIGMA_D_CHUNKS`` down to a power of two, at most next_pow2(D) / 16
    chunks (each chunk's dots need K >= 16), at least 1."""
    for setting, d, want in [(1, 128, 1), (4, 128, 4), (4, 24, 2), (4, 16, 1), (3, 128, 2), (8, 40, 4), (0, 64, 1)]:
        monkeypatch.setattr(module, "SIGMA_D_CHUNKS", setting)
        assert module.sigma_chunks(d) == want, (setting, d)


def test_chunk_larger_than_the_head_dim_is_clamped(monkeypatch):
    """CHUNK above the (padded) head dimension takes the whole of it in one chunk."""
    monkeypatch.setattr(module, "CHUNK", 64)
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 1, 1, 8, S, [2 * S], dtype=torch.float16)
    q = torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(seed)).half()
    got = page_scores(q, cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens, None, S, SCALE, False)
    upper, _, absmax, mean, _ = oracle(cache, q, None, torch.float32)
    gamma = rounding_gamma(torch.float32, 8)
    for x, want in [(got[0], upper), (got[1], absmax), (got[2], mean)]:
        assert bool(((x.double() - want).abs()[..., :2] <= 2 * gamma * absmax[..., :2]).all()), seed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_tensor_core_upper_covers_its_accumulation(dtype, device, monkeypatch):
    """The tensor-core form's ``upper`` is at least the exact Quest bound plus γ·absmax, on
    statistics built for cancellation: products of both signs and magnitudes 2^-8..2^8 (exact
    in float32), so the float32-accumulated dots are off by far more than an ulp of their
    result. And it is the Quest bound plus 3γ·absmax up to that accumulation: within the
    model's 4D·eps·absmax on CUDA (``_page_block_dot``), within γ/4·absmax under the
    interpreter (numpy's float32 sums), where a 2γ or γ form is caught."""
    monkeypatch.setattr(module, "USE_DOT", True)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, hkv, group, p, d = 1, 2, 4, 48, 128
    span = 2.0 ** torch.randint(-8, 9, (b, hkv, p, d), generator=g).double()
    kmin = (torch.randn(b, hkv, p, d, generator=g, dtype=torch.float64) * span).to(dtype)
    kmax = torch.maximum(kmin, (torch.randn(b, hkv, p, d, generator=g, dtype=torch.float64) * span).to(dtype))
    q = (torch.randn(b, hkv * group, d, generator=g, dtype=torch.float64)
         * 2.0 ** torch.randint(-4, 5, (b, hkv * group, d), generator=g)).to(dtype)
    lens = torch.tensor([p * S + 5])
    assert uses_dot(q, kmin, False)
    got = page_scores(q.to(device), kmin.to(device), kmax.to(device), kmin.to(device), kmin.to(device),
                      lens.to(device), None, S, SCALE, False, False)[0].double().cpu()
    qg = group_queries(q.double()[:, :, None], hkv)
    quest = (torch.einsum("bhgd,bhpd->bhgp", qg.clamp_min(0), kmax.double())
             + torch.einsum("bhgd,bhpd->bhgp", qg.clamp_max(0), kmin.double())) * SCALE
    mag = torch.einsum("bhgd,bhpd->bhgp", qg.abs(), torch.maximum(kmin.abs(), kmax.abs()).double()) * SCALE
    gamma = rounding_gamma(torch.float32, d)
    want = quest + gamma * mag
    slack = 4 * torch.finfo(torch.float32).eps * (quest.abs() + gamma * mag)  # the last two roundings
    assert bool((got >= want - slack).all()), f"seed {seed}: {(want - slack - got).max()}"
    accumulation = (4 * d * torch.finfo(torch.float32).eps if device == "cuda" else gamma / 4) * mag
    off = (got - (quest + 3 * gamma * mag)).abs()
    assert bool((off <= accumulation + slack).all()), f"seed {seed}: {(off - accumulation - slack).max()}"


@pytest.mark.parametrize("with_sigma", [False, True])
def test_the_tensor_core_form_loops_blocks_only_without_sigma(with_sigma):
    """Where the grid allows it (the interpreter counts one SM: a row of 4 blocks does), a
    tensor-core program takes ``DOT_ITERS`` page blocks in turn, and with σ
    ``DOT_ITERS_WITH_SIGMA`` (1: the looped σ form spills for sm_90a and ran slower, perf-log
    row 153), as launched."""
    seen = []
    cache, _, _ = make_cache(fresh_seed(), 1, 1, 16, S, [S * 4 * module.DOT_BLOCK_P], dtype=torch.float16)
    q = torch.randn(1, 2, 16).half()
    with kernel_launches(lambda kernel, bound: seen.append((bound["DOT"], bound["ITERS"]))):
        page_scores(q, cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens, None, S, SCALE,
                    with_sigma)
    want = module.DOT_ITERS_WITH_SIGMA if with_sigma else module.DOT_ITERS
    assert seen == [(True, want)], seen
    assert module.dot_iters(4 * module.DOT_ITERS, torch.device("cpu"), with_sigma) == want


def test_the_tensor_core_form_only_where_its_dots_are_exact_and_compile(monkeypatch):
    """``uses_dot``: float16/bfloat16 statistics with queries of the same dtype, σ only with
    ``SIGMA_DOT`` (on by default), and a head dimension of at least 16 (``tl.dot``'s smallest K on the GPU;
    the interpreter would run a smaller one, so only this guard keeps D < 16 off the form)."""
    monkeypatch.setattr(module, "USE_DOT", True)
    stats = {d: torch.zeros(1, 1, 4, d, dtype=torch.float16) for d in (8, 15, 16, 24)}
    assert not uses_dot(torch.zeros(1, 2, 8, dtype=torch.float16), stats[8], False)
    assert not uses_dot(torch.zeros(1, 2, 15, dtype=torch.float16), stats[15], False)
    assert uses_dot(torch.zeros(1, 2, 16, dtype=torch.float16), stats[16], False)
    assert uses_dot(torch.zeros(1, 2, 24, dtype=torch.bfloat16), stats[24].bfloat16(), False)
    assert module.SIGMA_DOT and module.SIGMA_ONE_PASS  # σ as one tf32 dot by default (session 48)
    assert uses_dot(torch.zeros(1, 2, 16, dtype=torch.float16), stats[16], True)  # σ
    monkeypatch.setattr(module, "SIGMA_DOT", False)
    assert not uses_dot(torch.zeros(1, 2, 16, dtype=torch.float16), stats[16], True)
    assert not uses_dot(torch.zeros(1, 2, 16, dtype=torch.float32), stats[16], False)  # q's dtype
    assert not uses_dot(torch.zeros(1, 2, 16, dtype=torch.float32), stats[16].float(), False)
    monkeypatch.setattr(module, "USE_DOT", False)
    assert not uses_dot(torch.zeros(1, 2, 16, dtype=torch.float16), stats[16], False)
