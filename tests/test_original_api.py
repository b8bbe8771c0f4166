"""The original EntmaxKV quick start runs unchanged (but for ``device``) and agrees with the
functional API; its argument errors are clear."""

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.attention_gaussian import quest_sparse_attention_decode_gaussian_aware_entmax
from entmaxkv.attention_topk import quest_sparse_attention_decode_paged

# The original README's quick start, verbatim except device = "cpu".
QUICK_START = '''
import torch
from entmaxkv import QuestKVCache
from entmaxkv.attention_topk import quest_sparse_attention_decode_paged
from entmaxkv.attention_gaussian import quest_sparse_attention_decode_gaussian_aware_entmax

B, H, D = 1, 32, 128
device = "cpu"

# Prefill: build the KV cache
k_prefill = torch.randn(B, H, 1024, D, device=device, dtype=torch.float16)
v_prefill = torch.randn(B, H, 1024, D, device=device, dtype=torch.float16)

cache = QuestKVCache(page_size=16)
cache.initialize(k_prefill, v_prefill)

# Decode step
q      = torch.randn(B, H, 1, D, device=device, dtype=torch.float16)
k_new  = torch.randn(B, H, 1, D, device=device, dtype=torch.float16)
v_new  = torch.randn(B, H, 1, D, device=device, dtype=torch.float16)
out    = torch.empty(B, H, 1, D, device=device, dtype=torch.float16)

cache_seqlens = torch.tensor([1024], device=device, dtype=torch.int32)
q_seqlens     = torch.tensor([1],    device=device, dtype=torch.int32)

# Top-k sparse attention (token_budget controls how many tokens are attended to)
quest_sparse_attention_decode_paged(
    q=q, quest_cache=cache, k_new=k_new, v_new=v_new, out=out,
    token_budget=256, cache_seqlens=cache_seqlens, q_seqlens=q_seqlens,
    alpha=1.5,
)

# Gaussian-aware sparse attention (budget adapts to the score distribution)
quest_sparse_attention_decode_gaussian_aware_entmax(
    q=q, quest_cache=cache, k_new=k_new, v_new=v_new, out=out,
    alpha=1.5, tau_mode="corrected", append_cache=True,
    cache_seqlens=cache_seqlens, q_seqlens=q_seqlens,
)
'''


def test_original_quick_start_runs_and_matches_the_functional_api():
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(QUICK_START, "original-quick-start", "exec"), scope)
    torch.manual_seed(0)  # replay the same random inputs through the functional API
    k, v = torch.randn(1, 32, 1024, 128, dtype=torch.float16), torch.randn(1, 32, 1024, 128, dtype=torch.float16)
    q, k_new, v_new = (torch.randn(1, 32, 1, 128, dtype=torch.float16) for _ in range(3))
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=32, head_dim=128, capacity=2048, dtype=torch.float16)
    cache = ekv.prefill(cache, k, v, [1024])
    topk = ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(token_budget=256, sink_pages=0))
    cache, out_topk = ekv.decode_step(cache, q, k_new, v_new, topk)
    gaussian = ekv.DecodeConfig(alpha=1.5, selector=ekv.Gaussian(tau_mode="corrected"))
    cache, out_gaussian = ekv.decode_step(cache, q, k_new, v_new, gaussian)  # the quick start appends twice
    torch.testing.assert_close(scope["out"], out_gaussian, rtol=0, atol=0)
    assert scope["cache"].seq_lens.tolist() == [1026]
    assert torch.isfinite(out_topk).all() and not torch.equal(out_topk, out_gaussian)


def make(heads=4, kv_heads=2, t=70, dtype=torch.float32, **kwargs):
    g = torch.Generator().manual_seed(1)
    cache = ekv.QuestKVCache(page_size=16, **kwargs)
    cache.initialize(torch.randn(2, kv_heads, t, 8, generator=g).to(dtype), torch.randn(2, kv_heads, t, 8, generator=g).to(dtype))
    q = torch.randn(2, heads, 1, 8, generator=g).to(dtype)
    kv = [torch.randn(2, kv_heads, 1, 8, generator=g).to(dtype) for _ in range(2)]
    return cache, q, *kv


def lens():
    return torch.tensor([70, 70], dtype=torch.int32), torch.tensor([1, 1], dtype=torch.int32)


def test_topk_wrapper_equals_functional_topk_with_gqa_and_alibi():
    cache, q, kn, vn = make()
    slopes = torch.tensor([0.1, 0.2, 0.05, 0.0])
    functional = cache.cache.fork()
    out = torch.full_like(q, float("nan"))
    returned = quest_sparse_attention_decode_paged(q, cache, kn, vn, out, 32, *lens(), alibi_slopes=slopes)
    assert returned is out
    _, expected = ekv.decode_step(functional, q, kn, vn, ekv.DecodeConfig(selector=ekv.TopK(token_budget=32, sink_pages=0)),
                                  alibi_slopes=slopes)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode,iters,expected_mode", [("exact", None, "exact"), ("FIXED", None, "fixed"),
                                                      ("fixed", 2, "corrected"), ("corrected", 3, "corrected")])
def test_gaussian_wrapper_maps_tau_modes(mode, iters, expected_mode):
    cache, q, kn, vn = make()
    functional = cache.cache.fork()
    out = torch.empty_like(q)
    quest_sparse_attention_decode_gaussian_aware_entmax(q, cache, kn, vn, out, tau_mode=mode, tau_correction_iters=iters)
    selector = ekv.Gaussian(tau_mode=expected_mode, correction_iters=iters)
    _, expected = ekv.decode_step(functional, q, kn, vn, ekv.DecodeConfig(selector=selector))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_append_cache_false_attends_what_the_cache_holds():
    cache, q, kn, vn = make()
    cache.append(kn, vn)
    out = torch.empty_like(q)
    quest_sparse_attention_decode_paged(q, cache, kn, vn, out, 32, *lens(), append_cache=False)
    assert cache.seq_lens.tolist() == [71, 71]
    fresh, q2, kn2, vn2 = make()
    out2 = torch.empty_like(q)
    quest_sparse_attention_decode_paged(q2, fresh, kn2, vn2, out2, 32, *lens())
    torch.testing.assert_close(out, out2, rtol=0, atol=0)


def test_quest_cache_grows_geometrically_and_keeps_its_tokens():
    cache, q, kn, vn = make(t=20)
    assert cache.cache.capacity == 20 + 256
    keys = cache.k_cache.clone()
    for _ in range(257):
        cache.append(kn, vn)
    assert cache.cache.capacity == 2 * 276 and cache.seq_lens.tolist() == [277, 277]
    torch.testing.assert_close(cache.k_cache[:, :, :20], keys, rtol=0, atol=0)
    torch.testing.assert_close(cache.k_cache[:, :, 276], kn[:, :, 0], rtol=0, atol=0)
    bounded, q, kn, vn = make(t=20, max_seq_len=21)
    bounded.append(kn, vn)
    with pytest.raises(ValueError, match="max_seq_len = 21 reached"):
        bounded.append(kn, vn)


def test_argument_errors_are_clear():
    cache, q, kn, vn = make()
    out = torch.empty_like(q)
    with pytest.raises(ValueError, match="tau_mode must be one of"):
        quest_sparse_attention_decode_gaussian_aware_entmax(q, cache, kn, vn, out, tau_mode="approximate")
    with pytest.raises(ValueError, match=r"token_budget must be an int >= one page \(16 tokens\)"):
        quest_sparse_attention_decode_paged(q, cache, kn, vn, out, 8, *lens())
    with pytest.raises(ValueError, match=r"q must have shape \[B, H_q, 1, D\]"):
        quest_sparse_attention_decode_paged(q[:, :, :, :4], cache, kn, vn, out[..., :4], 32, *lens())
    with pytest.raises(ValueError, match="out must be a tensor like q"):
        quest_sparse_attention_decode_paged(q, cache, kn, vn, out[:1], 32, *lens())
    with pytest.raises(ValueError, match=r"k_new must have shape \[B, H_kv, 1, D\]"):
        quest_sparse_attention_decode_paged(q, cache, kn[:, :1], vn, out, 32, *lens())
    with pytest.raises(ValueError, match="cache_seqlens must be an int tensor"):
        quest_sparse_attention_decode_paged(q, cache, kn, vn, out, 32, torch.tensor([70.0, 70.0]), lens()[1])
    with pytest.raises(RuntimeError, match="initialize"):
        ekv.QuestKVCache().append(kn, vn)
    with pytest.raises(ValueError, match="power of two"):
        ekv.QuestKVCache(page_size=10)
    assert cache.seq_lens.tolist() == [70, 70], "a rejected call must not have appended"
