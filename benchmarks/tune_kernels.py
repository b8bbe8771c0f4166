"""Launch-configuration sweep of the Triton ops on the GPU (one context, B = 1, Hq/Hkv = 32/8,
D = 128, fp16): each op alone, captured in a CUDA graph, median of replays. The module
constants it varies are the ones the ops read at launch (``page_scores.BLOCK_P`` /
``NUM_WARPS``, ``select_pages.MAX_BLOCK`` / ``WIDE_WARPS``; for the key-code scan
``code_scan.BLOCK_P`` / ``NUM_WARPS`` and ``CANDIDATE_SPAN`` / ``CANDIDATE_BLOCK_P`` /
``CANDIDATE_WARPS``).

    python benchmarks/tune_kernels.py --context 131072
    python benchmarks/tune_kernels.py --context 131072 --codes-only --bits 4   # the key-code scan alone

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


def sweep_code_scan(n: int, bits: int) -> None:
    """``code_bounds`` and ``code_candidates`` (key codes, α = 1.5) on keycodes_gpu's needle data
    (16 candidates a KV head: pass 2 skips nearly every page), with τ_low from one real step.
    Each configuration's outputs are compared with the first one's (they differ at most in
    the summation order of ŝ: a few float32 ulps), so a wrong configuration shows."""
    import entmaxkv.kernels.code_scan as cs
    from entmaxkv.backend import build_step
    from entmaxkv.exact_codes import code_candidates as exact_candidates
    from entmaxkv.synthetic import needle_inputs

    hq, hkv = 32, 8
    k, v, q, k_new, v_new = needle_inputs(batch=1, num_kv_heads=hkv, group=hq // hkv, head_dim=128, context=n,
                                          needles=16, seed=n, dtype=torch.float16, device="cuda")
    empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=hkv, head_dim=128, capacity=n + 64, dtype=torch.float16,
                                   device="cuda", key_bits=bits)
    cache, _ = ekv.decode_step(ekv.prefill(empty, k, v, [n]), q, k_new, v_new, ekv.DecodeConfig(1.5, ekv.Exact()))
    del k, v
    step = build_step(cache, q, 1.5, 128 ** -0.5, None, kernels=True, needs_sigma=False)
    tau_low = exact_candidates(step, 8, 512).tau_low
    args = (q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, None)
    pages = n // 16
    floor_us = (cache.k_codes[:, :, :pages].numel() + hkv * pages * 128 * 2 * 2) / 4.25e12 * 1e6
    chosen = cs.BLOCK_P, cs.NUM_WARPS, cs.CANDIDATE_SPAN, cs.CANDIDATE_BLOCK_P, cs.CANDIDATE_WARPS
    first = None
    # (1, 1) and (2, 1): one warp a program holds two tokens of a page a thread and needs no
    # barriers (code_scan_registers.py --sass: the fewest SASS instructions a page, 2 / 1)
    for block_p, warps in [(p, w) for p in (1, 2, 4, 8) for w in (2, 4, 8)] + [(1, 1), (2, 1)]:
        cs.BLOCK_P, cs.NUM_WARPS = block_p, warps
        # as the step calls it: the newest page's program and the τ seed (8 classes) included
        fn = lambda: torch.ops.entmaxkv.code_bounds(*args, bits, step.scale, False, cache.k_pages, 8)
        try:
            page_max, eps = fn()[:2]
            first = first or (page_max, eps)
            diff = float((page_max - first[0]).abs().max()), float((eps - first[1]).abs().max())
            us = time_replays(graphed(fn).replay, 50, 5)
            print(f"code_bounds {bits}-bit BLOCK_P={block_p} warps={warps}: {us:8.1f} µs (byte floor "
                  f"{floor_us:.1f} µs at 4.25 TB/s)  max |Δ| vs first config: page_max {diff[0]:.1e} "
                  f"eps {diff[1]:.1e}", flush=True)
        except Exception as err:
            print(f"code_bounds BLOCK_P={block_p} warps={warps}: {type(err).__name__} {str(err)[:200]}")
    cs.BLOCK_P, cs.NUM_WARPS = chosen[:2]
    page_max, eps = torch.ops.entmaxkv.code_bounds(*args, bits, step.scale, False)[:2]
    counts = None
    for span in (16, 32, 64):
        for block_p in (1, 2, 4):
            for warps in (2, 4):
                cs.CANDIDATE_SPAN, cs.CANDIDATE_BLOCK_P, cs.CANDIDATE_WARPS = span, block_p, warps
                fn = lambda: torch.ops.entmaxkv.code_candidates(*args, page_max, eps, tau_low, bits, step.scale,
                                                                0.5, 512)
                try:
                    _, count, page_mask = fn()[:3]
                    counts = counts if counts is not None else (count, page_mask)
                    same = bool(torch.equal(count, counts[0]) and torch.equal(page_mask, counts[1]))
                    us = time_replays(graphed(fn).replay, 50, 5)
                    print(f"code_candidates SPAN={span} BLOCK_P={block_p} warps={warps}: {us:8.1f} µs  "
                          f"candidates {count.flatten().tolist()} same as first config: {same}", flush=True)
                except Exception as err:
                    print(f"code_candidates SPAN={span} BLOCK_P={block_p} warps={warps}: {type(err).__name__} "
                          f"{str(err)[:200]}")
    cs.CANDIDATE_SPAN, cs.CANDIDATE_BLOCK_P, cs.CANDIDATE_WARPS = chosen[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=131072)
    parser.add_argument("--codes-only", action="store_true", help="sweep only the key-code scan ops")
    parser.add_argument("--bits", type=int, default=4, help="key-code bits of the code-scan sweep (4 or 8)")
    args = parser.parse_args()
    if args.codes_only:
        sweep_code_scan(args.context, args.bits)
        return
    n, hq, hkv = args.context, 32, 8
    stream = SyntheticStream(batch=1, num_kv_heads=hkv, group=hq // hkv, head_dim=128, seed=n, dtype=torch.float16,
                             device="cuda")
    k, v = stream.prompt(n)
    q, _, _ = stream.step()
    cache = ekv.prefill(ekv.PagedKVCache.empty(batch=1, num_kv_heads=hkv, head_dim=128, capacity=n + 2048,
                                               dtype=torch.float16, device="cuda"), k, v, [n])
    del k, v
    q2 = q[:, :, 0].contiguous()
    stat_bytes = (2 * cache.k_min.numel() + cache.k_mean.numel()) * cache.k_mean.element_size()  # min, max, mean
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
                                                              cache.seq_lens, None, None, None, None, alpha, 0.088,
                                                              dense, 0, 0)
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
    del cache
    torch.cuda.empty_cache()
    sweep_code_scan(n, args.bits)


if __name__ == "__main__":
    main()
