"""A long graph-replayed decode: no host sync, no new Triton specialisation, nothing drifts.

    python benchmarks/soak.py                                   # H200: 64K, 10,000 steps, every selector
    python benchmarks/soak.py --context 4096 --steps 500        # a quick one

Issue 13's soak target. Per selector (B = 1, Hq/Hkv = 32/8, D = 128, fp16, α = 1.5, inputs
from ``SyntheticStream``, one step each, precomputed on the device):
1. capture the step (``GraphedDecodeStep``, eager kernels), warm up, take every Triton
   kernel's compile-cache size (``entmaxkv.compiled.kernel_cache_sizes``);
2. replay ``--steps`` steps under ``torch.cuda.set_sync_debug_mode("error")`` (any host sync
   raises), counting non-finite outputs on the device;
3. run ``--eager-steps`` eager ``decode_step`` calls on a fork of the final cache (Python
   launches are where a new specialisation would be compiled; they cross page edges);
4. check: the kernel caches kept their size, the lengths advanced by exactly the steps taken,
   every output was finite, and one more replay equals the eager step on the same state bit
   for bit.
Writes ``soak-<date>-<context>.{json,md}`` under ``--out`` and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import entmaxkv as ekv
from entmaxkv.compiled import GraphedDecodeStep, kernel_cache_sizes
from entmaxkv.synthetic import SyntheticStream

sys.path.insert(0, str(Path(__file__).parent))
from decode import run_meta  # noqa: E402  (the benchmarks' shared run metadata)

SELECTORS = {"TopK 12.5%": ekv.TopK(coverage=0.125), "Dense": ekv.Dense(), "Gaussian": ekv.Gaussian(),
             "Exact": ekv.Exact(), "TopK 6.25% box": ekv.TopK(coverage=0.0625)}  # "... box": a cache with page boxes


def soak(name: str, selector, args) -> dict:
    b, hq, hkv, d, n = 1, 32, 8, 128, args.context
    stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, seed=n, dtype=torch.float16,
                             device="cuda")
    k, v = stream.prompt(n)
    total = args.steps + args.eager_steps + 8
    cache = ekv.prefill(ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=n + total,
                                               dtype=torch.float16, device="cuda", page_boxes=name.endswith(" box")),
                        k, v, [n])
    del k, v
    # the inputs of every replayed step, made up front (no generator work inside the soak)
    steps = [stream.step() for _ in range(min(args.steps, args.distinct_inputs))]
    config = ekv.DecodeConfig(alpha=1.5, selector=selector)
    decoder = GraphedDecodeStep(cache, config, num_q_heads=hq, compile=False)
    for i in range(4):  # warm-up replays
        decoder(*steps[i % len(steps)])
    torch.cuda.synchronize()
    before = kernel_cache_sizes()
    start_len = decoder.cache.seq_lens.clone()
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        t0.record()
        for i in range(args.steps):
            out = decoder(*steps[i % len(steps)])
            bad += (~torch.isfinite(out)).sum()
        t1.record()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    replay_us = t0.elapsed_time(t1) * 1e3 / args.steps
    advanced = int((decoder.cache.seq_lens - start_len).max())

    eager = decoder.cache.fork()
    for i in range(args.eager_steps):
        eager, out = ekv.decode_step(eager, *steps[i % len(steps)], config)
        bad += (~torch.isfinite(out)).sum()
    after = kernel_cache_sizes()
    changed = {k: (before.get(k), after[k]) for k in after if before.get(k) != after[k]}

    state = decoder.cache.fork()
    q, kn, vn = stream.step()
    _, expected = ekv.decode_step(state, q, kn, vn, config)
    replayed = decoder(q, kn, vn).clone()
    return dict(selector=name, context=n, steps=args.steps, eager_steps=args.eager_steps, replay_us=replay_us,
                lengths_advanced=advanced, non_finite=int(bad), kernel_cache_changes=changed,
                kernels_cached=sum(v for v in after.values() if v), final_step_bit_identical=bool(
                    torch.equal(replayed, expected)),
                ok=advanced == args.steps and int(bad) == 0 and not changed and torch.equal(replayed, expected))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--eager-steps", type=int, default=300)
    parser.add_argument("--distinct-inputs", type=int, default=512, help="input triples cycled through")
    parser.add_argument("--selectors", default=",".join(SELECTORS))
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a GPU")
    meta = run_meta("soak.py")
    rows = []
    for name in args.selectors.split(","):
        t = time.perf_counter()
        rows.append(soak(name, SELECTORS[name], args))
        rows[-1]["wall_s"] = time.perf_counter() - t
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"soak-{meta['date']}-{args.context // 1024}k"
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Graph-replayed decode soak, {args.context} tokens ({meta['date']})", "",
             f"{meta['gpu']}, torch {meta['torch']}, Triton {meta['triton']}. Command: `{meta['command']}`.", "",
             "B = 1, Hq/Hkv = 32/8, D = 128, fp16, α = 1.5, `SyntheticStream` inputs; eager kernels in one CUDA "
             "graph; host syncs raise (`set_sync_debug_mode(\"error\")`).", "",
             "| selector | replays | µs per step (incl. input copies) | lengths advanced | non-finite outputs | "
             "eager steps after | Triton cache changes | last replay = eager | ok |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['selector']} | {r['steps']} | {r['replay_us']:.1f} | {r['lengths_advanced']} | "
                     f"{r['non_finite']} | {r['eager_steps']} | {r['kernel_cache_changes'] or 'none'} | "
                     f"{r['final_step_bit_identical']} | {r['ok']} |")
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 2:]))


if __name__ == "__main__":
    main()
