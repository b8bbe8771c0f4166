"""Static SASS of ``page_bounds``' kernel for sm_90a, on a CPU (Triton's bundled ptxas and
nvdisasm; no GPU): registers, spills and instructions a page by opcode class, per launch
configuration — what an instruction-bound kernel's time follows, seen before device time.

    python benchmarks/page_bounds_sass.py
    python benchmarks/page_bounds_sass.py --configs "8,2;16,2;32,4" --chunks 0,32

Records one ``page_bounds`` launch (D = 128, S = 16, G = 4, TopK form: no σ) in fp16 (ν > 0)
and bf16, with the mean and without it (``-m``, α = 1's TopK step), under the interpreter, then compiles each (BLOCK_P, num_warps, CHUNK) specialisation
in a subprocess without it, with the divisibility-by-16 hints a real launch gets (pointers;
D and P at 128K), and counts the static SASS of one warp's code. "a page" = that count ×
num_warps / BLOCK_P: what one page of one KV head costs the SMs' issue slots (every
instruction here runs once a program: the head loop and the chunk loop are unrolled). The
per-page counts are those of the ``page_scores`` form (no newest-page program: its code is
not per page); the last column is the ``page_bounds`` form's whole kernel, for reference.
Static counts: predicated-off and never-taken code counts too (the early exit, the newest-page
branch in the total). Measures only.
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

# opcode (before the first '.') -> class; anything else is "other"
CLASSES = {
    "FFMA": "FFMA", "FMUL": "FADD/FMUL", "FADD": "FADD/FMUL", "FMNMX": "FMNMX", "FSEL": "SEL", "SEL": "SEL",
    "LOP3": "LOP3", "SHFL": "SHFL", "LDG": "LDG", "STG": "STG", "LDS": "LDS/STS", "STS": "LDS/STS",
    "HADD2": "CVT", "F2F": "CVT", "PRMT": "CVT", "IMAD": "INT", "IADD3": "INT", "LEA": "INT", "ISETP": "INT",
    "SHF": "INT", "MOV": "MOV", "FSETP": "FSETP", "BAR": "BAR", "STL": "spill", "LDL": "spill",
}
ORDER = ["FFMA", "FADD/FMUL", "FMNMX", "SHFL", "CVT", "LDG", "STG", "LOP3", "SEL", "FSETP", "INT", "MOV",
         "LDS/STS", "BAR", "spill", "other"]


def record() -> dict:
    """{form: [module, name, {arg: [kind, value]}]}: one page_bounds launch per dtype, with and
    without the mean (``-m``: α = 1's TopK step reads no mean)."""
    os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit runs
    sys.path.insert(0, str(TESTS))
    import torch
    from helpers import kernel_launches
    from test_kernels_compile import _encode

    import entmaxkv as ekv
    from entmaxkv.kernels.page_scores import page_bounds

    specs, current = {}, []

    def record_spec(kernel, bound):
        specs[current[0]] = [kernel.fn.__module__, kernel.fn.__name__, {k: _encode(v) for k, v in bound.items()}]

    with kernel_launches(record_spec):
        for dtype in (torch.float16, torch.bfloat16):
            k = torch.randn(1, 2, 33, 128, generator=torch.Generator().manual_seed(0)).to(dtype)
            empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=2, head_dim=128, capacity=256, dtype=dtype)
            c = ekv.prefill(empty, k, k, [33])
            q = torch.randn(1, 8, 128).to(dtype)
            for with_mean in (True, False):
                current[:] = [{torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype] + ("" if with_mean else "-m")]
                page_bounds(q, c.k_min, c.k_max, c.k_mean, c.k_std, c.seq_lens, None, c.k_pages, 16, 0.1, False,
                            with_mean)
    return specs


def sass_of(fn, args: dict, warps: int, tmp: str) -> tuple[str, str]:
    """(ptxas -v's report, SASS text) of one specialisation."""
    import triton.backends.nvidia as nvidia
    from compile_specs import compile_for_sm90

    # torch allocations are 16-byte aligned; D and P (128 and 8192 at 128K) get a real launch's hint
    kernel = compile_for_sm90(fn, args, warps, lambda arg, kind, value: kind == "tensor" or
                              (kind == "int" and arg in ("D", "P")))
    bindir = os.path.join(os.path.dirname(nvidia.__file__), "bin")
    ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
    open(ptx, "w").write(kernel.asm["ptx"])
    open(cubin, "wb").write(kernel.asm["cubin"])
    report = subprocess.run([os.path.join(bindir, "ptxas"), "-arch=sm_90a", "-v", ptx, "-o", os.devnull],
                            capture_output=True, text=True).stderr
    sass = subprocess.run([os.path.join(bindir, "nvdisasm"), "-c", cubin], capture_output=True, text=True,
                          check=True).stdout
    return report, sass


def classify(sass: str) -> collections.Counter:
    """Opcode classes of every instruction line of ``sass`` (NOPs and the trailing BRA loop skipped)."""
    counts: collections.Counter = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if not m or m.group(1) == "NOP":
            continue
        counts[CLASSES.get(m.group(1), "other")] += 1
    return counts


def compile_all(path: str, configs: list[tuple[int, int]], chunks: list[int]) -> None:
    """(In a process without the interpreter.) Print a table row per dtype × config."""
    sys.path.insert(0, str(TESTS))
    specs = json.load(open(path))
    print(f"{'form':<6} {'BLOCK_P':>7} {'warps':>5} {'CHUNK':>5} {'regs':>4} {'spill':>5} | per page: "
          + " ".join(f"{c:>9}" for c in ORDER) + f" {'total':>7} | kernel total (page_bounds)")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, (module, name, args) in specs.items():
            fn = getattr(importlib.import_module(module), name)
            for block_p, warps in configs:
                for chunk in chunks:
                    args = dict(args, BLOCK_P=["int", block_p])
                    if "DOT_F32" in args:  # recorded on the CPU; a GPU launch multiplies bf16 natively
                        args["DOT_F32"] = ["bool", False]
                    if "CHUNK" in args:
                        args["CHUNK"] = ["int", chunk]
                        args["VEC"] = ["int", min(8, chunk)]  # 16-byte loads of fp16/bf16
                    elif chunk:
                        continue  # the kernel has no chunked form
                    try:
                        _, bounds_sass = sass_of(fn, args, warps, tmp)
                        report, sass = sass_of(fn, dict(args, WITH_NEWEST=["bool", False]), warps, tmp)
                    except Exception as err:  # a config that does not compile: say so, go on
                        print(f"{dtype:<6} {block_p:>7} {warps:>5} {chunk:>5} failed: {str(err).splitlines()[-1][:120]}")
                        continue
                    regs = re.findall(r"Used (\d+) registers", report)
                    spills = re.findall(r"(\d+) bytes spill stores", report)
                    counts = classify(sass)
                    per_page = {c: counts[c] * warps / block_p for c in ORDER}
                    print(f"{dtype:<6} {block_p:>7} {warps:>5} {chunk:>5} {regs[0] if regs else '?':>4} "
                          f"{spills[0] if spills else '?':>5} | "
                          + " ".join(f"{per_page[c]:>9.1f}" for c in ORDER)
                          + f" {sum(per_page.values()):>7.1f} | {sum(classify(bounds_sass).values())}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="8,2;8,4;16,2;16,4;32,4;32,8",
                        help="';'-separated BLOCK_P,num_warps pairs")
    parser.add_argument("--chunks", default="0,32,16",
                        help="CHUNK values (0: the whole-D tile; ignored by a kernel without CHUNK)")
    parser.add_argument("--compile", help=argparse.SUPPRESS)  # the subprocess's own entry
    args = parser.parse_args()
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs.split(";")]
    chunks = [int(x) for x in args.chunks.split(",")]
    if args.compile:
        compile_all(args.compile, configs, chunks)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(record(), f)
    env = dict(os.environ, TRITON_INTERPRET="0")
    subprocess.run([sys.executable, __file__, "--compile", f.name, "--configs", args.configs, "--chunks",
                    args.chunks], env=env, check=True)
    os.unlink(f.name)


if __name__ == "__main__":
    main()
