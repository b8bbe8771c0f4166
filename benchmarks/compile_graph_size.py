"""How big a compiled decode step's graph is, and how long it takes to compile.

    python benchmarks/compile_graph_size.py [--selectors dense,topk,gaussian,...] [--alphas 1.5,1.25]
                                            [--backends aot_eager,inductor] [--ops torch] [--out DIR]

For each selector and α, ``compile_decode_step(config, backend=...)`` is built from scratch
(``torch._dynamo.reset()``) and called once on a small cache (B = 2, Hkv = 2, Hq = 8, D = 16,
page size 16, 177 tokens, float32; on the device when CUDA is there). Reported per row:
- ``fx_nodes``: nodes of the graph dynamo hands the backend, and of each nested subgraph
  (``torch.compiler.nested_compile_region`` bodies appear once, however often they are called);
- ``dynamo_s``: the first call with a backend that only counts nodes (tracing alone);
- ``<backend>_s``: the first call with that backend (tracing + compiling + running once).

``--ops torch`` compiles the pure-torch reference path (``DecodeConfig(backend="torch")``), where the
Gaussian τ̂ solver's Python loops are traced; ``--ops auto`` the path a CUDA cache takes (the Triton
ops; on a CPU that needs TRITON_INTERPRET=1 and is slow). Measures only; writes
``compile_graph_size.json`` and ``.md`` under ``--out`` (default $OUT) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import entmaxkv as ekv
from entmaxkv.compiled import compile_decode_step

SELECTORS = {
    "dense": lambda: ekv.Dense(),
    "topk": lambda: ekv.TopK(coverage=0.25),
    "gaussian": lambda: ekv.Gaussian(),
    "gaussian-corrected": lambda: ekv.Gaussian(tau_mode="corrected"),
    "exact": lambda: ekv.Exact(max_pages=4),
}


def node_counter(into: list) -> object:
    """A torch.compile backend that records graph sizes and runs the graph as traced."""

    def backend(gm: torch.fx.GraphModule, example_inputs):
        into.append(len(gm.graph.nodes))
        into.extend(len(m.graph.nodes) for name, m in gm.named_modules() if name and hasattr(m, "graph"))
        return gm.forward

    return backend


def first_call_seconds(selector: str, alpha: float, backend, ops: str, device: torch.device) -> float:
    torch._dynamo.reset()
    g = torch.Generator(device="cpu").manual_seed(0)
    b, hkv, hq, d, t = 2, 2, 8, 16, 177
    k, v = (torch.randn(b, hkv, t, d, generator=g).to(device) for _ in range(2))
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=t + 32, page_size=16,
                                   dtype=torch.float32, device=device)
    cache = ekv.prefill(cache, k, v, [t, t - 50]).without_host_len()
    q = torch.randn(b, hq, 1, d, generator=g).to(device)
    kn, vn = (torch.randn(b, hkv, 1, d, generator=g).to(device) for _ in range(2))
    step = compile_decode_step(ekv.DecodeConfig(alpha=alpha, selector=SELECTORS[selector](), backend=ops),
                               backend=backend)
    t0 = time.perf_counter()
    _, out = step(cache, q, kn, vn)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if not torch.isfinite(out).all():
        raise RuntimeError(f"{selector} alpha={alpha}: non-finite output")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selectors", default="dense,topk,gaussian,gaussian-corrected")
    parser.add_argument("--alphas", default="1.5,1.25")
    parser.add_argument("--backends", default="aot_eager", help="comma list of torch.compile backends")
    parser.add_argument("--ops", default="torch", choices=["torch", "auto", "triton"])
    parser.add_argument("--out", default=os.environ.get("OUT", "compile_graph_size_out"))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = [b for b in args.backends.split(",") if b]
    if device.type == "cpu" and args.ops != "torch":
        # Triton's interpreter needs real data: keep each op one opaque node (../shared/PLATFORM.md)
        torch._functorch.config.decompose_custom_triton_ops = False
    rows = []
    for selector in args.selectors.split(","):
        for alpha in (float(a) for a in args.alphas.split(",")):
            nodes: list[int] = []
            row = {"selector": selector, "alpha": alpha,
                   "dynamo_s": first_call_seconds(selector, alpha, node_counter(nodes), args.ops, device)}
            row["fx_nodes"] = nodes[0] if nodes else None
            row["subgraph_nodes"] = nodes[1:]
            for backend in backends:
                row[f"{backend}_s"] = first_call_seconds(selector, alpha, backend, args.ops, device)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "CPU", torch=torch.__version__,
                ops=args.ops, date=time.strftime("%Y-%m-%d %H:%M"),
                command="python benchmarks/compile_graph_size.py " + " ".join(sys.argv[1:] if argv is None else argv))
    lines = [f"`{meta['command']}` on {meta['device']}, torch {meta['torch']}, {meta['date']}", "",
             "| " + " | ".join(["selector", "α", "FX nodes", "subgraph nodes", "dynamo s"]
                               + [f"{b} s" for b in backends]) + " |",
             "|---" * (5 + len(backends)) + "|"]
    for r in rows:
        cells = [r["selector"], r["alpha"], r["fx_nodes"], r["subgraph_nodes"] or "–", f"{r['dynamo_s']:.1f}"]
        lines.append("| " + " | ".join(str(c) for c in cells + [f"{r[f'{b}_s']:.1f}" for b in backends]) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_graph_size.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    (out / "compile_graph_size.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
