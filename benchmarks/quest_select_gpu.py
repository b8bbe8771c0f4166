"""TopK's selection on the GPU: the fused ``quest_select`` against the torch glue it replaced.

    python benchmarks/quest_select_gpu.py --contexts 8192,32768,131072 --batch 1

Per context (B = ``--batch``, Hq/Hkv = 32/8, D = 128, fp16, ``SyntheticStream`` data, α = 1.5,
TopK 12.5%): CUDA-graph time of ``page_bounds`` (page scores + the newest page), of
``quest_select`` for each launch configuration in ``--configs`` (MAX_BLOCK: rows longer than it
stream their keys from memory in the selection; SELECT_WARPS: warps of the per-row selection;
CHUNK: pages a program of the row-parallel kernels; RADIX: bits the bitwise threshold search
decides a counting pass, ``select_pages.RADIX``, 1 or 2; PROBES: interpolation probes of the
threshold search, ``select_pages.PROBES``, 0 for the bitwise search; LIST: pages a program of
the list launch, ``quest_select.LIST_CHUNK``), and of the torch
composition it replaced (rank key, forced pages, count, ``select_pages`` with the 1-bit search,
mask, score floor: eager kernels in one graph). Also checks that every configuration selects
the same pages and floor as that composition.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse

import torch

import entmaxkv as ekv
import entmaxkv.kernels.quest_select as qs
import entmaxkv.kernels.select_pages as sp
from entmaxkv.backend import build_step
from entmaxkv.synthetic import SyntheticStream
from entmaxkv.topk import forced_page_mask, quest_count, rank_key
from gpu_check import time_replays


def graphed(fn):
    """fn captured in a CUDA graph (warmed up on a side stream) -> (replay, outputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="8192,32768,131072")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--configs", default="16384:16:1024:1:12:512,16384:16:1024:1:0:512,16384:16:1024:1:12:256,"
                                             "16384:16:1024:1:12:1024,16384:16:1024:1:12:2048,16384:8:1024:1:12:512,"
                                             "16384:32:1024:1:12:512,16384:4:1024:1:12:512,8192:16:1024:1:12:512",
                        help="MAX_BLOCK:SELECT_WARPS:CHUNK:RADIX:PROBES:LIST launch configurations of quest_select")
    args = parser.parse_args()
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    for c in configs:
        if len(c) != 6 or c[3] not in (1, 2) or c[4] < 0:
            parser.error(f"--configs takes MAX_BLOCK:SELECT_WARPS:CHUNK:RADIX:PROBES:LIST (RADIX 1 or 2), got {c}")
    b = args.batch
    hq, hkv, d, alpha, coverage = 32, 8, 128, 1.5, 0.125
    for n in (int(x) for x in args.contexts.split(",")):
        stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, seed=n, dtype=torch.float16,
                                 device="cuda")
        k, v = stream.prompt(n)
        q, _, _ = stream.step()
        cache = ekv.prefill(ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=n + 64,
                                                   dtype=torch.float16, device="cuda"), k, v, [n] * b)
        del k, v
        scale = d ** -0.5
        step = build_step(cache, q, alpha, scale, None, kernels=True, needs_sigma=False, needs_newest_scores=False)
        ops = step.ops
        q3 = q[:, :, 0].contiguous()

        def bounds():
            return torch.ops.entmaxkv.page_bounds(q3, cache.k_min, cache.k_max, cache.k_mean, cache.k_std,
                                                  cache.seq_lens, None, cache.k_pages, cache.page_size, scale, False)

        def fused():
            return torch.ops.entmaxkv.quest_select(step.upper, step.means, ops.absmax, ops.newest_max,
                                                   ops.newest_magnitude, cache.seq_lens, None, cache.page_size, d,
                                                   alpha, -1, coverage, 1, 0)

        def glue():  # what TopK.select + KernelOps.score_floor ran before quest_select
            ops._candidates = None  # the candidate mask is built inside the graph, as in a step
            candidates = ops.candidates
            key = rank_key(step.upper, candidates, alpha)
            key = torch.where(forced_page_mask(cache, candidates, 1, 0), float("inf"), key)
            mask = ops.top_pages(key, quest_count(candidates, None, coverage))
            return mask, ops.score_floor(mask)

        replay, _ = graphed(bounds)
        print(f"\n## B = {b}, {n} tokens ({cache.num_pages} pages), TopK {coverage:.1%}, α = {alpha}")
        print(f"  page_bounds                      {time_replays(replay, 50, 5):8.1f} µs")
        defaults = qs.MAX_BLOCK, qs.SELECT_WARPS, qs.CHUNK, sp.RADIX, sp.PROBES, qs.LIST_CHUNK
        sp.RADIX, sp.PROBES = 1, 0  # the reference selection: the 1-bit search (the glue's select_pages reads both)
        replay, (want_mask, want_floor) = graphed(glue)
        replay()
        print(f"  torch glue + select_pages (1-bit)   {time_replays(replay, 50, 5):8.1f} µs")
        for config in configs:
            qs.MAX_BLOCK, qs.SELECT_WARPS, qs.CHUNK, sp.RADIX, sp.PROBES, qs.LIST_CHUNK = config
            replay, (_, _, mask, floor, _) = graphed(fused)
            replay()
            same = bool(torch.equal(mask, want_mask.expand_as(mask))) and bool(torch.equal(floor, want_floor))
            name = ":".join(map(str, config))
            print(f"  quest_select {name:>26} {time_replays(replay, 50, 5):8.1f} µs   "
                  f"same pages and floor as the glue: {same}")
        qs.MAX_BLOCK, qs.SELECT_WARPS, qs.CHUNK, sp.RADIX, sp.PROBES, qs.LIST_CHUNK = defaults
        del cache, step, ops
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
