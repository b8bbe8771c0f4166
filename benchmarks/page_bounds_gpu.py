"""``page_bounds`` alone on the GPU, per launch-constant variant: its own time (CUDA graph
replays, ``triton.testing.do_bench_cudagraph``), the bandwidth that is on the statistics it
reads, and how far its outputs move from the first variant's.

    python benchmarks/page_bounds_gpu.py --contexts 32768,131072 \
        --variants "base;CHUNK=0,BLOCK_P=8,NUM_WARPS=2;BLOCK_P=16;BLOCK_P=64,NUM_WARPS=4;CHUNK=16"

B = 1, Hq/Hkv = 32/8, D = 128, S = 16, the TopK form (no σ), with the mean (α > 1) and without
it (α = 1). Each variant is a ``,``-separated list of ``NAME=value`` assignments to
``entmaxkv.kernels.page_scores`` module constants (``base``: none). The statistics are random
(the kernel's cost does not depend on their values). Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse

import torch
import triton

from entmaxkv.kernels import page_scores as module
from entmaxkv.kernels.page_scores import page_bounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="32768,131072")
    parser.add_argument("--variants", default="base;CHUNK=0,BLOCK_P=8,NUM_WARPS=2")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(";")]
    parsed = [[] if v in ("", "base") else [(a.split("=")[0].strip(), eval(a.split("=")[1])) for a in v.split(",")]
              for v in variants]  # noqa: S307 (a benchmark's own command line)
    for sets in parsed:
        for name, _ in sets:
            if not hasattr(module, name):
                raise SystemExit(f"page_scores has no {name}")
    dtype = getattr(torch, args.dtype)
    b, hq, hkv, d, s = 1, 32, 8, 128, 16
    for n in (int(x) for x in args.contexts.split(",")):
        p = n // s + 1  # room for the newest (partial) page
        g = torch.Generator(device="cuda").manual_seed(n)
        stats = [torch.randn(b, hkv, p, d, generator=g, device="cuda").to(dtype) for _ in range(4)]
        kmin, kmax = torch.minimum(stats[0], stats[1]), torch.maximum(stats[0], stats[1])
        kmean, kstd = (kmin + kmax) / 2, stats[3].abs()
        k_pages = torch.randn(b, hkv, p, s, d, generator=g, device="cuda").to(dtype)
        q = torch.randn(b, hq, d, generator=g, device="cuda").to(dtype)
        lens = torch.full((b,), n + 1, dtype=torch.int64, device="cuda")
        for with_mean in (True, False):
            read = (3 if with_mean else 2) * b * hkv * (n // s) * d * dtype.itemsize
            print(f"\n## {n} tokens, {args.dtype}, with_mean {with_mean}: {read / 1e6:.1f} MB of statistics")
            first = None
            for name, sets in zip(variants, parsed):
                saved = [(key, getattr(module, key)) for key, _ in sets]
                try:
                    for key, value in sets:
                        setattr(module, key, value)
                    run = lambda: page_bounds(q, kmin, kmax, kmean, kstd, lens, None, k_pages, s, 0.088, False,  # noqa: E731
                                              with_mean)
                    out = run()
                    us = triton.testing.do_bench_cudagraph(run, rep=200) * 1e3
                    full = out[0][..., : n // s].double()
                    first = full if first is None else first
                    diff = float(((full - first).abs() / first.abs().clamp_min(1e-6)).max())
                    print(f"  {name:<50} {us:8.2f} µs  {read / us / 1e6:6.2f} TB/s  max rel Δupper vs first {diff:.1e}")
                except Exception as err:  # a variant that fails to build or run: say so, go on
                    print(f"  {name:<50} failed: {type(err).__name__}: {str(err)[:200]}")
                finally:
                    for key, value in saved:
                        setattr(module, key, value)


if __name__ == "__main__":
    main()
