"""Ops one eager decode step dispatches, counted on the CPU (no GPU needed).

    TRITON_INTERPRET=1 python benchmarks/count_topk_launches.py --selector TopK12.5

Counts, per eager ``decode_step`` on the kernel path (``backend="triton"``; Triton's
interpreter on a CPU): every aten op dispatched (a ``TorchDispatchMode``), the ones among
them that would launch a GPU kernel (views, ``empty`` and metadata ops launch none), and the
Triton kernel launches. On a GPU each launch costs ~3–4 µs inside a CUDA graph when the work
is small (benchmarks/results/perf-log.md), so this predicts the launch-bound part of a step.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import entmaxkv as ekv

SELECTORS = {
    "Dense": lambda: ekv.Dense(),
    "TopK12.5": lambda: ekv.TopK(coverage=0.125),
    "TopK512": lambda: ekv.TopK(token_budget=512),
    "Gaussian": lambda: ekv.Gaussian(),
    "Exact": lambda: ekv.Exact(),
}
# aten ops that launch no kernel: views, allocation without a fill, metadata
NO_KERNEL = ("view", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze", "select", "slice", "permute",
             "transpose", "t", "alias", "as_strided", "empty", "empty_like", "empty_strided", "new_empty", "detach",
             "lift_fresh", "split", "unbind", "is_same_size", "_to_copy_noop", "sym_size", "sym_stride", "numel",
             "dim", "is_contiguous", "contiguous_noop")


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name if func.namespace == "aten" else f"{func.namespace}::{name}"] += 1
        return func(*args, **(kwargs or {}))


def triton_launches() -> tuple[collections.Counter, callable]:
    """Counts Triton kernel launches by kernel name (interpreter or GPU); returns an undo."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches: collections.Counter = collections.Counter()
    patched = []
    for cls in (InterpretedFunction, JITFunction):
        run = cls.run

        def counted(self, *args, _run=run, **kwargs):
            launches[getattr(self, "fn", self).__name__] += 1
            return _run(self, *args, **kwargs)

        cls.run = counted
        patched.append((cls, run))

    def undo():
        for cls, run in patched:
            cls.run = run

    return launches, undo


def count(selector: str, alpha: float, context: int, batch: int, hq: int, hkv: int, dtype: torch.dtype,
          with_info: bool = False, steps: int = 2) -> tuple[collections.Counter, collections.Counter]:
    g = torch.Generator().manual_seed(0)
    d = 64
    k = torch.randn(batch, hkv, context, d, generator=g).to(dtype)
    v = torch.randn(batch, hkv, context, d, generator=g).to(dtype)
    cache = ekv.prefill(ekv.PagedKVCache.empty(batch=batch, num_kv_heads=hkv, head_dim=d, capacity=context + 64,
                                               dtype=dtype), k, v, [context] * batch)
    q = torch.randn(batch, hq, 1, d, generator=g).to(dtype)
    kn, vn = (torch.randn(batch, hkv, 1, d, generator=g).to(dtype) for _ in range(2))
    config = ekv.DecodeConfig(alpha, SELECTORS[selector](), backend="triton")
    ekv.decode_step(cache.fork(), q, kn, vn, config, with_info=with_info)  # warm-up
    forks = [cache.fork() for _ in range(steps)]  # fork() copies the storage: not part of a step
    launches, undo = triton_launches()
    counter = Counter()
    try:
        with counter:
            for c in forks:
                ekv.decode_step(c, q, kn, vn, config, with_info=with_info)
    finally:
        undo()
    per_step = collections.Counter({k: v // steps for k, v in counter.ops.items()})
    return per_step, collections.Counter({k: v // steps for k, v in launches.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selector", default="TopK12.5", choices=sorted(SELECTORS))
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", default="8/2")
    parser.add_argument("--with-info", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="list every op")
    args = parser.parse_args()
    hq, hkv = (int(x) for x in args.heads.split("/"))
    ops, kernels = count(args.selector, args.alpha, args.context, args.batch, hq, hkv, torch.float16, args.with_info)
    # the entmaxkv ops' own launches are the Triton ones (plus sparse_decode's one fill of its
    # running-maximum buffer, made inside the op where the dispatch mode does not see it)
    launching = {k: v for k, v in ops.items() if k not in NO_KERNEL and "::" not in k}
    print(f"{args.selector} α={args.alpha} context {args.context} B={args.batch} Hq/Hkv={hq}/{hkv} fp16, "
          f"eager decode_step on the kernel path, per step:")
    print(f"  ops dispatched: {sum(ops.values())} (entmaxkv ops among them: "
          f"{sum(v for k, v in ops.items() if '::' in k)}); aten ops launching a kernel: {sum(launching.values())}")
    print(f"  Triton kernel launches: {sum(kernels.values())} ({dict(kernels)})")
    print(f"  launches in all: {sum(launching.values()) + sum(kernels.values())}")
    if args.verbose:
        for name, n in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"    {n:4d} {name}{'' if name in launching else '  (no kernel)'}")


if __name__ == "__main__":
    main()
