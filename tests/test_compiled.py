"""CUDA-graph capture of a decode step. The replay test needs a GPU: CPU CI skips it, and
benchmarks/gpu_check.py (part C) runs the same comparison on the H200."""

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.compiled import GraphedDecodeStep, compile_decode_step
from helpers import make_cache, random_step


def test_compiled_step_refuses_a_cache_with_a_host_length():
    cache, _, _ = make_cache(50, 1, 1, 8, 4, [5], dtype=torch.float32)
    q, kn, vn = random_step(torch.Generator().manual_seed(0), 1, 1, 1, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="without_host_len"):
        compile_decode_step(ekv.DecodeConfig(), backend="aot_eager")(cache, q, kn, vn)


def test_graphs_need_a_cuda_cache():
    cache, _, _ = make_cache(51, 1, 1, 8, 4, [5], dtype=torch.float32)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA cache"):
        GraphedDecodeStep(cache, ekv.DecodeConfig(), num_q_heads=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("selector", [ekv.Dense(), ekv.TopK(coverage=0.25), ekv.Exact(max_pages=3)], ids=repr)
def test_graph_replays_equal_eager_steps(selector):
    cache, _, _ = make_cache(52, 2, 2, 16, 4, [37, 20], dtype=torch.float32)
    cache = cache.to(device="cuda")
    config = ekv.DecodeConfig(alpha=1.5, selector=selector)
    decoder = GraphedDecodeStep(cache.fork(), config, num_q_heads=4, compile=False)
    eager = cache.fork()
    g = torch.Generator().manual_seed(53)
    for _ in range(12):  # crosses page boundaries
        q, kn, vn = (x.cuda() for x in random_step(g, 2, 4, 2, 16, dtype=torch.float32))
        out = decoder(q, kn, vn).clone()
        eager, expected = ekv.decode_step(eager, q, kn, vn, config)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(decoder.cache.seq_lens, eager.seq_lens)
