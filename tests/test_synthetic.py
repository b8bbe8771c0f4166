"""The benchmarks' input generators behave as their docstrings say."""

import torch

import entmaxkv as ekv
from entmaxkv.synthetic import needle_inputs


def test_needle_inputs_shapes_and_scores():
    k, v, q, k_new, v_new = needle_inputs(batch=2, num_kv_heads=2, group=3, head_dim=64, context=500, needles=4,
                                          run=2, seed=1, dtype=torch.float64)
    assert k.shape == v.shape == (2, 2, 500, 64) and q.shape == (2, 6, 1, 64)
    assert k_new.shape == v_new.shape == (2, 2, 1, 64)
    scores = torch.einsum("bhgd,bhnd->bhgn", q.view(2, 2, 3, 64), k) * 64 ** -0.5
    high = scores > 4  # needle tokens score about 8, noise about N(0, 0.3²)
    per_head = high.sum(-1)
    assert bool(((per_head >= 4) & (per_head <= 8)).all()), per_head  # 4 runs of 2, runs may overlap
    assert not bool(high[..., -64:].any())  # never in the last 64 positions
    assert float(scores[~high].abs().max()) < 3


def test_exact_reads_few_pages_on_needles_and_equals_dense():
    k, v, q, k_new, v_new = needle_inputs(batch=1, num_kv_heads=2, group=2, head_dim=64, context=1024, needles=3,
                                          run=16, seed=2, dtype=torch.float64)
    cache = ekv.prefill(ekv.PagedKVCache.empty(batch=1, num_kv_heads=2, head_dim=64, capacity=1040,
                                               dtype=torch.float64), k, v, [1024])
    _, dense = ekv.decode_step(cache, q, k_new, v_new, ekv.DecodeConfig(alpha=1.5, selector=ekv.Dense()))
    _, out, info = ekv.decode_step(cache, q, k_new, v_new, ekv.DecodeConfig(alpha=1.5, selector=ekv.Exact()),
                                   with_info=True)
    torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)
    assert bool(info.certified.all())
    assert int(info.page_mask.sum(-1).max()) <= 12  # 3 runs of 16 touch at most 6 pages, + sink and newest
