"""Does the data set the cost of an α > 1 step? The same step on `decode.py`'s data and on
`e2e_speed.py`'s random-weight data, with its per-kernel times.

    cd benchmarks && python e2e_data_gpu.py --contexts 8192,131072
    cd benchmarks && python e2e_data_gpu.py --variants "sparse_decode.V_SUPPORT_FIRST=False;base"
    TRITON_INTERPRET=1 python e2e_data_gpu.py --dry --contexts 2048   # the inputs and steps on the CPU

Per context and data (B = 1, Hq/Hkv = 32/8, D = 128, bf16):

- ``stream``: `decode.py`'s ``SyntheticStream`` (seed = context);
- ``model``: `e2e_speed.py`'s data. The cache's K and V are ``randn``; q and the new token's
  K/V come from one random-weight Llama-8B layer (``random_params``: std 0.02 weights after
  RMSNorm, RoPE at the context's position). Its scores are close to iid N(0, 1.26²);
- ``model_x3``: the same with q scaled by 3 (peaked scores).

For each ``--cases`` entry (``α:selector``) and ``--variants`` entry (kernel module constants
flipped, as in `step_variants_gpu.py`), it reports the CUDA-graph time of the eager-kernel
step (``GraphedDecodeStep``, median of replays, as `decode.py`) and `profile_step.py`'s
per-kernel table, and the largest difference of the step's output from the first variant's
(a variant that breaks the step shows there). Per data it also prints the survivors of a
dense pass at α = 1.5: the largest number, over query heads, of tokens within 1/(α − 1) of
the head's best score over the whole cache. These are what Dense's τ kernel gathers; TopK's
are those among its selected pages.

Session 31 (CPU only, `raw-2026-12-03-s31/e2e-cpu/`): a worst head has 141 such tokens at
8K and 313–549 at 128K under TopK 12.5% on the model's data, against 5–9 on the stream's. This
script is the GPU check of that explanation of the model's per-layer α = 1.5 excess; session
32 ran it (perf-log row 131): the τ kernel took 42 of the model's 98 µs TopK step at 128K,
16 with ``V_SUPPORT_FIRST``, now the default. Measures only; asserts nothing (but stops on
a non-finite output).
"""

from __future__ import annotations

import argparse

import torch

import entmaxkv as ekv
from entmaxkv.compiled.llama import LlamaSpec, random_params, rms_norm, rope, rotate
from entmaxkv.synthetic import SyntheticStream

D, HKV, HQ = 128, 8, 32
SELECTORS = {"TopK": lambda: ekv.TopK(coverage=0.125), "Dense": lambda: ekv.Dense()}


def model_data(n: int, device: str, dtype: torch.dtype, q_gain: float = 1.0):
    """(k, v [1, Hkv, n, D], q [1, Hq, 1, D], k_new, v_new [1, Hkv, 1, D]) as `e2e_speed.py`
    builds them: a random cache and one random-weight layer's projections of one token."""
    spec = LlamaSpec(num_layers=1, num_heads=HQ, num_kv_heads=HKV, head_dim=D, hidden=4096, vocab=16, rms_eps=1e-5)
    params = random_params(spec, 8, dtype=dtype, device=device)
    layer = params["layers"][0]
    g = torch.Generator(device=device).manual_seed(1)
    k = torch.randn(1, HKV, n, D, generator=g, device=device).to(dtype)
    v = torch.randn(1, HKV, n, D, generator=g, device=device).to(dtype)
    x = torch.nn.functional.embedding(torch.zeros(1, 1, dtype=torch.int64, device=device), params["embed"])
    cos, sin = rope(torch.full((1,), n, device=device), params["inv_freq"], 1.0, dtype)
    h = rms_norm(x, layer["attn_norm"], 1e-5)

    def heads(w, count):
        return torch.nn.functional.linear(h, w).view(1, 1, count, D).transpose(1, 2)

    q = rotate(heads(layer["wq"], HQ), cos, sin) * q_gain
    k_new = rotate(heads(layer["wk"], HKV), cos, sin)
    return k, v, q.contiguous(), k_new.contiguous(), heads(layer["wv"], HKV).contiguous()


def stream_data(n: int, device: str, dtype: torch.dtype):
    stream = SyntheticStream(batch=1, num_kv_heads=HKV, group=HQ // HKV, head_dim=D, seed=n, dtype=dtype,
                             device=device)
    k, v = stream.prompt(n)
    return (k, v, *stream.step())


def survivors(k: torch.Tensor, q: torch.Tensor, alpha: float) -> int:
    """Max over query heads of #{tokens whose score is within 1/(α − 1) of the head's best}."""
    s = torch.einsum("bhgd,bhnd->bhgn", q.view(1, HKV, HQ // HKV, D).float(), k.float()) * D ** -0.5
    return int((s > s.amax(-1, keepdim=True) - 1 / (alpha - 1)).sum(-1).max())


def measure(cache, q, k_new, v_new, config, label: str, args, n: int, data: str, first: dict) -> list[str]:
    """One case: run the step once (``--dry``), or time its graph and profile its kernels; the
    summary row."""
    if args.dry:
        ekv.decode_step(cache.fork(), q, k_new, v_new, config)
        print(f"  {label}: ran")
        return []
    from decode import loaded
    from gpu_check import time_replays
    from profile_step import kernel_table

    from entmaxkv.compiled import GraphedDecodeStep
    rows, launches = kernel_table(cache, q, k_new, v_new, config)
    step = loaded(GraphedDecodeStep(cache.fork(), config, num_q_heads=HQ, compile=False), q, k_new, v_new)
    us = time_replays(step.graph.replay, args.reps, 5)
    step.graph.replay()
    out = step.out.double().clone()
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"{label}: the step's output is not finite (the cache overflowed?)")
    key = (n, data, label.split(" ")[0])  # the case: its first variant is the reference
    diff = float((out - first.setdefault(key, out)).abs().max())
    del step
    print(f"## {label}: graph step {us:.1f} µs, {launches} launches, max |Δout| vs the first variant {diff:.1e}")
    for kernel, t, count in rows[:10]:
        print(f"   {t:8.1f} µs ×{count} {kernel}")
    tau = sum(t for kernel, t, _ in rows if "_tau_kernel" in kernel)
    scores = sum(t for kernel, t, _ in rows if "_scores_kernel" in kernel)
    return [f"| {n} | {data} | {label} | {us:.1f} | {tau:.1f} | {scores:.1f} | {diff:.1e} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="8192,131072")
    parser.add_argument("--data", default="stream,model,model_x3")
    parser.add_argument("--cases", default="1.5:TopK,1:TopK,1.5:Dense", help="α:selector, comma-separated")
    parser.add_argument("--variants", default="base", help="as step_variants_gpu.py's: ';'-separated")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--dry", action="store_true", help="CPU: build the inputs and run each step once")
    args = parser.parse_args()
    from step_variants_gpu import assignments

    variants = [(name, assignments(name)) for name in args.variants.split(";")]  # fail on a typo first
    device = "cpu" if args.dry else "cuda"
    dtype = torch.float32 if args.dry else torch.bfloat16
    summary, first = [], {}
    for n in (int(c) for c in args.contexts.split(",")):
        for data in args.data.split(","):
            k, v, q, k_new, v_new = (stream_data(n, device, dtype) if data == "stream"
                                     else model_data(n, device, dtype, 3.0 if data == "model_x3" else 1.0))
            print(f"\n# {n} tokens, {data}: survivors of a dense pass at α = 1.5, worst head: "
                  f"{survivors(k, q, 1.5)}", flush=True)
            # every graph replay appends a token: room for the warm-ups and the timed replays of
            # every case and variant (each times a fork of this cache), as step_variants_gpu.py
            empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=HKV, head_dim=D, capacity=n + 64 + 6 * args.reps,
                                           dtype=dtype, device=device)
            cache = ekv.prefill(empty, k, v, [n])
            del k, v
            for case in args.cases.split(","):
                alpha, name = case.split(":")
                config = ekv.DecodeConfig(alpha=float(alpha), selector=SELECTORS[name]())
                for variant, sets in variants:
                    saved = [(mod, key, getattr(mod, key)) for mod, key, _ in sets]
                    try:
                        for mod, key, value in sets:
                            setattr(mod, key, value)
                        summary.extend(measure(cache, q, k_new, v_new, config, f"{case} {variant}", args, n, data,
                                               first))
                    finally:
                        for mod, key, value in saved:
                            setattr(mod, key, value)
            del cache
            if device == "cuda":
                torch.cuda.empty_cache()
    if summary:
        print("\n| context | data | α:selector variant | step µs | τ kernel µs | scoring µs | max |Δout| |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(summary))


if __name__ == "__main__":
    main()
