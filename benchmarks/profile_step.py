"""Where a decode step's GPU time goes: per-kernel CUDA time of eager steps (torch.profiler),
next to the graph-replayed step and SDPA on the same shapes.

    python benchmarks/profile_step.py --contexts 32768,131072 --cases "1.5:TopK12.5,1:TopK12.5,1.5:Dense"
    python benchmarks/profile_step.py --contexts 65536,131072 --cases 1.5:ExactCodes4 --data needles

``ExactCodes4`` / ``ExactCodes8`` are ``Exact()`` on a cache with 4- / 8-bit key codes (the
code-scan ops); ``--data needles`` gives them keys where few tokens are candidates
(``entmaxkv.synthetic.needle_inputs``; on the default ``SyntheticStream`` data candidates may overflow
at long contexts, and those rows then attend every page). ``TopK12.5box`` / ``TopK6.25box`` run
on a cache with 8-bit page boxes (``page_boxes=True``).

Prints, per case, the kernels sorted by total time (µs per step) and launches per step.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections

import torch

import entmaxkv as ekv
from entmaxkv.compiled import GraphedDecodeStep
from entmaxkv.synthetic import SyntheticStream
from decode import loaded
from gpu_check import time_replays

SELECTORS = {
    "Dense": lambda: ekv.Dense(),
    "TopK12.5": lambda: ekv.TopK(coverage=0.125),
    "TopK6.25": lambda: ekv.TopK(coverage=0.0625),
    "TopK3": lambda: ekv.TopK(coverage=0.03),
    "Gaussian": lambda: ekv.Gaussian(),
    "Exact": lambda: ekv.Exact(),
    "ExactCodes4": lambda: ekv.Exact(),
    "ExactCodes8": lambda: ekv.Exact(),
    "TopK12.5box": lambda: ekv.TopK(coverage=0.125),
    "TopK6.25box": lambda: ekv.TopK(coverage=0.0625),
}
KEY_BITS = {"ExactCodes4": 4, "ExactCodes8": 8}  # cases run on a cache with key codes


def cache_options(name: str) -> tuple:
    """(key_bits, page_boxes) of a case's cache: ``...box`` cases run on a cache with page boxes."""
    return KEY_BITS.get(name), name.endswith("box")


def kernel_table(cache, q, k, v, config, steps: int = 5) -> tuple[list[tuple[str, float, int]], int]:
    from torch.profiler import ProfilerActivity, profile

    c = cache.fork()  # each step appends the same token past c's length (decode_step leaves c as it was)
    for _ in range(2):
        ekv.decode_step(c, q, k, v, config)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            ekv.decode_step(c, q, k, v, config)
        torch.cuda.synchronize()
    total: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for e in prof.events():
        if e.device_type.name == "CUDA":
            total[e.name[:90]] += e.device_time / steps
            count[e.name[:90]] += 1
    rows = sorted(((n, t, count[n] // steps) for n, t in total.items()), key=lambda r: -r[1])
    return rows, sum(count.values()) // steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="32768,131072")
    parser.add_argument("--cases", default="1.5:TopK12.5,1:TopK12.5,1.5:Dense")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", default="32/8")
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--compiled", action="store_true", help="also time the compiled step in a graph")
    parser.add_argument("--data", choices=["stream", "needles"], default="stream",
                        help="SyntheticStream, or entmaxkv.synthetic.needle_inputs (--needles runs of --needle-run "
                             "tokens a KV head)")
    parser.add_argument("--needles", type=int, default=16, help="needle runs per KV head (--data needles)")
    parser.add_argument("--room", type=int, default=2048,
                        help="free token slots past the context (a cache of capacity context + room)")
    parser.add_argument("--needle-run", type=int, default=1,
                        help="tokens per needle run (16: whole phrases, what the Gaussian page model can see)")
    args = parser.parse_args()
    hq, hkv = (int(x) for x in args.heads.split("/"))
    summary = []
    for n in (int(x) for x in args.contexts.split(",")):
        if args.data == "needles":
            from entmaxkv.synthetic import needle_inputs

            k, v, q, k_new, v_new = needle_inputs(batch=args.batch, num_kv_heads=hkv, group=hq // hkv, head_dim=128,
                                                  context=n, needles=args.needles,
                                                  run=args.needle_run, seed=n, dtype=torch.float16, device="cuda")
        else:
            stream = SyntheticStream(batch=args.batch, num_kv_heads=hkv, group=hq // hkv, head_dim=128, seed=n,
                                     dtype=torch.float16, device="cuda")
            k, v = stream.prompt(n)
            q, k_new, v_new = stream.step()
        graph = torch.cuda.CUDAGraph()
        torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        with torch.cuda.graph(graph):
            torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        sdpa = time_replays(graph.replay, 50, 5)
        caches = {}
        for bits, boxes in {cache_options(case.split(":")[1]) for case in args.cases.split(",")}:
            caches[bits, boxes] = ekv.prefill(ekv.PagedKVCache.empty(
                batch=args.batch, num_kv_heads=hkv, head_dim=128, capacity=n + args.room, dtype=torch.float16,
                device="cuda", key_bits=bits, page_boxes=boxes), k, v, [n] * args.batch)
        del k, v
        for case in args.cases.split(","):
            alpha, name = case.split(":")
            config = ekv.DecodeConfig(alpha=float(alpha), selector=SELECTORS[name]())
            cache = caches[cache_options(name)]
            rows, launches = kernel_table(cache, q, k_new, v_new, config)
            step = loaded(GraphedDecodeStep(cache.fork(), config, num_q_heads=hq, compile=False), q, k_new, v_new)
            us = time_replays(step.graph.replay, 50, 5)
            del step
            compiled = ""
            if args.compiled:
                step = loaded(GraphedDecodeStep(cache.fork(), config, num_q_heads=hq, compile=True), q, k_new, v_new)
                compiled = f"  compiled {time_replays(step.graph.replay, 50, 5):8.1f} µs"
                del step
            print(f"\n## n={n} α={alpha} {name}: graph step {us:.1f} µs, SDPA {sdpa:.1f} µs, {launches} launches")
            for kname, t, c in rows[: args.top]:
                print(f"  {t:9.1f} µs  x{c:<3d} {kname}")
            summary.append(f"n={n:>7} α={alpha:<4} {name:<9} step {us:8.1f} µs  SDPA {sdpa:6.1f} µs  "
                           f"x{us / sdpa:6.2f}  launches {launches}{compiled}")
        del cache, caches
        torch.cuda.empty_cache()
    print("\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
