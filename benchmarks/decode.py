"""Decode-step latency of every selector against torch SDPA dense decode, on the same shapes
in the same run (CUDA-graph timing, median), with the byte floor and the error vs. the
reference.

    python benchmarks/decode.py --quick            # one device call: B=1, Hq=32/Hkv=8, fp16
    python benchmarks/decode.py                    # the full matrix (several calls)
    python benchmarks/decode.py --contexts 4096,32768 --batches 1,8 --dtypes fp16,bf16 ...

A step is the whole of ``decode_step`` (append + page scores + select + τ + attend), its eager
kernels captured in one CUDA graph with the other layers' steps (``steps_in_turn_us``;
``--compiled`` also times the ``torch.compile``d step in a graph, one layer). SDPA is ``scaled_dot_product_attention`` over the same
K/V (q_len 1, GQA), captured in a graph. The byte floor is (page statistics read + selected
K/V) / measured device copy bandwidth. Inputs come from ``entmaxkv.synthetic.SyntheticStream``
(sink, heavy hitters, outlier channels, recency), or with ``--data needles`` from
``entmaxkv.synthetic.needle_inputs`` (noise keys and a few needles: the inputs on which
Gaussian and Exact can select few pages). ``--layers N`` times every step and SDPA in turn over
N caches of their own storage, all N captured in one CUDA graph, as a model's layers run: with 1
(the default, and every table before session 43) a replay finds in L2 (50 MB) what the last one
read, when it fits — SDPA's K/V at 8K (13.3 against 18.5 µs on the H100) and a sparse step's
bytes at B = 1 up to 128K; N × the step's bytes should be at least ~3× L2 (each row's
``layers_over_l2``). Writes JSON and markdown to --out and draws
latency vs. context as PNG; measures only, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

import entmaxkv as ekv
from entmaxkv.compiled import GraphedDecodeStep
from entmaxkv.synthetic import SyntheticStream, needle_inputs
from gpu_check import time_replays as time_us  # the same CUDA-event median timing (benchmarks/ is on sys.path)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def selectors(alpha: float, coverages: list[float]) -> dict:
    chosen = {"Dense": ekv.Dense()}
    for c in coverages:
        chosen[f"TopK {c:g}%"] = ekv.TopK(coverage=c / 100)
    if alpha > 1:
        chosen["Gaussian"] = ekv.Gaussian()
        chosen["Exact"] = ekv.Exact()
    return chosen


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth, bytes/s counting read + write."""
    x = torch.empty(2 * 1024 ** 3, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    us = time_us(lambda: y.copy_(x), reps=10, rounds=5)
    return 2 * x.numel() / (us * 1e-6)


def run_meta(script: str) -> dict:
    """What a GPU benchmark run records first: date, GPU, versions, the command and the
    measured copy bandwidth (TB/s)."""
    import triton

    return dict(date=time.strftime("%Y-%m-%d"), gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=triton.__version__, command=f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
                copy_bandwidth_TBps=copy_bandwidth() / 1e12)


def graph_of(fn):
    """``fn`` captured in a CUDA graph (warmed up on a side stream first)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def in_turn_us(calls, reps: int, rounds: int, after_capture=None) -> float:
    """Microseconds each of ``calls`` (callables that launch kernels: a layer's step, SDPA over a
    layer's cache) takes when they run in turn, as a model's layers do: all of them captured in
    one CUDA graph, a median over rounds (``time_us``) of its replays, divided by their number.
    Each reads storage of its own, so with enough of them none finds its bytes still in L2.
    ``after_capture`` runs once the graph is captured, before the timed replays (e.g. to poison
    outputs that a check after them reads). One graph, not a graph a layer replayed in turn:
    that form's time a layer grew with the number of graphs, more than L2 explains (SDPA at 8K
    on the H100: 12.7 / 20.9 µs with 1 / 4 graphs in session 43, 45.0 with 64 in session 44;
    one graph: 13.3 / 18.8 / 18.5 with 1 / 4 / 48 layers)."""
    graph = graph_of(lambda: [call() for call in calls])
    if after_capture is not None:
        after_capture()
    return time_us(graph.replay, reps, rounds) / len(calls)


def sdpa_in_turn_us(q, k, v, layers: int, reps: int, rounds: int) -> float:
    """``in_turn_us`` of SDPA decode of q over (k, v) and ``layers`` − 1 copies of them (the
    inputs' own storage is the first layer)."""
    kvs = [(k, v)] + [(k.clone(), v.clone()) for _ in range(layers - 1)]
    return in_turn_us([lambda k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                       for k, v in kvs], reps, rounds)


def steps_in_turn_us(cache, q, k_new, v_new, config, layers: int, reps: int, rounds: int) -> float:
    """``in_turn_us`` of the eager-kernel decode step on ``layers`` forks of the cache (each with
    storage of its own), the same query and new token for each: every replay appends at the
    same slot past the forks' lengths, so the context stays as prefilled. (So a timed step never
    fills a page and writes its statistics or box, as one step in S does in a real decode: a
    small bias in the step's favour.)"""
    caches = [cache.fork() for _ in range(layers)]
    return in_turn_us([lambda c=c: ekv.decode_step(c, q, k_new, v_new, config) for c in caches], reps, rounds)


def loaded(decoder: GraphedDecodeStep, q, k_new, v_new) -> GraphedDecodeStep:
    """The decoder with the stream's step in its input buffers: replays then time real
    queries (the buffers start as zeros: q = 0 ties every score, entmax's worst case)."""
    decoder.q.copy_(q)
    decoder.k_new.copy_(k_new)
    decoder.v_new.copy_(v_new)
    return decoder


def launches_per_step(cache, q, k, v, config) -> int:
    """CUDA kernels one eager step launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    c = cache.fork()
    ekv.decode_step(c, q, k, v, config)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        ekv.decode_step(c.fork(), q, k, v, config)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA" and "Memcpy" not in e.name and "Memset" not in e.name)


def bench_case(args, b, hq, hkv, d, n, dtype_name, alpha, bandwidth, rows, log):
    dtype = DTYPES[dtype_name]
    reps, rounds = args.reps, args.rounds
    if args.data == "needles":
        k, v, q, k_new, v_new = needle_inputs(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, context=n,
                                              needles=args.needles, run=args.needle_run, seed=n, dtype=dtype, device="cuda")
    else:
        stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, seed=n, dtype=dtype,
                                 device="cuda")
        k, v = stream.prompt(n)
        q, k_new, v_new = stream.step()
    sdpa = sdpa_in_turn_us(q, k, v, args.layers, reps, rounds)
    capacity = n + 8 + (reps * (rounds + 1) + 16) * (1 + args.compiled)
    caches = {boxes: ekv.prefill(ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=capacity,
                                                        dtype=dtype, device="cuda", page_boxes=boxes), k, v, [n] * b)
              for boxes in ((False, True) if args.page_boxes else (False,))}
    del k, v
    base = dict(batch=b, hq=hq, hkv=hkv, d=d, context=n, dtype=dtype_name, alpha=alpha, sdpa_us=sdpa, data=args.data,
                layers=args.layers)
    cases = [(name, sel, False) for name, sel in selectors(alpha, args.coverages).items()]
    cases += [(f"{name} box", sel, True) for name, sel, _ in cases if args.page_boxes and isinstance(sel, ekv.TopK)]
    for name, sel, boxes in cases:
        if args.selectors and name.split(" ")[0] not in args.selectors:
            continue
        cache = caches[boxes]
        config = ekv.DecodeConfig(alpha=alpha, selector=sel)
        row = dict(base, selector=name)
        try:
            # correctness of one step vs. the float32 reference on the same cache value
            _, out, info = ekv.decode_step(cache.fork(), q, k_new, v_new, config, with_info=True)
            _, ref = ekv.decode_step(cache.fork(), q, k_new, v_new, ekv.DecodeConfig(alpha, sel, backend="torch"))
            o, r = out.double().flatten(2), ref.double().flatten(2)
            row["rel_err"] = float((o - r).norm() / r.norm())
            row["cosine_min"] = float(torch.nn.functional.cosine_similarity(o, r, dim=-1).min())
            pages = info.page_mask.sum(-1).double()  # [B, Hkv]
            full = cache.seq_lens.double() / cache.page_size
            row["pages_read"] = float((pages / full[:, None]).mean())
            stat_bytes = 2 * d * dtype.itemsize + (2 * d * dtype.itemsize if isinstance(sel, ekv.Gaussian) else 0)
            if boxes:  # the 8-bit box: codes, scale and l1
                stat_bytes = 2 * d + 8
            # the selected pages' K, and their V for softmax only: for α > 1 the kernels read V for
            # the support alone (a few rows a head; not counted). Until session 43 V was counted
            # for every α, which overstated the α > 1 steps' achieved bandwidth (~1.5×)
            kv = 2 if alpha == 1 else 1
            floor_bytes = (cache.num_kv_heads * b * (n / cache.page_size) * (0 if name == "Dense" else stat_bytes)
                           + float(pages.sum()) * cache.page_size * kv * d * dtype.itemsize)
            row["floor_us"] = floor_bytes / bandwidth * 1e6
            # what the layers read in turn, in L2 sizes: below ~3 a replay still finds part of its
            # bytes in L2 (the step's time is then optimistic against a model's)
            row["layers_over_l2"] = args.layers * floor_bytes / torch.cuda.get_device_properties(0).L2_cache_size
            row["launches"] = launches_per_step(cache, q, k_new, v_new, config)
            row["step_us"] = steps_in_turn_us(cache, q, k_new, v_new, config, args.layers, reps, rounds)
            if args.compiled:
                t0 = time.perf_counter()
                decoder = loaded(GraphedDecodeStep(cache.fork(), config, num_q_heads=hq, compile=True), q, k_new, v_new)
                row["compile_s"] = time.perf_counter() - t0
                row["compiled_us"] = time_us(lambda: decoder.graph.replay(), reps, rounds)
                del decoder
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            log(traceback.format_exc())
        torch.cuda.empty_cache()
        rows.append(row)
        log(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--contexts", default="1024,4096,16384,65536,131072")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--heads", default="32/8,32/32", help="Hq/Hkv pairs")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--alphas", default="1,1.5,2")
    parser.add_argument("--coverages", default="6.25,12.5,25,50")
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--data", choices=["stream", "needles"], default="stream",
                        help="SyntheticStream (sink, heavy hitters, outlier channels) or entmaxkv.synthetic."
                             "needle_inputs (the support is a few needles: certified selectors can read little)")
    parser.add_argument("--needles", type=int, default=16, help="needle runs per KV head (--data needles)")
    parser.add_argument("--needle-run", type=int, default=1, help="tokens per needle run (16: whole phrases, "
                                                                  "what the Gaussian page model can see)")
    parser.add_argument("--selectors", default="", help="comma-separated kinds to run (Dense,TopK,Gaussian,Exact); "
                                                        "default all")
    parser.add_argument("--page-boxes", action="store_true",
                        help="also time every TopK on a cache with 8-bit page boxes (rows named '... box')")
    parser.add_argument("--layers", type=int, default=1,
                        help="time each step (and SDPA) in turn over this many caches of their own storage, as a "
                             "model's layers run: with 1 a replay finds the bytes the last one read in L2 (50 MB "
                             "on the H100 and H200) when they fit, which flatters SDPA at 8K-16K and a sparse "
                             "step at B = 1 (session 43). Choose N so that N x the step's bytes is >= ~3x L2: "
                             "each row's layers_over_l2 says what it was")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-gib", type=float, default=40.0, help="skip cases whose K/V exceed this")
    parser.add_argument("--out", default=os.environ.get("OUT", "decode_bench_out"))
    args = parser.parse_args()
    args.selectors = [x for x in args.selectors.split(",") if x]
    if args.quick:
        args.contexts, args.batches, args.heads, args.dtypes = "4096,32768,131072", "1", "32/8", "fp16"
        args.alphas, args.coverages = "1.5", "6.25,12.5"
    args.coverages = [float(c) for c in args.coverages.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(msg)
        print(msg, flush=True)

    meta = run_meta("decode.py")
    bandwidth = meta["copy_bandwidth_TBps"] * 1e12
    log(json.dumps(meta))
    rows: list[dict] = []
    for dtype_name in args.dtypes.split(","):
        for heads in args.heads.split(","):
            hq, hkv = (int(x) for x in heads.split("/"))
            for b in (int(x) for x in args.batches.split(",")):
                for n in (int(x) for x in args.contexts.split(",")):
                    if 2 * b * hkv * n * 128 * 2 * args.layers / 2 ** 30 > args.max_gib:
                        continue
                    for alpha in (float(a) for a in args.alphas.split(",")):
                        bench_case(args, b, hq, hkv, 128, n, dtype_name, alpha, bandwidth, rows, log)
                        (out / "decode.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    table = ["| B | Hq/Hkv | dtype | context | α | selector | SDPA µs | step µs | × SDPA | floor µs | pages read | launches | rel. err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        step = r.get("step_us", float("nan"))
        table.append(f"| {r['batch']} | {r['hq']}/{r['hkv']} | {r['dtype']} | {r['context']} | {r['alpha']:g} | {r['selector']} | "
                     f"{r['sdpa_us']:.1f} | {step:.1f} | {step / r['sdpa_us']:.2f} | {r.get('floor_us', float('nan')):.1f} | "
                     f"{r.get('pages_read', float('nan')):.3f} | {r.get('launches', '-')} | {r.get('rel_err', float('nan')):.1e} |"
                     + (f" compiled {r['compiled_us']:.1f} µs" if "compiled_us" in r else "") + (f" {r['error']}" if "error" in r else ""))
    inputs = f"Inputs: `{args.data}`" + (f" ({args.needles} runs of {args.needle_run} needle tokens per KV head)"
                                         if args.data == "needles" else "") + "."
    (out / "decode.md").write_text("\n".join([json.dumps(meta), "", inputs, ""] + table) + "\n")
    (out / "decode.log").write_text("\n".join(lines))
    try:
        plot(rows, out / "decode.png")
    except Exception as err:  # the plot is a convenience; the table is the result
        log(f"plot failed: {err}")
    print("\n".join(table))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    key = lambda r: (r["batch"], r["hq"], r["hkv"], r["dtype"], r["alpha"])  # noqa: E731
    first = key(rows[0])
    chosen = [r for r in rows if key(r) == first and "step_us" in r]
    for name in dict.fromkeys(r["selector"] for r in chosen):
        pts = sorted((r["context"], r["step_us"]) for r in chosen if r["selector"] == name)
        ax.plot(*zip(*pts), marker="o", label=name)
    sdpa = sorted({(r["context"], r["sdpa_us"]) for r in chosen})
    ax.plot(*zip(*sdpa), "k--", label="torch SDPA (dense)")
    floor = sorted((r["context"], r["floor_us"]) for r in chosen if r["selector"] == "TopK 12.5%")
    if floor:
        ax.plot(*zip(*floor), "k:", label="byte floor, TopK 12.5%")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("µs per decode step")
    ax.set_title(f"B={first[0]}, Hq={first[1]}, Hkv={first[2]}, {first[3]}, α={first[4]:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
