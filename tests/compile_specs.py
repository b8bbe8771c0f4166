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


def compile_spec(module: str, name: str, args: dict) -> None:
    fn = getattr(importlib.import_module(module), name)
    signature, constants = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg not in args:  # a constexpr left at its default by the launch
            args = dict(args, **{arg: _default(fn.params[i])})
        kind, value = args[arg]
        if fn.params[i].is_constexpr:
            signature[arg] = "constexpr"
            constants[(i,)] = DTYPES[value] if kind == "tldtype" else value
        else:
            signature[arg] = "*" + POINTER[value] if kind == "tensor" else SCALARS[kind]
    triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32))


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
