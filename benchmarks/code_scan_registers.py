"""Registers and spills of the key-code scan kernels per launch configuration, for sm_90a,
on a CPU (Triton's bundled ptxas; no GPU): what tune_kernels.py's code-scan sweep will run,
seen before spending device time on it.

    python benchmarks/code_scan_registers.py --bits 4

Records one launch of ``code_bounds`` and ``code_candidates`` at D = 128, S = 16, G = 4, fp16
under the interpreter, then compiles each (BLOCK_P, num_warps) specialisation in a subprocess
without it and prints ptxas' register and spill-store counts. Measures only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def record(bits: int) -> dict:
    """{kernel name: [module, name, {arg: [kind, value]}]} of one launch of each scan op."""
    os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit runs
    sys.path.insert(0, str(TESTS))
    import torch
    from test_kernels_compile import _encode
    from triton.runtime.interpreter import InterpretedFunction

    import entmaxkv as ekv
    from entmaxkv.kernels.code_scan import code_bounds, code_candidates

    specs, run = {}, InterpretedFunction.run

    def recording(self, *args, grid, warmup, **kwargs):
        bound = dict(zip(self.arg_names, args), **kwargs)
        specs[self.fn.__name__] = [self.fn.__module__, self.fn.__name__, {k: _encode(v) for k, v in bound.items()}]
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording
    try:
        k = torch.randn(1, 1, 64, 128, generator=torch.Generator().manual_seed(0)).half()
        empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=128, capacity=64, dtype=torch.float16,
                                       key_bits=bits)
        cache = ekv.prefill(empty, k, k, [64])
        q = torch.randn(1, 4, 128).half()
        args = (q, cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, None)
        page_max, eps = code_bounds(*args, bits, 0.1, False, cache.k_pages, 8)[:2]  # the step's form
        code_candidates(*args, page_max, eps, torch.zeros(1, 1, 4, dtype=torch.float64), bits, 0.1, 0.5, 64)
    finally:
        InterpretedFunction.run = run
    return specs


def compile_all(path: str) -> None:
    """(In a process without the interpreter.) Compile every spec of ``path`` per launch config."""
    import triton
    import triton.backends.nvidia as nvidia
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sys.path.insert(0, str(TESTS))
    import compile_specs

    ptxas = os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")
    for module, name, args in json.load(open(path)).values():
        fn = getattr(importlib.import_module(module), name)
        for block_p in ((1, 2, 4, 8) if "bounds" in name else (1, 2, 4)):
            for warps in (2, 4, 8):
                args["BLOCK_P"] = ["int", block_p]
                signature, constants = {}, {}
                for i, arg in enumerate(fn.arg_names):
                    kind, value = args[arg]
                    if fn.params[i].is_constexpr:
                        signature[arg] = "constexpr"
                        constants[(i,)] = compile_specs.DTYPES[value] if kind == "tldtype" else value
                    else:
                        signature[arg] = ("*" + compile_specs.POINTER[value] if kind == "tensor"
                                          else compile_specs.SCALARS[kind])
                kernel = triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32),
                                        options={"num_warps": warps})
                with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                    f.write(kernel.asm["ptx"])
                out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True,
                                     text=True).stderr
                os.unlink(f.name)
                regs = re.findall(r"Used (\d+) registers", out)
                spills = re.findall(r"(\d+) bytes spill stores", out)
                print(f"{name} BLOCK_P={block_p} warps={warps}: {regs[0] if regs else '?'} registers, "
                      f"{spills[0] if spills else '?'} bytes spill stores", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--compile", help=argparse.SUPPRESS)  # the subprocess's own entry
    args = parser.parse_args()
    if args.compile:
        compile_all(args.compile)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(record(args.bits), f)
    env = dict(os.environ, TRITON_INTERPRET="0")
    subprocess.run([sys.executable, __file__, "--compile", f.name], env=env, check=True)
    os.unlink(f.name)


if __name__ == "__main__":
    main()
