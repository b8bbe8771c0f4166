"""Static SASS of ``sparse_decode``'s τ kernel for sm_90a, on a CPU (Triton's bundled ptxas and
nvdisasm; no GPU), with each form of its survivor gather (``sparse_decode.ROW_SCAN_GATHER`` and
``GATHER_STORE_LAYOUT``, each off and on):
registers, spills, instructions by opcode class, and the shared-memory traffic (STS / LDS / BAR)
that a scan or a reshape through shared memory shows.

    python benchmarks/tau_gather_sass.py
    python benchmarks/tau_gather_sass.py --dump /tmp/tau_sass   # each form's SASS and TTGIR

Records one TopK step's ``_tau_kernel`` launch (α = 1.5, fp16 cache, the step's arguments:
``fits`` given, no page table) under the interpreter, then compiles it without the interpreter
at the H200 benchmark's specialisation (B = 1, Hq/Hkv = 32/8, D = 128, S = 16: NSPLIT = 33,
BLOCK_SPLIT = 64, GATHER = 32, BLOCK = 64, BLOCK_REGS = 256, BLOCK_D = 128, num_warps = 4),
every pointer and every integer argument divisible by 16 marked so, as the GPU's launcher
would. Static counts of the whole kernel (every path: the count is not a trace); "gather loop"
is the body of the loop holding the compaction (the first backward branch whose body stores
to global memory, laid out once however often it runs). Measures only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
B1_32_8 = {"NSPLIT": 33, "BLOCK_SPLIT": 64, "GATHER": 32, "BLOCK": 64, "BLOCK_REGS": 256, "BLOCK_D": 128,
           "S": 16, "H": 8, "G": 4, "D": 128}
SHOWN = ["LDG", "STG", "STS", "LDS", "BAR", "SHFL", "LDL", "STL"]


def record() -> dict:
    """[module, name, {arg: [kind, value]}] of one τ kernel launch (a small TopK step)."""
    os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit runs
    sys.path.insert(0, str(TESTS))
    import torch
    from helpers import make_cache, random_step
    from test_kernels_compile import _encode
    from triton.runtime.interpreter import InterpretedFunction

    import entmaxkv as ekv

    spec, run = [], InterpretedFunction.run

    def recording(self, *args, grid, warmup, **kwargs):
        if self.fn.__name__ == "_tau_kernel":
            bound = dict(zip(self.arg_names, args), **kwargs)
            spec[:] = [self.fn.__module__, self.fn.__name__, {k: _encode(v) for k, v in bound.items()}]
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording
    try:
        cache, _, _ = make_cache(0, 1, 2, 128, 16, [200], dtype=torch.float16)
        q, k, v = random_step(torch.Generator().manual_seed(0), 1, 8, 2, 128, torch.float16)
        config = ekv.DecodeConfig(1.5, ekv.TopK(token_budget=64), backend="triton")
        ekv.decode_step(cache.fork(), q, k, v, config)
    finally:
        InterpretedFunction.run = run
    return spec


def opcodes(sass: str) -> list[str]:
    """Each instruction's opcode, without its modifiers (predicates and NOPs dropped)."""
    out = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m and m.group(1) != "NOP":
            out.append(m.group(1))
    return out


def gather_loop(sass: str) -> list[str]:
    """Opcodes of the first loop (a backward branch) whose body stores to global memory."""
    lines = sass.splitlines()
    labels = {}
    for i, line in enumerate(lines):
        label = re.match(r"(\.L_x_\d+):", line.strip())
        if label:
            labels[label.group(1)] = i
        target = re.search(r"BRA\s+`\((\.L_x_\d+)\)", line)
        if target and target.group(1) in labels:
            body = opcodes("\n".join(lines[labels[target.group(1)]:i + 1]))
            if "STG" in body:
                return body
    return []


def compile_both(path: str, dump: str | None) -> None:
    """(In a process without the interpreter.) Print a row per form."""
    import importlib

    import triton.backends.nvidia as nvidia

    sys.path.insert(0, str(TESTS))
    from compile_specs import compile_for_sm90

    module, name, args = json.load(open(path))
    fn = getattr(importlib.import_module(module), name)
    for key, value in B1_32_8.items():
        args[key] = ["int", value]
    bindir = os.path.join(os.path.dirname(nvidia.__file__), "bin")
    for row_scan, store_layout in ((False, False), (True, False), (False, True), (True, True)):
        form = ("row scan" if row_scan else "flat scan") + (" + store layout" if store_layout else "")
        forms = dict(ROW_SCAN_GATHER=["bool", row_scan], GATHER_STORE_LAYOUT=["bool", store_layout])
        kernel = compile_for_sm90(fn, dict(args, **forms), 4,
                                  lambda arg, kind, value: kind == "tensor" or (kind == "int" and value % 16 == 0))
        with tempfile.TemporaryDirectory() as tmp:
            ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
            Path(ptx).write_text(kernel.asm["ptx"])
            report = subprocess.run([os.path.join(bindir, "ptxas"), "-arch=sm_90a", "-v", ptx, "-o", cubin],
                                    capture_output=True, text=True).stderr
            sass = subprocess.run([os.path.join(bindir, "nvdisasm"), "-c", cubin], capture_output=True, text=True,
                                  check=True).stdout
        if dump:
            Path(dump).mkdir(parents=True, exist_ok=True)
            tag = ("row" if row_scan else "flat") + ("_store" if store_layout else "")
            (Path(dump) / f"tau_{tag}.sass").write_text(sass)
            (Path(dump) / f"tau_{tag}.ttgir").write_text(kernel.asm["ttgir"])
        regs = re.findall(r"Used (\d+) registers", report)
        spills = re.findall(r"(\d+) bytes spill stores", report)
        ops, loop = collections.Counter(opcodes(sass)), collections.Counter(gather_loop(sass))
        print(f"{form:<24}: {regs[0] if regs else '?'} registers, {spills[0] if spills else '?'} bytes spill stores, "
              f"shared memory {kernel.metadata.shared} bytes, {sum(ops.values())} SASS instructions; "
              + ", ".join(f"{op} {ops[op]}" for op in SHOWN)
              + f"\n{'':<24}  gather loop: {sum(loop.values())} instructions; "
              + ", ".join(f"{op} {loop[op]}" for op in SHOWN), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", help="write each form's SASS and TTGIR to this folder")
    parser.add_argument("--compile", help=argparse.SUPPRESS)  # the subprocess's own entry
    args = parser.parse_args()
    if args.compile:
        compile_both(args.compile, args.dump)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(record(), f)
    env = dict(os.environ, TRITON_INTERPRET="0")
    subprocess.run([sys.executable, __file__, "--compile", f.name] + sys.argv[1:], env=env, check=True)
    os.unlink(f.name)


if __name__ == "__main__":
    main()
