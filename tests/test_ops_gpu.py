"""The Triton ops on the GPU (the real compiler): the decode step through the ops against the
reference on the same device, CUDA-graph replay, no host sync. Skipped without CUDA."""

import warnings

import pytest
import torch

import entmaxkv as ekv
import entmaxkv.backend as backend
from entmaxkv.compiled import GraphedDecodeStep
from entmaxkv.synthetic import SyntheticStream

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 1e-4}
SELECTORS = [ekv.Dense(), ekv.TopK(coverage=0.125), ekv.TopK(token_budget=256, recent_pages=2), ekv.Gaussian(),
             ekv.Gaussian(tau_mode="corrected"), ekv.Exact(), ekv.Exact(max_pages=8)]


def prefilled(dtype, b, hq, hkv, n, seed, d=128, slack=64):
    stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, seed=seed, dtype=dtype, device="cuda")
    k, v = stream.prompt(n)
    lens = [n - (i * 37) % (n // 2) for i in range(b)]  # ragged, crossing page edges
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=n + slack, dtype=dtype, device="cuda")
    return stream, ekv.prefill(cache, k, v, lens)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("alpha", [1.0, 1.25, 1.5, 2.0])
@pytest.mark.parametrize("b,hq,hkv,n", [(1, 32, 8, 4113), (8, 8, 8, 1000), (2, 16, 2, 2047)])
def test_ops_match_the_reference_on_the_same_pages(dtype, alpha, b, hq, hkv, n):
    stream, cache = prefilled(dtype, b, hq, hkv, n, seed=n + int(alpha * 4))
    q, k, v = stream.step()
    for sel in SELECTORS:
        if alpha == 1.0 and isinstance(sel, (ekv.Gaussian, ekv.Exact)):
            continue
        config = ekv.DecodeConfig(alpha, sel)
        new, out, info = ekv.decode_step(cache.fork(), q, k, v, config, with_info=True)
        assert torch.isfinite(out).all()
        _, ref, ref_info = ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(alpha, sel, backend="torch"),
                                           with_info=True)
        agree = float((info.page_mask == ref_info.page_mask).double().mean())
        assert agree > 0.99, (sel, agree)
        if isinstance(sel, ekv.Gaussian) and sel.tau_mode != "exact":
            continue  # τ̂ depends on the selection; compared where masks agree below
        # the attention itself: the reference over exactly the pages the ops chose
        lists = torch.where(info.page_mask, torch.arange(new.num_pages, device="cuda"), -1)
        want, tau = ekv.paged_decode(new, q, lists, alpha, None)
        assert rel(out, want) < TOL[dtype], (sel, rel(out, want))
        assert torch.allclose(info.tau, tau, rtol=1e-3, atol=1e-3)
        if isinstance(sel, ekv.Exact) and sel.max_pages is None:
            assert bool(info.certified.all())


@pytest.mark.parametrize("many_rows", [False, True], ids=["shape", "many-rows shape"])
@pytest.mark.parametrize("sel", [ekv.Dense(), ekv.TopK(coverage=0.125)], ids=["Dense", "TopK"])
def test_the_scoring_exchange_forms_agree_under_concurrent_programs(sel, many_rows, monkeypatch):
    """``sparse_decode``'s exchange of running maxima between its scoring programs in five
    forms (every iteration or at iterations 1, 2, 4, …: ``SPARSE_EXCHANGE``, and 0 for every
    program or only past the first wave: ``EXCHANGE_AT_START``; float atomics or integer keys:
    ``KEYED_MAX``), where programs really run at once (the interpreter runs one
    at a time): the same output within fp16 rounding and τ within float64 rounding of the
    survivors' order, each equal to the reference over the pages the step attended.
    ``many_rows``: every launch in the many-rows shape (``scoring_shape``: more, smaller
    programs; a larger first wave)."""
    import entmaxkv.kernels.sparse_decode as sd

    if many_rows:  # every launch, the dense pass's too
        monkeypatch.setattr(sd, "scoring_shape", lambda rows, capacity, num_pages: (
            sd.PROGRAMS_PER_SM_MANY_ROWS, sd.SCORES_WARPS_MANY_ROWS, sd.SCORES_STAGES_MANY_ROWS))
    for seed in range(3):
        stream, cache = prefilled(torch.float16, 2, 32, 8, 20_000, seed=seed)
        q, k, v = stream.step()
        config = ekv.DecodeConfig(1.5, sel)
        got = {}
        for sparse, keyed, start in ((False, False, False), (False, True, False), (True, False, False),
                                     (True, True, False), (True, True, True)):
            monkeypatch.setattr(sd, "SPARSE_EXCHANGE", sparse)
            monkeypatch.setattr(sd, "KEYED_MAX", keyed)
            monkeypatch.setattr(sd, "EXCHANGE_AT_START", start)
            new, out, info = ekv.decode_step(cache.fork(), q, k, v, config, with_info=True)
            lists = torch.where(info.page_mask, torch.arange(new.num_pages, device="cuda"), -1)
            want, tau = ekv.paged_decode(new, q, lists, 1.5, None)
            assert rel(out, want) < TOL[torch.float16], (seed, sparse, keyed, start, rel(out, want))
            got[sparse, keyed, start] = out, info.tau
        base_out, base_tau = got[False, False, False]
        for form, (out, tau) in got.items():
            assert rel(out, base_out) < 1e-3, (seed, form, rel(out, base_out))
            torch.testing.assert_close(tau, base_tau, rtol=1e-9, atol=1e-9, msg=f"seed {seed} {form}")


@pytest.mark.parametrize("b,hq,hkv,n", [(1, 32, 8, 131072), (4, 32, 8, 65536), (1, 32, 32, 65536)])
def test_long_context_topk_and_dense(b, hq, hkv, n):
    """Long lists; 32 rows (B = 4 with 32/8 heads, B = 1 with 32/32) take ``sparse_decode``'s
    many-rows shape for TopK's 512-page lists."""
    stream, cache = prefilled(torch.float16, b, hq, hkv, n, seed=5)
    q, k, v = stream.step()
    for sel in (ekv.Dense(), ekv.TopK(coverage=0.125)):
        _, out = ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, sel))
        _, ref = ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, sel, backend="torch"))
        assert rel(out, ref) < 3e-3


def test_the_reference_token_scoring_is_not_called_on_cuda(monkeypatch):
    stream, cache = prefilled(torch.float16, 1, 8, 2, 1000, seed=1)
    q, k, v = stream.step()

    def boom(*args, **kwargs):
        raise AssertionError("reference token scoring called on the CUDA path")

    monkeypatch.setattr(backend, "token_scores", boom)
    for sel in SELECTORS:
        ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, sel), with_info=True)


@pytest.mark.parametrize("sel", SELECTORS, ids=lambda s: type(s).__name__)
def test_no_host_sync_in_a_kernel_step(sel):
    stream, cache = prefilled(torch.float16, 2, 8, 2, 3000, seed=2)
    q, k, v = stream.step()
    config = ekv.DecodeConfig(1.5, sel)
    ekv.decode_step(cache.fork(), q, k, v, config, with_info=True)  # warm-up: Triton compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ekv.decode_step(cache.fork(), q, k, v, config, with_info=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("compile", [False, True])
def test_graph_replay_equals_eager(compile):
    stream, cache = prefilled(torch.float16, 2, 8, 2, 2000, seed=3, slack=128)
    config = ekv.DecodeConfig(1.5, ekv.TopK(coverage=0.125))
    decoder = GraphedDecodeStep(cache.fork(), config, num_q_heads=8, compile=compile)
    eager = cache.fork()
    for _ in range(40):  # crosses page boundaries
        q, k, v = stream.step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = decoder(q, k, v).clone()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        eager, want = ekv.decode_step(eager, q, k, v, config)
        assert torch.equal(got, want) if not compile else rel(got, want) < 1e-3
    assert torch.equal(decoder.cache.seq_lens, eager.seq_lens)


VMAP_SELECTORS = [ekv.Dense(), ekv.TopK(coverage=0.25), ekv.Gaussian(), ekv.Gaussian(tau_mode="corrected"), ekv.Exact()]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("sel", VMAP_SELECTORS, ids=lambda s: f"{type(s).__name__}-{getattr(s, 'tau_mode', '')}")
def test_vmap_through_the_ops_is_batched_and_equals_a_loop(sel, dtype):
    """vmap of decode_step over a leading batch of CUDA caches runs the Triton ops' batch rules:
    with vmap's fallback warning on, none is raised, and with the fallback off (a missing rule
    raises) it still runs. Equal to a Python loop over the caches, over steps crossing a page
    edge (ragged lengths, page size 16). The batched launches use more split programs than the
    per-cache ones, so outputs agree to float rounding, not bitwise."""
    n, b, hq, hkv, d = 3, 2, 8, 2, 64
    config = ekv.DecodeConfig(1.5, sel)
    streams, caches = zip(*(prefilled(dtype, b, hq, hkv, 500, seed=40 + i, d=d) for i in range(n)))
    caches = [c.without_host_len() for c in caches]  # lengths 500 and 463: both cross page edges below
    assert backend.uses_kernels(caches[0].device, caches[0].dtype, config.backend)
    batched = torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *[c.fork() for c in caches])
    step = torch.func.vmap(lambda c, q, k, v: ekv.decode_step(c, q, k, v, config, with_info=True))
    for s in range(20):
        q, k, v = (torch.stack(x) for x in zip(*(st.step() for st in streams)))
        torch._C._functorch._set_vmap_fallback_warning_enabled(True)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if s % 2:
                    torch._C._functorch._set_vmap_fallback_enabled(False)  # a missing rule raises
                try:
                    batched, out, info = step(batched, q, k, v)
                finally:
                    torch._C._functorch._set_vmap_fallback_enabled(True)
        finally:
            torch._C._functorch._set_vmap_fallback_warning_enabled(False)
        fallbacks = [str(w.message) for w in caught if "batching rule" in str(w.message)]
        assert not fallbacks, fallbacks
        for i in range(n):
            caches[i], want, want_info = ekv.decode_step(caches[i], q[i], k[i], v[i], config, with_info=True)
            assert rel(out[i], want) < TOL[dtype], (s, i, rel(out[i], want))
            assert torch.equal(batched.seq_lens[i], caches[i].seq_lens)
            if not isinstance(sel, ekv.Exact):  # Exact's rounds use τ from the attention (rounding-level)
                assert torch.equal(info.page_mask[i], want_info.page_mask), (s, i)
            else:
                assert bool(info.certified[i].all()) and bool(want_info.certified.all())
    for f in ("k_pages", "v_pages", "k_min", "k_max", "k_mean", "k_std"):
        assert torch.equal(getattr(batched, f), torch.stack([getattr(c, f) for c in caches])), f


def test_no_new_triton_specialisations_after_warm_up():
    """After warm-up, 2,000 CUDA-graph replays and 300 eager steps per selector (lengths crossing
    125 and 19 page edges, ragged rows) add no entry to any kernel's Triton compile cache: no
    argument that changes from step to step reaches a kernel as a specialisation key."""
    from entmaxkv.compiled.kernel_cache import kernel_cache_sizes

    replays, eager_steps, n = 2000, 300, 1000
    selectors = [ekv.Dense(), ekv.TopK(coverage=0.125), ekv.Gaussian(tau_mode="corrected"), ekv.Exact(max_pages=8)]
    stream, cache = prefilled(torch.float16, 2, 8, 2, n, seed=60, d=64, slack=replays + eager_steps + 64)
    decoders, eager = [], []
    for sel in selectors:  # warm-up: every kernel variant the run needs is compiled here
        config = ekv.DecodeConfig(1.5, sel)
        decoders.append(GraphedDecodeStep(cache.fork(), config, num_q_heads=8, compile=False))
        c = cache.fork()
        for _ in range(2):
            c, _ = ekv.decode_step(c, *stream.step(), config)
        eager.append((c, config))
    torch.cuda.synchronize()
    warm = kernel_cache_sizes()
    assert all(isinstance(v, int) for v in warm.values()), warm  # real JIT functions, not the interpreter
    assert sum(warm.values()) > 0, warm  # the count sees compiles (else "flat" would prove nothing)
    for _ in range(replays):
        q, k, v = stream.step()
        for decoder in decoders:
            decoder(q, k, v)
    for i, (c, config) in enumerate(eager):
        for _ in range(eager_steps):
            c, out = ekv.decode_step(c, *stream.step(), config)
        eager[i] = (c, config)
        assert torch.isfinite(out).all()
    torch.cuda.synchronize()
    assert kernel_cache_sizes() == warm
    lens = cache.seq_lens
    for decoder, (c, _) in zip(decoders, eager):
        assert torch.equal(decoder.cache.seq_lens, lens + replays)
        assert torch.equal(c.seq_lens, lens + 2 + eager_steps)


@pytest.mark.parametrize("needles", [True, False], ids=["few pages kept", "every page kept"])
def test_gaussian_tau_spread_form_at_its_shipped_constants_on_cuda(needles, monkeypatch):
    """The spread form as a B = 1 128K step launches it (32 rows of 8,196 pages: the shipped
    ``SPREAD_MIN_PAGES``, ``SPREAD_P``, ``SPREAD_CHUNKS`` and ``GATHER_TILE``, no patching but the
    choice of form) against the float64 reference and, bit for bit, the one kernel (from an
    independent review: every other test of the form patches its constants)."""
    from entmaxkv.gaussian import solve_gaussian_tau
    from entmaxkv.kernels import gaussian_tau as module

    g = torch.Generator(device="cuda").manual_seed(50)
    b, hkv, grp, p = 1, 8, 4, 8196
    assert module.spreads(b * hkv * grp, p, torch.device("cuda")), "the launch this test is about"
    mu = torch.randn(b, hkv, grp, p, device="cuda", generator=g) * 0.1
    sigma = 0.3 + 0.05 * torch.rand(b, hkv, grp, p, device="cuda", generator=g)
    if needles:
        mu[..., ::997] += 8.0
    candidates = torch.rand(b, p, device="cuda", generator=g) < 0.95
    exact = torch.randn(b, hkv, grp, 16, device="cuda", generator=g) * 0.3
    count = torch.where(candidates[:, None, None, :], 16.0, 0.0).double().expand(mu.shape)
    want = solve_gaussian_tau(mu, sigma, count, exact, 1.5, iters=50)
    spread = torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, 1.5, 50, 30)
    torch.testing.assert_close(spread, want, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(module, "SPREAD", False)
    assert torch.equal(spread, torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, 1.5, 50, 30))


@pytest.mark.parametrize("presolve", [True, False], ids=["pre-solve", "no pre-solve"])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25])
@pytest.mark.parametrize("needles", [True, False], ids=["few pages kept", "every page kept"])
def test_gaussian_tau_forms_equal_the_reference_on_cuda(alpha, needles, presolve, monkeypatch):
    """gaussian_tau's one-kernel, split and spread forms (``gaussian_tau.splits``, ``spreads``)
    as the GPU compiles them, at rows that fill the SMs (B·Hq = 512), against the float64
    reference solver: where a row keeps a few pages (the solve's short blocks, where the float32
    pre-solve runs: its erfc, exp and log as the GPU computes them) and where it keeps every
    page (``SPLIT_SOLVE_P``-page blocks); with and without ``PRESOLVE``."""
    from entmaxkv.gaussian import solve_gaussian_tau
    from entmaxkv.kernels import gaussian_tau as module

    monkeypatch.setattr(module, "PRESOLVE", presolve)

    g = torch.Generator(device="cuda").manual_seed(46)
    b, hkv, grp, p = 16, 8, 4, 700
    mu = torch.randn(b, hkv, grp, p, device="cuda", generator=g) * 0.1
    sigma = 0.3 + 0.05 * torch.rand(b, hkv, grp, p, device="cuda", generator=g)
    if needles:  # a few high pages a row, as needle_inputs' (the rest cut as negligible)
        mu[..., ::97] += 8.0
    candidates = torch.rand(b, p, device="cuda", generator=g) < 0.9
    exact = torch.randn(b, hkv, grp, 16, device="cuda", generator=g) * 0.3
    count = torch.where(candidates[:, None, None, :], 16.0, 0.0).double().expand(mu.shape)
    want = solve_gaussian_tau(mu, sigma, count, exact, alpha, iters=50)
    got = {}
    for form in ("one", "split", "spread"):
        monkeypatch.setattr(module, "splits", lambda rows, device: form == "split")
        monkeypatch.setattr(module, "SPREAD", form == "spread")
        monkeypatch.setattr(module, "SPREAD_P", 128)  # 700 pages: 6 chunks, the last one partial
        monkeypatch.setattr(module, "SPREAD_MIN_PAGES", 0)  # the spread form at any length
        got[form] = torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, alpha, 50, 30)
        torch.testing.assert_close(got[form], want, rtol=1e-12, atol=1e-12, msg=form)
    assert torch.equal(got["spread"], got["one"]), "the spread form solves the one kernel's kept pages in its order"
