"""Edge cases of this session's kernels (from an independent review): properties the
bit-for-bit comparisons with the torch code do not pin down — the score floor must be a score
some *attended* token truly reaches; the float64 argument split must be lossless; the Gaussian
kernel must solve the reference's F (and its erfc be accurate); a streamed quest_select row
must read back only keys it stored."""

import math
import struct

import pytest
import torch

from entmaxkv.newest_page import candidate_page_mask, newest_page_mask
from entmaxkv.reference import token_scores
from helpers import fresh_seed

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from entmaxkv.kernels.common import candidate_count  # noqa: E402
from entmaxkv.kernels.gaussian_tau import _erfc  # noqa: E402
from entmaxkv.kernels.quest_select import _float64_of, float64_words, quest_select  # noqa: E402
from test_quest_select import S, after_append, step_bounds  # noqa: E402

ON_THE_GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                            reason="needs CUDA")])


@triton.jit
def _candidate_count_kernel(lengths, out, P, S: tl.constexpr, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(out + i, candidate_count(tl.load(lengths + i), S, P))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("page_size", [16, 5])
def test_candidate_count_is_the_full_pages_before_the_newest_clamped_to_the_slots(dtype, page_size):
    """``candidate_count``, which thirteen kernels take their candidate pages from: (len − 1) // S
    for every length a cache can hold, 0 for an empty sequence, never past the P slots (a length
    past the capacity), and no wrap of an int64 length past 2^31 (the old formula narrowed it to
    int32 first). Its clamp is otherwise seen only through ``gaussian_tau``'s tests."""
    s, p = page_size, 7
    lengths = [0, 1, s - 1, s, s + 1, 2 * s, 2 * s + 1, p * s - 1, p * s, p * s + 1, p * s + s + 1, 10 ** 6]
    if dtype == torch.int64:
        lengths += [2 ** 31 + 5, 2 ** 33 + 1, 2 ** 40]
    lengths += [-3] * (16 - len(lengths))
    out = torch.full((16,), -7, dtype=torch.int32)  # poisoned
    _candidate_count_kernel[(1,)](torch.tensor(lengths, dtype=dtype), out, p, S=s, N=16)
    assert out.tolist() == [min(max(n - 1, 0) // s, p) for n in lengths]


@pytest.mark.parametrize("x", [0.0, 1 / 3, 0.56, 0.1, 0.125, 1.0, 2.0, 1e-300, 5e-324, 0.9999999999999999,
                               -0.0, -1 / 3, -3.4198878416854415, -1e300, -5e-324])
def test_float64_words_is_lossless(x):
    high, middle, low = float64_words(x)
    assert 0 <= high < 2 ** 22 and all(0 <= w < 2 ** 21 for w in (middle, low))
    assert (high >= 2 ** 21) == (math.copysign(1.0, x) < 0)  # the sign bit
    bits = (high << 42) | (middle << 21) | low
    back = struct.unpack("<d", struct.pack("<Q", bits))[0]
    assert back == x and math.copysign(1.0, back) == math.copysign(1.0, x)


@triton.jit
def _float64_words_kernel(out, high, middle, low):
    tl.store(out, _float64_of(high, middle, low))


@pytest.mark.parametrize("device", ["cpu", ON_THE_GPU])
def test_float64_of_puts_the_words_back_in_a_kernel(device):
    """The kernel side of ``float64_words``, negative values included (the sign's shift into
    bit 63 wraps in int64): every bit back, the sign of −0.0 too."""
    for x in (0.0, -0.0, 1 / 3, -1 / 3, 0.5, -3.4198878416854415, 1e-300, -1e300, -5e-324, float("-inf")):
        out = torch.full((1,), float("nan"), dtype=torch.float64, device=device)
        _float64_words_kernel[(1,)](out, *float64_words(x))
        assert struct.pack("<d", out.item()) == struct.pack("<d", x), x


@pytest.mark.parametrize("dtype, group", [(torch.float32, 2), (torch.float64, 1)])
def test_quest_select_score_floor_is_reached_by_an_attended_token(dtype, group):
    """The floor must not exceed the best float64 score of the tokens the step attends (the
    selected pages and the newest page): a higher floor lets sparse_decode drop support
    tokens. Small budgets leave high-mean pages unselected, so a floor taken over pages that
    are not attended fails here."""
    seed = fresh_seed()
    for alibi in (False, True):
        # statistics that describe the keys (no copied ties): the floor's argument needs them
        cache, q, slopes = after_append(seed, 3, 2, group, 16, dtype, alibi, ties=False)
        upper, absmax, means, _, newest_max, newest_mag, _, _ = step_bounds(cache, q, slopes)
        exact = token_scores(cache.to(torch.float64), q.double(), 0.3, None if slopes is None else slopes.double())
        exact = exact.reshape(cache.batch, cache.num_kv_heads, group, -1)  # [B, Hkv, G, T]
        newest = newest_page_mask(cache)
        for budget, coverage, sink, recent in ((0, 0.0, 0, 0), (1, 0.0, 0, 0), (-1, 0.125, 0, 1), (2, 0.0, 1, 0)):
            pages, count, mask, floor, _ = quest_select(upper, means, absmax, newest_max, newest_mag, cache.seq_lens,
                                                     slopes, S, 16, 1.5, budget, coverage, sink, recent)
            attended = (mask | newest).repeat_interleave(S, -1)[..., : exact.shape[-1]]
            attended = attended & cache.token_mask()[:, None, : exact.shape[-1]]
            best = torch.where(attended[:, :, None, :], exact, float("-inf")).amax(-1)
            msg = f"seed {seed} alibi {alibi} budget {budget} coverage {coverage}"
            assert bool((floor.double() <= best).all()), f"{msg}: {(floor.double() - best).max()}"


def _gaussian_case(alpha, mu, sigma, candidates, exact, iters=50, expansions=30):
    from entmaxkv.gaussian import solve_gaussian_tau

    count = torch.where(candidates[:, None, None, :], 16.0, 0.0).to(torch.float64).expand_as(mu)
    want = solve_gaussian_tau(mu, sigma, count, exact, alpha, iters=iters, expansions=expansions)
    got = torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, alpha, iters, expansions)
    return got, want


def _solve_low_end(alpha, mu, exact, candidates):
    """[B, Hkv, G]: the lowest τ gaussian_tau's solve evaluates (``_keep_pages``' ``least``),
    computed here from its definition: the top candidate page's (α−1)·μ less S^−(α−1), or the
    top newest-page score's (α−1)·s less 1, whichever is higher."""
    c, s = alpha - 1, exact.shape[-1]
    pages = torch.where(candidates[:, None, None], c * mu, float("-inf")).amax(-1)
    return torch.maximum(pages - s ** -c, (c * exact).amax(-1) - 1)


@pytest.fixture(params=["fused", "split", "spread"])
def tau_form(request, monkeypatch):
    """gaussian_tau's three launch forms (``gaussian_tau.splits``, ``spreads``): the
    interpreter's one SM would otherwise take the split form only, and B = 1 on the GPU runs
    the fused or the spread one (here in chunks of 16 pages: rows of more than 16 pages)."""
    import entmaxkv.kernels.gaussian_tau as module

    monkeypatch.setattr(module, "splits", lambda rows, device: request.param == "split")
    monkeypatch.setattr(module, "SPREAD", request.param == "spread")
    monkeypatch.setattr(module, "SPREAD_P", 16)
    monkeypatch.setattr(module, "SPREAD_MIN_PAGES", 0)  # the spread form at any length
    monkeypatch.setattr(module, "GATHER_TILE", 1)  # the join in steps of 16 entries
    return request.param


@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3, 1.25, 1.05])
def test_gaussian_tau_edge_cases_equal_the_reference(alpha, tau_form):
    """Degenerate pages (σ = 0) holding the top score, exact scores only, pages only, all rows
    masked, and a root far above the top (wide pages: the bracket must expand)."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, h, grp, p, s = 1, 1, 2, 37, 16
    mu = torch.randn(b, h, grp, p, generator=g, dtype=torch.float64) * 2
    sigma = torch.rand(b, h, grp, p, generator=g, dtype=torch.float64)
    exact = torch.randn(b, h, grp, s, generator=g, dtype=torch.float64) * 2
    exact[..., 5:] = float("-inf")
    cand = torch.rand(b, p, generator=g) < 0.7
    none = torch.zeros_like(cand)
    flat_mu = mu.clone()
    flat_mu[..., 0] = mu.amax() + 1  # a σ = 0 page holds the top score
    cases = {"sigma0": (flat_mu, torch.zeros_like(sigma), torch.ones_like(cand), exact),
             "exact only": (mu, sigma, none, exact),
             "pages only": (mu, sigma, cand, torch.full_like(exact, float("-inf"))),
             "far above": (mu * 0, sigma * 0 + 5, torch.ones_like(cand), torch.full_like(exact, float("-inf")))}
    for name, (m, sd, c, e) in cases.items():
        got, want = _gaussian_case(alpha, m, sd, c, e)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"{name} α {alpha} seed {seed}")
    got, want = _gaussian_case(alpha, mu, sigma, none, torch.full_like(exact, float("-inf")))
    assert bool(torch.isneginf(got).all() and torch.isneginf(want).all())


@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25])
def test_gaussian_tau_from_lengths_equals_the_mask(alpha, tau_form):
    """Candidates given as the [B] lengths (what a Gaussian step on the kernels passes) give
    the τ̂ of the mask ``candidate_page_mask`` builds from them, bit for bit, in every launch
    form, over blocks of 16 pages (the end inside a later block): lengths 0, 1, S, S + 1, a
    multiple of S, a random one, the whole capacity and past it (no candidate past P: the next
    row's pages are not taken), int32 and int64; the newest page's slots and every page past
    the candidates hold NaN, so a page taken for a candidate past them would show. Long rows
    too (``SHORT_P`` 4). Both equal the reference (``test_opcheck_every_op`` checks the op with lengths)."""
    import entmaxkv.kernels.gaussian_tau as module
    from entmaxkv.gaussian import solve_gaussian_tau

    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    p, s = 37, 16
    random_length = int(torch.randint(2, p * s, (1,), generator=g))
    lengths = torch.tensor([0, 1, s, s + 1, 9 * s, random_length, p * s, p * s + s + 1])
    b = lengths.numel()
    mu = torch.randn(b, 2, 2, p, generator=g, dtype=torch.float64) * 2
    sigma = torch.rand(b, 2, 2, p, generator=g, dtype=torch.float64) + 0.02
    exact = torch.randn(b, 2, 2, s, generator=g, dtype=torch.float64) * 2
    ends = torch.arange(s, (p + 1) * s, s)
    mask = ends[None, :] < lengths[:, None]  # candidate_page_mask's rule
    beyond = ~mask[:, None, None, :]
    mu_p, sigma_p = mu.masked_fill(beyond, float("nan")), sigma.masked_fill(beyond, float("nan"))
    count = torch.where(mask[:, None, None, :], float(s), 0.0).to(torch.float64).expand_as(mu)
    want = solve_gaussian_tau(mu, sigma, count, exact, alpha, iters=50)
    for short_p in (module.SHORT_P, 4):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, "SHORT_P", short_p)
            patch.setattr(module, "BLOCK_P", 16)  # three blocks a row in every form
            from_mask = torch.ops.entmaxkv.gaussian_tau(mu_p, sigma_p, mask, exact, alpha, 50, 30)
            for ints in (torch.int64, torch.int32):
                got = torch.ops.entmaxkv.gaussian_tau(mu_p, sigma_p, lengths.to(ints), exact, alpha, 50, 30)
                assert torch.equal(got, from_mask), f"seed {seed} SHORT_P {short_p} {ints}: {got} vs {from_mask}"
        torch.testing.assert_close(from_mask, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed} SHORT_P {short_p}")


def test_gaussian_tau_rejects_candidates_of_the_wrong_shape():
    mu = torch.zeros(2, 1, 1, 5, dtype=torch.float64)
    exact = torch.zeros(2, 1, 1, 16, dtype=torch.float64)
    for bad in (torch.ones(2, 6, dtype=torch.bool), torch.ones(3, dtype=torch.int64), torch.ones(2),
                torch.ones(2, 5, 1, dtype=torch.bool)):
        with pytest.raises(ValueError, match="candidates"):
            torch.ops.entmaxkv.gaussian_tau(mu, mu, bad, exact, 1.5, 50, 30)


@pytest.mark.parametrize("rows", ["short", "long"])
@pytest.mark.parametrize("expansions", [1, 3])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25])
def test_gaussian_tau_root_past_the_expansions_reach_equals_the_reference(alpha, expansions, rows, tau_form,
                                                                          monkeypatch):
    """Wide pages put the root ~10 units above the top, past what ``expansions`` doublings of
    the bracket reach (top + 2^expansions − 1): the reference then returns the end of its last
    bracket, and so must the kernel — the float32 pre-solve finds the root, and its bracket
    is refused there (``PRESOLVE``'s reach test; for rows of more than ``SHORT_P`` pages,
    ``PRESOLVE_LONG``'s)."""
    import entmaxkv.kernels.gaussian_tau as module

    if rows == "long":
        monkeypatch.setattr(module, "SHORT_P", 4)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    c = alpha - 1
    mu = torch.randn(1, 1, 2, 37, generator=g, dtype=torch.float64) * 0.1 / c
    sigma = torch.full_like(mu, 5.0 / c)
    exact = torch.full((1, 1, 2, 16), float("-inf"), dtype=torch.float64)
    got, want = _gaussian_case(alpha, mu, sigma, torch.ones(1, 37, dtype=torch.bool), exact, expansions=expansions)
    top = (c * mu).amax(-1)
    assert bool((want <= top + 2.0**expansions - 1 + 1e-9).all()), f"seed {seed}: the reference stops at its reach"
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"α {alpha} seed {seed}")
    _, far = _gaussian_case(alpha, mu, sigma, torch.ones(1, 37, dtype=torch.bool), exact)
    assert bool((far > top + 2.0**expansions).all()), f"seed {seed}: {far} {top}"


@pytest.mark.parametrize("rows", ["short", "long"])
def test_gaussian_tau_root_just_past_the_reach_equals_the_reference(rows, tau_form, monkeypatch):
    """The reach's edge (from an independent review): a root at top + 7.5, between the reach of
    three expansions (top + 7) and top + 8 — a reach test off by one (top + 2^expansions)
    accepts the pre-solve's bracket there and returns 7.5, the reference 7."""
    import entmaxkv.kernels.gaussian_tau as module

    if rows == "long":
        monkeypatch.setattr(module, "SHORT_P", 4)
    mu = torch.zeros(1, 1, 2, 37, dtype=torch.float64)
    sigma = torch.full_like(mu, 2.6312400372519633)  # α = 2: puts the root at 7.5
    exact = torch.full((1, 1, 2, 16), float("-inf"), dtype=torch.float64)
    every = torch.ones(1, 37, dtype=torch.bool)
    _, root = _gaussian_case(2.0, mu, sigma, every, exact)
    assert bool(((root - 7.5).abs() < 1e-6).all()), root
    got, want = _gaussian_case(2.0, mu, sigma, every, exact, expansions=3)
    assert bool(((want - 7.0).abs() < 1e-9).all()), want
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", ["cpu", ON_THE_GPU])  # the GPU: compiled, libdevice exp and division
def test_gaussian_tau_root_far_in_the_lower_tail_equals_the_reference(device, tau_form):
    """Wide pages put the root in the far lower tail (d ≈ −4): a cdf of 0.5·(1 + erf(d/√2))
    (the kernel's until 2026-11-29) lost ~1e-10 of F to cancellation and moved the root by
    2e-10; the kernel's own erfc keeps it to rounding."""
    mu = torch.zeros(1, 1, 2, 37, dtype=torch.float64, device=device)
    sigma = torch.full_like(mu, 50.0)
    exact = torch.full((1, 1, 2, 16), float("-inf"), dtype=torch.float64, device=device)
    got, want = _gaussian_case(1.5, mu, sigma, torch.ones(1, 37, dtype=torch.bool, device=device), exact)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@triton.jit
def _erfc_kernel(x, out, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out + i, _erfc(tl.load(x + i, mask=i < n, other=0.0)), mask=i < n)


@pytest.mark.parametrize("device", ["cpu", ON_THE_GPU])
def test_gaussian_tau_erfc_is_accurate_to_a_few_ulps(device):
    """The kernel's float64 erfc against mpmath (40 digits) on fresh random points of
    [−6, 26] (its documented range, where erfc(x) is a normal float: relative error below
    4·2^−52, the measured largest 3.17·2^−52 over 400,000 points; see ``_erfc``), the tail
    where 1 − erf cancels included; and at its edges: ±∞, past the underflow, NaN-free."""
    import mpmath

    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.rand(3000, generator=g, dtype=torch.float64) * 32 - 6,
                   torch.rand(1000, generator=g, dtype=torch.float64) * 4 + 2,  # 1 − erf(x) < 0.005
                   torch.tensor([0.0, -0.0, 0.84375, -0.84375, 1e-300, 2.0, -2.0, 26.0, -26.0], dtype=torch.float64)])
    x = x.to(device)
    got = torch.empty_like(x)
    _erfc_kernel[(triton.cdiv(x.numel(), 1024),)](x, got, x.numel(), BLOCK=1024)
    with mpmath.workdps(40):
        want = torch.tensor([float(mpmath.erfc(mpmath.mpf(v))) for v in x.tolist()], dtype=torch.float64, device=device)
    err = ((got - want).abs() / want) / 2.0 ** -52
    assert float(err.max()) < 4.0, f"seed {seed}: {float(err.max())} at {float(x[err.argmax()])!r}"
    edges = torch.tensor([float("inf"), float("-inf"), 28.0, 40.0, 1e300, -1e300], dtype=torch.float64, device=device)
    out = torch.empty_like(edges)
    _erfc_kernel[(1,)](edges, out, edges.numel(), BLOCK=16)
    assert out.tolist() == [0.0, 2.0, 0.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize("alpha, s", [(1.01, 100.0), (1.05, 1000.0)])
def test_gaussian_tau_alpha_near_one_wide_page_equals_the_reference(alpha, s, tau_form):
    """Newton on F itself crept here (1 − 1/p of the distance a step) and stopped short."""
    mu = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    exact = torch.full((1, 1, 1, 16), float("-inf"), dtype=torch.float64)
    got, want = _gaussian_case(alpha, mu, mu + s, torch.ones(1, 1, dtype=torch.bool), exact)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, bits", [(torch.float32, 4), (torch.float16, 8), (torch.bfloat16, 4)])
def test_code_interval_holds_with_alibi(dtype, bits):
    """|s − ŝ| <= ε with ALiBi, for the reference's scores and exact float64 ones: long
    sequences and steep slopes make the bias's rounding dominate (tiny q)."""
    import math

    from entmaxkv.kernels.code_scan import code_bounds
    from test_kernels_codes import coded_cache, coded_pages
    from test_keycodes import naive_scores

    seed = fresh_seed()
    hkv, d, page = 2, 16, 4
    lens = [page * 300 + 3, page * 257]
    cache = coded_cache(seed, lens, hkv, d, page, bits, dtype)
    g = torch.Generator().manual_seed(seed + 2)
    q = (torch.randn(2, 2 * hkv, 1, d, generator=g, dtype=torch.float64) * 1e-3).to(dtype)
    slopes = (torch.rand(2 * hkv, generator=g, dtype=torch.float64) * 3 + 1).to(
        torch.float64 if dtype == torch.float64 else torch.float32)
    scale = 1 / math.sqrt(d)
    _, eps, s_hat = code_bounds(q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens,
                                slopes, cache.key_bits, scale, True)[:3]
    from entmaxkv.reference import token_scores

    ref = token_scores(cache, q, scale, slopes).double()
    exact = naive_scores(cache, q).reshape(ref.shape)
    pos = torch.arange(ref.shape[-1], dtype=torch.float64)
    bias = slopes.double().reshape(1, hkv, 2, 1) * (pos[None, None, None, :] - (cache.seq_lens - 1).double()
                                                    .reshape(-1, 1, 1, 1))
    exact = exact + bias
    tokens = coded_pages(cache).expand_as(eps).repeat_interleave(page, -1)
    radius = eps.double().repeat_interleave(page, -1)
    for name, scores in (("reference", ref), ("exact", exact)):
        gap = (scores - s_hat.double()).abs() - radius
        assert bool((gap[tokens] <= 0).all()), (seed, name, float(gap[tokens].max()))


@pytest.mark.parametrize("path", ["searched", "ranked"])
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("fill, selections", [  # (budget, coverage, sink, recent): budget −1 = coverage
    (float("inf"), ((-1, 1.0, 0, 0), (-1, 0.125, 1, 1))), (-1e30, ((2, 0.0, 0, 0),))])
def test_quest_select_streamed_rows_read_no_stale_scratch(fill, selections, wide, path, monkeypatch):
    """Rows streamed through the keys buffer (37 pages in 16-page blocks, written by 16-page
    chunk programs; ``ranked``: the same rows ranked, whole whatever MAX_BLOCK is) must read back
    only keys this call stored there: every slot, non-candidate pages included (as −inf). The
    op's fresh buffers come filled with eligible keys — +inf (above every real key: a forced
    page's key) or −1e30 (finite and below every real key, as leftovers of an earlier step in
    a caching allocator could be) — so a slot the kernel leaves unwritten is counted and
    selected. NaN (the ``poison`` fixture) would not show it: a NaN key is not eligible.
    Candidate counts 0, 1, 16 (a chunk edge) and 36 (all but the newest page) leave 37, 36,
    21 and 1 slots beyond them; a coverage notices an extra page above the real keys, a budget
    of 2 one below them."""
    import dataclasses

    import entmaxkv as ekv
    from test_quest_select import torch_selection

    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    b, hkv, group, p = 4, 2, 2, 37
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=16, capacity=p * S, page_size=S, dtype=dtype)
    lens = torch.tensor([S, S + 1 + seed % S, 16 * S + 1, p * S])  # n = (len − 1) // S = 0, 1, 16, 36
    cache = dataclasses.replace(cache, seq_lens=lens)  # only the lengths are read
    upper = torch.randn(b, hkv, group, p, generator=g, dtype=dtype) * 2
    means = upper - torch.rand(b, hkv, group, p, generator=g, dtype=dtype) * 3
    absmax = upper.abs() + 1
    newest_max = torch.randn(b, hkv, group, generator=g, dtype=dtype)
    newest_mag = newest_max.abs() + 1
    off = ~candidate_page_mask(cache)[:, :, None, :].expand_as(upper)
    upper, means, absmax = (x.masked_fill(off, float("nan")) for x in (upper, means, absmax))
    q = torch.zeros(b, hkv * group, 1, 16, dtype=dtype)

    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty
    scratch_sized = []  # float buffers the op allocated with room for a key per page of every row

    def filled(t):
        if t.dtype.is_floating_point:
            scratch_sized.append(t.numel() >= b * hkv * p)
            return t.fill_(fill)
        return t.fill_(True if t.dtype == torch.bool else -7)

    monkeypatch.setattr("entmaxkv.kernels.quest_select.MAX_BLOCK", 16)
    if path == "searched":
        monkeypatch.setattr("entmaxkv.kernels.quest_select.RANK_PAGES", 0)
    monkeypatch.setattr("entmaxkv.kernels.quest_select.CHUNK", 16)
    for budget, coverage, sink, recent in selections:
        msg = f"seed {seed} fill {fill} budget {budget} coverage {coverage} sink {sink} recent {recent}"
        want_mask, want_floor = torch_selection(cache, q, 1.5, None, upper, means, absmax, newest_max, newest_mag,
                                                None if budget < 0 else budget, coverage if budget < 0 else None,
                                                sink, recent)
        scratch_sized.clear()
        with monkeypatch.context() as mp:  # poisoned allocations inside the op only
            mp.setattr(torch, "empty", lambda *a, **k: filled(empty(*a, **k)))
            mp.setattr(torch, "empty_like", lambda *a, **k: filled(empty_like(*a, **k)))
            mp.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: filled(new_empty(self, *a, **k)))
            pages, count, mask, floor, _ = quest_select(upper, means, absmax, newest_max, newest_mag, lens, None, S, 16,
                                                     1.5, budget, coverage, sink, recent)
        # if this fails, the op no longer allocates a scratch row through these calls: poison
        # whatever holds its streamed keys instead, or this test checks nothing
        assert any(scratch_sized), f"no float buffer of {b * hkv * p} elements was allocated: {msg}"
        assert torch.equal(mask, want_mask.expand_as(mask)), msg
        assert torch.equal(count, mask.sum(-1).to(torch.int32)), msg
        for row, n, m in zip(pages.flatten(0, 1), count.flatten(), mask.flatten(0, 1)):
            assert row[: int(n)].tolist() == m.nonzero().flatten().tolist(), msg
            assert bool((row[int(n):] == -1).all()), msg
        assert torch.equal(floor, want_floor), msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_quest_select_floor_takes_a_negative_zero_best(dtype, device):
    """The list launch max-es each head's best selected mean − slack into the floor with
    ``tl.atomic_max``, which Triton lowers for floats to integer atomics split by sign:
    −0.0 must win over a negative floor, as torch.maximum has it. Triton 3.7 splits on the
    sign bit; older releases split on ``val >= 0``, which sends −0.0 to the signed-int max,
    where its bits (the lowest int) lose to every negative float. Here the only selected
    page's mean is −0.0 with no slack (absmax 0, no ALiBi) and the newest-page term −1 − 2γ.
    (Not yet run on the GPU's Triton 3.6: the lead runs the cuda case.)"""
    from test_quest_select import torch_selection
    import dataclasses

    import entmaxkv as ekv

    p = 8
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=16, capacity=p * S, page_size=S, dtype=dtype)
    cache = dataclasses.replace(cache, seq_lens=torch.tensor([p * S]))  # 7 candidates
    upper = torch.ones(1, 1, 1, p, dtype=dtype)
    upper[..., 0] = 10.0  # page 0 alone is selected (budget 1)
    means = torch.full((1, 1, 1, p), -5.0, dtype=dtype)
    means[..., 0] = -0.0
    absmax = torch.ones_like(upper)
    absmax[..., 0] = 0.0
    newest_max = torch.full((1, 1, 1), -1.0, dtype=dtype)
    newest_mag = torch.ones_like(newest_max)
    q = torch.zeros(1, 1, 1, 16, dtype=dtype)
    _, want_floor = torch_selection(cache, q, 1.5, None, upper, means, absmax, newest_max, newest_mag, 1, None, 0, 0)
    assert want_floor.item() == 0.0 and str(want_floor.item()) == "-0.0"  # the torch floor is the best mean
    args = [x.to(device) for x in (upper, means, absmax, newest_max, newest_mag, cache.seq_lens)]
    pages, count, mask, floor, _ = quest_select(*args, None, S, 16, 1.5, 1, 0.0, 0, 0)
    assert pages.cpu().tolist() == [[[0]]] and count.item() == 1
    assert floor.item() == 0.0, floor  # not the newest-page term −1 − 2γ


@pytest.mark.parametrize("short", [4, 64])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25])
def test_gaussian_tau_leaves_out_only_negligible_pages(monkeypatch, alpha, short, tau_form):
    """The kernel's solve reads only the pages whose term at its low end (the lowest τ it
    evaluates: ``_keep_pages``' ``least``) is above ``NEGLIGIBLE``, copied to a scratch row; τ
    still equals the reference's over every page. Pages sweep across the cut, over several
    loop blocks (``BLOCK_P`` 16: the scratch offsets run across blocks; ``SHORT_P`` 4 and
    ``SPLIT_SOLVE_P`` 16: the passes over the kept pages take both block sizes in either
    form, the quadrature several short blocks), in two rows: needles (a few pages
    far above the rest: the root well above the low end) and one exact score just above the pages
    (the root just above top − 1, where the pages' terms there are about their terms at the
    root: a cut of 1e-6 moves τ by more than the test's 1e-12 here; bounds below the term are
    the next tests')."""
    import entmaxkv.kernels.gaussian_tau as module
    from entmaxkv.gaussian import fejer_rule, gaussian_moment, lin

    monkeypatch.setattr(module, "BLOCK_P", 16)
    monkeypatch.setattr(module, "SHORT_P", short)
    monkeypatch.setattr(module, "SPLIT_SOLVE_P", 16)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, h, grp, p, s = 2, 1, 2, 100, 16
    c = lin(alpha)
    mu = torch.rand(b, h, grp, p, generator=g, dtype=torch.float64) * -20 - 2.2  # a sweep across the cut
    sigma = torch.rand(b, h, grp, p, generator=g, dtype=torch.float64) * 0.5 + 0.05
    candidates = torch.rand(b, p, generator=g) < 0.9
    exact = torch.randn(b, h, grp, s, generator=g, dtype=torch.float64) - 5
    exact[..., 7:] = float("-inf")
    # row 0: three needles on distinct pages, each within reach of the low end c·μ_top − S^−c:
    # their c·μ lie within S^−c / 2 of one another, so each is at least S^−c / 2 above it and its
    # term at least 2^(−1/c) (Jensen: S·E[(cX − low)^(1/c)] >= S·(S^−c / 2)^(1/c)), far above 1e-9.
    # (μ in [1, 2) held for the old low end top − 1 only: with the Jensen one 1 of 400 seeds at
    # α = 2 left a needle below 1e-9, and one CI run failed at α = 1.5.)
    needles = torch.stack([torch.randperm(p, generator=g)[:3] for _ in range(h * grp)]).reshape(h, grp, 3)
    spread = s ** -c / (2 * c)
    mu[0].scatter_(-1, needles, 1 + spread * torch.rand(h, grp, 3, generator=g, dtype=torch.float64))
    candidates[0, needles.flatten()] = True
    # row 1: one exact score on top, (α−1)·score − 1 = 0, and pages whose means lie δ = 2 … 16 of
    # their σ below that (the rest further down): the root is just above 0, where each page's
    # term is about its term at 0 — a bound that left out pages with terms of 1e-10 moves τ
    deltas = torch.tensor([2.0, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16], dtype=torch.float64)
    at = torch.randperm(p, generator=g)[: len(deltas)]
    mu[1] -= 6
    mu[1, ..., at], sigma[1, ..., at] = -0.4 * deltas, 0.4
    candidates[1, at] = True
    exact[1] = float("-inf")
    exact[1, ..., 0] = 1 / c
    got, want = _gaussian_case(alpha, mu, sigma, candidates, exact)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"α {alpha} seed {seed}")

    least = _solve_low_end(alpha, mu, exact, candidates)
    term = s * gaussian_moment(c * mu - least[..., None], c * sigma, alpha, fejer_rule(mu))
    left_out = candidates[:, None, None] & (term <= module.NEGLIGIBLE)
    above = candidates[:, None, None] & (term > 1e-9)
    assert int(left_out.sum(-1).min()) >= p // 4 and int(above.sum(-1).min()) >= 2, f"seed {seed}"


@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3, 1.25, 1.05, 1.01])
def test_gaussian_tau_scratch_holds_every_page_above_the_cut(alpha):
    """The kernel's own scratch (NaN-filled, read back): every candidate page whose term at
    the solve's low end (top − 1 where the top is a newest-page score; a page's (α−1)·μ less
    S^−(α−1) where it is a page: ``_keep_pages``) — the reference's moment, float64 — exceeds
    ``NEGLIGIBLE`` is in it — pages swept
    within a few e-folds of the cut, σ of 0, −0, subnormal, tiny — and in needle rows the noise
    pages are not (the cut leaves pages out at all). From an independent review."""
    import math

    import entmaxkv.kernels.gaussian_tau as module
    from entmaxkv.gaussian import gaussian_moment

    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    c, s, p = alpha - 1, 16, 90
    power = 1 / c
    delta = torch.rand(1, 1, 2, p, generator=g, dtype=torch.float64) * 12 + 0.3
    folds = torch.rand(1, 1, 2, p, generator=g, dtype=torch.float64) * 8 - 4  # e-folds from the cut
    log_s = (math.log(module.NEGLIGIBLE / s) + folds + delta * delta / 2) / power + torch.log(math.e * delta / power)
    width = torch.exp(log_s.clamp(-700, 60))
    mu, sigma = -delta * width / c, width / c
    mu[..., 0, :8] = torch.linspace(-60, -5, 8, dtype=torch.float64) / c
    sigma[..., 0, :8] = torch.tensor([0.0, -0.0, 5e-324, 1e-300, 1e-40, 0.3, 0.3, 0.3], dtype=torch.float64) / c
    exact = torch.full((1, 1, 2, s), float("-inf"), dtype=torch.float64)
    exact[..., 0] = 1 / c  # (α−1)·top = 1: top − 1 = 0
    needle_mu = torch.randn(1, 1, 2, p, generator=g, dtype=torch.float64) * 0.075  # sequence 1: needles
    needle_mu[..., :4] = 8.0 / c
    needle_exact = torch.full_like(exact, float("-inf"))
    needle_exact[..., :9] = 0.3
    mu, exact = torch.cat([mu, needle_mu]), torch.cat([exact, needle_exact])
    sigma = torch.cat([sigma, torch.full_like(needle_mu, 0.3)])
    rows = 4
    tau = torch.empty(2, 1, 2, dtype=torch.float64)
    kept_mu = torch.full((rows, p), float("nan"), dtype=torch.float64)
    kept_sigma = torch.full_like(kept_mu, float("nan"))
    module._gaussian_tau_kernel[(rows,)](
        mu, sigma, torch.ones(2, p, dtype=torch.bool), exact, *float64_words(c), tau, kept_mu, kept_sigma, 2, p, s,
        50, 30, KIND=module.moment_kind(alpha), BLOCK_P=16, SHORT_P=4, BLOCK_S=16, NODES=module.QUAD_NODES,
        NEGLIGIBLE=module.NEGLIGIBLE, SOLVE_P=16, PRESOLVE=module.PRESOLVE, MARGIN=module.PRESOLVE_MARGIN,
        PRESOLVE_LONG=module.PRESOLVE_LONG, LENGTHS=False, num_warps=module.TAU_WARPS)
    least = _solve_low_end(alpha, mu, exact, torch.ones(2, p, dtype=torch.bool))
    term = (s * gaussian_moment(c * mu - least[..., None], c * sigma, alpha)).reshape(rows, p)
    scaled = (c * mu).reshape(rows, p)
    for r in range(rows):
        held = torch.isin(scaled[r], kept_mu[r][~kept_mu[r].isnan()])
        missing = ~held & (term[r] > module.NEGLIGIBLE)
        assert not bool(missing.any()), f"seed {seed} α {alpha} row {r}: {term[r][missing].tolist()}"
    assert int((~kept_mu[2:].isnan()).sum(-1).max()) <= 4, f"seed {seed} α {alpha}: noise pages kept"


@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3, 1.25])
def test_gaussian_tau_cut_below_a_page_top_leaves_the_noise_out(alpha):
    """Where a row's top is a page mean a little above noise pages (a needle run split over
    pages: 1 row in 8 of the Gaussian step's needle inputs), the solve's low end is that page's
    (α−1)·μ less S^−(α−1) and the cut keeps the top page alone. The old low end, top − 1, kept
    every noise page there (most of their reference terms at top − 1 exceed ``NEGLIGIBLE``,
    checked here; the kernel's float32 bound keeps them all: with that mutation the test fails at
    every α) — a speed defect the τ tests cannot see. The split form's first kernel, read back:
    its kept count, top and low end (the one kernel runs the same ``_keep_pages``)."""
    import entmaxkv.kernels.gaussian_tau as module
    from entmaxkv.gaussian import gaussian_moment

    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    c, s, p, top = alpha - 1, 16, 90, 2.4  # in units of (α−1)·score: at α = 1.25 the bound of a noise
    # page at 0.15 is 11 nats under the cut at the low end 1.9; from about 0.3 up it would be kept
    mu = (0.05 * torch.randn(1, 1, 2, p, generator=g, dtype=torch.float64)).clamp(-0.15, 0.15) / c
    sigma = torch.full_like(mu, 0.15 / c)
    at = torch.randint(p, (2,), generator=g)
    mu[0, 0, 0, at[0]], mu[0, 0, 1, at[1]] = top / c, top / c
    exact = torch.full((1, 1, 2, s), float("-inf"), dtype=torch.float64)
    exact[..., :5] = 0.3 * torch.randn(1, 1, 2, 5, generator=g, dtype=torch.float64).clamp(-1, 1) / c
    old = s * gaussian_moment(c * mu - (top - 1), c * sigma, alpha)
    assert int((old > module.NEGLIGIBLE).sum()) >= p, f"seed {seed}: top − 1 would keep few noise pages"
    rows = 2
    kept_mu = torch.full((rows, p), float("nan"), dtype=torch.float64)
    kept_sigma = torch.full_like(kept_mu, float("nan"))
    counts = torch.full((rows,), -1, dtype=torch.int32)
    tops = torch.full((rows,), float("nan"), dtype=torch.float64)
    lows = torch.full_like(tops, float("nan"))
    module._gaussian_keep_kernel[(rows,)](
        mu, sigma, torch.ones(1, p, dtype=torch.bool), exact, *float64_words(c), kept_mu, kept_sigma, counts, tops,
        lows, 2, p, s, BLOCK_P=32, BLOCK_S=16, NEGLIGIBLE=module.NEGLIGIBLE, LENGTHS=False,
        num_warps=module.KEEP_WARPS)
    assert counts.tolist() == [1, 1], f"seed {seed}: kept {counts.tolist()}"
    torch.testing.assert_close(kept_mu[:, 0], torch.full((rows,), top, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(tops, torch.full((rows,), top, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(lows, torch.full((rows,), top - s ** -c, dtype=torch.float64), rtol=1e-14, atol=0)

@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3, 1.25, 1.05])
def test_gaussian_tau_keeps_wide_pages_far_below_the_top(alpha, tau_form):
    """Pages δ = 8 … 25 of their σ below top − 1 but wide enough that their terms there are
    1e-10 … 1e-6, the root just above top − 1: a bound that is not one (e^(−δ²) for
    e^(−δ²/2), no power, a halved σ) leaves them out and moves τ by about their terms."""
    import math

    c, s, p = alpha - 1, 16, 40
    power = 1 / c
    deltas = torch.tensor([8.0, 12, 16, 20, 25], dtype=torch.float64)
    targets = torch.tensor([1e-6, 1e-8, 1e-10, 1e-7, 1e-9], dtype=torch.float64)
    # term ≈ S·s^p·φ(δ)·Γ(p + 1)/δ^(p + 1): the width for each target
    log_phi = -0.5 * deltas ** 2 - 0.5 * math.log(2 * math.pi)
    width = torch.exp((torch.log(targets / s) - log_phi - math.lgamma(power + 1) + (power + 1) * torch.log(deltas))
                      / power)
    mu = torch.full((1, 1, 1, p), -1e4 / c, dtype=torch.float64)
    sigma = torch.full_like(mu, 0.1)
    mu[..., : len(deltas)] = -deltas * width / c
    sigma[..., : len(deltas)] = width / c
    exact = torch.full((1, 1, 1, s), float("-inf"), dtype=torch.float64)
    exact[..., 0] = 1 / c  # (α−1)·top = 1: top − 1 = 0
    got, want = _gaussian_case(alpha, mu, sigma, torch.ones(1, p, dtype=torch.bool), exact)
    assert bool(torch.isfinite(width).all() and torch.isfinite(want).all())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25])
def test_gaussian_tau_keeps_pages_beyond_float32(alpha, tau_form):
    """A page whose (α−1)·μ less the solve's low end is below float32's range while σ is not (δ ≈ 3.3 in
    float64, an enormous term) must stay (the float32 bound sees −inf there); a page with
    μ = −inf stays too, as before the cut: its closed-form term is NaN (−inf·0), the
    quadrature's 0."""
    from entmaxkv.kernels.gaussian_tau import moment_kind

    c, s = alpha - 1, 16
    mu = torch.zeros(1, 1, 1, 8, dtype=torch.float64)
    sigma = torch.full_like(mu, 0.1)
    mu[..., 3], sigma[..., 3] = -1e39 / c, 3e38 / c
    exact = torch.full((1, 1, 1, s), float("-inf"), dtype=torch.float64)
    candidates = torch.ones(1, 8, dtype=torch.bool)
    got, want = _gaussian_case(alpha, mu, sigma, candidates, exact)
    assert bool(torch.isfinite(want).all())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    mu[..., 3], sigma[..., 3] = float("-inf"), 0.1
    got = torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, alpha, 50, 30)
    if moment_kind(alpha):
        assert bool(got.isnan().all())
    else:
        without = candidates.clone()
        without[:, 3] = False
        assert torch.equal(got, torch.ops.entmaxkv.gaussian_tau(mu, sigma, without, exact, alpha, 50, 30))
