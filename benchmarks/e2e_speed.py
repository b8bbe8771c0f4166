"""End-to-end decode speed of a Llama-3.1-8B-shaped model (random weights) through the
functional step (``entmaxkv.compiled.llama``), graph-captured generation on one GPU.

    python benchmarks/e2e_speed.py                  # H200: 8K/32K/64K/128K, writes results/
    python benchmarks/e2e_speed.py --smoke          # tiny model on the CPU, eager, prints only
    python benchmarks/e2e_speed.py --contexts 8192 --variants none sdpa   # one slice per call

Each (context, variant) compiles the whole 32-layer step with inductor before capture, which
takes minutes: run a few per call (the device tool allows 10 minutes a command), or pass
``--no-compile`` to capture the eager kernels as they are. Results of one call go to
results/e2e-speed-<date>-<contexts>.{json,md}.

Per context length, in the same run, the same model step with four attention variants:
    topk      EntmaxKV decode_step, TopK 12.5% (alpha 1.5)
    dense     EntmaxKV decode_step, Dense (alpha 1.5): the reference path reads every token
    sdpa      torch SDPA over the same paged storage (length mask, GQA): the dense baseline
    none      append only, no attention (out = q): the rest of the model step
tokens/s = batch x replayed steps / time of the replays (capture and compile excluded); the
attention share of a step is 1 - t(none) / t(variant). Random weights: the text is noise, the
work per token is the real model's (32 layers, 32/8 heads, D = 128, hidden 4096, MLP 14336,
vocab 128256, bf16). The KV cache is filled with random keys/values (prefill speed is not measured).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import entmaxkv as ekv
from entmaxkv.compiled import GraphedLoop, LlamaSpec, Sampling, forward_token, random_params, token_step
from entmaxkv.state import append_token

LLAMA8B = LlamaSpec(num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, hidden=4096, vocab=128256,
                    rms_eps=1e-5)
TINY = LlamaSpec(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, hidden=64, vocab=128, rms_eps=1e-5)


def sdpa_attend(cache, q, k, v):
    """Dense softmax attention with torch SDPA over the paged storage, as gpt-fast does it: the
    whole preallocated cache with a length mask. The G query heads of a KV head go in as G query
    rows of that head (no K/V repeat, and a kernel that takes a mask)."""
    cache, _ = append_token(cache, k, v)
    b, hq, _, d = q.shape
    hkv = cache.num_kv_heads
    mask = cache.token_mask()[:, None, None, :]  # [B, 1, 1, N]
    out = F.scaled_dot_product_attention(q.view(b, hkv, hq // hkv, d), cache.keys(), cache.values(),
                                         attn_mask=mask, scale=d ** -0.5)
    return cache, out.view(b, hq, 1, d)


def no_attend(cache, q, k, v):
    cache, _ = append_token(cache, k, v)
    return cache, q


def variants(scale: float) -> dict:
    def entmaxkv(config):
        return lambda cache, q, k, v: ekv.decode_step(cache, q, k, v, config)

    return {"topk": entmaxkv(ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(coverage=0.125), scale=scale)),
            "dense": entmaxkv(ekv.DecodeConfig(alpha=1.5, selector=ekv.Dense(), scale=scale)),
            "sdpa": sdpa_attend, "none": no_attend}


def filled_caches(spec: LlamaSpec, batch: int, context: int, capacity: int, dtype, device) -> list:
    g = torch.Generator(device=device).manual_seed(1)
    caches = []
    for _ in range(spec.num_layers):
        cache = ekv.PagedKVCache.empty(batch=batch, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                                       capacity=capacity, dtype=dtype, device=device)
        shape = (batch, spec.num_kv_heads, context, spec.head_dim)
        k = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)
        v = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)
        caches.append(ekv.prefill(cache, k, v, [context] * batch))
        del k, v
    return caches


def time_variant(spec, params, attend, batch, context, steps, dtype, device, graphed: bool,
                 compile: bool = True) -> float:
    """Seconds per decode step (one token for every row)."""
    caches = filled_caches(spec, batch, context, context + steps + 8, dtype, device)
    step = lambda p, c, t, pos: forward_token(p, c, t, pos, spec, attend)  # noqa: E731
    body = token_step(step, Sampling(), None)
    token = torch.zeros(batch, dtype=torch.int64, device=device)
    pos = torch.full((batch,), context, dtype=torch.int64, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out = torch.zeros(batch, steps + 1, dtype=torch.int64, device=device)
    with torch.no_grad():
        if not graphed:
            import time
            t0 = time.perf_counter()
            for _ in range(steps):
                caches, token, pos, done = body(params, caches, token, pos, done)
            return (time.perf_counter() - t0) / steps
        loop = GraphedLoop(body, params, caches, token, pos, done, out, compile=compile)
        loop.replay(2)  # first replays may still page in memory
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loop.replay(steps - 2)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / (steps - 2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, CPU, eager")
    parser.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    parser.add_argument("--steps", type=int, default=34)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["none", "sdpa", "topk", "dense"])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--no-compile", action="store_true", help="capture the eager step (no inductor)")
    args = parser.parse_args(argv)
    if args.smoke:
        spec, inter, dtype, device, contexts, steps, graphed = TINY, 128, torch.float32, "cpu", [100, 300], 4, False
    else:
        if not torch.cuda.is_available():
            sys.exit("needs a GPU (use --smoke on the CPU)")
        spec, inter, dtype, device, contexts, steps, graphed = (LLAMA8B, 14336, torch.bfloat16, "cuda",
                                                                args.contexts, args.steps, True)
    params = random_params(spec, inter, dtype=dtype, device=device)
    attends = variants(spec.head_dim ** -0.5)
    rows = []
    for context in contexts:
        times = {}
        for name in args.variants:
            try:
                times[name] = time_variant(spec, params, attends[name], args.batch, context, steps, dtype, device,
                                           graphed, compile=not args.no_compile)
            except torch.OutOfMemoryError as err:  # report, keep going with the other variants
                times[name] = math.nan
                print(f"{context} {name}: out of memory ({err})", file=sys.stderr)
            if device == "cuda":
                torch.cuda.empty_cache()
        row = {"context": context, **{f"{k}_ms": v * 1e3 for k, v in times.items()},
               **{f"{k}_tok_s": args.batch / v for k, v in times.items()}}
        for k, v in times.items():
            if k != "none" and "none" in times:
                row[f"{k}_attention_share"] = 1 - times["none"] / v
        rows.append(row)
        print(json.dumps(row), flush=True)

    header = f"{'context':>8} " + " ".join(f"{v + ' tok/s':>12} {'attn':>6}" for v in args.variants)
    print(header)
    for r in rows:
        print(f"{r['context']:>8} " + " ".join(
            f"{r[v + '_tok_s']:>12.1f} {r.get(v + '_attention_share', 0.0):>6.0%}" for v in args.variants))
    if args.smoke:
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    meta = {"date": stamp, "command": "python benchmarks/e2e_speed.py " + " ".join(argv or sys.argv[1:]),
            "device": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
            "spec": LLAMA8B.__dict__, "batch": args.batch, "steps": steps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{stamp}-" + "-".join(str(c // 1024) + "k" for c in contexts)
    meta["compiled"] = not args.no_compile
    (out / f"e2e-speed-{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# End-to-end decode speed, Llama-3.1-8B shape, random weights ({stamp})", "",
             f"`{meta['command']}` on {meta['device']}, torch {meta['torch']}, batch {args.batch}, "
             "graph-captured generation (one CUDA graph per token step), bf16, "
             + ("inductor-compiled step." if meta["compiled"] else "eager kernels captured (no inductor).")
             + " Attention share = 1 - t(none) / t(variant).", "",
             "| context | " + " | ".join(f"{v} tok/s | {v} attention share" for v in args.variants) + " |",
             "|---|" + "---|---|" * len(args.variants)]
    for r in rows:
        lines.append(f"| {r['context']} | " + " | ".join(
            f"{r[v + '_tok_s']:.1f} | {r.get(v + '_attention_share', 0.0):.0%}" for v in args.variants) + " |")
    (out / f"e2e-speed-{tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
