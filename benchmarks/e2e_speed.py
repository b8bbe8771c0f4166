"""End-to-end decode speed of a Llama-3.1-8B-shaped model (random weights) through the
functional step (``entmaxkv.compiled.llama``), graph-captured generation on one GPU.

    python benchmarks/e2e_speed.py                  # H200: 8K/32K/64K/128K, writes results/
    python benchmarks/e2e_speed.py --smoke          # tiny model on the CPU, eager, prints only
    python benchmarks/e2e_speed.py --contexts 8192 --variants none sdpa   # one slice per call

Each (context, variant) compiles the whole 32-layer step with inductor before capture, which
takes minutes: run a few per call (the device tool allows 10 minutes a command), or pass
``--no-compile`` to capture the eager kernels as they are. Results of one call go to
results/e2e-speed-<date>-<contexts>.{json,md}.

Per context length, in the same run, the same model step with these attention variants:
    topk         EntmaxKV decode_step, TopK 12.5% (alpha 1.5)
    topk1        EntmaxKV decode_step, TopK 12.5% (alpha 1: softmax over the selected pages)
    dense        EntmaxKV decode_step, Dense (alpha 1.5): entmax over every token
    flash        FlashAttention-2 (torch's ``_flash_attention_forward``, varlen with
                 ``seqused_k``) over the same storage: exact dense softmax over each sequence's
                 tokens, GQA native, graph-capturable — the dense baseline
    sdpa         torch SDPA (``enable_gqa``, no mask: its flash-decode kernel, as in decode.py)
                 over a fixed window of context + steps slots. Timing only: the window's
                 not-yet-written slots are attended too (a 34-token difference in cost)
    sdpa_masked  torch SDPA over the whole preallocated storage with a length mask (gpt-fast's
                 way): a mask rules out the flash kernel, so this runs the memory-efficient
                 kernel — shown to explain the slow dense baseline of the first run
    none         append only, no attention (out = q): the rest of the model step
Every variant appends the new token the way ``decode_step`` does (one ``append_token`` launch
on CUDA), so t(variant) − t(none) is the attention alone.
tokens/s = batch x replayed steps / time of the replays (capture and compile excluded); the
attention share of a step is 1 - t(none) / t(variant). Random weights: the text is noise, the
work per token is the real model's (32 layers, 32/8 heads, D = 128, hidden 4096, MLP 14336,
vocab 128256, bf16). The KV cache is filled with random keys/values (prefill speed is not measured).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from entmaxkv.backend import append, uses_kernels

LLAMA8B = LlamaSpec(num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, hidden=4096, vocab=128256,
                    rms_eps=1e-5)
TINY = LlamaSpec(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, hidden=64, vocab=128, rms_eps=1e-5)


def append_as_decode_step(cache, k, v):
    """The cache append ``decode_step`` makes (the ``append_token`` op on CUDA, the reference
    elsewhere), so every variant pays the same append and the differences are attention only."""
    return append(cache, k, v, uses_kernels(cache.device, cache.dtype, "auto"))


def sdpa_masked_attend(cache, q, k, v):
    """Dense softmax with torch SDPA over the whole preallocated storage and a length mask, as
    gpt-fast does it. The G query heads of a KV head go in as G query rows of that head."""
    cache, _ = append_as_decode_step(cache, k, v)
    b, hq, _, d = q.shape
    hkv = cache.num_kv_heads
    mask = cache.token_mask()[:, None, None, :]  # [B, 1, 1, N]
    out = F.scaled_dot_product_attention(q.view(b, hkv, hq // hkv, d), cache.keys(), cache.values(),
                                         attn_mask=mask, scale=d ** -0.5)
    return cache, out.view(b, hq, 1, d)


def flash_attend(cache, q, k, v):
    """Dense softmax with FlashAttention-2's varlen entry point: every sequence's first
    ``seq_lens`` slots (``seqused_k``, on the device), no mask tensor, GQA native. One
    sequence (the storage is head-major: a batch of them is not one varlen token axis)."""
    cache, _ = append_as_decode_step(cache, k, v)
    b, hq, _, d = q.shape
    if b != 1:
        raise ValueError(f"flash_attend takes batch 1, got q of shape {tuple(q.shape)}")
    n = cache.num_pages * cache.page_size
    keys = cache.keys()[0].transpose(0, 1)  # [N, Hkv, D], a view
    values = cache.values()[0].transpose(0, 1)
    cum_q = torch.arange(2, dtype=torch.int32, device=q.device)  # [0, 1], built on the device (graph capture)
    cum_k = cum_q * n
    out = torch.ops.aten._flash_attention_forward(
        q[0, :, 0][None], keys, values, cum_q, cum_k, 1, n, 0.0, False, False, scale=d ** -0.5,
        seqused_k=cache.seq_lens.to(torch.int32))[0]
    return cache, out.view(b, hq, 1, d)


def window_sdpa(window: int):
    """Torch SDPA's flash-decode kernel over the first ``window`` slots, no mask (timing only)."""
    def attend(cache, q, k, v):
        cache, _ = append_as_decode_step(cache, k, v)
        keys, values = cache.keys()[:, :, :window], cache.values()[:, :, :window]
        return cache, F.scaled_dot_product_attention(q, keys, values, enable_gqa=True, scale=q.shape[-1] ** -0.5)
    return attend


def no_attend(cache, q, k, v):
    cache, _ = append_as_decode_step(cache, k, v)
    return cache, q


def variants(scale: float, window: int) -> dict:
    def entmaxkv(config):
        return lambda cache, q, k, v: ekv.decode_step(cache, q, k, v, config)

    return {"topk": entmaxkv(ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(coverage=0.125), scale=scale)),
            "topk1": entmaxkv(ekv.DecodeConfig(alpha=1.0, selector=ekv.TopK(coverage=0.125), scale=scale)),
            "dense": entmaxkv(ekv.DecodeConfig(alpha=1.5, selector=ekv.Dense(), scale=scale)),
            "flash": flash_attend, "sdpa": window_sdpa(window), "sdpa_masked": sdpa_masked_attend,
            "none": no_attend}


def check_flash(spec: LlamaSpec, context: int, dtype, device) -> float:
    """Max |flash − masked SDPA| of one attention call at ``context`` tokens (the flash
    baseline must compute what the masked one does)."""
    cache = filled_caches(dataclasses.replace(spec, num_layers=1), 1, context - 1, context + 16, dtype, device)[0]
    g = torch.Generator(device=device).manual_seed(2)
    q, k, v = (torch.randn(1, h, 1, spec.head_dim, generator=g, device=device, dtype=torch.float32).to(dtype)
               for h in (spec.num_heads, spec.num_kv_heads, spec.num_kv_heads))
    return (flash_attend(cache, q, k, v)[1].float() - sdpa_masked_attend(cache, q, k, v)[1].float()).abs().max().item()


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


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, CPU, eager")
    parser.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    parser.add_argument("--steps", type=int, default=34)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["none", "flash", "sdpa", "topk", "topk1", "dense"])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--no-compile", action="store_true", help="capture the eager step (no inductor)")
    args = parser.parse_args(argv)
    if args.smoke:
        spec, inter, dtype, device, contexts, steps, graphed = TINY, 128, torch.float32, "cpu", [100, 300], 4, False
        args.variants = [v for v in args.variants if v != "flash"]  # FlashAttention is CUDA-only
    else:
        if not torch.cuda.is_available():
            sys.exit("needs a GPU (use --smoke on the CPU)")
        spec, inter, dtype, device, contexts, steps, graphed = (LLAMA8B, 14336, torch.bfloat16, "cuda",
                                                                args.contexts, args.steps, True)
    params = random_params(spec, inter, dtype=dtype, device=device)
    rows = []
    for context in contexts:
        attends = variants(spec.head_dim ** -0.5, context + steps + 8)
        times = {}
        if "flash" in args.variants and device == "cuda":
            print(f"{context}: max |flash - masked SDPA| = {check_flash(spec, context, dtype, device):.3g}", flush=True)
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
            "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton_version(), "python": platform.python_version(),
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
