"""decode_step composed with torch.func (vmap, grad, jacrev) and torch.compile, on the
pure-torch reference path (CPU). The Triton ops' register_vmap / autograd rules are tested on
the GPU separately.

Gradient oracles are independent of entmaxkv: per (sequence, query head) the scores of the
attended tokens go through the ``entmax`` library's ``entmax_bisect`` (softmax for α = 1), whose
backward is its own, and plain autograd does the rest.
"""

import dataclasses
import math
import warnings

import entmax as entmax_lib
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.utils import _pytree as pytree

import entmaxkv as ekv
from entmaxkv.compiled import compile_decode_step
from entmaxkv.decode import attend_cache
from helpers import make_cache, random_step

EDGE_LENS = [1, 3, 4, 5, 8, 9]  # with page size 4: one token, page edges, a partial page

SELECTORS = {
    "dense": ekv.Dense(),
    "topk": ekv.TopK(coverage=0.4),
    "gauss-exact": ekv.Gaussian(tau_mode="exact"),
    "gauss-fixed": ekv.Gaussian(tau_mode="fixed"),
    "gauss-corrected": ekv.Gaussian(tau_mode="corrected"),
    "exact": ekv.Exact(max_pages=2),
}


def stack_caches(caches):
    """Stack the tensor leaves of several caches with equal static metadata along a new dim 0."""
    return pytree.tree_map(lambda *xs: torch.stack(xs), *caches)


def oracle_out(q, keys, values, mask, alpha, scale):
    """Attention of one (sequence, KV head) group over the tokens in ``mask``.
    q: [G, D]; keys, values: [L, D]; mask: [L] bool. Independent of entmaxkv."""
    s = (q @ keys[mask].T) * scale
    p = torch.softmax(s, -1) if alpha == 1.0 else entmax_lib.entmax_bisect(s, alpha=alpha, dim=-1, n_iter=100)
    return p @ values[mask]


# ---- vmap ----------------------------------------------------------------------------------------


@given(
    n=st.integers(1, 3),
    lens=st.lists(st.sampled_from(EDGE_LENS) | st.integers(1, 14), min_size=1, max_size=2),
    hkv=st.integers(1, 2),
    group=st.sampled_from([1, 2]),
    alpha=st.sampled_from([1.0, 1.25, 1.5, 2.0]),
    selector=st.sampled_from(sorted(SELECTORS)),
    seed=st.integers(0, 2**31 - 1),
)
def test_vmap_of_decode_step_equals_a_loop(n, lens, hkv, group, alpha, selector, seed):
    assume(alpha > 1.0 or selector in ("dense", "topk"))  # the others need entmax zeros
    b, d, page = len(lens), 4, 4
    config = ekv.DecodeConfig(alpha=alpha, selector=SELECTORS[selector])
    # each cache its own ragged lengths; capacity (static) is shared
    caches = [make_cache(seed + i, b, hkv, d, page, [max(1, (x + 3 * i) % 15) for x in lens], capacity=24)[0]
              for i in range(n)]
    caches = [c.without_host_len() for c in caches]
    batched = stack_caches([c.fork() for c in caches])
    g = torch.Generator().manual_seed(seed)
    step = torch.func.vmap(lambda c, q, k, v: ekv.decode_step(c, q, k, v, config, with_info=True))
    for _ in range(4):  # crosses page edges (page size 4)
        q, kn, vn = (torch.stack(x) for x in zip(*(random_step(g, b, hkv * group, hkv, d) for _ in range(n))))
        batched, out, info = step(batched, q, kn, vn)
        for i in range(n):
            caches[i], expected, expected_info = ekv.decode_step(caches[i], q[i], kn[i], vn[i], config, with_info=True)
            torch.testing.assert_close(out[i], expected, rtol=1e-12, atol=1e-12)
            assert torch.equal(info.page_mask[i], expected_info.page_mask)
            torch.testing.assert_close(info.tau[i], expected_info.tau, rtol=1e-12, atol=1e-12)
            assert torch.equal(batched.seq_lens[i], caches[i].seq_lens)
            for f in ("k_pages", "v_pages", "k_min", "k_max", "k_mean", "k_std"):
                assert torch.equal(getattr(batched, f)[i], getattr(caches[i], f)), f


@pytest.mark.parametrize("selector", sorted(SELECTORS))
def test_vmap_runs_batched_without_the_per_example_fallback(selector):
    caches = [make_cache(i, 2, 2, 4, 4, [9, 4 + i], capacity=16)[0].without_host_len() for i in range(2)]
    q, kn, vn = (torch.stack(x) for x in zip(*(random_step(torch.Generator().manual_seed(i), 2, 4, 2, 4)
                                               for i in range(2))))
    config = ekv.DecodeConfig(alpha=1.5, selector=SELECTORS[selector])
    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.func.vmap(lambda c, q, k, v: ekv.decode_step(c, q, k, v, config))(stack_caches(caches), q, kn, vn)
    finally:
        torch._C._functorch._set_vmap_fallback_warning_enabled(False)
    fallbacks = [str(w.message) for w in caught if "batching rule" in str(w.message)]
    assert not fallbacks, fallbacks


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize("selector,backend", [("dense", "aot_eager"), ("topk", "aot_eager"),
                                              ("exact", "aot_eager"), ("gauss-corrected", "eager")])
def test_compiled_vmap_of_decode_step_equals_eager(selector, backend):
    # Every torch.compile(vmap(...)) compiles the same vmap wrapper code object, whose dynamo
    # cache holds 8 entries (issue 7, item 1): start from an empty one.
    torch._dynamo.reset()
    config = ekv.DecodeConfig(alpha=1.5, selector=SELECTORS[selector])
    caches = [make_cache(10 + i, 2, 1, 4, 4, [7 + 2 * i, 12], capacity=24)[0].without_host_len() for i in range(3)]
    eager = torch.func.vmap(lambda c, q, k, v: ekv.decode_step(c, q, k, v, config))
    compiled = torch.compile(eager, fullgraph=True, backend=backend)
    a, b = stack_caches([c.fork() for c in caches]), stack_caches([c.fork() for c in caches])
    g = torch.Generator().manual_seed(11)
    for _ in range(3):
        q, kn, vn = (torch.stack(x) for x in zip(*(random_step(g, 2, 2, 1, 4) for _ in range(3))))
        a, out_c = compiled(a, q, kn, vn)
        b, out_e = eager(b, q, kn, vn)
        torch.testing.assert_close(out_c, out_e, rtol=1e-12, atol=1e-12)
        assert torch.equal(a.seq_lens, b.seq_lens)


# ---- gradients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 1.25, 1.5, 2.0])
def test_gradcheck_of_attend_cache_wrt_q(alpha):
    # ragged: a sequence of one token (support of one), one ending on a page edge, one partial page
    cache, _, _ = make_cache(30, 3, 2, 4, 4, [1, 8, 11], spread=2.0)
    q, _, _ = random_step(torch.Generator().manual_seed(31), 3, 4, 2, 4)
    config = ekv.DecodeConfig(alpha=alpha)
    f = lambda t: attend_cache(cache, t, config, with_info=False)[0]  # noqa: E731
    q = q.requires_grad_()
    assert torch.autograd.gradcheck(f, q)
    if alpha in (1.25, 1.5):  # tests/test_entmax.py runs full gradgradchecks of entmax itself
        assert torch.autograd.gradgradcheck(f, q, fast_mode=True)


@given(
    lens=st.lists(st.sampled_from(EDGE_LENS) | st.integers(1, 20), min_size=1, max_size=2),
    hkv=st.integers(1, 2),
    group=st.sampled_from([1, 2]),
    alpha=st.sampled_from([1.0, 1.25, 1.5, 2.0]),
    selector=st.sampled_from(["dense", "topk", "gauss-exact", "exact"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_grad_wrt_q_and_cache_kv_matches_an_independent_oracle(lens, hkv, group, alpha, selector, seed):
    """torch.func.grad of ⟨w, out⟩ w.r.t. q, K and V equals plain autograd through the entmax
    library over the selected tokens; tokens of unselected pages get exactly zero gradient.
    (Gaussian fixed/corrected use an estimated τ, not entmax over the selection: not compared.)"""
    if alpha == 1.0 and selector not in ("dense", "topk"):
        return  # these selectors need entmax zeros (α > 1)
    b, hq, d, page = len(lens), hkv * group, 4, 4
    config = ekv.DecodeConfig(alpha=alpha, selector=SELECTORS[selector])
    cache, _, _ = make_cache(seed, b, hkv, d, page, lens, spread=2.0)
    g = torch.Generator().manual_seed(seed + 1)
    q, _, _ = random_step(g, b, hq, hkv, d)
    w = torch.randn(b, hq, 1, d, generator=g, dtype=torch.float64)

    def loss(q, k_pages, v_pages):
        c = dataclasses.replace(cache, k_pages=k_pages, v_pages=v_pages)
        return (attend_cache(c, q, config, with_info=False)[0] * w).sum()

    gq, gk, gv = torch.func.grad(loss, argnums=(0, 1, 2))(q, cache.k_pages, cache.v_pages)
    _, info = attend_cache(cache, q, config)
    tokens = cache.tokens_of(info.page_mask)  # [B, Hkv, P*S]: what the step attended
    gk, gv = gk.flatten(2, 3), gv.flatten(2, 3)
    assert (gk[~tokens] == 0).all() and (gv[~tokens] == 0).all()  # exactly zero, not small

    scale = 1 / math.sqrt(d)
    for i in range(b):
        for h in range(hkv):
            qi = q[i, h * group:(h + 1) * group, 0].clone().requires_grad_()
            k = cache.keys()[i, h].clone().requires_grad_()
            v = cache.values()[i, h].clone().requires_grad_()
            out = oracle_out(qi, k, v, tokens[i, h], alpha, scale)
            eq, ek, ev = torch.autograd.grad((out * w[i, h * group:(h + 1) * group, 0]).sum(), (qi, k, v))
            torch.testing.assert_close(gq[i, h * group:(h + 1) * group, 0], eq, rtol=1e-7, atol=1e-9)
            torch.testing.assert_close(gk[i, h], ek, rtol=1e-7, atol=1e-9)
            torch.testing.assert_close(gv[i, h], ev, rtol=1e-7, atol=1e-9)


def test_unselected_pages_get_exactly_zero_gradient_through_decode_step():
    """TopK at low coverage leaves most pages out; grad w.r.t. the cache storage (cloned inside
    the function: decode_step's append writes into it in place) is zero there, nonzero on the
    attended pages, and the new token's key and value get gradient too."""
    cache, _, _ = make_cache(40, 2, 2, 4, 4, [29, 21], capacity=40)
    q, kn, vn = random_step(torch.Generator().manual_seed(41), 2, 4, 2, 4)
    config = ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(coverage=0.25, sink_pages=0))

    def loss(k_pages, v_pages, k_new, v_new):
        c = dataclasses.replace(cache.fork(), k_pages=k_pages.clone(), v_pages=v_pages.clone())
        return ekv.decode_step(c, q, k_new, v_new, config)[1].square().sum()

    gk, gv, gkn, gvn = torch.func.grad(loss, argnums=(0, 1, 2, 3))(cache.k_pages, cache.v_pages, kn, vn)
    _, _, info = ekv.decode_step(cache.fork(), q, kn, vn, config, with_info=True)
    selected = info.page_mask  # [B, Hkv, P]
    assert (~selected & cache.live_page_mask()[:, None, :]).any()  # some live page was left out
    assert (gk[~selected] == 0).all() and (gv[~selected] == 0).all()
    assert gv[selected].abs().sum() > 0 and gk[selected].abs().sum() > 0
    assert gvn.abs().sum() > 0 and gkn.abs().sum() > 0  # (zero where the new token is outside the support)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 1.25])
def test_jacrev_wrt_q_equals_the_oracle_jacobian(alpha):
    cache, keys, values = make_cache(50, 2, 1, 4, 4, [6, 9], spread=2.0)
    q, _, _ = random_step(torch.Generator().manual_seed(51), 2, 2, 1, 4)
    config = ekv.DecodeConfig(alpha=alpha)
    jac = torch.func.jacrev(lambda t: attend_cache(cache, t, config, with_info=False)[0])(q)  # [B,Hq,1,D,B,Hq,1,D]
    for i in range(2):
        mask = torch.ones(keys[i].shape[1], dtype=torch.bool)
        f = lambda t: oracle_out(t, keys[i][0], values[i][0], mask, alpha, 0.5)  # noqa: E731,B023
        expected = torch.autograd.functional.jacobian(f, q[i, :, 0])  # [Hq, D, Hq, D]
        torch.testing.assert_close(jac[i, :, 0, :, i, :, 0, :], expected, rtol=1e-7, atol=1e-9)
        other = 1 - i
        assert (jac[i, :, 0, :, other] == 0).all()  # sequences do not interact


def test_vmap_of_grad_gives_per_cache_gradients():
    caches = [make_cache(60 + i, 1, 1, 4, 4, [5 + 3 * i], capacity=12)[0].without_host_len() for i in range(3)]
    q = torch.randn(3, 1, 2, 1, 4, dtype=torch.float64)
    config = ekv.DecodeConfig(alpha=1.5)
    per_cache = torch.func.vmap(torch.func.grad(lambda c, t: attend_cache(c, t, config, with_info=False)[0].sum(),
                                                argnums=1))(stack_caches(caches), q)
    for i in range(3):
        one = lambda t: attend_cache(caches[i], t, config, with_info=False)[0].sum()  # noqa: E731,B023
        expected = torch.func.grad(one)(q[i])
        torch.testing.assert_close(per_cache[i], expected, rtol=1e-12, atol=1e-12)


def test_compiled_grad_of_the_reference_path_equals_eager():
    """On the pure-torch path torch.compile(grad(...)) works; with custom ops (the Triton path)
    torch 2.13 cannot compile it (README, "Composing with torch.func")."""
    cache, _, _ = make_cache(70, 2, 1, 4, 4, [6, 9])
    q, _, _ = random_step(torch.Generator().manual_seed(71), 2, 2, 1, 4)
    config = ekv.DecodeConfig(alpha=1.25)
    f = lambda t: attend_cache(cache, t, config, with_info=False)[0].sum()  # noqa: E731
    compiled = torch.compile(torch.func.grad(f), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q), torch.func.grad(f)(q), rtol=1e-12, atol=1e-12)


# ---- recompiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", ["topk"])  # ~1 min on a shared CI core: one selector
def test_compiled_step_does_not_recompile_over_500_steps(selector):
    """Lengths grow across 125 page boundaries (page size 4); static shapes and device-side
    lengths mean one graph serves every step. Counted with dynamo's global counters, whatever
    dynamo cache compile_decode_step uses."""
    from torch._dynamo.utils import counters

    cache, _, _ = make_cache(80, 2, 1, 4, 4, [3, 10], capacity=520)
    cache = cache.without_host_len()
    step = compile_decode_step(ekv.DecodeConfig(alpha=1.5, selector=SELECTORS[selector]), backend="eager")
    g = torch.Generator().manual_seed(81)
    inputs = [random_step(g, 2, 2, 1, 4) for _ in range(500)]
    graphs_at_start = counters["stats"]["unique_graphs"]
    for q, kn, vn in inputs[:2]:  # warm-up: the first call compiles
        cache, _ = step(cache, q, kn, vn)
    before = (counters["stats"]["unique_graphs"], sum(counters["recompiles"].values()))
    assert before[0] > graphs_at_start  # the counter sees compiles (else "flat" would prove nothing)
    for q, kn, vn in inputs[2:]:
        cache, out = step(cache, q, kn, vn)
    after = (counters["stats"]["unique_graphs"], sum(counters["recompiles"].values()))
    assert after == before, (before, after)
    assert cache.seq_lens.tolist() == [503, 510]
    assert torch.isfinite(out).all()


def test_readme_torch_func_example_runs(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"## Composing with torch.func\n.*?```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "README-torch-func", "exec"), {})
    assert capsys.readouterr().out.strip() == "torch.Size([3, 2, 4, 1, 16]) True"


# ---- GPU (run by the lead on the H200; skipped without CUDA) -----------------------------------

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_cuda
@pytest.mark.parametrize("selector", sorted(SELECTORS))
def test_cuda_vmap_and_grad_match_the_cpu(selector):
    config = ekv.DecodeConfig(alpha=1.5, selector=SELECTORS[selector])
    caches = [make_cache(90 + i, 2, 2, 16, 4, [37, 20 + i], capacity=48)[0].without_host_len() for i in range(3)]
    g = torch.Generator().manual_seed(91)
    q, kn, vn = (torch.stack(x) for x in zip(*(random_step(g, 2, 4, 2, 16) for _ in range(3))))
    step = torch.func.vmap(lambda c, q, k, v: ekv.decode_step(c, q, k, v, config))
    _, out_cpu = step(stack_caches([c.fork() for c in caches]), q, kn, vn)
    _, out_gpu = step(stack_caches([c.to(device="cuda") for c in caches]), q.cuda(), kn.cuda(), vn.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-10, atol=1e-10)

    def loss(c, t):
        return attend_cache(c, t, config, with_info=False)[0].square().sum()

    grad_cpu = torch.func.grad(loss, argnums=1)(caches[0], q[0])
    grad_gpu = torch.func.grad(loss, argnums=1)(caches[0].to(device="cuda"), q[0].cuda())
    torch.testing.assert_close(grad_gpu.cpu(), grad_cpu, rtol=1e-9, atol=1e-9)


@requires_cuda
@pytest.mark.parametrize("selector", ["dense", "topk"])
def test_cuda_graph_replay_soak_is_bit_identical_to_eager(selector):
    """10,000 replays at 4K (625 page boundaries, page size 16) of the eager step captured as a
    graph, bit-identical to eager steps, with set_sync_debug_mode("error") silent."""
    from entmaxkv.compiled import GraphedDecodeStep

    steps, t, b, hkv, group, d = 10_000, 4096, 2, 2, 4, 64
    g = torch.Generator(device="cuda").manual_seed(100)
    k = torch.randn(b, hkv, t, d, generator=g, device="cuda", dtype=torch.float16)
    v = torch.randn(b, hkv, t, d, generator=g, device="cuda", dtype=torch.float16)
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=t + steps + 16,
                                   dtype=torch.float16, device="cuda")
    cache = ekv.prefill(cache, k, v, [t, t - 1001])
    config = ekv.DecodeConfig(alpha=1.5, selector=SELECTORS[selector])
    decoder = GraphedDecodeStep(cache.fork(), config, num_q_heads=hkv * group, compile=False)
    eager = cache.fork()
    mismatches = torch.zeros((), dtype=torch.int64, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            q = torch.randn(b, hkv * group, 1, d, generator=g, device="cuda", dtype=torch.float16)
            kn = torch.randn(b, hkv, 1, d, generator=g, device="cuda", dtype=torch.float16)
            vn = torch.randn(b, hkv, 1, d, generator=g, device="cuda", dtype=torch.float16)
            out = decoder(q, kn, vn)
            eager, expected = ekv.decode_step(eager, q, kn, vn, config)
            mismatches += (out != expected).sum()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(mismatches) == 0
    assert torch.equal(decoder.cache.seq_lens, eager.seq_lens)
    assert decoder.cache.seq_lens.tolist() == [t + steps, t - 1001 + steps]
