"""Launch-configuration sweep of the Triton ops on the GPU (one context, B = 1, Hq/Hkv = 32/8,
D = 128, fp16): each op alone, captured in a CUDA graph, median of replays. The module
constants it varies are the ones the ops read at launch (``page_scores.BLOCK_P`` /
``NUM_WARPS``, ``select_pages.MAX_BLOCK`` / ``WIDE_WARPS``).

    python benchmarks/tune_kernels.py --context 131072

Measures only; prints one line per configuration.
"""

from __future__ import annotations

import argparse

import torch

import entmaxkv as ekv
import entmaxkv.kernels.page_scores as ps
import entmaxkv.kernels.select_pages as sp
from entmaxkv.synthetic import SyntheticStream
from gpu_check import time_replays


def graphed(fn):
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=131072)
    args = parser.parse_args()
    n, hq, hkv = args.context, 32, 8
    stream = SyntheticStream(batch=1, num_kv_heads=hkv, group=hq // hkv, head_dim=128, seed=n, dtype=torch.float16,
                             device="cuda")
    k, v = stream.prompt(n)
    q, _, _ = stream.step()
    cache = ekv.prefill(ekv.PagedKVCache.empty(batch=1, num_kv_heads=hkv, head_dim=128, capacity=n + 2048,
                                               dtype=torch.float16, device="cuda"), k, v, [n])
    del k, v
    q2 = q[:, :, 0].contiguous()
    stat_bytes = cache.k_min.numel() * 2 * 2 + cache.k_mean.numel() * 4
    for block_p in (8, 16, 32):
        for warps in (2, 4):
            ps.BLOCK_P, ps.NUM_WARPS = block_p, warps
            fn = lambda: torch.ops.entmaxkv.page_scores(q2, cache.k_min, cache.k_max, cache.k_mean, cache.k_std,
                                                        cache.seq_lens, None, 16, 0.088, False)
            try:
                us = time_replays(graphed(fn).replay, 50, 5)
                print(f"page_scores BLOCK_P={block_p:3d} warps={warps}: {us:8.1f} µs  "
                      f"({stat_bytes / us / 1e3:.0f} GB/s on min/max/mean)", flush=True)
            except Exception as err:
                print(f"page_scores BLOCK_P={block_p} warps={warps}: {type(err).__name__} {str(err)[:200]}")
    import entmaxkv.kernels.sparse_decode as sd

    full = n // 16
    chosen = torch.rand(1, hkv, full, device="cuda").argsort(-1)[..., : full // 8].sort(-1).values.int()
    pages = torch.full((1, hkv, cache.num_pages), -1, dtype=torch.int32, device="cuda")
    pages[..., : full // 8] = chosen
    count = torch.full((1, hkv), full // 8, dtype=torch.int32, device="cuda")
    for tokens in (64, 128, 256):
        for warps in (4, 8):
            sd.TOKENS_PER_ITER, sd.SCORES_WARPS = tokens, warps
            for alpha, dense in ((1.5, True), (1.0, True), (1.0, False)):
                fn = lambda: torch.ops.entmaxkv.sparse_decode(q2, cache.k_pages, cache.v_pages, None, pages, count,
                                                              cache.seq_lens, None, None, None, alpha, 0.088, dense,
                                                              0, 0)
                try:
                    us = time_replays(graphed(fn).replay, 50, 5)
                    print(f"sparse_decode tokens/iter={tokens} warps={warps} α={alpha} "
                          f"{'dense' if dense else 'list 12.5%'}: {us:8.1f} µs", flush=True)
                except Exception as err:
                    print(f"sparse_decode tokens/iter={tokens} warps={warps} α={alpha}: {type(err).__name__} "
                          f"{str(err)[:300]}")
    sd.TOKENS_PER_ITER, sd.SCORES_WARPS = 64, 4
    keys = torch.randn(1, hkv, cache.num_pages, device="cuda")
    want = torch.full((1, hkv), cache.num_pages // 8, dtype=torch.int32, device="cuda")
    for max_block in (8192, 16384):
        for warps in (4, 8):
            sp.MAX_BLOCK, sp.WIDE_WARPS = max_block, warps
            fn = lambda: torch.ops.entmaxkv.select_pages(keys, want, cache.num_pages)
            try:
                us = time_replays(graphed(fn).replay, 50, 5)
                print(f"select_pages P={cache.num_pages} MAX_BLOCK={max_block} warps={warps}: {us:8.1f} µs", flush=True)
            except Exception as err:
                print(f"select_pages MAX_BLOCK={max_block} warps={warps}: {type(err).__name__} {str(err)[:200]}")


if __name__ == "__main__":
    main()
