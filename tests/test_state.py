import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils import _pytree as pytree

import entmaxkv as ekv
from helpers import assert_same_view, make_cache, random_step, visible

EDGE_LENS = [0, 1, 15, 16, 17, 31, 32, 33]


def stored(x, dtype):
    """A float64 statistic as the cache stores it: rounded to float32, then to the cache dtype."""
    return x if dtype == torch.float64 else x.float().to(dtype).double()


def assert_stats_match_tokens(cache):
    """Every full page's statistics equal those recomputed from its tokens (mean and std
    rounded once to the cache dtype, which is what the cache stores them in)."""
    s = cache.page_size
    for f in ("k_mean", "k_std"):
        assert getattr(cache, f).dtype == cache.dtype, f
    for b, n in enumerate(cache.seq_lens.tolist()):
        for p in range(n // s):
            tok = cache.keys()[b, :, p * s:(p + 1) * s].double()
            torch.testing.assert_close(cache.k_min[b, :, p].double(), tok.amin(1), rtol=0, atol=0)
            torch.testing.assert_close(cache.k_max[b, :, p].double(), tok.amax(1), rtol=0, atol=0)
            torch.testing.assert_close(cache.k_mean[b, :, p].double(), stored(tok.mean(1), cache.dtype), rtol=1e-6,
                                       atol=1e-6)
            torch.testing.assert_close(cache.k_std[b, :, p].double(), stored(tok.std(1, unbiased=False), cache.dtype),
                                       rtol=1e-5, atol=1e-6)


@given(lens=st.lists(st.sampled_from(EDGE_LENS) | st.integers(0, 70), min_size=1, max_size=3),
       page_size=st.sampled_from([1, 4, 16]), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.float16]))
def test_prefill_holds_the_tokens_and_full_page_statistics(lens, page_size, seed, dtype):
    cache, keys, values = make_cache(seed, len(lens), 2, 8, page_size, lens, dtype=dtype)
    assert cache.seq_lens.tolist() == lens
    for b, n in enumerate(lens):
        torch.testing.assert_close(cache.keys()[b, :, :n].double(), keys[b], rtol=0, atol=0)
        torch.testing.assert_close(cache.values()[b, :, :n].double(), values[b], rtol=0, atol=0)
    assert torch.isfinite(cache.keys()).all(), "padding leaked into the storage"
    assert_stats_match_tokens(cache)


def test_prefill_accepts_padding_longer_than_capacity():
    k = torch.randn(2, 1, 12, 4)
    empty = ekv.PagedKVCache.empty(batch=2, num_kv_heads=1, head_dim=4, capacity=6, page_size=4, dtype=torch.float32)
    cache = ekv.prefill(empty, k, k, [6, 2])
    torch.testing.assert_close(cache.keys()[0, :, :6], k[0, :, :6], rtol=0, atol=0)
    assert cache.seq_lens.tolist() == [6, 2] and cache.host_max_len == 6


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_append_across_page_boundaries_keeps_statistics_exact(page_size):
    lens = [15, 16, 1, 0]
    cache, keys, _ = make_cache(3, 4, 2, 8, page_size, lens, capacity=60)
    g = torch.Generator().manual_seed(4)
    for _ in range(page_size * 2 + 3):
        q, kn, vn = random_step(g, 4, 2, 2, 8)
        cache, _ = ekv.decode_step(cache, q, kn, vn)
        for b in range(4):
            keys[b] = torch.cat([keys[b], kn[b, :, :1]], dim=1)
        assert_stats_match_tokens(cache)
    for b in range(4):
        torch.testing.assert_close(cache.keys()[b, :, : keys[b].shape[1]].double(), keys[b], rtol=0, atol=0)


def test_older_cache_values_stay_valid_and_reproduce_their_outputs():
    cache0, _, _ = make_cache(5, 2, 2, 8, 4, [7, 12])
    seen0 = visible(cache0)
    g = torch.Generator().manual_seed(6)
    steps = [random_step(g, 2, 4, 2, 8) for _ in range(9)]
    c, first_outs = cache0, []
    for q, kn, vn in steps:
        c, out = ekv.decode_step(c, q, kn, vn)
        first_outs.append(out)
    assert_same_view(seen0, visible(cache0))  # nothing cache0 describes changed
    c = cache0
    for (q, kn, vn), expected in zip(steps, first_outs):  # same inputs, same outputs
        c, out = ekv.decode_step(c, q, kn, vn)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_fork_isolates_divergent_continuations():
    cache0, _, _ = make_cache(7, 1, 1, 8, 4, [9])
    g = torch.Generator().manual_seed(8)
    q, kn, vn = random_step(g, 1, 1, 1, 8)
    a, out_a = ekv.decode_step(cache0.fork(), q, kn, vn)
    b, _ = ekv.decode_step(cache0, q, kn * 3, vn * 3)  # diverges from a on its own storage
    a2, out_a2 = ekv.decode_step(a, q, kn, vn)
    expected, _ = ekv.dense_decode(a2, q)
    torch.testing.assert_close(out_a2, expected, rtol=0, atol=0)
    assert torch.equal(a.keys()[0, :, 9], kn[0, :, 0]) and torch.equal(b.keys()[0, :, 9], 3 * kn[0, :, 0])


def test_cache_is_a_pytree_with_static_metadata():
    cache, _, _ = make_cache(9, 2, 2, 8, 4, [5, 6])
    leaves, spec = pytree.tree_flatten(cache)
    assert all(isinstance(x, torch.Tensor) for x in leaves) and len(leaves) == 7
    back = pytree.tree_unflatten(leaves, spec)
    assert (back.page_size, back.capacity, back.host_max_len) == (4, cache.capacity, 6)
    doubled = pytree.tree_map(lambda t: t, cache)
    assert isinstance(doubled, ekv.PagedKVCache) and doubled.k_pages is cache.k_pages
    with pytest.raises(dataclasses.FrozenInstanceError):
        cache.seq_lens = cache.seq_lens + 1


def test_full_cache_raises_in_eager_use():
    cache, _, _ = make_cache(10, 2, 1, 8, 4, [7, 3], capacity=8)
    q, kn, vn = random_step(torch.Generator().manual_seed(0), 2, 1, 1, 8)
    cache, _ = ekv.decode_step(cache, q, kn, vn)
    with pytest.raises(ValueError, match="cache is full"):
        ekv.decode_step(cache, q, kn, vn)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_full_sequence_under_device_reporting_is_unchanged_and_nan(backend):
    """What compiled steps do: no write, no wrap, NaN output, fits False — other rows unaffected
    (on the kernels the append op reports fits and the attention op writes the NaN)."""
    if backend == "triton":
        pytest.importorskip("triton")
    cache, keys, values = make_cache(11, 2, 1, 8, 4, [8, 3], capacity=8)
    cache = cache.without_host_len()
    before = visible(cache)
    q, kn, vn = random_step(torch.Generator().manual_seed(1), 2, 2, 1, 8)
    config = ekv.DecodeConfig(1.5, ekv.TopK(token_budget=4), backend=backend)
    new, out, info = ekv.decode_step(cache, q, kn, vn, config, with_info=True)
    assert new.seq_lens.tolist() == [8, 4] and info.fits.tolist() == [False, True]
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
    assert not info.certified[0].any()
    assert_same_view(before[:1], visible(new)[:1])
    torch.testing.assert_close(new.keys()[1, :, 3].double(), kn[1, :, 0].double(), rtol=0, atol=0)


def test_prefill_twice_on_one_storage_raises():
    """The empty value still says "empty" through its own seq_lens; its storage does not."""
    empty = ekv.PagedKVCache.empty(batch=2, num_kv_heads=1, head_dim=4, capacity=16, page_size=4, dtype=torch.float32)
    k = torch.randn(2, 1, 6, 4)
    first = ekv.prefill(empty, k, k, [6, 3])
    before = visible(first)
    with pytest.raises(ValueError, match="prefill needs fresh storage"):
        ekv.prefill(empty, torch.randn(2, 1, 6, 4), torch.randn(2, 1, 6, 4), [5, 5])
    assert_same_view(before, visible(first))  # the first prompt is intact

    other = ekv.PagedKVCache.empty(batch=2, num_kv_heads=1, head_dim=4, capacity=16, page_size=4, dtype=torch.float32)
    q, kn, vn = random_step(torch.Generator().manual_seed(0), 2, 1, 1, 4, dtype=torch.float32)
    ekv.decode_step(other, q, kn, vn)  # decoding from the empty value writes into its storage too
    with pytest.raises(ValueError, match="prefill needs fresh storage"):
        ekv.prefill(other, k, k, [6, 3])


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_candidate_and_newest_page_masks_follow_their_definitions(page_size):
    """Candidates are the full pages before the newest token's page, p < (len − 1) // S (the mask
    is built from page ends, (p + 1)·S < len, to save launches); the newest page is the one with
    p == (len − 1) // S — none for an empty sequence — for every length up to the capacity."""
    from entmaxkv.newest_page import candidate_page_mask, newest_page_mask

    s = page_size
    empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=4, capacity=9 * s, page_size=s)
    for length in range(0, 9 * s + 1):
        cache = dataclasses.replace(empty, seq_lens=torch.tensor([length]))
        page = torch.arange(cache.num_pages)
        newest = (length - 1) // s  # −1 for an empty sequence
        assert candidate_page_mask(cache)[0, 0].tolist() == (page < newest).tolist(), length
        assert newest_page_mask(cache)[0, 0].tolist() == (page == newest).tolist(), length
