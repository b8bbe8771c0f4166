"""The Gaussian τ̂ kernel alone (``entmaxkv::gaussian_tau``), on page moments shaped like
``needle_inputs``' (noise pages and a few runs of high scores) or like noise only, against the reference
solver: where its time goes (passes, Newton steps, launch shape).

    python benchmarks/gaussian_tau_gpu.py --pages 8192 --batches 1,16 \\
        --variants "base;iters=0;expansions=0;gaussian_tau.NEGLIGIBLE=-1.0;gaussian_tau.TAU_WARPS=4"

A variant is ``;``-separated; each is ``,``-separated ``module.CONST=value`` (a constant of
``entmaxkv.kernels.<module>``) or ``iters=N`` / ``expansions=N`` (the op's arguments). Times
are CUDA-graph replays of the op (median of rounds); max |Δτ| is against the reference
(``solve_gaussian_tau``, float64 on the GPU). Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import ast
import importlib

import torch

from entmaxkv.gaussian import solve_gaussian_tau
from gpu_check import time_replays


def moments(batch: int, kv_heads: int, group: int, pages: int, needles: int, seed: int, aligned: bool = False):
    """(mu, sigma [B, Hkv, G, P] float32, lengths [B] int64, exact [B, Hkv, G, 16]): the lengths
    as a Gaussian step passes them (every page a candidate but the newest, which holds 9 tokens);
    noise pages' score means ~N(0, 0.075²) and stds ~0.3 (keys N(0, 0.3²) at scale D^-1/2,
    as needle_inputs'), and ``needles`` runs of 16 tokens a KV head at score ~8 — at random
    token positions, as ``needle_inputs(run=16)`` draws them, so a run splits over two pages:
    a page holding n of its tokens has mean 8·n/16 and the std the step's page model gives it
    from per-channel key stds, (0.3² + 8²·(3/D)·(n/16)(1 − n/16))^½ at D = 128 (0.64 at
    n = 11; ``needle_inputs`` at 64K, B = 2: such pages of mean ~5 at std 0.63–0.83). Where a KV
    head's runs all split near a page's middle, its rows' top is a page mean near 5: with the
    solve's old low end (top − 1) such rows kept many pages — here at 8,192 pages, B = 16, 4
    runs (CPU, α = 1.5) 58 of 512 rows kept more than 64, 12 more than 4,096, one 8,005 of
    8,191; 8 of 64 rows kept up to 4,095 of 4,096 in ``needle_inputs`` at 64K, B = 2 (perf-log
    row 151). ``aligned``: runs on page boundaries (pages at mean ~8, std ~0.3), like the
    moments of sessions 16–46 (not the same draws), which never made such rows."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch, kv_heads, group, pages)
    mu = 0.075 * torch.randn(shape, generator=g)
    sigma = 0.3 + 0.02 * torch.randn(shape, generator=g)
    for b in range(batch):
        for h in range(kv_heads):
            for start in torch.randperm(16 * (pages - 1) - 16, generator=g)[:needles].tolist():
                first, offset = divmod(16 * (start // 16) if aligned else start, 16)
                level = 8.0 + 0.2 * torch.randn(group, generator=g)
                for page, n in ((first, 16 - offset), (first + 1, offset)):
                    if n:
                        share = n / 16
                        mu[b, h, :, page] = level * share + 0.075 * torch.randn(group, generator=g)
                        sigma[b, h, :, page] = (0.09 + level.square() * (3 / 128) * share * (1 - share)).sqrt()
    lengths = torch.full((batch,), 16 * (pages - 1) + 9)  # the newest page: 9 tokens
    exact = 0.3 * torch.randn(batch, kv_heads, group, 16, generator=g)
    exact[..., 9:] = float("-inf")
    return tuple(x.cuda() for x in (mu, sigma, lengths, exact))


def apply(variant: str) -> tuple[dict, list]:
    """Set a variant's constants; return the op arguments it overrides and how to undo it."""
    args, undo = {}, []
    for item in filter(None, (x.strip() for x in variant.split(","))):
        if item == "base":
            continue
        name, value = item.split("=")
        if "." in name:
            module_name, const = name.split(".")
            module = importlib.import_module(f"entmaxkv.kernels.{module_name}")
            undo.append((module, const, getattr(module, const)))
            setattr(module, const, ast.literal_eval(value))  # True, 4, 1e-30, None
        else:
            args[name] = int(value)
    return args, undo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", default="8192")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--heads", default="32/8")
    parser.add_argument("--alphas", default="1.5")
    parser.add_argument("--needles", default="4,0", help="runs of high scores a KV head; 0: noise only")
    parser.add_argument("--aligned", action="store_true", help="runs on page boundaries (sessions 16-46)")
    parser.add_argument("--variants", default="base")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    hq, hkv = (int(x) for x in args.heads.split("/"))
    for p in (int(x) for x in args.pages.split(",")):
        for b in (int(x) for x in args.batches.split(",")):
            for needles in (int(x) for x in args.needles.split(",")):
                mu, sigma, lengths, exact = moments(b, hkv, hq // hkv, p, needles, seed=p + b, aligned=args.aligned)
                count = torch.full(mu.shape, 16.0, dtype=torch.float64, device=mu.device)
                count[..., -1] = 0.0  # the newest page
                for alpha in (float(x) for x in args.alphas.split(",")):
                    want = solve_gaussian_tau(mu, sigma, count, exact, alpha, iters=50)
                    print(f"## P = {p}, B = {b}, {hq}/{hkv}, needles {needles}{' aligned' if args.aligned else ''},"
                          f" α = {alpha}")
                    for variant in args.variants.split(";"):
                        over, undo = apply(variant)
                        iters, expansions = over.get("iters", 50), over.get("expansions", 30)
                        op = torch.ops.entmaxkv.gaussian_tau
                        got = op(mu, sigma, lengths, exact, alpha, iters, expansions)
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            op(mu, sigma, lengths, exact, alpha, iters, expansions)
                        us = time_replays(graph.replay, args.reps, 5)
                        err = (got - want).abs().max().item()
                        print(f"  {variant:<56} {us:9.1f} µs  max |Δτ| {err:.1e}")
                        for module, const, old in undo:
                            setattr(module, const, old)


if __name__ == "__main__":
    main()
