"""Decode-step cost in three modes: eager, compile_decode_step and GraphedDecodeStep.

    python benchmarks/compile_modes.py [--contexts 1024,65536] [--batches 1,8]
                                       [--selectors dense,topk,gaussian] [--ops auto|torch] [--out DIR]
    python benchmarks/compile_modes.py --smoke      # tiny sizes, runs on a CPU

For each context length, batch size and selector (α = 1.5, fp16, Hq = 32, Hkv = 8, D = 128):
- per-step time: the mean over ``--reps`` steps of a loop that feeds a new token each step
  (CUDA events on a GPU, wall clock on a CPU), median over ``--rounds`` rounds;
- kernel launches per step, from torch.profiler over ``--profile-steps`` steps: GPU kernels
  per step (CUDA activity), and host-side launch calls per step (cudaLaunchKernel /
  cuLaunchKernel / cudaGraphLaunch) — a replayed graph is one host call however many kernels
  it holds. On a CPU the profiler counts aten ops per step instead (no kernels there);
- compile time (first call of the compiled step) and build time of the graphed step (warm-up,
  compile and capture). Dynamo's cache is reset before each compiled mode, so every build
  compiles from scratch, unless ``--reuse-compile``.

Writes ``compile_modes.json`` and ``compile_modes.md`` under ``--out`` (default $OUT) after every
row, so a run cut short keeps what it measured, and prints a short table last. Measures only:
nothing here asserts a time.

Every compiled row compiles from scratch (tens of seconds with inductor), so one context per call
keeps a run within a 10-minute limit: ``--contexts 1024`` then ``--contexts 65536``. ``--ops``
is the step's ``DecodeConfig.backend``: ``auto`` (the Triton ops on CUDA) or ``torch`` (the
pure-torch reference, whose compile time is what ``--selectors gaussian`` used to blow up). If
``kernels_per_step`` reads 0 for the graphed mode, the profiler did not trace kernels inside
graph replays; ``host_launches_per_step`` then still shows the one graph launch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import entmaxkv as ekv
from entmaxkv.compiled import GraphedDecodeStep, compile_decode_step

SELECTORS = {
    "dense": ("Dense", lambda: ekv.Dense()),
    "topk": ("TopK 12.5%", lambda: ekv.TopK(coverage=0.125)),
    "gaussian": ("Gaussian", lambda: ekv.Gaussian()),
}
HOST_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Inputs:
    """Pre-drawn per-step inputs, cycled: drawing them is not part of a step."""

    def __init__(self, batch, hq, hkv, d, dtype, device, count=16, seed=0):
        g = torch.Generator(device="cpu").manual_seed(seed)

        def draw(h):
            return torch.randn(batch, h, 1, d, generator=g).to(device=device, dtype=dtype)

        self.items = [(draw(hq), draw(hkv), draw(hkv)) for _ in range(count)]
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def time_steps(step, inputs: Inputs, device, reps: int, rounds: int) -> float:
    """Median over rounds of the mean time of ``reps`` steps, in microseconds."""
    for _ in range(3):
        step(*inputs.next())
    sync(device)
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                step(*inputs.next())
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) * 1000 / reps)
        else:
            t0 = time.perf_counter()
            for _ in range(reps):
                step(*inputs.next())
            times.append((time.perf_counter() - t0) * 1e6 / reps)
    return statistics.median(times)


def count_launches(step, inputs: Inputs, device, steps: int) -> dict:
    """Kernels (GPU) and host launch calls per step, or aten ops per step on a CPU."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(*inputs.next())
        sync(device)
    events = prof.events()
    if device.type != "cuda":
        return {"aten_ops_per_step": sum(e.name.startswith("aten::") for e in events) / steps}
    gpu = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in events)
    host = sum(e.name in HOST_LAUNCHES for e in events)
    return {"kernels_per_step": gpu / steps, "host_launches_per_step": host / steps}


def build(mode, cache, config, hq, inputs, device, args):
    """A step function ``f(q, k, v)`` that advances its own cache, and its build time (s)."""
    if mode != "eager" and not args.reuse_compile:
        torch._dynamo.reset()
    t0 = time.perf_counter()
    if mode == "eager":
        state = {"cache": cache}

        def step(q, k, v):
            state["cache"], out = ekv.decode_step(state["cache"], q, k, v, config)
            return out

        return step, 0.0
    if mode == "compiled":
        kwargs = {"backend": args.backend} if args.backend else {}
        compiled = compile_decode_step(config, **kwargs)
        state = {"cache": cache.without_host_len()}

        def step(q, k, v):
            state["cache"], out = compiled(state["cache"], q, k, v)
            return out

        step(*inputs.next())  # the first call compiles
        sync(device)
        return step, time.perf_counter() - t0
    decoder = GraphedDecodeStep(cache, config, num_q_heads=hq)  # warm-up, compile, capture
    decoder(*inputs.next())
    sync(device)
    return decoder, time.perf_counter() - t0


def run_row(context, batch, selector_key, mode, args, device) -> dict:
    hq, hkv, d, dtype = args.q_heads, args.kv_heads, args.head_dim, args.dtype
    steps_needed = 3 + args.reps * args.rounds + args.profile_steps + 8
    g = torch.Generator(device=device).manual_seed(context)  # on the device: 64K x B=8 is ~1 GB per tensor
    k = torch.randn(batch, hkv, context, d, generator=g, device=device, dtype=dtype)
    v = torch.randn(batch, hkv, context, d, generator=g, device=device, dtype=dtype)
    cache = ekv.PagedKVCache.empty(batch=batch, num_kv_heads=hkv, head_dim=d, capacity=context + steps_needed,
                                   dtype=dtype, device=device)
    cache = ekv.prefill(cache, k, v, [context] * batch)
    del k, v
    name, make = SELECTORS[selector_key]
    config = ekv.DecodeConfig(alpha=1.5, selector=make(), backend=args.ops)
    inputs = Inputs(batch, hq, hkv, d, dtype, device)
    step, build_s = build(mode, cache, config, hq, inputs, device, args)
    row = {"context": context, "batch": batch, "selector": name, "mode": mode, "ops": args.ops,
           "build_s": build_s, "step_us": time_steps(step, inputs, device, args.reps, args.rounds)}
    row |= count_launches(step, inputs, device, args.profile_steps)
    return row


def markdown(meta: dict, rows: list[dict]) -> str:
    launch_key = "kernels_per_step" if meta["device"].startswith("cuda") else "aten_ops_per_step"
    lines = [f"# Decode step: eager vs. compiled vs. CUDA graph ({meta['date']})", "",
             f"`{meta['command']}` on {meta['device_name']}, torch {meta['torch']}, {meta['shape']}, "
             f"ops: {meta.get('ops', 'auto')}.", "",
             f"| context | B | selector | mode | step µs | {launch_key.replace('_', ' ')} | host launches / step "
             "| compile / capture s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['context']} | {r['batch']} | {r['selector']} | {r['mode']} | failed: "
                         f"{r['error'][:80]} | | | |")
            continue
        host = r.get("host_launches_per_step")
        lines.append(f"| {r['context']} | {r['batch']} | {r['selector']} | {r['mode']} | {r['step_us']:.1f} | "
                     f"{r.get(launch_key, float('nan')):.1f} | {'–' if host is None else f'{host:.1f}'} | "
                     f"{r['build_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="1024,65536")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--selectors", default="dense,topk", help=f"comma list of {sorted(SELECTORS)}")
    parser.add_argument("--modes", default="eager,compiled,graphed")
    parser.add_argument("--ops", default="auto", choices=["auto", "torch", "triton"],
                        help="DecodeConfig.backend: the Triton ops on CUDA (auto) or the torch reference")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--backend", default=None, help="torch.compile backend (default: inductor)")
    parser.add_argument("--reuse-compile", action="store_true", help="do not reset dynamo between builds")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; runs on a CPU (graphed mode needs CUDA)")
    parser.add_argument("--out", default=os.environ.get("OUT", "compile_modes_out"))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.q_heads, args.kv_heads, args.head_dim, args.dtype = 32, 8, 128, torch.float16
    if args.smoke:
        args.contexts, args.batches, args.reps, args.rounds, args.profile_steps = "64", "1,2", 3, 2, 2
        args.q_heads, args.kv_heads, args.head_dim = 4, 2, 16
        args.dtype = torch.float16 if device.type == "cuda" else torch.float32
        args.backend = args.backend or ("eager" if device.type == "cpu" else None)
    modes = [m for m in args.modes.split(",") if device.type == "cuda" or m != "graphed"]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(device=str(device), device_name=torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
                torch=torch.__version__, python=sys.version.split()[0], date=time.strftime("%Y-%m-%d"),
                command="python benchmarks/compile_modes.py " + " ".join(sys.argv[1:] if argv is None else argv),
                shape=f"alpha 1.5, Hq {args.q_heads}, Hkv {args.kv_heads}, D {args.head_dim}, {str(args.dtype)[6:]}",
                backend=args.backend or "inductor", reuse_compile=args.reuse_compile, ops=args.ops,
                skipped=[] if device.type == "cuda" else ["graphed (needs CUDA)"])
    rows: list[dict] = []
    for context in (int(x) for x in args.contexts.split(",")):
        for batch in (int(x) for x in args.batches.split(",")):
            for selector in args.selectors.split(","):
                for mode in modes:
                    try:
                        row = run_row(context, batch, selector, mode, args, device)
                    except Exception as err:  # record and go on: one failing mode must not hide the rest
                        row = {"context": context, "batch": batch, "selector": SELECTORS[selector][0], "mode": mode,
                               "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "traceback"}, default=str), flush=True)
                    (out_dir / "compile_modes.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1,
                                                                           default=str))
                    (out_dir / "compile_modes.md").write_text(markdown(meta, rows))
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    print()
    print(markdown(meta, rows))


if __name__ == "__main__":
    main()
