import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import entmaxkv as ekv
from entmaxkv.compiled import compile_decode_step
from helpers import make_cache, random_step
from naive import naive_decode

EDGE_LENS = [0, 1, 15, 16, 17]


@given(
    lens=st.lists(st.sampled_from(EDGE_LENS) | st.integers(0, 40), min_size=1, max_size=3),
    hkv=st.integers(1, 2),
    group=st.sampled_from([1, 2, 3]),
    d=st.sampled_from([4, 8, 16]),
    page_size=st.sampled_from([1, 4, 16]),
    alpha=st.sampled_from([1.0, 1.5, 2.0, 1.25]),
    alibi=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_dense_decode_step_matches_naive_float64(lens, hkv, group, d, page_size, alpha, alibi, seed):
    b, hq = len(lens), hkv * group
    cache, keys, values = make_cache(seed, b, hkv, d, page_size, lens, spread=2.0)
    g = torch.Generator().manual_seed(seed + 1)
    slopes = torch.rand(hq, generator=g, dtype=torch.float64) * 0.3 if alibi else None
    for _ in range(3):
        q, kn, vn = random_step(g, b, hq, hkv, d)
        cache, out, info = ekv.decode_step(cache, q, kn, vn, ekv.DecodeConfig(alpha=alpha),
                                           alibi_slopes=slopes, with_info=True)
        for i in range(b):
            keys[i] = torch.cat([keys[i], kn[i]], dim=1)
            values[i] = torch.cat([values[i], vn[i]], dim=1)
            expected = naive_decode(keys[i], values[i], q[i, :, 0], alpha, slopes=slopes)
            torch.testing.assert_close(out[i, :, 0], expected, rtol=1e-9, atol=1e-9)
        assert info.num_tokens[:, 0].tolist() == [k.shape[1] for k in keys]
        assert info.certified.all() and (info.dropped_mass_bound == 0).all()


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_low_precision_decode_is_close_to_float64(dtype, atol):
    cache, keys, values = make_cache(21, 2, 2, 16, 4, [17, 30], dtype=dtype)
    q, kn, vn = random_step(torch.Generator().manual_seed(22), 2, 4, 2, 16, dtype=dtype)
    cache, out = ekv.decode_step(cache, q, kn, vn)
    assert out.dtype == dtype
    for i in range(2):
        k = torch.cat([keys[i], kn[i].double()], 1)
        v = torch.cat([values[i], vn[i].double()], 1)
        expected = naive_decode(k, v, q[i, :, 0].double(), 1.5)
        torch.testing.assert_close(out[i, :, 0].double(), expected, rtol=0, atol=atol)


def test_paged_decode_attends_exactly_the_listed_pages():
    cache, keys, values = make_cache(23, 2, 2, 8, 4, [21, 13])
    q, _, _ = random_step(torch.Generator().manual_seed(24), 2, 4, 2, 8)
    pages = torch.tensor([[[0, 2, 5, -1], [1, 1, -1, -1]], [[3, 0, -1, -1], [2, -1, -1, -1]]])
    out, tau = ekv.paged_decode(cache, q, pages, alpha=1.5)
    for b in range(2):
        for h in range(4):
            kv = h // 2
            idx = sorted({int(p) for p in pages[b, kv] if p >= 0})
            tok = [t for p in idx for t in range(p * 4, p * 4 + 4) if t < keys[b].shape[1]]
            expected = naive_decode(keys[b][kv:kv + 1, tok], values[b][kv:kv + 1, tok], q[b, h:h + 1, 0], 1.5)
            torch.testing.assert_close(out[b, h, 0], expected[0], rtol=1e-9, atol=1e-9)
    assert tau.shape == (2, 4) and tau.dtype == torch.float64


def test_nan_in_one_sequence_does_not_leak_into_others():
    cache, _, _ = make_cache(25, 3, 1, 8, 4, [10, 10, 10])
    q, kn, vn = random_step(torch.Generator().manual_seed(26), 3, 2, 1, 8)
    clean = ekv.decode_step(cache.fork(), q, kn, vn)[1]
    for poisoned in (q, kn, vn):
        poisoned[1] = float("nan")
        out = ekv.decode_step(cache.fork(), q, kn, vn)[1]
        poisoned[1] = 0.0
        assert torch.isnan(out[1]).any()
        torch.testing.assert_close(out[[0, 2]], clean[[0, 2]], rtol=0, atol=0)


@pytest.mark.parametrize("selector", [ekv.Dense(), ekv.TopK(token_budget=8), ekv.TopK(coverage=0.5),
                                      ekv.Gaussian(tau_mode="corrected"), ekv.Exact(max_pages=3)], ids=repr)
def test_compiled_step_equals_eager(selector):
    """fullgraph=True fails on any host sync or data-dependent Python branch in the step."""
    cache, _, _ = make_cache(27, 2, 2, 8, 4, [9, 14], dtype=torch.float32)
    config = ekv.DecodeConfig(alpha=1.5, selector=selector)
    step = compile_decode_step(config, backend="aot_eager")
    eager, compiled = cache.fork(), cache.fork().without_host_len()
    g = torch.Generator().manual_seed(28)
    for _ in range(6):
        q, kn, vn = random_step(g, 2, 4, 2, 8, dtype=torch.float32)
        eager, out_e, info_e = ekv.decode_step(eager, q, kn, vn, config, with_info=True)
        compiled, out_c, info_c = step(compiled, q, kn, vn, with_info=True)
        torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(info_c.tau, info_e.tau, rtol=1e-6, atol=1e-6)
        assert torch.equal(info_c.page_mask, info_e.page_mask)
    assert compiled.seq_lens.tolist() == eager.seq_lens.tolist()


# ---- bad input ------------------------------------------------------------------------------

@pytest.fixture
def small():
    cache, _, _ = make_cache(29, 2, 2, 8, 4, [5, 6], dtype=torch.float32)
    q, kn, vn = random_step(torch.Generator().manual_seed(30), 2, 4, 2, 8, dtype=torch.float32)
    return cache, q, kn, vn


@pytest.mark.parametrize("what,make,error,match", [
    ("q rank", lambda q, k, v: (q[:, :, 0], k, v), ValueError, r"q must have shape \[B, H_q, 1, D\]"),
    ("q heads", lambda q, k, v: (q[:, :3], k, v), ValueError, "multiple of the cache's H_kv = 2"),
    ("q dim", lambda q, k, v: (q[..., :4], k, v), ValueError, r"\[2, H_q, 1, 8\], got \(2, 4, 1, 4\)"),
    ("k_new shape", lambda q, k, v: (q, k[:, :1], v), ValueError, r"k_new must have shape"),
    ("v_new len", lambda q, k, v: (q, k, torch.cat([v, v], 2)), ValueError, r"v_new must have shape"),
    ("q dtype", lambda q, k, v: (q.double(), k, v), TypeError, "q must have the cache dtype"),
    ("k_new type", lambda q, k, v: (q, k.numpy(), v), TypeError, "k_new must be a torch.Tensor"),
])
def test_bad_decode_inputs_raise(small, what, make, error, match):
    cache, q, kn, vn = small
    with pytest.raises(error, match=match):
        ekv.decode_step(cache, *make(q, kn, vn))


@pytest.mark.parametrize("alpha,error", [(0.9, ValueError), (2.1, ValueError), ("1.5", TypeError)])
def test_bad_alpha_raises(small, alpha, error):
    cache, q, kn, vn = small
    with pytest.raises(error, match="alpha"):
        ekv.decode_step(cache, q, kn, vn, ekv.DecodeConfig(alpha=alpha))


def test_inputs_on_another_device_raise(small):
    cache, q, kn, vn = small
    with pytest.raises(ValueError, match="q must be on the cache device cpu, got meta"):
        ekv.decode_step(cache, q.to("meta"), kn, vn)
    with pytest.raises(ValueError, match="k_new must be on the cache device cpu, got meta"):
        ekv.decode_step(cache, q, kn.to("meta"), vn)


def test_bad_alibi_slopes_raise(small):
    cache, q, kn, vn = small
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \[H_q\] = \(4,\)"):
        ekv.decode_step(cache, q, kn, vn, alibi_slopes=torch.ones(2))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(page_size=12), ValueError, "power of two"),
    (dict(page_size=0), ValueError, "page_size must be >= 1"),
    (dict(capacity=0), ValueError, "capacity must be >= 1"),
    (dict(head_dim=8.0), TypeError, "head_dim must be an int"),
    (dict(dtype=torch.int32), TypeError, "dtype must be one of"),
])
def test_bad_cache_arguments_raise(kwargs, error, match):
    args = dict(batch=1, num_kv_heads=1, head_dim=8, capacity=16, page_size=4, dtype=torch.float32) | kwargs
    with pytest.raises(error, match=match):
        ekv.PagedKVCache.empty(**args)


def test_bad_prefill_inputs_raise():
    def empty(capacity=16):
        return ekv.PagedKVCache.empty(batch=2, num_kv_heads=1, head_dim=4, capacity=capacity, page_size=4,
                                      dtype=torch.float32)
    k = torch.randn(2, 1, 10, 4)
    with pytest.raises(ValueError, match=r"seq_lens must be in \[0, T \(the padded length of k\) = 10\]"):
        ekv.prefill(empty(), k, k, [11, 3])
    with pytest.raises(ValueError, match=r"seq_lens must be in \[0, capacity = 8\]"):
        ekv.prefill(empty(8), k, k, [9, 3])
    with pytest.raises(ValueError, match=r"seq_lens must have shape \[B\]"):
        ekv.prefill(empty(), k, k, [3])
    with pytest.raises(ValueError, match=r"v must have shape \[B, H_kv, T, D\]"):
        ekv.prefill(empty(), k, k[:, :, :5], [3, 3])
    with pytest.raises(TypeError, match="k must have the cache dtype"):
        ekv.prefill(empty(), k.half(), k.half(), [3, 3])
    with pytest.raises(TypeError, match="seq_lens must be an integer tensor"):
        ekv.prefill(empty(), k, k, torch.tensor([3.0, 3.0]))
    bad = k.clone()
    bad[1, 0, 2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"k holds NaN or Inf inside seq_lens, first at \[batch 1, head 0, position 2\]"):
        ekv.prefill(empty(), bad, k, [3, 3])
    ekv.prefill(empty(), bad, k, [3, 2])  # the same value in the padding is fine
    cache = ekv.prefill(empty(), k, k, [3, 3])
    with pytest.raises(ValueError, match="prefill needs an empty cache"):
        ekv.prefill(cache, k, k, [3, 3])


@pytest.mark.parametrize("make,error,match", [
    (lambda: ekv.DecodeConfig(1.5, "topk"), TypeError, r"selector must be an entmaxkv selector .*got str"),
    (lambda: ekv.DecodeConfig(2.5), ValueError, r"alpha must be in \[1, 2\], got 2.5"),
    (lambda: ekv.DecodeConfig("1.5"), TypeError, "alpha must be a float"),
    (lambda: ekv.DecodeConfig(1.0, ekv.Exact()), ValueError, "Exact selection needs alpha > 1"),
    (lambda: ekv.DecodeConfig(scale="0.1"), TypeError, "scale must be a real number"),
    (lambda: ekv.DecodeConfig(scale=0.0), ValueError, "scale must be > 0 or None"),
    (lambda: ekv.DecodeConfig(backend="cuda"), ValueError, "backend must be one of"),
    (lambda: ekv.Gaussian(max_quantile="0.9"), TypeError, "max_quantile must be a real number"),
    (lambda: ekv.TopK(coverage="0.5"), ValueError, "coverage must be in"),
])
def test_bad_configs_raise_when_built(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_decode_step_names_a_config_that_is_not_one(small):
    cache, q, kn, vn = small
    with pytest.raises(TypeError, match="config must be an entmaxkv.DecodeConfig, got float 1.5"):
        ekv.decode_step(cache, q, kn, vn, 1.5)
