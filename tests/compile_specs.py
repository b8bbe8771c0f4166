"""Compile recorded Triton kernel specialisations for an H100/H200 (sm_90) without a GPU.

    TRITON_INTERPRET=0 python tests/compile_specs.py specs.json

Each spec is [module, kernel name, {arg: [kind, value]}] as written by
tests/test_kernels_compile.py. Prints one line per failure and exits 1 if any failed.
"""

import importlib
import json
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

POINTER = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64", "int32": "i32",
           "int64": "i64", "bool": "i1", "uint8": "u8", "int8": "i8"}
DTYPES = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32, "fp64": tl.float64,
          "int32": tl.int32, "int64": tl.int64}
SCALARS = {"int": "i32", "float": "fp32", "bool": "i1"}


def _default(param) -> list:
    """[kind, value] of a parameter's default (a bool or an int constexpr)."""
    value = param.default
    return [type(value).__name__, value]


def compile_for_sm90(fn, args: dict, num_warps: int = 4, aligned=lambda arg, kind, value: False, **extra):
    """The recorded specialisation ``args`` ({arg: [kind, value]}; constexprs left out take their
    defaults) of the @triton.jit ``fn``, compiled for sm_90 at ``num_warps``. ``aligned(arg,
    kind, value)``: which pointer and int arguments get the launcher's 16-divisibility hint (a
    real launch marks 16-byte aligned pointers and ints divisible by 16; none by default)."""
    signature, constants, attrs = {}, {}, {}
    for i, arg in enumerate(fn.arg_names):
        kind, value = args[arg] if arg in args else _default(fn.params[i])
        if fn.params[i].is_constexpr:
            signature[arg] = "constexpr"
            constants[(i,)] = DTYPES[value] if kind == "tldtype" else value
            continue
        signature[arg] = "*" + POINTER[value] if kind == "tensor" else SCALARS[kind]
        if aligned(arg, kind, value):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, **extra})


def compile_spec(module: str, name: str, args: dict) -> None:
    compile_for_sm90(getattr(importlib.import_module(module), name), args)


def main() -> int:
    specs = json.load(open(sys.argv[1]))
    failed = 0
    for module, name, args in specs:
        try:
            compile_spec(module, name, args)
        except Exception as err:  # report every failing specialisation, not just the first
            failed += 1
            constexprs = {k: v[1] for k, v in args.items() if k.isupper()}
            print(f"FAILED {name} {constexprs}:\n  " + "\n  ".join(str(err).strip().splitlines()[-8:]))
    print(f"{len(specs) - failed} of {len(specs)} specialisations compiled for sm_90")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
