import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import entmaxkv as ekv
from helpers import make_cache, random_step
from naive import naive_entmax

PAGE = 4


def step_with_info(cache, q, kn, vn, alpha, selector, slopes=None):
    config = ekv.DecodeConfig(alpha=alpha, selector=selector)
    return ekv.decode_step(cache.fork(), q, kn, vn, config, alibi_slopes=slopes, with_info=True)


def naive_scores(cache, q, slopes=None):
    """Float64 scores of every held token, from plain loops: list over b of [Hq, L_b]."""
    out = []
    d = cache.head_dim
    for b, n in enumerate(cache.seq_lens.tolist()):
        k = cache.keys()[b, :, :n].double()
        hq = q.shape[1]
        s = torch.stack([k[h // (hq // cache.num_kv_heads)] @ q[b, h, 0].double() for h in range(hq)]) / math.sqrt(d)
        if slopes is not None:
            s = s + slopes.double()[:, None] * (torch.arange(n, dtype=torch.float64) - (n - 1))
        out.append(s)
    return out


def naive_dense_weights(cache, q, alpha, slopes=None):
    return [torch.stack([naive_entmax(row, alpha) for row in s]) for s in naive_scores(cache, q, slopes)]


def cache_after_append(cache, kn, vn):
    from entmaxkv.state import append_token
    return append_token(cache.fork(), kn, vn)[0]


# ---- the bound --------------------------------------------------------------------------------

@given(lens=st.lists(st.integers(0, 60), min_size=1, max_size=3), group=st.sampled_from([1, 3]),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.float16]), alibi=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_quest_bound_is_never_below_the_true_page_maximum(lens, group, dtype, alibi, seed):
    from entmaxkv.bounds import quest_bounds
    cache, _, _ = make_cache(seed, len(lens), 2, 8, PAGE, lens, dtype=dtype, spread=3.0)
    g = torch.Generator().manual_seed(seed)
    q, kn, vn = random_step(g, len(lens), 2 * group, 2, 8, dtype=dtype)
    slopes = torch.rand(2 * group, generator=g, dtype=torch.float64).to(dtype if dtype != torch.float16 else torch.float32) if alibi else None
    cache = cache_after_append(cache, kn, vn)
    upper = quest_bounds(cache, q, 1 / math.sqrt(8), slopes).double()  # [B, Hkv, G, P]
    for b, s in enumerate(naive_scores(cache, q, slopes)):
        full = s.shape[1] // PAGE
        page_max = s[:, : full * PAGE].reshape(s.shape[0], full, PAGE).amax(-1)  # [Hq, full]
        bound = upper[b].reshape(-1, upper.shape[-1])[:, :full]
        assert (page_max <= bound).all()
        # and it is the Quest bound, not something trivially larger
        kmin, kmax = cache.k_min[b].double(), cache.k_max[b].double()
        for h in range(q.shape[1]):
            qh = q[b, h, 0].double()
            quest = torch.maximum(qh * kmin[h // group], qh * kmax[h // group]).sum(-1)[:full] / math.sqrt(8)
            if slopes is not None:
                quest = quest + slopes[h].double() * (torch.arange(full) * PAGE + PAGE - 1 - (s.shape[1] - 1))
            torch.testing.assert_close(bound[h], quest, rtol=1e-2 if dtype != torch.float64 else 1e-12, atol=1e-3)


# ---- TopK -------------------------------------------------------------------------------------

def naive_topk_pages(cache, q, alpha, count, sink=0):
    """Naive group ranking of ``TopK``: for each (b, kv) the set of chosen full pages."""
    lin = alpha - 1 if alpha > 1 else 1.0
    scores = naive_scores(cache, q)
    hq, hkv = q.shape[1], cache.num_kv_heads
    group = hq // hkv
    chosen = {}
    for b, n in enumerate(cache.seq_lens.tolist()):
        newest = (n - 1) // PAGE
        cands = [p for p in range(n // PAGE) if p != newest]
        for kv in range(hkv):
            keys = {}
            for p in cands:
                best = -math.inf
                for h in range(kv * group, (kv + 1) * group):
                    qh = q[b, h, 0].double()
                    u = torch.maximum(qh * cache.k_min[b, kv, p].double(), qh * cache.k_max[b, kv, p].double()).sum() / math.sqrt(q.shape[-1])
                    means = [float(cache.k_mean[b, kv, r].double() @ qh) / math.sqrt(q.shape[-1]) for r in cands]
                    newest_top = float(scores[b][h, newest * PAGE: n].max())
                    best = max(best, lin * (float(u) - max(means + [newest_top])))
                keys[p] = math.inf if p < sink else best
            ranked = sorted(cands, key=lambda p: -keys[p])
            chosen[b, kv] = set(ranked[: count(len(cands))]) | {p for p in cands if p < sink}
    return chosen


@given(lens=st.lists(st.integers(1, 64), min_size=1, max_size=2), group=st.sampled_from([1, 2]),
       alpha=st.sampled_from([1.0, 1.5, 2.0]), budget=st.integers(0, 40), sink=st.integers(0, 2),
       seed=st.integers(0, 2**31 - 1))
def test_topk_budget_picks_the_pages_of_the_group_ranking(lens, group, alpha, budget, sink, seed):
    cache, _, _ = make_cache(seed, len(lens), 2, 8, PAGE, lens)
    q, kn, vn = random_step(torch.Generator().manual_seed(seed), len(lens), 2 * group, 2, 8)
    _, _, info = step_with_info(cache, q, kn, vn, alpha, ekv.TopK(token_budget=budget, sink_pages=sink))
    after = cache_after_append(cache, kn, vn)
    expected = naive_topk_pages(after, q, alpha, lambda n: min(n, budget // PAGE), sink)
    for (b, kv), pages in expected.items():
        n = after.seq_lens[b].item()
        got = set(info.page_mask[b, kv].nonzero().flatten().tolist()) - {(n - 1) // PAGE}
        assert got == pages
        assert info.num_pages[b, kv * group] == len(pages) + 1 == info.pages_per_kv_head[b, kv]


@pytest.mark.parametrize("coverage", [0.0625, 0.25, 0.5])
def test_topk_coverage_keeps_a_fraction_of_each_sequences_pages(coverage):
    cache, _, _ = make_cache(31, 2, 2, 8, PAGE, [63, 30])
    q, kn, vn = random_step(torch.Generator().manual_seed(32), 2, 4, 2, 8)
    _, _, info = step_with_info(cache, q, kn, vn, 1.5, ekv.TopK(coverage=coverage, sink_pages=0))
    for b, n in enumerate([64, 31]):
        candidates = n // PAGE - (1 if n % PAGE == 0 else 0)
        assert (info.num_pages[b] == math.ceil(candidates * coverage - 1e-9) + 1).all()


def test_topk_full_coverage_equals_dense_and_forced_pages_are_kept():
    cache, _, _ = make_cache(33, 2, 2, 8, PAGE, [50, 23])
    q, kn, vn = random_step(torch.Generator().manual_seed(34), 2, 4, 2, 8)
    _, dense, _ = step_with_info(cache, q, kn, vn, 1.5, ekv.Dense())
    _, full, info = step_with_info(cache, q, kn, vn, 1.5, ekv.TopK(coverage=1.0))
    torch.testing.assert_close(full, dense, rtol=0, atol=0)
    assert info.certified.all()
    _, _, info = step_with_info(cache, q, kn, vn, 1.5, ekv.TopK(token_budget=0, sink_pages=2, recent_pages=3))
    assert info.page_mask[0, 0].nonzero().flatten().tolist() == [0, 1, 9, 10, 11, 12]


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "exactly one of token_budget"), (dict(token_budget=64, coverage=0.5), "exactly one"),
    (dict(coverage=0.0), r"coverage must be in \(0, 1\]"), (dict(coverage=1.5), "coverage"),
    (dict(token_budget=-1), "token_budget must be an int >= 0"), (dict(token_budget=8, sink_pages=-1), "sink_pages"),
])
def test_topk_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ekv.TopK(**kwargs)


# ---- Gaussian ---------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3, 1.7, 1.2])
def test_gaussian_moments_match_numerical_integration(alpha):
    from scipy import integrate, stats

    from entmaxkv.gaussian import gaussian_moment
    n = 1 / (alpha - 1)
    for a, s in [(0.3, 1.0), (-1.2, 0.7), (2.5, 0.4), (-3.0, 0.5), (0.0, 2.0), (1.0, 0.0), (-1.0, 0.0)]:
        if s == 0:
            expected = max(a, 0.0) ** n
        else:
            expected, _ = integrate.quad(lambda z, a=a, s=s: max(a + s * z, 0) ** n * stats.norm.pdf(z), -a / s, math.inf,
                                         epsabs=1e-13, epsrel=1e-12)
        got = gaussian_moment(torch.tensor(a, dtype=torch.float64), torch.tensor(s, dtype=torch.float64), alpha)
        assert got.item() == pytest.approx(expected, rel=1e-6, abs=1e-10), (a, s)


@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3, 1.6])
def test_gaussian_tau_solves_the_distributional_constraint(alpha):
    from scipy import integrate, stats

    from entmaxkv.gaussian import solve_gaussian_tau
    g = torch.Generator().manual_seed(35)
    mu = torch.randn(2, 5, generator=g, dtype=torch.float64) * 2
    sigma = torch.rand(2, 5, generator=g, dtype=torch.float64) + 0.2
    count = torch.tensor([[16.0, 16, 16, 0, 16], [16, 16, 16, 16, 16]], dtype=torch.float64)
    exact = torch.tensor([[1.0, -0.5, -math.inf], [3.0, 2.5, 0.1]], dtype=torch.float64)
    tau = solve_gaussian_tau(mu, sigma, count, exact, alpha)
    c, n = alpha - 1, 1 / (alpha - 1)

    def page_mass(t, mean, std):  # E[((α-1)S - t)_+^n], S ~ N(mean, std²), by quadrature
        return integrate.quad(lambda x: max(c * x - t, 0) ** n * stats.norm.pdf(x, mean, std),
                              t / c, mean + 12 * std, epsabs=1e-13)[0]

    for r in range(2):
        t = tau[r].item()
        total = sum(max(c * e - t, 0) ** n for e in exact[r].tolist() if e > -math.inf)
        total += sum(k * page_mass(t, m, s) for m, s, k in zip(mu[r].tolist(), sigma[r].tolist(), count[r].tolist()))
        assert total == pytest.approx(1.0, abs=1e-7)


def gaussian_pages_cache(seed, pages=24, d=16, hot=3):
    """Keys drawn page by page from Gaussians, so page scores really are Gaussian."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64)
    direction = q[0, 0, 0] / q.norm()
    means = torch.randn(pages, d, generator=g, dtype=torch.float64) * 0.3
    for p in torch.randperm(pages, generator=g)[:hot].tolist():
        means[p] += direction * (4.0 + 3 * torch.rand(1, generator=g, dtype=torch.float64).item())
    stds = torch.rand(pages, d, generator=g, dtype=torch.float64) * 0.8 + 0.2
    k = (means[:, None] + stds[:, None] * torch.randn(pages, PAGE * 4, d, generator=g, dtype=torch.float64))
    k = k.reshape(1, 1, pages * PAGE * 4, d)
    v = torch.randn_like(k)
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=k.shape[2] + 8,
                                   page_size=PAGE * 4, dtype=torch.float64)
    cache = ekv.prefill(cache, k, v, [k.shape[2] - 1])
    return cache, q, k[:, :, -1:], v[:, :, -1:]


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_gaussian_selection_on_gaussian_pages_covers_the_support(alpha):
    recalls, sizes = [], []
    for seed in range(12):
        cache, q, kn, vn = gaussian_pages_cache(seed)
        new, out, info = step_with_info(cache, q, kn, vn, alpha, ekv.Gaussian())
        p = naive_dense_weights(new, q, alpha)[0][0]
        kept = info.page_mask[0, 0].repeat_interleave(cache.page_size)[: p.shape[0]]
        recalls.append(((p > 0) & kept).sum().item() / (p > 0).sum().item())
        sizes.append(info.num_pages[0, 0].item())
    assert min(recalls) == 1.0, recalls
    assert sum(sizes) / len(sizes) < 0.75 * 24, f"Gaussian selection should adapt, kept {sizes} of 24 pages"


@pytest.mark.parametrize("mode", ["fixed", "corrected"])
def test_gaussian_tau_modes_use_their_threshold(mode):
    cache, q, kn, vn = gaussian_pages_cache(36)
    _, out, info = step_with_info(cache, q, kn, vn, 1.5, ekv.Gaussian(tau_mode=mode, correction_iters=50))
    _, exact, exact_info = step_with_info(cache, q, kn, vn, 1.5, ekv.Gaussian(tau_mode="exact"))
    if mode == "corrected":  # many Newton steps converge to the exact τ over the kept tokens
        torch.testing.assert_close(info.tau, exact_info.tau, rtol=0, atol=1e-9)
        torch.testing.assert_close(out, exact, rtol=0, atol=1e-9)
    else:
        assert not torch.allclose(info.tau, exact_info.tau)
    assert not info.certified.any()  # an estimated τ is never certified


@pytest.mark.parametrize("kwargs,match", [
    (dict(tau_mode="approx"), "tau_mode must be one of"), (dict(max_quantile=1.0), "max_quantile"),
    (dict(safety_margin_z=-1.0), "safety_margin_z"), (dict(correction_iters=-2), "correction_iters"),
])
def test_gaussian_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ekv.Gaussian(**kwargs)


@pytest.mark.parametrize("selector", [ekv.Gaussian(), ekv.Exact()])
def test_selectors_that_need_entmax_zeros_reject_softmax(selector):
    cache, _, _ = make_cache(37, 1, 1, 8, PAGE, [9])
    q, kn, vn = random_step(torch.Generator().manual_seed(0), 1, 1, 1, 8)
    with pytest.raises(ValueError, match="needs alpha > 1"):
        ekv.decode_step(cache, q, kn, vn, ekv.DecodeConfig(alpha=1.0, selector=selector))


# ---- Exact and the certificate ----------------------------------------------------------------

SELECTORS = [ekv.TopK(token_budget=8), ekv.TopK(coverage=0.25, sink_pages=0, recent_pages=1),
             ekv.Gaussian(), ekv.Gaussian(tau_mode="fixed"), ekv.Gaussian(tau_mode="corrected"),
             ekv.Exact(), ekv.Exact(initial_pages=1, rounds=1, max_pages=2), ekv.Dense()]


@given(lens=st.lists(st.integers(1, 70), min_size=1, max_size=3), group=st.sampled_from([1, 2]),
       alpha=st.sampled_from([1.0, 1.3, 1.5, 2.0]), alibi=st.booleans(), spread=st.sampled_from([1.0, 4.0]),
       selector=st.sampled_from(SELECTORS), seed=st.integers(0, 2**31 - 1))
def test_dropped_mass_bound_holds_and_certified_steps_are_exact(lens, group, alpha, alibi, spread, selector, seed):
    if alpha == 1.0 and isinstance(selector, (ekv.Gaussian, ekv.Exact)):
        return
    cache, _, values = make_cache(seed, len(lens), 2, 8, PAGE, lens, spread=spread)
    g = torch.Generator().manual_seed(seed + 1)
    q, kn, vn = random_step(g, len(lens), 2 * group, 2, 8)
    slopes = torch.rand(2 * group, generator=g, dtype=torch.float64) * 0.5 if alibi else None
    new, out, info = step_with_info(cache, q, kn, vn, alpha, selector, slopes)
    dense, _ = ekv.dense_decode(new, q, alpha, alibi_slopes=slopes)
    weights = naive_dense_weights(new, q, alpha, slopes)
    for b, p in enumerate(weights):
        for h in range(q.shape[1]):
            kept = info.page_mask[b, h // group].repeat_interleave(PAGE)[: p.shape[1]]
            dropped = p[h][~kept].sum().item()
            bound = info.dropped_mass_bound[b, h].item()
            assert dropped <= bound * (1 + 1e-9) + 1e-12, (dropped, bound)
            if info.certified[b, h]:
                assert dropped == 0
                torch.testing.assert_close(out[b, h], dense[b, h], rtol=0, atol=1e-10)
            if selector == ekv.Exact():  # without a cap every step is certified
                assert info.certified[b, h]
            if info.tau is not None and not (isinstance(selector, ekv.Gaussian) and selector.tau_mode != "exact"):
                vmax = new.values()[b, h // group, : p.shape[1]].abs().max().item()
                error = (out[b, h] - dense[b, h]).abs().max().item()
                assert error <= 2 * bound * vmax + 1e-9  # the documented output-error bound


def test_exact_selector_reads_few_pages_when_bounds_allow_and_matches_fp16():
    """Structured data in fp16: certified output within fp16 rounding of float64 dense."""
    from entmaxkv.synthetic import SyntheticStream
    stream = SyntheticStream(batch=1, num_kv_heads=2, group=2, head_dim=16, seed=3, strength=1.5,
                             spectrum_decay=1.0, dtype=torch.float16)
    k, v = stream.prompt(512)
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=2, head_dim=16, capacity=600, dtype=torch.float16)
    cache = ekv.prefill(cache, k, v, [512])
    q, kn, vn = stream.step()
    new, out, info = step_with_info(cache, q, kn, vn, 2.0, ekv.Exact())
    ref, _ = ekv.dense_decode(new.to(torch.float64), q.double(), 2.0)
    assert info.certified.all()
    assert (out.double() - ref).norm() <= 1e-3 * ref.norm() + 1e-3
    assert info.num_pages.max() < 33, f"expected pruning on structured data, read {info.num_pages.tolist()} of 33"


def test_capped_exact_reports_when_it_cannot_certify():
    cache, _, _ = make_cache(38, 1, 1, 8, PAGE, [80], spread=0.1)  # flat scores: little can be excluded
    q, kn, vn = random_step(torch.Generator().manual_seed(39), 1, 1, 1, 8)
    _, out, info = step_with_info(cache, q, kn, vn, 1.5, ekv.Exact(max_pages=2))
    dense, _ = ekv.dense_decode(cache_after_append(cache, kn, vn), q, 1.5)
    assert not info.certified.any() and info.dropped_mass_bound.min() > 0
    assert not torch.allclose(out, dense)


def constant_pages_cache(seed, dtype, batch=2, hkv=2, pages=40, d=8, spread=2.0):
    """Every page repeats one key: the Quest bound equals each token's score, so the bound and
    the certificate are tight and any slack they lose shows."""
    g = torch.Generator().manual_seed(seed)
    per_page = torch.randn(batch, hkv, pages, 1, d, generator=g, dtype=torch.float64) * spread
    k = per_page.expand(-1, -1, -1, PAGE, -1).reshape(batch, hkv, pages * PAGE, d).to(dtype)
    v = torch.randn(batch, hkv, pages * PAGE, d, generator=g, dtype=torch.float64).to(dtype)
    cache = ekv.PagedKVCache.empty(batch=batch, num_kv_heads=hkv, head_dim=d, capacity=pages * PAGE + 8,
                                   page_size=PAGE, dtype=dtype)
    return ekv.prefill(cache, k, v, [pages * PAGE] * batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bound_covers_rounding_where_it_is_tight(dtype):
    from entmaxkv.bounds import quest_bounds
    for seed in range(4):
        cache = constant_pages_cache(seed, dtype)
        q, _, _ = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 8, dtype=dtype)
        upper = quest_bounds(cache, q, 1 / math.sqrt(8)).double()
        for b, s in enumerate(naive_scores(cache, q)):
            page_max = s.reshape(4, -1, PAGE).amax(-1)
            assert (page_max <= upper[b].reshape(4, -1)[:, : page_max.shape[1]]).all()


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
def test_certificate_is_tight_on_constant_pages(alpha):
    """bound >= true dropped mass, and within a small factor of it when τ_sel is close to τ."""
    ratios = []
    for seed in range(6):
        cache = constant_pages_cache(seed, torch.float64, spread=0.7)
        q, kn, vn = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 8)
        kn = cache.keys()[:, :, :1].clone()  # keep the newest page constant-ish too
        for coverage in (0.1, 0.3, 0.6):
            new, _, info = step_with_info(cache, q, kn, vn, alpha, ekv.TopK(coverage=coverage, sink_pages=0))
            for b, p in enumerate(naive_dense_weights(new, q, alpha)):
                for h in range(4):
                    kept = info.page_mask[b, h // 2].repeat_interleave(PAGE)[: p.shape[1]]
                    dropped, bound = p[h][~kept].sum().item(), info.dropped_mass_bound[b, h].item()
                    assert dropped <= bound * (1 + 1e-9) + 1e-15
                    if dropped > 1e-6:
                        ratios.append(bound / dropped)
    assert ratios, "no step dropped mass: the test would check nothing"
    assert min(ratios) < 1.5, f"the certificate never came close to the true mass: {min(ratios)}"
