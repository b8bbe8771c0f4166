"""What a grid-wide phase costs: a spin barrier across resident Triton programs, against a
kernel boundary.

    python benchmarks/grid_barrier_gpu.py

A persistent decode step (one launch whose programs stay resident and meet at grid-wide
barriers between its phases: page scores, the threshold search's counting passes, the list,
the scoring, τ) trades each launch boundary for a barrier. This measures both on the GPU, so
the trade can be priced before it is built:

- ``barrier``: ``N`` programs (at most one wave: every program resident) each run ``ITERS``
  barriers — a release atomic add on a global counter, then acquire loads of it until it
  reaches N·(i + 1). Reported per barrier.
- ``count pass``: the same, plus what one pass of a distributed threshold search adds — each
  program counts its keys at or above a probe, adds its count to the pass's slot, meets the
  others, and reads the total (from which every program derives the same next probe).
- ``launch``: a CUDA graph of ``ITERS`` launches of a kernel that does nothing, with one
  program and with one program an SM: the cadence of back-to-back launches, without
  programmatic dependent launch (the drain and ramp-up of dependent real kernels is not in it).

Measures only; asserts nothing except that the barrier counted every arrival.
"""

from __future__ import annotations

import statistics

import torch
import triton
import triton.language as tl


@triton.jit
def _barrier_kernel(counter, ITERS: tl.constexpr):
    n = tl.num_programs(0)
    for i in range(ITERS):
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
        target = n * (i + 1)
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")


@triton.jit
def _count_pass_kernel(keys, counter, totals, out, KEYS: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    n = tl.num_programs(0)
    x = tl.load(keys + pid * KEYS + tl.arange(0, KEYS))
    probe = 0.0
    step = 0.5
    for i in range(ITERS):
        c = tl.sum((x >= probe).to(tl.int32), axis=0)
        tl.atomic_add(totals + i, c, sem="relaxed", scope="gpu")
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
        target = n * (i + 1)
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        total = tl.atomic_add(totals + i, 0, sem="acquire", scope="gpu")
        # the next probe follows the count, as a search's would
        probe = tl.where(total > n * KEYS // 2, probe + step, probe - step)
        step = step * 0.5
    tl.store(out + pid, probe)


@triton.jit
def _empty_kernel(x):
    pass


def timed(fn, rounds: int = 7) -> float:
    """Median of ``rounds`` event-timed calls, in microseconds."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def main() -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    iters = 1000
    counter = torch.zeros(1, dtype=torch.int32, device="cuda")
    print(f"{torch.cuda.get_device_name()}: {sms} SMs, torch {torch.__version__}, Triton {triton.__version__}")
    rows = []
    for programs in (8, 32, sms, 2 * sms):
        for warps in (4, 8):
            def run():
                counter.zero_()
                _barrier_kernel[(programs,)](counter, ITERS=iters, num_warps=warps)
            us = timed(run)
            assert int(counter.item()) == programs * iters
            rows.append((f"barrier, {programs} programs, {warps} warps", us / iters))
    keys_per = 64
    for programs in (sms, 2 * sms):
        keys = torch.rand(programs * keys_per, device="cuda") * 2 - 1
        totals = torch.zeros(iters, dtype=torch.int32, device="cuda")
        out = torch.empty(programs, device="cuda")

        def run():
            counter.zero_()
            totals.zero_()
            _count_pass_kernel[(programs,)](keys, counter, totals, out, KEYS=keys_per, ITERS=iters, num_warps=4)
        us = timed(run)
        rows.append((f"count pass, {programs} programs, 4 warps", us / iters))
    x = torch.zeros(1, device="cuda")
    _empty_kernel[(1,)](x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            _empty_kernel[(1,)](x)
    rows.append(("launch of an empty kernel in a CUDA graph", timed(graph.replay) / iters))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            _empty_kernel[(sms,)](x)
    rows.append((f"launch of an empty {sms}-program kernel in a CUDA graph", timed(graph.replay) / iters))
    print("\n| what | µs each |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    main()
