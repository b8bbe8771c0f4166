"""One decode step with kernel module constants flipped: which launch constant moves the step.

    python benchmarks/step_variants_gpu.py --contexts 8192,131072 --alphas 1.5 \
        --variants "base;sparse_decode.EXACT_ITERS=0;sparse_decode.GATHER=64"

Per context and α (B = 1 or ``--batch``, Hq/Hkv = 32/8 or ``--heads``, D = 128, fp16 or
``--dtype``, ``SyntheticStream`` data or ``--data needles`` (``needle_inputs``: ``--needles``
runs of ``--needle-run`` tokens a KV head), TopK 12.5% or ``--selector``): the CUDA-graph time
of the eager-kernel step (``decode.steps_in_turn_us``: captured in one graph with ``--layers``
− 1 more layers', median of replays) for each variant —
``;``-separated, each a ``,``-separated list of ``module.CONSTANT=value`` assignments to
``entmaxkv.kernels.<module>`` (``base``: none) — next to SDPA, and the largest output
difference from the base variant (a constant that changes results shows there). ``--layers N`` times
the steps (and SDPA) in turn over N caches of their own storage, in one CUDA graph, as a model's layers run: with
1 (the default) a replay finds the bytes the last one read in L2 when they fit. ``--room``
gives the cache more free slots past the context (the page count P sets some launch shapes:
``quest_select``'s rank blocks, for one); ``--page-boxes`` makes it a cache with page boxes.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib

import torch

import entmaxkv as ekv
from entmaxkv.compiled import GraphedDecodeStep
from entmaxkv.synthetic import SyntheticStream, needle_inputs
from decode import loaded, sdpa_in_turn_us, steps_in_turn_us

SELECTORS = {"TopK12.5": lambda: ekv.TopK(coverage=0.125), "TopK6.25": lambda: ekv.TopK(coverage=0.0625),
             "TopK3": lambda: ekv.TopK(coverage=0.03), "Dense": lambda: ekv.Dense(), "Gaussian": lambda: ekv.Gaussian(),
             "Exact": lambda: ekv.Exact()}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def assignments(variant: str) -> list[tuple[object, str, object]]:
    """``module.NAME=value,...`` -> [(module object, NAME, value)] (values as Python literals)."""
    if variant.strip() in ("", "base"):
        return []
    out = []
    for item in variant.split(","):
        target, value = item.split("=")
        module, name = target.strip().rsplit(".", 1)
        mod = importlib.import_module(f"entmaxkv.kernels.{module}")
        if not hasattr(mod, name):
            raise SystemExit(f"entmaxkv.kernels.{module} has no {name}")
        out.append((mod, name, eval(value)))  # noqa: S307 (a benchmark's own command line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="8192,131072")
    parser.add_argument("--alphas", default="1.5")
    parser.add_argument("--selector", default="TopK12.5", choices=list(SELECTORS))
    parser.add_argument("--variants", default="base")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", default="32/8", help="Hq/Hkv")
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    parser.add_argument("--data", choices=["stream", "needles"], default="stream")
    parser.add_argument("--needles", type=int, default=4, help="needle runs per KV head (--data needles)")
    parser.add_argument("--needle-run", type=int, default=16, help="tokens per needle run (--data needles)")
    parser.add_argument("--room", type=int, default=0,
                        help="free token slots past the context (at least 64 + 6·reps, the room earlier sessions' "
                             "replays needed; profile_step.py's caches have 2048): the page count P sets some "
                             "launch shapes")
    parser.add_argument("--page-boxes", action="store_true", help="a cache with 8-bit page boxes (TopK ranks by them)")
    parser.add_argument("--layers", type=int, default=1,
                        help="time each step (and SDPA) in turn over this many caches of their own storage, as "
                             "a model's layers run, and report the time a step: with 1 every replay reads the "
                             "last one's bytes, which stay in L2 when they fit (50 MB on the H100 and H200); "
                             "N x the step's bytes should be >= ~3x L2 (a B = 1 boxed TopK 6.25%% step reads "
                             "~3.2 MB at 8K, 33 MB at 128K)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(";")]
    parsed = [assignments(v) for v in variants]  # fail on a typo before any GPU work
    b, d, dtype = args.batch, 128, DTYPES[args.dtype]
    hq, hkv = (int(x) for x in args.heads.split("/"))
    for n in (int(x) for x in args.contexts.split(",")):
        if args.data == "needles":
            k, v, q, k_new, v_new = needle_inputs(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, context=n,
                                                  needles=args.needles, run=args.needle_run, seed=n, dtype=dtype,
                                                  device="cuda")
        else:
            stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, seed=n, dtype=dtype,
                                     device="cuda")
            k, v = stream.prompt(n)
            q, k_new, v_new = stream.step()
        sdpa = sdpa_in_turn_us(q, k, v, args.layers, args.reps, 5)
        # the timed replays append at one slot past the context (``steps_in_turn_us``), the output
        # check's decoder one token; the room stays 64 + 6·reps (what replays that each appended a
        # token needed until session 44) so that the page count P, which sets some launch shapes,
        # stays that of earlier sessions' runs
        empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d,
                                       capacity=n + max(args.room, 64 + 6 * args.reps),
                                       dtype=dtype, device="cuda", page_boxes=args.page_boxes)
        cache = ekv.prefill(empty, k, v, [n] * b)
        del k, v
        for alpha in (float(a) for a in args.alphas.split(",")):
            config = ekv.DecodeConfig(alpha=alpha, selector=SELECTORS[args.selector]())
            print(f"\n## {n} tokens, α = {alpha}, {args.selector}, B = {b}, {hq}/{hkv}, {args.dtype}: "
                  f"SDPA {sdpa:.1f} µs")
            first = None
            for name, sets in zip(variants, parsed):
                saved = [(mod, key, getattr(mod, key)) for mod, key, _ in sets]
                try:
                    for mod, key, value in sets:
                        setattr(mod, key, value)
                    us = steps_in_turn_us(cache, q, k_new, v_new, config, args.layers, args.reps, 5)
                    decoder = loaded(GraphedDecodeStep(cache.fork(), config, num_q_heads=hq, compile=False),
                                     q, k_new, v_new)
                    decoder.graph.replay()
                    out = decoder.out.double().clone()
                    first = out if first is None else first
                    diff = float((out - first).abs().max())
                    print(f"  {name:<60} {us:8.1f} µs  ×SDPA {us / sdpa:5.2f}  max |Δout| vs first {diff:.1e}")
                    del decoder
                except Exception as err:  # a variant that fails to build or run: say so, go on
                    print(f"  {name:<60} failed: {type(err).__name__}: {str(err)[:200]}")
                finally:
                    for mod, key, value in saved:
                        setattr(mod, key, value)
                torch.cuda.empty_cache()
        del cache


if __name__ == "__main__":
    main()
