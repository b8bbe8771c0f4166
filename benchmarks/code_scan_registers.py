"""Registers, spills and static SASS instruction counts of the key-code scan kernels per launch
configuration, for sm_90a, on a CPU (Triton's bundled ptxas and nvdisasm; no GPU): what
tune_kernels.py's code-scan sweep will run, seen before spending device time on it.

    python benchmarks/code_scan_registers.py --bits 4                       # every swept launch
    python benchmarks/code_scan_registers.py --kernel _code_bounds_kernel --launch 2,2 --sass
    python benchmarks/code_scan_registers.py --kernel _code_bounds_kernel --launch 2,1 --sass --set USE_DOT=False
    python benchmarks/code_scan_registers.py --kernel _code_bounds_kernel --launch 2,1 --sass --set USE_DOT=False \
        --set UNROLL_HEADS=False                                            # CUDA-core forms

Kernels with a ``NATIVE`` argument (the key-code scans' inline-PTX forms, taken on CUDA) are
compiled with it on, as the GPU's launcher passes it. The static count does not see
scheduling: the tensor-core scan's pinned statistics (``code_scan._pinned``) change no count
but 12 µs of 94 on the H200 (session 21).

Records one launch of ``code_bounds`` (the step's form: the newest page and the τ seed) and of
``code_candidates`` at the H200 benchmark's shape (B = 1, Hq/Hkv = 32/8, D = 128, S = 16,
fp16) under the interpreter, then compiles each (BLOCK_P, num_warps) specialisation in a
subprocess without it, as the GPU's launcher would: every pointer and every integer argument
divisible by 16 marked so (``tt.divisibility``). Prints ptxas' registers and spill stores and,
with ``--sass``, the static SASS count a page — the kernel's instructions (every path, slow ones
included: the count is not a trace) × warps / pages — split by opcode class, and the size of
each loop's body (a loop of n trips executes its body n times, the static count holds it once); 256 of them a page
are the G·S·D/32 warp-FMAs of the D-term dot products at G = 4 (irreducible on CUDA cores).
``--set NAME=value`` changes ``code_scan`` constants in both processes (e.g. a variant flag);
``--dump DIR`` writes each specialisation's SASS and TTGIR there. Measures only.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"

# opcode (before the first '.') -> class, for the breakdown
CLASSES = {
    "FFMA": "FFMA", "FADD": "FADD/FMUL/FMNMX", "FMUL": "FADD/FMUL/FMNMX", "FMNMX": "FADD/FMUL/FMNMX",
    "FSETP": "FSETP/FSEL", "FSEL": "FSETP/FSEL", "FCHK": "FSETP/FSEL",
    "HFMA2": "HFMA2/HADD2/HMUL2", "HADD2": "HFMA2/HADD2/HMUL2", "HMUL2": "HFMA2/HADD2/HMUL2",
    "HMMA": "HMMA/IMMA", "IMMA": "HMMA/IMMA",
    "LOP3": "LOP3/SHF/PRMT", "SHF": "LOP3/SHF/PRMT", "PRMT": "LOP3/SHF/PRMT", "SGXT": "LOP3/SHF/PRMT",
    "BMSK": "LOP3/SHF/PRMT",
    "IMAD": "IMAD/IADD3/LEA", "IADD3": "IMAD/IADD3/LEA", "LEA": "IMAD/IADD3/LEA", "VIADD": "IMAD/IADD3/LEA",
    "IABS": "IMAD/IADD3/LEA", "IMNMX": "IMAD/IADD3/LEA", "VIMNMX": "IMAD/IADD3/LEA",
    "ISETP": "ISETP/SEL/P2R", "SEL": "ISETP/SEL/P2R", "P2R": "ISETP/SEL/P2R", "R2P": "ISETP/SEL/P2R",
    "PLOP3": "ISETP/SEL/P2R",
    "SHFL": "SHFL", "LDG": "LDG/STG", "STG": "LDG/STG", "LDS": "LDS/STS", "STS": "LDS/STS", "LDSM": "LDS/STS",
    "LDL": "LDL/STL (spills)", "STL": "LDL/STL (spills)", "LDC": "LDC", "ATOM": "ATOM/RED", "RED": "ATOM/RED",
    "BAR": "BAR", "MUFU": "MUFU", "I2F": "I2F/F2I/F2F", "F2I": "I2F/F2I/F2F", "F2F": "I2F/F2I/F2F",
    "I2FP": "I2F/F2I/F2F", "F2FP": "I2F/F2I/F2F", "MOV": "MOV/S2R/CS2R", "S2R": "MOV/S2R/CS2R",
    "CS2R": "MOV/S2R/CS2R", "S2UR": "MOV/S2R/CS2R",
    "BRA": "control", "EXIT": "control", "BSSY": "control", "BSYNC": "control", "CALL": "control",
    "RET": "control", "WARPSYNC": "control", "NOP": "control", "BPT": "control", "YIELD": "control",
}
ORDER = ["FFMA", "FADD/FMUL/FMNMX", "FSETP/FSEL", "HFMA2/HADD2/HMUL2", "HMMA/IMMA", "LOP3/SHF/PRMT",
         "IMAD/IADD3/LEA", "ISETP/SEL/P2R", "SHFL", "LDG/STG", "LDS/STS", "LDL/STL (spills)", "LDC", "ATOM/RED",
         "BAR", "MUFU", "I2F/F2I/F2F", "MOV/S2R/CS2R", "uniform (U*)", "control", "other"]


def class_of(opcode: str) -> str:
    base = opcode.split(".")[0]
    if base in CLASSES:
        return CLASSES[base]
    return "uniform (U*)" if base.startswith("U") else "other"


def sass_opcodes(sass: str) -> list[str]:
    """The opcodes of nvdisasm's listing, one an instruction (predicates dropped)."""
    out = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            out.append(m.group(1))
    return out


def loop_bodies(sass: str) -> list[int]:
    """Instructions from each backward branch's target label to the branch (a loop's body as
    laid out; the static count holds it once however often it runs)."""
    labels, out, n = {}, [], 0
    for line in sass.splitlines():
        label = re.match(r"(\.L_x_\d+):", line.strip())
        if label:
            labels[label.group(1)] = n
        elif re.match(r"\s*/\*[0-9a-f]{4,}\*/", line):
            n += 1
            target = re.search(r"BRA\s+`\((\.L_x_\d+)\)", line)
            if target and target.group(1) in labels:
                if n - labels[target.group(1)] > 1:  # not the trap after EXIT (a branch to itself)
                    out.append(n - labels[target.group(1)])
    return out


def apply_sets(sets: list[str]) -> None:
    import entmaxkv.kernels.code_scan as cs

    for item in sets:
        name, value = item.split("=")
        if not hasattr(cs, name):
            raise SystemExit(f"entmaxkv.kernels.code_scan has no {name}")
        setattr(cs, name, eval(value))  # noqa: S307 (a benchmark's own command line)


def record(bits: int, sets: list[str]) -> dict:
    """{kernel name: [module, name, {arg: [kind, value]}]} of one launch of each scan op."""
    os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit runs
    sys.path.insert(0, str(TESTS))
    import torch
    from helpers import kernel_launches
    from test_kernels_compile import _encode

    import entmaxkv as ekv
    from entmaxkv.kernels.code_scan import code_bounds, code_candidates

    apply_sets(sets)
    specs = {}

    def record_spec(kernel, bound):
        specs[kernel.fn.__name__] = [kernel.fn.__module__, kernel.fn.__name__,
                                     {k: _encode(v) for k, v in bound.items()}]

    # the benchmark's heads (integer arguments as on the GPU: H = 8, D = 128, W = 64)
    with kernel_launches(record_spec):
        hkv, g, n = 8, 4, 48
        k = torch.randn(1, hkv, n, 128, generator=torch.Generator().manual_seed(0)).half()
        empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=hkv, head_dim=128, capacity=n, dtype=torch.float16,
                                       key_bits=bits)
        cache = ekv.prefill(empty, k, k, [n])
        q = torch.randn(1, hkv * g, 128).half()
        args = (q, cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, None)
        page_max, eps = code_bounds(*args, bits, 0.1, False, cache.k_pages, 8)[:2]  # the step's form
        code_candidates(*args, page_max, eps, torch.zeros(1, hkv, g, dtype=torch.float64), bits, 0.1, 0.5, 64)
    return specs


def compile_one(fn, args: dict, warps: int, ptxas: str, nvdisasm: str, dump: str | None, label: str,
                **options) -> dict:
    """ptxas' registers / spill stores / spill loads / stack bytes and the SASS opcodes of one
    specialisation (``options``: more compile options, e.g. num_stages). Also
    ``kernel_registers.py``'s compiler."""
    from compile_specs import compile_for_sm90

    # the launcher's specialisation: 16-byte aligned pointers, ints divisible by 16 marked so
    kernel = compile_for_sm90(fn, args, warps, lambda arg, kind, value: kind == "tensor" or
                              (kind == "int" and value % 16 == 0), **options)
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        Path(ptx).write_text(kernel.asm["ptx"])
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", ptx, "-o", cubin], capture_output=True, text=True).stderr
        sass = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True).stdout
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        (Path(dump) / f"{label}.sass").write_text(sass)
        (Path(dump) / f"{label}.ttgir").write_text(kernel.asm["ttgir"])
    regs = re.findall(r"Used (\d+) registers", out)
    spills = re.findall(r"(\d+) bytes spill stores", out)
    loads = re.findall(r"(\d+) bytes spill loads", out)
    stack = re.findall(r"(\d+) bytes stack frame", out)
    return dict(regs=regs[0] if regs else "?", spills=spills[0] if spills else "?",
                spill_loads=loads[0] if loads else "?", stack=stack[0] if stack else "?",
                opcodes=sass_opcodes(sass), loops=loop_bodies(sass))


def compile_all(path: str, kernel: str | None, launches: list[tuple[int, int]] | None, sass: bool,
                dump: str | None, sets: list[str]) -> None:
    """(In a process without the interpreter.) Compile the specs of ``path`` per launch config."""
    import triton.backends.nvidia as nvidia

    sys.path.insert(0, str(TESTS))
    apply_sets(sets)
    bin_dir = os.path.join(os.path.dirname(nvidia.__file__), "bin")
    ptxas, nvdisasm = os.path.join(bin_dir, "ptxas"), os.path.join(bin_dir, "nvdisasm")
    for module, name, args in json.load(open(path)).values():
        if kernel and name != kernel or "BLOCK_P" not in args:
            continue
        fn = getattr(importlib.import_module(module), name)
        swept = [(p, w) for p in ((1, 2, 4, 8) if "bounds" in name else (1, 2, 4)) for w in (2, 4, 8)]
        for block_p, warps in launches or swept:
            args["BLOCK_P"] = ["int", block_p]
            if "NATIVE" in args:  # the CUDA launch's form (the interpreter records False)
                args["NATIVE"] = ["bool", True]
            got = compile_one(fn, args, warps, ptxas, nvdisasm, dump, f"{name}_p{block_p}_w{warps}")
            line = (f"{name} BLOCK_P={block_p} warps={warps}: {got['regs']} registers, "
                    f"{got['spills']} bytes spill stores")
            if sass:
                ops = got["opcodes"]
                per_page = warps / block_p
                line += f", {len(ops)} SASS instructions, {len(ops) * per_page:.0f} a page"
                if got["loops"]:  # e.g. UNROLL_HEADS=False: the head loop's body runs G times
                    line += f" (loop bodies, a page: {[round(n * per_page) for n in got['loops']]})"
                counts = collections.Counter(class_of(op) for op in ops)
                line += "\n  by class, a page: " + ", ".join(
                    f"{c} {counts[c] * per_page:.0f}" for c in ORDER if counts[c])
                top = collections.Counter(ops).most_common(24)
                line += "\n  top opcodes, a page: " + ", ".join(f"{op} {n * per_page:.0f}" for op, n in top)
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--kernel", help="only this kernel (e.g. _code_bounds_kernel)")
    parser.add_argument("--launch", action="append", help="BLOCK_P,warps (repeatable); default: the sweep's")
    parser.add_argument("--sass", action="store_true", help="static SASS counts a page, by opcode class")
    parser.add_argument("--dump", help="write each specialisation's SASS to this folder")
    parser.add_argument("--set", action="append", default=[], help="code_scan NAME=value (repeatable)")
    parser.add_argument("--compile", help=argparse.SUPPRESS)  # the subprocess's own entry
    args = parser.parse_args()
    launches = [tuple(int(x) for x in item.split(",")) for item in args.launch] if args.launch else None
    if args.compile:
        compile_all(args.compile, args.kernel, launches, args.sass, args.dump, args.set)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(record(args.bits, args.set), f)
    env = dict(os.environ, TRITON_INTERPRET="0")
    cmd = [sys.executable, __file__, "--compile", f.name] + sys.argv[1:]
    subprocess.run(cmd, env=env, check=True)
    os.unlink(f.name)


if __name__ == "__main__":
    main()
