"""Toward the latency floor of a sparse decode step: how fast a skeleton with a TopK step's
data dependencies, and nothing else, runs.

    python benchmarks/latency_floor_gpu.py                        # the H200/H100 table
    TRITON_INTERPRET=1 python benchmarks/latency_floor_gpu.py --smoke   # CPU: the checksums only

Any exact TopK entmax step must (1) read every full page's statistics (at least the 8-bit
page boxes: 2·D bytes a page and KV head), (2) know the row's threshold — a reduction over
the whole row — before any program knows whether its page is attended, (3) read the K rows
of the attended pages, (4) know τ — a reduction over every attended score — before any
weight is final, (5) read the V rows of the support. So it is at least two row-wide (at
B = 1: grid-wide) dependencies between three reading phases. This script times that skeleton
with no arithmetic at all: each phase only xor-reduces the 32-bit words it must read (a
checksum, checked against the host's, so the reads cannot be skipped), in two forms:

- ``one kernel``: persistent programs (all resident), the phases separated by grid-wide
  barriers (a release add on a counter, acquire polls until every program arrived);
- ``3 launches``: one kernel a phase, back to back in a CUDA graph.

The faster form estimates the floor of any step with these dependencies on this GPU: a
real step adds the append, the computation and the selection's own passes. It is an estimate
from above, because a better-tuned skeleton would be faster still. For that reason each
program issues its share of a phase as one set of loads, and several launch shapes are tried.
Each row's data is read in turn over enough copies (layers) to hold 3× the L2, all of them
captured in one CUDA graph (``decode.in_turn_us``), so that no replay finds its bytes still in
L2. Measured on the H100 (session 44, ``results/decode-2026-12-06-s44.md``): B = 1 32/8 TopK
6.25% 7.5 / 9.9 / 13.1 / 19.1 µs at 8K / 32K / 64K / 128K. Session 43's first form waited on its loads one after
another, and a barrier-counter bug dropped its fastest shape: see
``results/decode-2026-12-06-s43.md``. Next to it: torch SDPA on the same shapes in the same
run (also over layers), the byte floor (bytes / measured copy bandwidth) and each phase
alone. Timing: CUDA graphs, median of rounds of replays (``gpu_check``).
The bytes: phase 1 B·Hkv·P·2·D (int8 box codes), phase 2 B·Hkv·M·S·D·2 (K of the M
attended pages, fp16), phase 3 B·Hq·R·D·2 (V of R support rows a query head; R = 16).
Measures only; asserts the checksums.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import triton
import triton.language as tl

S = 16  # tokens a page
SUPPORT_ROWS = 16  # V rows a query head reads in phase 3
LAUNCH_SHAPES = ((2, 4), (4, 4), (8, 4), (2, 8), (4, 8))  # (programs an SM, warps) tried; the fastest counts
SPIN_LIMIT = 1 << 16  # polls before a barrier gives up (a grid not all resident must not hang the GPU)


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def _barrier(counter, failed, n, SPIN: tl.constexpr):
    """Every one of the n programs arrives before any leaves; the counter only grows (each
    launch adds a multiple of n), so no reset is needed between replays."""
    old = tl.atomic_add(counter, 1, sem="release", scope="gpu")
    target = (old // n + 1) * n
    seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < target) & (spins < SPIN):
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        spins += 1
    if spins >= SPIN:
        tl.store(failed, 1)


@triton.jit
def _phase_boxes(boxes, part1, words, pid, n, BLOCK: tl.constexpr):
    """Program pid's blocks of the box words (blocks pid, pid + n, ...: the host sizes BLOCK so
    that most programs take one, all its loads in flight at once), xor-reduced into part1[pid]."""
    r = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), tl.int32)
    for blk in range(pid, tl.cdiv(words, BLOCK), n):
        off = blk * BLOCK
        acc ^= tl.load(boxes + off + r, mask=off + r < words, other=0)
    tl.store(part1 + pid, tl.reduce(acc, 0, _xor))


@triton.jit
def _phase_keys(k_words, pages, part1, seen1, part2, items, M, P, pid, n, PAGE_WORDS: tl.constexpr,
                PPI: tl.constexpr, BLOCK_N: tl.constexpr):
    """Every program's phase-1 result (the row threshold's dependency; its xor to seen1[pid]),
    then program pid's attended pages (items pid·PPI … pid·PPI + PPI − 1, then n·PPI on:
    item = row·M + j, page pages[item]; the host sizes PPI so that most programs take one
    pass, every page index in one load), every K word of each, xor-reduced into part2[pid]."""
    p = tl.arange(0, BLOCK_N)
    tl.store(seen1 + pid, tl.reduce(tl.load(part1 + p, mask=p < n, other=0), 0, _xor))
    w = tl.arange(0, PAGE_WORDS)
    j = tl.arange(0, PPI)
    acc = tl.zeros((PPI, PAGE_WORDS), tl.int32)
    for first in range(pid * PPI, items, n * PPI):
        item = first + j
        ok = item < items
        page = tl.load(pages + item, mask=ok, other=0)
        row = (item // M).to(tl.int64)
        base = (row * P + page) * PAGE_WORDS
        acc ^= tl.load(k_words + base[:, None] + w[None, :], mask=ok[:, None], other=0)
    tl.store(part2 + pid, tl.reduce(tl.reduce(acc, 1, _xor), 0, _xor))


@triton.jit
def _phase_support(v_words, support, part2, out, n, head, ROW_WORDS: tl.constexpr, R: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """Query head ``head``: every program's phase-2 result (the τ's row-wide dependency) and the V
    words of its R support rows (support[head, :] row indices), xor-reduced into out[head]."""
    p = tl.arange(0, BLOCK_N)
    combined = tl.reduce(tl.load(part2 + p, mask=p < n, other=0), 0, _xor)
    rows = tl.load(support + head * R + tl.arange(0, R)).to(tl.int64)
    w = tl.arange(0, ROW_WORDS)
    v = tl.load(v_words + rows[:, None] * ROW_WORDS + w[None, :])
    tl.store(out + head, tl.reduce(tl.reduce(v, 1, _xor), 0, _xor) ^ combined)


@triton.jit
def _persistent_kernel(boxes, k_words, v_words, pages, support, part1, seen1, part2, out, counter, failed,
                       words, items, M, P, heads,
                       BLOCK: tl.constexpr, PAGE_WORDS: tl.constexpr, PPI: tl.constexpr, ROW_WORDS: tl.constexpr,
                       R: tl.constexpr, BLOCK_N: tl.constexpr, SPIN: tl.constexpr):
    pid = tl.program_id(0)
    n = tl.num_programs(0)
    _phase_boxes(boxes, part1, words, pid, n, BLOCK)
    _barrier(counter, failed, n, SPIN)  # the row's threshold is known past here
    _phase_keys(k_words, pages, part1, seen1, part2, items, M, P, pid, n, PAGE_WORDS, PPI, BLOCK_N)
    _barrier(counter, failed, n, SPIN)  # τ is known past here
    for head in range(pid, heads, n):  # one program a query head (heads > n: some take several)
        _phase_support(v_words, support, part2, out, n, head, ROW_WORDS, R, BLOCK_N)


@triton.jit
def _boxes_kernel(boxes, part1, words, BLOCK: tl.constexpr):
    _phase_boxes(boxes, part1, words, tl.program_id(0), tl.num_programs(0), BLOCK)


@triton.jit
def _keys_kernel(k_words, pages, part1, seen1, part2, items, M, P, PAGE_WORDS: tl.constexpr, PPI: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    _phase_keys(k_words, pages, part1, seen1, part2, items, M, P, tl.program_id(0), tl.num_programs(0), PAGE_WORDS,
                PPI, BLOCK_N)


@triton.jit
def _support_kernel(v_words, support, part2, out, n, ROW_WORDS: tl.constexpr, R: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    _phase_support(v_words, support, part2, out, n, tl.program_id(0), ROW_WORDS, R, BLOCK_N)


def xor_all(x: torch.Tensor) -> int:
    """The xor of every int32 of x (host)."""
    return int(np.bitwise_xor.reduce(x.detach().cpu().numpy().reshape(-1), initial=np.int32(0)))


class Skeleton:
    """The inputs of one shape and the launches of both forms over them."""

    def __init__(self, b, hq, hkv, d, context, coverage, device, seed=0):
        g = torch.Generator(device=device).manual_seed(context + b + 1000 * seed)
        self.P = context // S
        self.M = max(1, round(coverage * self.P))
        self.heads = b * hq

        def words(n):
            return torch.randint(-2 ** 31, 2 ** 31 - 1, (n,), generator=g, dtype=torch.int32, device=device)

        self.boxes = words(b * hkv * self.P * 2 * d // 4)          # int8 min and max codes
        self.k_words = words(b * hkv * self.P * S * d // 2)      # fp16 K pages
        self.v_words = words(b * hkv * self.P * S * d // 2)      # fp16 V pages
        self.pages = torch.argsort(torch.rand(b * hkv, self.P, generator=g, device=device), dim=1)[:, :self.M].to(
            torch.int32).contiguous()
        kv_of_head = torch.arange(self.heads, device=device) // (hq // hkv)  # b·Hkv + kv head of each head
        self.support = (kv_of_head[:, None] * self.P * S + torch.randint(
            0, self.P * S, (self.heads, SUPPORT_ROWS), generator=g, device=device)).contiguous()
        self.page_words, self.row_words = S * d // 2, d // 2
        self.items = b * hkv * self.M
        self.bytes = 4 * (self.boxes.numel() + self.items * self.page_words + self.heads * SUPPORT_ROWS
                          * self.row_words)
        self.out = torch.zeros(self.heads, dtype=torch.int32, device=device)
        self.counter = torch.zeros(1, dtype=torch.int32, device=device)
        self.failed = torch.zeros(1, dtype=torch.int32, device=device)
        self.launch_shape(1, 4)

    def launch_shape(self, programs: int, warps: int, max_block: int = 8192, max_ppi: int = 8) -> None:
        """n programs of ``warps`` warps for the next launches: each program's share of the box
        words in one block (up to ``max_block`` words) and of the attended pages in one pass (up
        to ``max_ppi`` pages), so that its loads are in flight together. The barrier's counter
        restarts at 0: it must be a multiple of n when a launch starts."""
        self.n, self.warps = programs, warps
        self.block = min(max_block, max(16, triton.next_power_of_2(triton.cdiv(self.boxes.numel(), programs))))
        self.ppi = min(max_ppi, triton.next_power_of_2(triton.cdiv(self.items, programs)))
        device = self.out.device
        self.part1, self.seen1, self.part2 = (torch.zeros(programs, dtype=torch.int32, device=device)
                                              for _ in range(3))
        self.counter.zero_()

    def poison(self) -> None:
        """Sentinels in every output, so that a check sees only what the next launch wrote."""
        for x in (self.part1, self.seen1, self.part2, self.out):
            x.fill_(0x5A5A5A5A)

    def persistent(self):
        _persistent_kernel[(self.n,)](
            self.boxes, self.k_words, self.v_words, self.pages, self.support, self.part1, self.seen1, self.part2,
            self.out, self.counter, self.failed, self.boxes.numel(), self.items, self.M, self.P, self.heads,
            BLOCK=self.block, PAGE_WORDS=self.page_words, PPI=self.ppi, ROW_WORDS=self.row_words,
            R=SUPPORT_ROWS, BLOCK_N=triton.next_power_of_2(self.n), SPIN=SPIN_LIMIT, num_warps=self.warps)

    def phase1(self):
        _boxes_kernel[(self.n,)](self.boxes, self.part1, self.boxes.numel(), BLOCK=self.block, num_warps=self.warps)

    def phase2(self):
        _keys_kernel[(self.n,)](self.k_words, self.pages, self.part1, self.seen1, self.part2, self.items, self.M,
                                self.P, PAGE_WORDS=self.page_words, PPI=self.ppi,
                                BLOCK_N=triton.next_power_of_2(self.n), num_warps=self.warps)

    def phase3(self):
        _support_kernel[(self.heads,)](self.v_words, self.support, self.part2, self.out, self.n,
                                       ROW_WORDS=self.row_words, R=SUPPORT_ROWS,
                                       BLOCK_N=triton.next_power_of_2(self.n), num_warps=4)

    def launches(self):
        self.phase1()
        self.phase2()
        self.phase3()

    def expected(self) -> tuple[int, int, list[int]]:
        """The host's xors of what each phase must read (computed once)."""
        if not hasattr(self, "_expected"):
            b_hkv = self.pages.shape[0]
            k = self.k_words.view(b_hkv, self.P, self.page_words)
            attended = torch.gather(k, 1, self.pages.long()[..., None].expand(-1, -1, self.page_words))
            v = self.v_words.view(-1, self.row_words)
            support = v[self.support.reshape(-1)].view(self.heads, -1).cpu().numpy()
            self._expected = (xor_all(self.boxes), xor_all(attended),
                              [int(x) for x in np.bitwise_xor.reduce(support, axis=1)])
        return self._expected

    def check(self) -> None:
        """The programs' xors equal the host's over the same words (every word was read, by the
        last launch: ``poison`` first), and every program of phase 2 saw every phase-1 result."""
        assert int(self.failed.item()) == 0, "a grid barrier gave up"
        boxes, attended, support = self.expected()
        assert xor_all(self.part1) == boxes, "phase 1 read other words"
        assert set(self.seen1.cpu().tolist()) == {int(np.int32(boxes))}, "phase 2 started before phase 1 ended"
        assert xor_all(self.part2) == attended, "phase 2 read other words"
        got = self.out.cpu().tolist()
        for h in range(self.heads):
            assert got[h] == np.int32(support[h] ^ attended), f"phase 3 of head {h} read other words"


def smoke() -> None:
    """CPU (TRITON_INTERPRET=1), tiny shapes: one kernel with one program (a barrier of one
    passes at once; the interpreter runs programs one after another), three launches with 1,
    3 and 5 programs (work split across programs, several blocks and passes a program)."""
    sk = Skeleton(2, 4, 2, 32, 160, 0.3, "cpu")
    sk.poison()
    sk.persistent()
    sk.check()
    for n, max_block, max_ppi in ((1, 64, 2), (3, 16, 1), (5, 8, 2), (3, 8192, 8)):
        sk.launch_shape(n, 1, max_block, max_ppi)
        sk.poison()
        sk.launches()
        sk.check()
    print("smoke: checksums agree in both forms")


def layers_for(bytes_per_layer: int, at_least: int) -> int:
    """Layers read in turn so that they hold at least 3× the L2 (none of a layer's bytes is
    still there when its turn comes again), and at least ``at_least``."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(at_least, triton.cdiv(3 * l2, bytes_per_layer))


def main() -> None:
    sys.path.insert(0, "benchmarks")
    from decode import in_turn_us, run_meta, sdpa_in_turn_us

    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--contexts", default="8192,32768,65536,131072")
    ap.add_argument("--cases", default="1:32:8:6.25,1:32:8:12.5,16:32:8:6.25",
                    help="B:Hq:Hkv:coverage%% …")
    ap.add_argument("--layers", type=int, default=0,
                    help="read the skeleton's data (and SDPA's) in turn over at least this many copies, as a "
                         "model's layers run; always enough copies to hold 3x the L2 (0: just that), so no "
                         "replay finds its bytes still in L2")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if args.smoke:
        smoke()
        return
    meta = run_meta("latency_floor_gpu.py")
    bandwidth = meta["copy_bandwidth_TBps"] * 1e12
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(meta)
    rows = []
    for case in args.cases.split(","):
        b, hq, hkv, cov = case.split(":")
        b, hq, hkv, cov = int(b), int(hq), int(hkv), float(cov) / 100
        for context in map(int, args.contexts.split(",")):
            if 2 * b * hkv * context * 128 * 2 * 2 * max(args.layers, 1) > 48 * 1024 ** 3:  # SDPA's K/V, the skeleton's
                print(f"{case} {context}: skipped (over 48 GiB)")
                continue
            g = torch.Generator(device="cuda").manual_seed(context)
            q = torch.randn(b, hq, 1, 128, device="cuda", dtype=torch.float16, generator=g)
            k = torch.randn(b, hkv, context, 128, device="cuda", dtype=torch.float16, generator=g)
            v = torch.randn_like(k)
            sdpa_layers = layers_for(2 * k.numel() * k.element_size(), args.layers)
            sdpa = sdpa_in_turn_us(q, k, v, sdpa_layers, args.reps, args.rounds)
            del q, k, v
            best = {}
            first = Skeleton(b, hq, hkv, 128, context, cov, "cuda")
            layers = layers_for(first.bytes, args.layers)
            sks = [first] + [Skeleton(b, hq, hkv, 128, context, cov, "cuda", seed=i) for i in range(1, layers)]
            for per_sm, warps in LAUNCH_SHAPES:
                for sk in sks:
                    sk.launch_shape(per_sm * sms, warps)
                for form, name in (("one kernel", "persistent"), ("3 launches", "launches"),
                                   ("phase 1", "phase1"), ("phase 2", "phase2")):
                    fns = [getattr(sk, name) for sk in sks]
                    checked = form in ("one kernel", "3 launches")
                    if checked:  # checked once before any timing, and after the replays
                        try:
                            for sk, fn in zip(sks, fns):
                                sk.poison()
                                fn()
                                sk.check()
                        except AssertionError as err:  # e.g. a grid whose programs were not all resident
                            print(f"{case} {context} {per_sm}/SM x {warps} warps, {form}: {err}", flush=True)
                            for sk in sks:
                                sk.failed.zero_()
                                sk.counter.zero_()
                            continue
                    # poisoned after the capture's warm-ups: the check after the replays sees their writes
                    us = in_turn_us(fns, args.reps, args.rounds, after_capture=lambda: [sk.poison() for sk in sks])
                    if checked:
                        for sk in sks:
                            sk.check()
                    if us < best.get(form, (float("inf"),))[0]:
                        best[form] = (us, per_sm, warps)
            floor_bytes = first.bytes
            del sks, first
            torch.cuda.empty_cache()
            fastest = min(best["one kernel"][0], best["3 launches"][0])
            rows.append(dict(b=b, hq=hq, hkv=hkv, coverage=cov, context=context, layers=layers,
                             sdpa_layers=sdpa_layers, sdpa_us=sdpa,
                             bytes=floor_bytes, byte_floor_us=floor_bytes / bandwidth * 1e6,
                             **{f"{k}_us": v[0] for k, v in best.items()},
                             **{f"{k}_shape": f"{v[1]}/SM x {v[2]} warps" for k, v in best.items()},
                             floor_us=fastest, floor_ratio=fastest / sdpa))
            print(rows[-1], flush=True)
    print(f"\n{meta['gpu']}, torch {meta['torch']}, Triton {meta['triton']}, copy {meta['copy_bandwidth_TBps']:.2f} "
          f"TB/s, each row's data read in turn over enough layers to hold 3x the L2\n")
    print("| B | Hq/Hkv | coverage | context | SDPA µs | bytes MB | byte floor µs | phase 1 | phase 2 | one kernel "
          "| 3 launches | floor × SDPA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['b']} | {r['hq']}/{r['hkv']} | {r['coverage']:.2%} | {r['context'] // 1024}K | {r['sdpa_us']:.1f} "
              f"| {r['bytes'] / 1e6:.1f} | {r['byte_floor_us']:.1f} | {r['phase 1_us']:.1f} | {r['phase 2_us']:.1f} "
              f"| {r['one kernel_us']:.1f} ({r['one kernel_shape']}) | {r['3 launches_us']:.1f} "
              f"({r['3 launches_shape']}) | **{r['floor_ratio']:.3f}×** |")


if __name__ == "__main__":
    main()
