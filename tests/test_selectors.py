import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import entmaxkv as ekv
from helpers import fresh_seed, make_cache, random_step
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
    hq, hkv = q.shape[1], cache.num_kv_heads
    group = hq // hkv
    chosen = {}
    for b, n in enumerate(cache.seq_lens.tolist()):
        newest = (n - 1) // PAGE
        cands = [p for p in range(n // PAGE) if p != newest]
        for kv in range(hkv):
            upper = {}  # (head, page) -> the Quest bound; each head's reference is its best one
            for h in range(kv * group, (kv + 1) * group):
                qh = q[b, h, 0].double()
                for p in cands:
                    upper[h, p] = float(torch.maximum(qh * cache.k_min[b, kv, p].double(),
                                                      qh * cache.k_max[b, kv, p].double()).sum()) / math.sqrt(q.shape[-1])
            keys = {}
            for p in cands:
                best = -math.inf
                for h in range(kv * group, (kv + 1) * group):
                    reference = max(upper[h, r] for r in cands)
                    best = max(best, lin * (upper[h, p] - reference))
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
    (dict(coverage=True), "coverage"), (dict(coverage="0.5"), "coverage"), (dict(token_budget=8.0), "token_budget"),
    (dict(token_budget=64, recent_pages=None), "recent_pages"),
])
def test_topk_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ekv.TopK(**kwargs)


# ---- Gaussian ---------------------------------------------------------------------------------

def test_normal_quantile_is_a_host_float_within_a_few_ulps():
    """``Gaussian``'s z (a config constant: no launch in the step) against the exact quantile
    (mpmath, 40 digits) over fresh points and the quantiles the defaults and the tests take,
    both tails included: within 8 ulps (measured: at most 5 over 20,000 points; float64
    ``ndtri``, which it replaced, at most 3), and a plain float."""
    import mpmath

    from entmaxkv.gaussian import normal_quantile

    mpmath.mp.dps = 40
    g = torch.Generator().manual_seed(fresh_seed())
    points = torch.rand(500, generator=g, dtype=torch.float64).tolist()
    points += [1e-300, 1e-20, 1e-5, 0.5, 1 - 1e-12] + [q ** (1 / s) for q in (0.995, 0.5, 0.9) for s in (8, 16, 64)]
    for p in points:
        if not 0 < p < 1:
            continue
        z = normal_quantile(p)
        exact = float(mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p) - 1))
        assert type(z) is float
        assert abs(z - exact) <= 8 * math.ulp(exact), (p, z, exact)
    assert normal_quantile(1.0) == math.inf  # q^(1/S) rounded to 1


def test_page_max_z_is_a_host_float_eagerly_and_the_same_bits_compiled():
    """Eagerly a plain float (no launch); in one compiled function recompiled for other
    quantiles and page sizes (traced as symbols) the same value, bit for bit."""
    from entmaxkv.gaussian import normal_quantile, page_max_z

    x = torch.ones((), dtype=torch.float64)
    compiled = torch.compile(lambda x, q, s: x * page_max_z(q, s, x), fullgraph=True, backend="aot_eager")
    for q, s in ((0.995, 16), (0.5, 16), (0.9, 8), (0.5, 32), (1e-9, 8), (0.9999999999999999, 16)):
        z = page_max_z(q, s, x)
        assert type(z) is float and z == normal_quantile(q ** (1 / s))
        got = compiled(x, q, s).item()
        assert got == z, (q, s, got, z)
    torch.library.opcheck(torch.ops.entmaxkv.page_max_z.default, (0.995, 16, x))


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


def naive_thresholded_attention(scores, values, kept, tau, alpha):
    """Weights [(α-1)s - τ]_+^(1/(α-1)) on the kept tokens, renormalised, times the values."""
    w = ((alpha - 1) * scores - tau).clamp_min(0).pow(1 / (alpha - 1)) * kept
    return (w / w.sum()) @ values


@pytest.mark.parametrize("mode", ["fixed", "corrected"])
def test_gaussian_tau_modes_use_their_threshold(mode):
    """fixed: τ is the model's τ̂ (clamped no higher) and the output is attention at that τ;
    corrected with many steps: the exact τ over the kept tokens."""
    from entmaxkv.backend import build_step
    from entmaxkv.gaussian import gaussian_tau_hat, page_gaussians
    cache, q, kn, vn = gaussian_pages_cache(36)
    _, out, info = step_with_info(cache, q, kn, vn, 1.5, ekv.Gaussian(tau_mode=mode, correction_iters=50))
    new, exact, exact_info = step_with_info(cache, q, kn, vn, 1.5, ekv.Gaussian(tau_mode="exact"))
    assert torch.equal(info.page_mask, exact_info.page_mask)
    if mode == "corrected":  # many Newton steps converge to the exact τ over the kept tokens
        torch.testing.assert_close(info.tau, exact_info.tau, rtol=0, atol=1e-9)
        torch.testing.assert_close(out, exact, rtol=0, atol=1e-9)
    else:
        step = build_step(new, q, 1.5, 1 / math.sqrt(16), None, kernels=False, needs_sigma=True)
        tau_hat = gaussian_tau_hat(step, *page_gaussians(step)).reshape(1, 1)
        assert (info.tau <= tau_hat + 1e-12).all() and (info.tau < exact_info.tau - 1e-3).all()
        scores = naive_scores(new, q)[0][0]
        kept = info.page_mask[0, 0].repeat_interleave(cache.page_size)[: scores.shape[0]]
        values = new.values()[0, 0, : scores.shape[0]].double()
        expected = naive_thresholded_attention(scores, values, kept, info.tau[0, 0].item(), 1.5)
        torch.testing.assert_close(out[0, 0, 0], expected, rtol=1e-10, atol=1e-12)
    assert not info.certified.any()  # an estimated τ is never certified


def test_gaussian_tau_hat_counts_every_token_of_a_page():
    """τ̂ of the selector solves the page-mixture constraint with n_p = page_size tokens per
    page, μ_p, σ_p from the page statistics: checked against scipy and plain loops."""
    from scipy import integrate, stats

    from entmaxkv.backend import build_step
    from entmaxkv.gaussian import gaussian_tau_hat, page_gaussians
    alpha, c = 1.5, 0.5
    cache, q, kn, vn = gaussian_pages_cache(40, pages=10, d=8)
    new = cache_after_append(cache, kn, vn)
    step = build_step(new, q, alpha, 1 / math.sqrt(8), None, kernels=False, needs_sigma=True)
    mu, sigma = page_gaussians(step)
    tau = gaussian_tau_hat(step, mu, sigma).item()
    n, size = new.seq_lens.item(), new.page_size
    qh = q[0, 0, 0].double()
    total = sum(max(c * float(s) - tau, 0) ** 2 for s in naive_scores(new, q)[0][0, (n - 1) // size * size:])
    for p in range(n // size if n % size else n // size - 1):
        m = float(new.k_mean[0, 0, p].double() @ qh) / math.sqrt(8)
        sd = math.sqrt(float((qh.square() * new.k_std[0, 0, p].double().square()).sum()) / 8)
        torch.testing.assert_close(mu[0, 0, 0, p].item(), m, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sigma[0, 0, 0, p].item(), sd, rtol=1e-12, atol=1e-12)
        total += size * integrate.quad(lambda x: max(c * x - tau, 0) ** 2 * stats.norm.pdf(x, m, sd),
                                       tau / c, m + 12 * sd, epsabs=1e-13)[0]
    assert total == pytest.approx(1.0, abs=1e-7)


# ---- Gaussian "corrected": the safeguarded refinement --------------------------------------

def naive_root(z, alpha):
    """Root of Σ_i [z_i - t]_+^(1/(α-1)) = 1 by float64 bisection (z: 1-D, -inf absent)."""
    z = z[torch.isfinite(z)].double()
    lo, hi = z.max().item() - 1, z.max().item()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (z - mid).clamp_min(0).pow(1 / (alpha - 1)).sum().item() >= 1 else (lo, mid)
    return lo


def residual(z, tau, alpha):
    return ((z - tau.unsqueeze(-1)).clamp_min(0).pow(1 / (alpha - 1)).sum(-1) - 1).abs()


@given(alpha=st.sampled_from([1.05, 1.1, 1.25, 1.5, 2.0]), n=st.integers(1, 40), spread=st.sampled_from([0.01, 0.3, 3.0]),
       ties=st.integers(1, 8), offset=st.sampled_from([-50.0, -3.0, -1.0, -0.3, -1e-9, 0.0, 0.5]),
       iters=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_refinement_is_finite_and_never_worse_than_no_refinement(alpha, n, spread, ties, offset, iters, seed):
    from entmaxkv.refine import refine_tau
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, n, generator=g, dtype=torch.float64) * spread
    z[:, : min(ties, n)] = z.amax(-1, keepdim=True) + 1e-3 * torch.rand(3, 1, generator=g, dtype=torch.float64)
    z[0, max(n // 2, 1):] = float("-inf")  # absent tokens (one stays)
    tau_hat = z.amax(-1) + offset * torch.rand(3, generator=g, dtype=torch.float64)
    tau = refine_tau(tau_hat, z, alpha, iters)
    assert torch.isfinite(tau).all()
    assert (residual(z, tau, alpha) <= residual(z, tau_hat, alpha)).all()
    for r in range(3):  # the refined iterate comes from the left of the root: it never passes it
        if tau[r] != tau_hat[r]:
            assert tau[r].item() <= naive_root(z[r], alpha) + 1e-12


def test_refinement_converges_to_the_root():
    from entmaxkv.refine import refine_tau
    g = torch.Generator().manual_seed(3)
    for alpha in (1.1, 1.3, 1.5, 2.0):
        z = torch.randn(4, 30, generator=g, dtype=torch.float64) * 2
        tau = refine_tau(z.amax(-1) - 1e-9, z, alpha, 40)  # τ̂ just below the top: the hard start
        expected = torch.tensor([naive_root(row, alpha) for row in z], dtype=torch.float64)
        torch.testing.assert_close(tau, expected, rtol=0, atol=1e-10)


def two_cluster_cache(d=16, pages=8, size=16, high=5.0, n_high=8, seed=0):
    """One page holds ``n_high`` nearly tied tokens at score ``high``, everything else scores ~0:
    the Gaussian τ̂ lands just below the top score, where the slope of the constraint is ~0."""
    g = torch.Generator().manual_seed(seed)
    q = torch.zeros(1, 1, 1, d, dtype=torch.float64)
    q[..., 0] = math.sqrt(d)  # score = scale·q·k = k[..., 0]
    k = 0.05 * torch.randn(1, 1, pages * size, d, generator=g, dtype=torch.float64)
    k[0, 0, 2 * size: 2 * size + n_high, 0] += high
    v = torch.randn(1, 1, pages * size, d, generator=g, dtype=torch.float64)
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=pages * size + 8,
                                   page_size=size, dtype=torch.float64)
    cache = ekv.prefill(cache, k[:, :, :-1], v[:, :, :-1], [pages * size - 1])
    return cache, q, k[:, :, -1:], v[:, :, -1:]


def test_corrected_tau_on_two_clusters_stays_near_the_root():
    """Issue 7: one unguarded Newton step from there gave τ = -1.4e8 (true 2.13)."""
    cache, q, kn, vn = two_cluster_cache()
    new, _, exact_info = step_with_info(cache, q, kn, vn, 1.5, ekv.Gaussian())
    dense, tau_true = ekv.dense_decode(new, q, 1.5)
    top = 0.5 * max(float(s.max()) for s in naive_scores(new, q))
    for iters, tol in ((None, 1.0), (1, 1.0), (3, 1e-2), (8, 1e-9)):
        _, out, info = step_with_info(cache, q, kn, vn, 1.5, ekv.Gaussian(tau_mode="corrected", correction_iters=iters))
        assert top - 1 <= info.tau.item() <= top  # where the root is: never far below
        assert abs(info.tau.item() - tau_true.item()) < tol, (iters, info.tau.item(), tau_true.item())
    assert ((out - dense).norm() / dense.norm()).item() < 1e-8
    torch.testing.assert_close(info.tau, exact_info.tau, rtol=0, atol=1e-9)


@pytest.mark.parametrize("alpha", [1.02, 1.05, 1.1])
@pytest.mark.parametrize("mode", ["fixed", "corrected"])
def test_gaussian_tau_modes_near_softmax_are_finite(alpha, mode):
    # the first case gave NaN before the refinement was safeguarded (τ = -5e75 at α = 1.1)
    for cache, q, kn, vn in (two_cluster_cache(high=20.0, n_high=8), two_cluster_cache(), gaussian_pages_cache(37)):
        new, out, info = step_with_info(cache, q, kn, vn, alpha, ekv.Gaussian(tau_mode=mode))
        assert torch.isfinite(out).all() and torch.isfinite(info.tau).all()


# ---- Gaussian: attention sinks and outliers -------------------------------------------------

def sink_cache(outlier_at=0, t=4096, d=64, seed=5):
    """Issue 7's repro: keys 0.3·randn, one outlier key 64u (score 8) and the newest token 40u
    (score 5), u = q/‖q‖. Dense entmax (α = 1.5) puts all its mass on the outlier."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64)
    q = q / q.norm()
    u = q[0, 0, 0]
    k = 0.3 * torch.randn(1, 1, t, d, generator=g, dtype=torch.float64)
    k[0, 0, outlier_at], k[0, 0, t - 1] = 64 * u, 40 * u
    v = torch.randn(1, 1, t, d, generator=g, dtype=torch.float64)
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=t, page_size=16, dtype=torch.float64)
    cache = ekv.prefill(cache, k[:, :, :-1], v[:, :, :-1], [t - 1])
    return cache, q, k[:, :, -1:], v[:, :, -1:]


@pytest.mark.parametrize("outlier_at,selector,kept", [
    (0, ekv.Gaussian(), True),                                            # the sink page, forced
    (0, ekv.Gaussian(sink_pages=0), True),                                # the outlier rule alone
    (1000, ekv.Gaussian(), True),                                         # a lone outlier elsewhere
    (1000, ekv.Gaussian(tau_mode="corrected"), True),
    (1000, ekv.Gaussian(outlier_margin=None), False),                     # the page model alone misses it
])
def test_gaussian_keeps_a_lone_outlier_token(outlier_at, selector, kept):
    cache, q, kn, vn = sink_cache(outlier_at)
    new, out, info = step_with_info(cache, q, kn, vn, 1.5, selector)
    dense, _ = ekv.dense_decode(new, q, 1.5)
    p = naive_dense_weights(new, q, 1.5)[0][0]
    assert p[outlier_at].item() > 0.999  # the data is what the test says it is
    assert info.page_mask[0, 0, outlier_at // 16].item() == kept
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), dense.flatten(), dim=0).item()
    assert (cosine > 1 - 1e-9) if kept else (cosine < 0.5)
    assert info.num_pages.item() <= 4  # and it still reads few pages


def test_gaussian_forced_pages_are_kept():
    cache, q, kn, vn = sink_cache(outlier_at=1000)
    _, _, free = step_with_info(cache, q, kn, vn, 1.5, ekv.Gaussian(sink_pages=0, outlier_margin=None))
    _, _, info = step_with_info(cache, q, kn, vn, 1.5, ekv.Gaussian(sink_pages=2, recent_pages=3, outlier_margin=None))
    free_pages = set(free.page_mask[0, 0].nonzero().flatten().tolist())
    pages = set(info.page_mask[0, 0].nonzero().flatten().tolist())
    assert free_pages == {255}  # the model alone keeps only the newest page here
    assert pages == {0, 1, 252, 253, 254, 255}


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(tau_mode="approx"), ValueError, "tau_mode must be one of"), (dict(max_quantile=1.0), ValueError, "max_quantile"),
    (dict(max_quantile="0.9"), TypeError, "max_quantile must be a real number"),
    (dict(safety_margin_z=-1.0), ValueError, "safety_margin_z"), (dict(correction_iters=-2), ValueError, "correction_iters"),
    (dict(correction_iters=1.5), ValueError, "correction_iters"), (dict(solver_iters=0), ValueError, "solver_iters"),
    (dict(tau_clamp_page_max_quantile=None), TypeError, "tau_clamp_page_max_quantile"),
    (dict(threshold_excess_margin_fraction=float("nan")), ValueError, "threshold_excess_margin_fraction"),
    (dict(clamp_tau="yes"), TypeError, "clamp_tau must be a bool"), (dict(sink_pages=-1), ValueError, "sink_pages"),
    (dict(recent_pages=True), ValueError, "recent_pages"), (dict(outlier_margin=-1.0), ValueError, "outlier_margin"),
])
def test_gaussian_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        ekv.Gaussian(**kwargs)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(initial_pages=-1), ValueError, "initial_pages"), (dict(rounds=2.0), ValueError, "rounds"),
    (dict(max_pages="8"), ValueError, "max_pages"),
])
def test_exact_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        ekv.Exact(**kwargs)


@pytest.mark.parametrize("selector", [ekv.Gaussian(), ekv.Exact()])
def test_selectors_that_need_entmax_zeros_reject_softmax(selector):
    with pytest.raises(ValueError, match="needs alpha > 1"):  # when the config is built
        ekv.DecodeConfig(alpha=1.0, selector=selector)


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
            assert 0 <= bound <= 1  # a mass bound: clamped at 1 ("no bound")
            if not (isinstance(selector, ekv.Gaussian) and selector.tau_mode != "exact"):
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


def test_exact_rounds_default_to_one_without_a_cap_and_two_with_one():
    assert ekv.Exact().exclusion_rounds == 1
    assert ekv.Exact(max_pages=4).exclusion_rounds == 2
    assert ekv.Exact(rounds=3).exclusion_rounds == 3 and ekv.Exact(rounds=0, max_pages=4).exclusion_rounds == 0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_uncapped_exact_takes_one_round_and_a_second_only_adds_reads(backend, monkeypatch):
    """Without a cap the first round's set is certified: the default step takes τ over the
    seed pages once and attends that set, and its output is dense entmax's. A second round
    takes τ over that set (a whole attention on the kernels) to tighten the final one: the same
    output, certified too."""
    from entmaxkv.backend import KernelOps, ReferenceOps
    from entmaxkv.synthetic import SyntheticStream
    seed = fresh_seed()
    stream = SyntheticStream(batch=2, num_kv_heads=2, group=2, head_dim=16, seed=seed, strength=1.5,
                             spectrum_decay=1.0, dtype=torch.float32)
    k, v = stream.prompt(400)
    empty = ekv.PagedKVCache.empty(batch=2, num_kv_heads=2, head_dim=16, capacity=420, dtype=torch.float32)
    cache = ekv.prefill(empty, k, v, [400, 333])
    q, kn, vn = stream.step()
    ops = KernelOps if backend == "triton" else ReferenceOps
    rounds_run, original = [], ops.pages_above  # one call a round
    monkeypatch.setattr(ops, "pages_above", lambda self, *a: rounds_run.append(1) or original(self, *a))
    steps = {}
    for rounds in (None, 2):
        rounds_run.clear()
        config = ekv.DecodeConfig(2.0, ekv.Exact(rounds=rounds), backend=backend)
        new, out, info = ekv.decode_step(cache.fork(), q, kn, vn, config, with_info=True)
        steps[rounds] = (len(rounds_run), out, info)
    dense, _ = ekv.dense_decode(new.to(torch.float64), q.double(), 2.0)
    (n1, out1, info1), (n2, out2, info2) = steps[None], steps[2]
    msg = f"seed {seed}"
    assert (n1, n2) == (1, 2), msg
    assert info1.certified.all() and info2.certified.all(), msg
    tolerance = 64 * torch.finfo(torch.float32).eps * new.values().abs().max().item()  # float32 sums
    for out in (out1, out2):
        assert (out.double() - dense).abs().max() <= tolerance, msg


def band_step(score, backend, rounds=None):
    """One KV head, D = 4, pages of 4 (from an independent review): page 0 holds the support;
    pages 1–7 are loose fillers (upper bound 9.6, scores 0); page 8 is loose too (9.4) with a
    token of huge |score|, so a τ bound over a set holding it has a wide rounding margin; page
    9's tokens all score ``score``. -> (page 9 attended, info, output − float64 dense)."""
    d, s = 4, 4
    k = torch.zeros(1, 1, 40, d)
    k[0, 0, 0:4] = torch.tensor([5.0, 5.0, 0.0, 0.0])
    filler = torch.tensor([[4.8, -4.8, 0, 0], [-4.8, 4.8, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    for p in range(1, 8):
        k[0, 0, 4 * p:4 * p + 4] = filler
    k[0, 0, 32:36] = torch.tensor([[4.7, -4.7, 0, 0], [-4.7, 4.7, 0, 0], [-500, -500, 0, 0], [0, 0, 0, 0]])
    k[0, 0, 36:40] = torch.tensor([score / 2, score / 2, 0.0, 0.0])
    v = torch.randn(1, 1, 40, d, generator=torch.Generator().manual_seed(0))
    empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=44, page_size=s, dtype=torch.float32)
    cache = ekv.prefill(empty, k, v, [40])
    q = torch.tensor([2.0, 2.0, 0.0, 0.0]).reshape(1, 1, 1, d)
    config = ekv.DecodeConfig(1.5, ekv.Exact(rounds=rounds), backend=backend)
    new, out, info = ekv.decode_step(cache, q, torch.zeros(1, 1, 1, d), torch.ones(1, 1, 1, d), config,
                                     with_info=True)
    dense, _ = ekv.dense_decode(new.to(torch.float64), q.double(), 1.5)
    return bool(info.page_mask[0, 0, 9]), info, (out.double() - dense).abs().max().item()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_exact_without_a_cap_is_certified_at_the_edge_of_its_bound(backend):
    """Page 9 just below the first round's τ bound is excluded by it, but a bound over the final
    set (which holds page 8's huge |score|) is lower by its rounding margin: the page-level
    re-check of that set would report page 9's weight as possibly dropped. The exclusion itself
    is the proof, so the step is certified — with one round (the default) and with two."""
    lo, hi = 8.0, 9.99
    assert not band_step(lo, backend)[0] and band_step(hi, backend)[0]
    for _ in range(30):  # to the last float32 step below where page 9 is attended
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if band_step(mid, backend)[0] else (mid, hi)
    for rounds in (None, 2):
        attended, info, error = band_step(lo, backend, rounds)
        assert bool(info.certified.all()), (rounds, lo, info.dropped_mass_bound)
        assert bool((info.dropped_mass_bound == 0).all()), (rounds, info.dropped_mass_bound)  # the proof's
        assert error <= 1e-6, (rounds, error)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_exact_without_rounds_is_not_certified_when_it_drops_the_support(backend):
    """``rounds=0`` attends its seed pages only, which proves nothing: with the support on two
    pages and one seed page, the step drops weight and must say so; one round finds the
    second page and is certified."""
    d, s = 4, 4
    k = torch.zeros(1, 1, 40, d)
    k[0, 0, 0:4] = torch.tensor([5.0, 5.0, 0.0, 0.0])  # score 20: the seed
    k[0, 0, 20:24] = torch.tensor([4.99, 4.99, 0.0, 0.0])  # score 19.96: in the support too
    v = torch.randn(1, 1, 40, d, generator=torch.Generator().manual_seed(fresh_seed()))
    empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=44, page_size=s, dtype=torch.float32)
    cache = ekv.prefill(empty, k, v, [40])
    q = torch.tensor([2.0, 2.0, 0.0, 0.0]).reshape(1, 1, 1, d)
    certified = {}
    for rounds in (0, 1):
        config = ekv.DecodeConfig(1.5, ekv.Exact(initial_pages=1, rounds=rounds), backend=backend)
        new, out, info = ekv.decode_step(cache, q, torch.zeros(1, 1, 1, d), v[:, :, :1], config, with_info=True)
        certified[rounds] = bool(info.certified.all())
        assert bool(info.page_mask[0, 0, 5]) == (rounds == 1)
    dense, _ = ekv.dense_decode(new.to(torch.float64), q.double(), 1.5)
    assert certified == {0: False, 1: True}
    assert (out.double() - dense).abs().max() <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.0, 1.3, 1.5, 2.0])
def test_safe_tau_is_below_the_exact_tau_of_the_stored_keys(dtype, alpha):
    """τ over low-precision scores can exceed the exact τ by their rounding; the certificate's
    lower bound must not, and must stay within a small margin of it."""
    from entmaxkv.bounds import score_rounding_errors, worst_over
    from entmaxkv.certificate import safe_tau_lower_bound
    from entmaxkv.reference import token_scores
    below, gaps = [], []
    for seed in range(6):
        cache, _, _ = make_cache(seed, 2, 2, 16, PAGE, [61, 38], dtype=dtype, spread=3.0)
        q, _, _ = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 16, dtype=dtype)
        scores = token_scores(cache, q, 0.25, None)  # as the reference computes them
        mask = cache.token_mask()[:, None, :].expand(2, 2, -1)
        rounding = worst_over(score_rounding_errors(cache, q, 0.25, None), mask)
        tau_low = safe_tau_lower_bound(scores, mask, alpha, rounding)  # [B, Hkv, G]
        for b, s in enumerate(naive_scores(cache, q)):  # exact scores of the stored keys
            for h in range(4):
                row = s[h]
                exact = torch.logsumexp(row, 0).item() if alpha == 1.0 else naive_root((alpha - 1) * row, alpha)
                low = tau_low[b, h // 2, h % 2].item()
                below.append(low <= exact)
                gaps.append(exact - low)
    assert all(below), f"{below.count(False)} of {len(below)} lower bounds above the exact τ"
    assert max(gaps) < 1e-2, max(gaps)


def test_dropped_mass_bound_is_clamped_at_one():
    cache, _, _ = make_cache(38, 1, 1, 8, PAGE, [200], spread=0.1)  # flat scores: a vacuous bound
    q, kn, vn = random_step(torch.Generator().manual_seed(39), 1, 1, 1, 8)
    _, _, info = step_with_info(cache, q, kn, vn, 1.5, ekv.TopK(token_budget=8))
    assert info.dropped_mass_bound.item() == 1.0


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


def test_a_selection_without_a_mask_is_every_live_page():
    """``Dense`` answers with no mask (``all_pages``: the kernels attend every page without one);
    ``mask_of`` builds it where it is read. Any other selection must carry its mask."""
    cache = make_cache(0, 2, 2, 16, 16, [40, 17])[0]
    selection = ekv.Dense().select(None)
    assert selection.page_mask is None and selection.all_pages
    mask = selection.mask_of(cache)
    assert mask.shape == (2, 2, cache.num_pages)
    assert mask.sum(-1).tolist() == [[3, 3], [2, 2]]  # ceil(40 / 16), ceil(17 / 16) live pages
    with pytest.raises(ValueError, match="page_mask"):
        ekv.selection.Selection(None)


def test_a_selection_derives_overflow_from_its_candidate_count_where_it_is_read():
    """``Exact`` with key codes hands over its candidate count and capacity, not an overflow
    tensor: ``overflowed`` compares them when the step's info reads it (a step without info
    launches nothing for it); an explicit ``overflow`` wins; neither gives None."""
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    count = torch.tensor([[0, 7, 8], [9, 100, 3]], dtype=torch.int32)
    lazy = ekv.selection.Selection(mask, candidate_count=count, candidate_capacity=8)
    assert lazy.overflow is None
    assert lazy.overflowed().tolist() == [[False, False, False], [True, True, False]]
    given = torch.zeros(2, 3, dtype=torch.bool)
    assert ekv.selection.Selection(mask, overflow=given, candidate_count=count, candidate_capacity=8).overflowed() \
        is given
    assert ekv.selection.Selection(mask).overflowed() is None
