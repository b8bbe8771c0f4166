"""Ops one eager decode step dispatches and the kernels it launches, counted on the CPU (no GPU needed).

    TRITON_INTERPRET=1 python benchmarks/count_step_ops.py --selector TopK12.5
    TRITON_INTERPRET=1 python benchmarks/count_step_ops.py --selector ExactCodes --key-bits 4 \\
        --page-size 4 --head-dim 16 --heads 4/2 --batch 2 --context 63 --dtype float32

Counts, per eager ``decode_step`` on the kernel path (``backend="triton"``; Triton's
interpreter on a CPU): every op dispatched (a ``TorchDispatchMode``; a ``triton_op`` counts
as one op, and the few fills its launcher makes inside are not seen), the aten ops among
them that would launch a GPU kernel (views, ``empty`` and metadata ops launch none), and the
Triton kernel launches. It also splits the launches by where they happen: the append, the
key-code selection ``exact_codes.code_candidates`` (scans, seed, list) and the
``KernelOps.tau_lower_bound`` it calls (counted apart), and the rest. On a GPU each launch
costs ~3–4 µs inside a CUDA graph when the work is small (benchmarks/results/perf-log.md), so
this predicts the launch-bound part of a step. With static shapes every step dispatches the
same ops (a step that completes a page too: ``--context 63 --page-size 4``). Measures only;
asserts nothing. (Merges the former ``count_topk_launches.py``, whose command line this
keeps, and ``count_step_ops.py``, whose default run is the second command above.)
"""

from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit runs

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import entmaxkv as ekv  # noqa: E402
import entmaxkv.decode as decode  # noqa: E402
import entmaxkv.exact as exact  # noqa: E402
from entmaxkv.backend import KernelOps  # noqa: E402

SELECTORS = {
    "Dense": lambda: ekv.Dense(),
    "TopK12.5": lambda: ekv.TopK(coverage=0.125),
    "TopK512": lambda: ekv.TopK(token_budget=512),
    "Gaussian": lambda: ekv.Gaussian(),
    "Exact": lambda: ekv.Exact(),  # with --key-bits it selects through the key codes
    "ExactCodes": lambda: ekv.Exact(top_tokens=2, max_candidates=8),  # small, for small caches
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
# aten ops that launch no kernel: views, allocation without a fill, metadata
NO_KERNEL = ("view", "_unsafe_view", "_reshape_alias", "reshape", "expand", "unsqueeze", "squeeze", "select", "slice",
             "permute", "transpose", "t", "alias", "as_strided", "empty", "empty_like", "empty_strided", "new_empty",
             "detach", "lift_fresh", "split", "unbind", "is_same_size", "_to_copy_noop", "sym_size", "sym_stride",
             "numel", "dim", "is_contiguous", "contiguous_noop")
SECTIONS = ("append", "code_candidates", "tau_lower_bound", "rest")


class Counter(TorchDispatchMode):
    """Counts dispatched ops by name (``ns::name`` outside aten), and the launches — aten ops
    that launch a kernel, Triton launches (``launched``) — per section of the step (``section``
    names the code running now)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.kernels: collections.Counter = collections.Counter()
        self.by_section: collections.Counter = collections.Counter()
        self.section = "rest"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name if func.namespace == "aten" else f"{func.namespace}::{name}"] += 1
        if func.namespace == "aten" and name not in NO_KERNEL:
            self.by_section[self.section] += 1
        return func(*args, **(kwargs or {}))

    def launched(self, kernel: str) -> None:
        self.kernels[kernel] += 1
        self.by_section[self.section] += 1


def in_section(counter: Counter, name: str, fn):
    """``fn``, with ``counter.section`` set to ``name`` while it runs."""
    def wrapped(*args, **kwargs):
        before, counter.section = counter.section, name
        try:
            return fn(*args, **kwargs)
        finally:
            counter.section = before
    return wrapped


def patched(counter: Counter):
    """Routes Triton launches (interpreter or GPU) and the step's sections to ``counter``;
    returns an undo."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    undo = []
    for cls in (InterpretedFunction, JITFunction):
        run = cls.run

        def counted(self, *args, _run=run, **kwargs):
            counter.launched(getattr(self, "fn", self).__name__)
            return _run(self, *args, **kwargs)

        cls.run = counted
        undo.append((cls, "run", run))
    for owner, attr, section in ((decode, "append", "append"), (exact, "code_candidates", "code_candidates"),
                                 (KernelOps, "tau_lower_bound", "tau_lower_bound")):
        fn = getattr(owner, attr)
        setattr(owner, attr, in_section(counter, section, fn))
        undo.append((owner, attr, fn))

    def restore():
        for owner, attr, fn in undo:
            setattr(owner, attr, fn)

    return restore


def count(selector: str, alpha: float, context: int, batch: int, hq: int, hkv: int, dtype: torch.dtype,
          with_info: bool = False, steps: int = 2, head_dim: int = 64, page_size: int = 16,
          key_bits: int | None = None) -> Counter:
    """A ``Counter`` of ``steps`` eager kernel-path steps (random data, every prompt ``context``
    tokens long), its counts divided by ``steps``."""
    g = torch.Generator().manual_seed(0)
    d = head_dim
    k = torch.randn(batch, hkv, context, d, generator=g).to(dtype)
    v = torch.randn(batch, hkv, context, d, generator=g).to(dtype)
    empty = ekv.PagedKVCache.empty(batch=batch, num_kv_heads=hkv, head_dim=d, capacity=context + 4 * page_size,
                                   page_size=page_size, key_bits=key_bits, dtype=dtype)
    cache = ekv.prefill(empty, k, v, [context] * batch).without_host_len()
    q = torch.randn(batch, hq, 1, d, generator=g).to(dtype)
    kn, vn = (torch.randn(batch, hkv, 1, d, generator=g).to(dtype) for _ in range(2))
    config = ekv.DecodeConfig(alpha, SELECTORS[selector](), backend="triton")
    ekv.decode_step(cache.fork(), q, kn, vn, config, with_info=with_info)  # warm-up (imports, first calls)
    forks = [cache.fork() for _ in range(steps)]  # fork() copies the storage: not part of a step
    counter = Counter()
    restore = patched(counter)
    try:
        with counter:
            for c in forks:
                ekv.decode_step(c, q, kn, vn, config, with_info=with_info)
    finally:
        restore()
    for counts in (counter.ops, counter.kernels, counter.by_section):
        for key in counts:
            counts[key] //= steps
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selector", default="TopK12.5", choices=sorted(SELECTORS))
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--context", type=int, default=1000, help="prompt tokens per sequence")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", default="8/2", help="query heads / KV heads")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--key-bits", type=int, choices=(4, 8), default=None, help="store key codes")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--with-info", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="list every op")
    args = parser.parse_args()
    hq, hkv = (int(x) for x in args.heads.split("/"))
    counter = count(args.selector, args.alpha, args.context, args.batch, hq, hkv, DTYPES[args.dtype], args.with_info,
                    head_dim=args.head_dim, page_size=args.page_size, key_bits=args.key_bits)
    ops, kernels = counter.ops, counter.kernels
    # the entmaxkv ops' own launches are the Triton ones (plus the few fills their launchers
    # make inside the op, where the dispatch mode does not see them)
    launching = {k: v for k, v in ops.items() if k not in NO_KERNEL and "::" not in k}
    codes = "" if args.key_bits is None else f", {args.key_bits}-bit key codes"
    print(f"{args.selector} α={args.alpha} context {args.context} B={args.batch} Hq/Hkv={hq}/{hkv} "
          f"D={args.head_dim} S={args.page_size} {args.dtype}{codes}, eager decode_step on the kernel path, per step:")
    print(f"  ops dispatched: {sum(ops.values())} (entmaxkv ops among them: "
          f"{sum(v for k, v in ops.items() if '::' in k)}); aten ops launching a kernel: {sum(launching.values())}")
    print(f"  Triton kernel launches: {sum(kernels.values())} ({dict(kernels)})")
    print(f"  launches in all: {sum(launching.values()) + sum(kernels.values())} ("
          + ", ".join(f"{s} {counter.by_section[s]}" for s in SECTIONS) + ")")
    if args.verbose:
        for name, n in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"    {n:4d} {name}{'' if name in launching or '::' in name else '  (no kernel)'}")


if __name__ == "__main__":
    main()
