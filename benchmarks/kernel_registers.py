"""Registers, spills and static SASS of one kernel as a decode step launches it, compiled for
sm_90a on a machine without a GPU (Triton's compiler, its bundled ptxas and nvdisasm).

    python benchmarks/kernel_registers.py --kernel _page_scores_kernel --selector "Gaussian()" \\
        --variants "base;page_scores.BLOCK_P=8,page_scores.CHUNK=8" --override "WITH_NEWEST=False"

The step (B = 1, one KV head with the group of ``--heads`` (32/8 by default: 4 query heads; the
group size is what shapes a kernel), D = ``--head-dim``, ``--dtype``, α = 1.5, 200 tokens) runs once per variant in Triton's
interpreter, which records the kernel's arguments; each recorded specialisation is then compiled
for sm_90a in a subprocess (``tests/compile_specs.compile_for_sm90``, pointers marked 16-byte
aligned as a real launch marks them). A variant sets ``entmaxkv.kernels.<module>`` constants
(``base``: none); ``--override`` sets the kernel's own constexprs (``name=value``, ``warps=N``)
where the short cache cannot reach a launch form (``page_scores``' ``ITERS=4,STAGES=2``: its
loop at B = 16). Per line: registers a thread, spill bytes, stack, static SASS instructions, and
those times warps over the pages or rows a program takes (``BLOCK_P`` where it has one): issued
instructions a page of straight-line code. A static count: loops count once, slow paths too.
Measures only; what runs faster is for the GPU to say.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOWN = ("BLOCK_P", "CHUNK", "VEC", "DOT", "ITERS", "STAGES", "WITH_SIGMA", "WITH_MEAN", "WITH_NEWEST")


def record(kernel: str, selector: str, variants: list[str], heads: str, head_dim: int, dtype: str) -> list:
    """[variant, module, kernel name, {arg: [kind, value]}, warps] for each launch of ``kernel``."""
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import importlib

    import torch
    from triton.runtime.interpreter import InterpretedFunction

    import entmaxkv as ekv
    from helpers import make_cache, random_step
    from test_kernels_compile import _encode

    launches, run = [], InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        if self.fn.__name__ == kernel:
            bound = dict(zip(self.arg_names, args), **kwargs)
            launches.append([self.fn.__module__, self.fn.__name__,
                             {k: _encode(v) for k, v in bound.items() if k != "num_warps"}, kwargs.get("num_warps", 4)])
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run
    hq, hkv = (int(x) for x in heads.split("/"))
    group = hq // hkv  # one KV head of the group: the launch's specialisation is the same
    work = getattr(torch, dtype)
    found = []
    for variant in variants:
        undo = []
        for item in filter(None, (x.strip() for x in variant.split(","))):
            if item == "base":
                continue
            name, value = item.split("=")
            module_name, const = name.split(".")
            module = importlib.import_module(f"entmaxkv.kernels.{module_name}")
            undo.append((module, const, getattr(module, const)))
            setattr(module, const, eval(value))  # a Python literal: 8, True, 1e-30
        launches.clear()
        cache, _, _ = make_cache(0, 1, 1, head_dim, 16, [200], dtype=work)
        q, k, v = random_step(torch.Generator().manual_seed(0), 1, group, 1, head_dim, work)
        config = ekv.DecodeConfig(1.5, eval("ekv." + selector), backend="triton")
        ekv.decode_step(cache.fork(), q, k, v, config)
        found += [[variant] + launch for launch in launches]
        for module, const, old in undo:
            setattr(module, const, old)
    InterpretedFunction.run = run
    return found


def compile_all(path: str, override: str) -> None:
    """Compile each recorded launch (once) with ``override`` applied; print one line each."""
    import importlib

    import triton
    from compile_specs import compile_for_sm90

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    seen = set()
    for variant, module, name, args, warps in json.load(open(path)):
        for item in filter(None, (x.strip() for x in override.split(","))):
            key, value = item.split("=")
            if key == "warps":
                warps = int(value)
            else:
                value = eval(value)
                args[key] = [type(value).__name__, value]
        if (key := json.dumps([variant, args, warps])) in seen:
            continue
        seen.add(key)
        kernel = compile_for_sm90(getattr(importlib.import_module(module), name), args, num_warps=warps,
                                  aligned=lambda arg, kind, value: kind == "tensor")
        with tempfile.TemporaryDirectory() as tmp:
            ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
            open(ptx, "w").write(kernel.asm["ptx"])
            log = subprocess.run([os.path.join(tools, "ptxas"), "-v", "--gpu-name", "sm_90a", ptx, "-o", cubin],
                                 capture_output=True, text=True, check=True).stderr
            sass = subprocess.run([os.path.join(tools, "nvdisasm"), cubin], capture_output=True, text=True,
                                  check=True).stdout
        count = sum(1 for line in sass.splitlines() if line.strip().startswith("/*") and ";" in line)
        words = log.replace(",", " ").split()
        regs = words[words.index("registers") - 1] if "registers" in words else "?"
        spills = [words[i - 2] for i, w in enumerate(words) if w == "spill"]  # stores, loads
        stack = words[words.index("stack") - 2] if "stack" in words else "?"
        pages = args.get("BLOCK_P", ["int", 1])[1]
        shown = " ".join(f"{k}={args[k][1]}" for k in SHOWN if k in args)
        print(f"{variant:<44} {shown} warps={warps}: {regs} registers, spill stores/loads "
              f"{'/'.join(spills) or '?'} B, stack {stack} B, SASS {count} ({count * warps / pages:.0f} a page)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", required=True, help="the @triton.jit function's name")
    parser.add_argument("--selector", default="Gaussian()", help="an entmaxkv selector expression")
    parser.add_argument("--variants", default="base")
    parser.add_argument("--override", default="", help="the kernel's constexprs: name=value,...; warps=N")
    parser.add_argument("--heads", default="32/8", help="Hq/Hkv")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--compile", help=argparse.SUPPRESS)  # the subprocess: the recorded launches' file
    args = parser.parse_args()
    if args.compile:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        compile_all(args.compile, args.override)
        return
    launches = record(args.kernel, args.selector, args.variants.split(";"), args.heads, args.head_dim, args.dtype)
    if not launches:
        sys.exit(f"the step made no launch of {args.kernel}")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(launches, f)
    try:
        subprocess.run([sys.executable, __file__, "--kernel", args.kernel, "--compile", f.name, "--override",
                        args.override], env=dict(os.environ, TRITON_INTERPRET="0"), check=True)
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    main()
