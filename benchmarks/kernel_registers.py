"""Registers, spills and static SASS of the kernels a decode step launches (or of one), compiled
for sm_90a on a machine without a GPU (Triton's compiler, its bundled ptxas and nvdisasm;
``code_scan_registers.compile_one`` compiles). Any kernel of any step, as it launches at B = 1;
``code_scan_registers.py`` sweeps the code scans' launch shapes with opcode classes and loop
bodies, ``page_bounds_sass.py`` the statistics pass's.

    python benchmarks/kernel_registers.py --kernel _page_scores_kernel --selector "Gaussian()" \\
        --variants "base;page_scores.NUM_WARPS=4" --override "WITH_NEWEST=False"
    python benchmarks/kernel_registers.py --selector "Exact()" --key-bits 4   # every kernel of the step

The step (B = 1, one KV head with the group of ``--heads`` (32/8 by default: 4 query heads; the
group size is what shapes a kernel), D = ``--head-dim``, ``--dtype``, α = 1.5, 200 tokens, a cache
with ``--key-bits`` codes or ``--page-boxes`` if asked) runs once per variant in Triton's
interpreter, which records each launch's arguments; each specialisation is then compiled for
sm_90a in a subprocess (``tests/compile_specs.compile_for_sm90``) as a CUDA launch specialises it:
pointers and the integers divisible by 16 marked so (session 47: with D = 128 left unmarked the
Gaussian statistics pass seemed to spill 4 KB a thread; it spills nothing), ``NATIVE`` and
``DOT_F32`` as the launchers set them on CUDA, the recorded ``num_stages``. Not reproduced: the
integers are the short cache's (P, say), and launch choices that count SMs follow the
interpreter's one (``gaussian_tau.splits``, ``page_scores.dot_iters``, the scoring kernel's
splits), and ``PDL`` stays off (on Hopper a launch turns it on: a few instructions more). Set
those by variants or overrides. A variant sets ``entmaxkv.kernels.<module>``
constants (``base``: none); ``--override`` sets constexprs of the kernel itself (``name=value``,
``warps=N``; a name the kernel does not take is an error with ``--kernel``, skipped without).
Per line: registers a thread, spill bytes, stack, static SASS instructions and, for kernels with
a ``BLOCK_P``, those times warps over BLOCK_P: issued instructions a page of straight-line code.
A static count (loops count once, slow paths too) from one function's ptxas report. Measures
only; what runs faster is for the GPU to say.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOWN = ("BLOCK_P", "BLOCK_N", "CHUNK", "VEC", "DOT", "NATIVE", "ITERS", "STAGES", "WITH_SIGMA", "WITH_MEAN",
         "WITH_NEWEST")


def record(kernel: str | None, selector: str, variants: list[str], heads: str, head_dim: int, dtype: str,
           key_bits: int | None, page_boxes: bool) -> list:
    """[variant, module, kernel name, {arg: [kind, value]}, warps, stages] for each launch of
    ``kernel`` (None: of every kernel), its arguments as a CUDA launch would set them."""
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch

    import entmaxkv as ekv
    from helpers import kernel_launches, random_step
    from step_variants_gpu import assignments
    from test_kernels_compile import _encode

    launches = []

    def record_launch(launched, bound):
        fn = launched.fn
        if kernel in (None, fn.__name__):
            recorded = {k: _encode(v) for k, v in bound.items() if k not in ("num_warps", "num_stages")}
            launches.append([fn.__module__, fn.__name__, as_on_the_gpu(fn.__module__, recorded, dtype),
                             bound.get("num_warps", 4), bound.get("num_stages")])

    hq, hkv = (int(x) for x in heads.split("/"))
    group = hq // hkv  # one KV head of the group: the launch's specialisation is the same
    work = getattr(torch, dtype)
    found = []
    for variant in variants:
        undo = []
        for module, const, value in assignments(variant):
            undo.append((module, const, getattr(module, const)))
            setattr(module, const, value)
        launches.clear()
        g = torch.Generator().manual_seed(0)
        cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=head_dim, capacity=256, dtype=work,
                                       key_bits=key_bits, page_boxes=page_boxes)
        cache = ekv.prefill(cache, *(torch.randn(1, 1, 200, head_dim, generator=g).to(work) for _ in range(2)), [200])
        q, k, v = random_step(g, 1, group, 1, head_dim, work)
        config = ekv.DecodeConfig(1.5, eval("ekv." + selector), backend="triton")
        with kernel_launches(record_launch):
            ekv.decode_step(cache.fork(), q, k, v, config)
        found += [[variant] + launch for launch in launches]
        for module, const, old in undo:
            setattr(module, const, old)
    return found


def as_on_the_gpu(module: str, args: dict, dtype: str) -> dict:
    """The recorded arguments with the constexprs a CUDA launch sets differently from the
    interpreter's: ``NATIVE`` (native float16/bfloat16 dots: ``sparse_decode`` for those caches,
    the code scans wherever ``NATIVE_CODES``, read with the variant applied) and ``DOT_F32``
    (``page_scores``: False on CUDA)."""
    import importlib

    args = dict(args)
    if "NATIVE" in args:
        native = (bool(importlib.import_module(module).NATIVE_CODES) if module.endswith("code_scan")
                  else dtype in ("float16", "bfloat16"))
        args["NATIVE"] = ["bool", native]
    if "DOT_F32" in args:
        args["DOT_F32"] = ["bool", False]
    return args


def compile_all(path: str, override: str, strict: bool, dump: str | None = None) -> None:
    """Compile each recorded launch (once) with ``override`` applied; print one line each.
    ``strict``: an override the kernel does not take is an error (else skipped). ``dump``: a
    folder for each specialisation's SASS and TTGIR (``<kernel>-<n>.sass``)."""
    import importlib

    import triton
    from code_scan_registers import compile_one

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ptxas, nvdisasm = os.path.join(tools, "ptxas"), os.path.join(tools, "nvdisasm")
    seen = set()
    for variant, module, name, args, warps, stages in json.load(open(path)):
        fn = getattr(importlib.import_module(module), name)
        for item in filter(None, (x.strip() for x in override.split(","))):
            key, value = item.split("=")
            if key == "warps":
                warps = int(value)
            elif key in fn.arg_names:
                value = eval(value)
                args[key] = [type(value).__name__, value]
            elif strict:
                sys.exit(f"{name} takes no argument {key}")
        if (seen_key := json.dumps([variant, args, warps, stages])) in seen:
            continue
        seen.add(seen_key)
        options = {} if stages is None else {"num_stages": stages}
        got = compile_one(fn, args, warps, ptxas, nvdisasm, dump, f"{name}-{len(seen)}", **options)
        count = len(got["opcodes"])
        shown = " ".join(f"{k}={args[k][1]}" for k in SHOWN if k in args)
        per_page = f" ({count * warps / args['BLOCK_P'][1]:.0f} a page)" if "BLOCK_P" in args else ""
        print(f"{variant:<24} {name} {shown} warps={warps}: {got['regs']} registers, spill stores/loads "
              f"{got['spills']}/{got['spill_loads']} B, stack {got['stack']} B, SASS {count}{per_page}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", help="the @triton.jit function's name (default: every kernel the step launches)")
    parser.add_argument("--selector", default="Gaussian()", help="an entmaxkv selector expression")
    parser.add_argument("--variants", default="base")
    parser.add_argument("--override", default="", help="the kernel's constexprs: name=value,...; warps=N")
    parser.add_argument("--heads", default="32/8", help="Hq/Hkv")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--key-bits", type=int, choices=[4, 8], help="a cache with key codes (Exact uses them)")
    parser.add_argument("--page-boxes", action="store_true", help="a cache with 8-bit page boxes (TopK ranks by them)")
    parser.add_argument("--dump", help="a folder for each compiled specialisation's SASS and TTGIR")
    parser.add_argument("--compile", help=argparse.SUPPRESS)  # the subprocess: the recorded launches' file
    args = parser.parse_args()
    if args.compile:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        compile_all(args.compile, args.override, args.kernel is not None, args.dump)
        return
    launches = record(args.kernel, args.selector, args.variants.split(";"), args.heads, args.head_dim, args.dtype,
                      args.key_bits, args.page_boxes)
    if not launches:
        sys.exit(f"the step made no launch of {args.kernel}")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(launches, f)
    try:
        command = [sys.executable, __file__, "--compile", f.name, "--override", args.override]
        command += ["--dump", args.dump] if args.dump else []
        done = subprocess.run(command + (["--kernel", args.kernel] if args.kernel else []),
                              env=dict(os.environ, TRITON_INTERPRET="0"))
    finally:
        os.unlink(f.name)
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
