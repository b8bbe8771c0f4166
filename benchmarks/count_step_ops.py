"""Dispatched torch ops of one eager ``decode_step`` with ``Exact`` and key codes on the
kernel path (``backend="triton"``; on a CPU Triton's interpreter runs the kernels), counted
with a ``TorchDispatchMode`` — a proxy for the launches a CUDA graph of the step replays.

    TRITON_INTERPRET=1 python benchmarks/count_step_ops.py

The step counted completes a page (the append also writes that page's codes); with static
shapes every step dispatches the same ops. It prints the total, the ops that launch work
(views, reshapes and other metadata-only ops excluded), and the part of it spent in the
append and in ``exact_codes.code_candidates`` (the key-code selection: scans, seed, list;
its call of ``KernelOps.tau_lower_bound`` / ``tau_lower_bound_listed`` is counted apart;
the cache copy the count runs on is made outside it). A
``triton_op`` counts as one op here; the few fills its launcher makes (outputs, scalar
tensors) are not seen by the mode. Measures only; asserts nothing.
"""

from __future__ import annotations

import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit runs

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import entmaxkv as ekv  # noqa: E402
import entmaxkv.decode as decode  # noqa: E402
import entmaxkv.exact as exact  # noqa: E402
from entmaxkv.backend import KernelOps  # noqa: E402
from entmaxkv.synthetic import SyntheticStream  # noqa: E402

# ops that only make a new view or read metadata: no kernel on a GPU
METADATA = {"view", "unsqueeze", "squeeze", "permute", "expand", "select", "slice", "reshape", "_unsafe_view",
            "t", "transpose", "alias", "detach", "as_strided", "split", "unbind", "lift_fresh", "_reshape_alias"}


class Count(TorchDispatchMode):
    """Counts ops by name, and per section (``section`` names the code currently running)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.by_section: collections.Counter = collections.Counter()
        self.section = "rest"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.ops[name] += 1
        if name.split(".")[1] not in METADATA:
            self.by_section[self.section] += 1
        return func(*args, **(kwargs or {}))


def in_section(counter: Count, name: str, fn):
    def wrapped(*args, **kwargs):
        before, counter.section = counter.section, name
        try:
            return fn(*args, **kwargs)
        finally:
            counter.section = before
    return wrapped


def count_step(cache, q, k, v, config) -> Count:
    counter = Count()
    saved = (decode.append, exact.code_candidates, KernelOps.tau_lower_bound, KernelOps.tau_lower_bound_listed)
    decode.append = in_section(counter, "append", saved[0])
    exact.code_candidates = in_section(counter, "code_candidates", saved[1])
    KernelOps.tau_lower_bound = in_section(counter, "tau_lower_bound", saved[2])
    KernelOps.tau_lower_bound_listed = in_section(counter, "tau_lower_bound", saved[3])
    fork = cache.fork()  # outside the count: copying the cache is no part of a step
    try:
        with counter:
            ekv.decode_step(fork, q, k, v, config)
    finally:
        decode.append, exact.code_candidates, KernelOps.tau_lower_bound, KernelOps.tau_lower_bound_listed = saved
    return counter


def main() -> None:
    stream = SyntheticStream(batch=2, num_kv_heads=2, group=2, head_dim=16, seed=4, dtype=torch.float32)
    k, v = stream.prompt(63)
    q, kn, vn = stream.step()
    config = ekv.DecodeConfig(1.5, ekv.Exact(top_tokens=2, max_candidates=8), backend="triton")
    for lens, what in (([63, 47], "completes a page"),):  # static shapes: any other step counts the same
        empty = ekv.PagedKVCache.empty(batch=2, num_kv_heads=2, head_dim=16, capacity=96, page_size=4,
                                       key_bits=4, dtype=torch.float32)
        cache = ekv.prefill(empty, k, v, lens).without_host_len()
        ekv.decode_step(cache.fork(), q, kn, vn, config)  # warm-up (imports, first calls)
        counter = count_step(cache, q, kn, vn, config)
        launching = sum(counter.by_section.values())
        print(f"## step that {what}: {sum(counter.ops.values())} dispatched ops, {launching} launch work "
              f"(append {counter.by_section['append']}, code_candidates {counter.by_section['code_candidates']} "
              f"+ its τ bound {counter.by_section['tau_lower_bound']}, rest {counter.by_section['rest']})")
        print("   " + ", ".join(f"{n} {name}" for name, n in counter.ops.most_common()
                                if name.split(".")[1] not in METADATA))


if __name__ == "__main__":
    main()
