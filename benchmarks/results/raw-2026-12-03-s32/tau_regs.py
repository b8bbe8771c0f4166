"""Registers/spills of sparse_decode's _tau_kernel, SUPPORT_FIRST off/on (sm_90a, offline)."""
import json, os, subprocess, sys, tempfile
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "tests")
if sys.argv[1] == "record":
    import torch, entmaxkv as ekv
    from triton.runtime.interpreter import InterpretedFunction
    from test_kernels_compile import _encode
    specs = {}
    run = InterpretedFunction.run
    def rec(self, *args, grid, warmup, **kw):
        if self.fn.__name__ == "_tau_kernel":
            b = dict(zip(self.arg_names, args), **kw)
            specs[self.fn.__name__] = [self.fn.__module__, self.fn.__name__, {k: _encode(v) for k, v in b.items()}, kw.get("num_warps", 4)]
        return run(self, *args, grid=grid, warmup=warmup, **kw)
    InterpretedFunction.run = rec
    k = torch.randn(1, 2, 16 * 40 + 3, 128).half()
    c = ekv.prefill(ekv.PagedKVCache.empty(batch=1, num_kv_heads=2, head_dim=128, capacity=16 * 48, dtype=torch.float16), k, k, [16 * 40 + 3])
    q = torch.randn(1, 8, 1, 128).half(); kn = torch.randn(1, 2, 1, 128).half()
    ekv.decode_step(c, q, kn, kn, ekv.DecodeConfig(1.5, ekv.TopK(coverage=0.125), backend="triton"))
    json.dump(specs, open(sys.argv[2], "w"))
else:
    import triton.backends.nvidia as nvidia
    from compile_specs import compile_for_sm90
    import importlib
    specs = json.load(open(sys.argv[2]))
    module, name, args, warps = specs["_tau_kernel"]
    fn = getattr(importlib.import_module(module), name)
    bindir = os.path.join(os.path.dirname(nvidia.__file__), "bin")
    for sf, blk in ((False, 128), (True, 128), (True, 64), (True, 32), (True, 256), (True, 16)):
        a = dict(args, SUPPORT_FIRST=["bool", sf], SUPPORT_BLOCK=["int", blk])
        kern = compile_for_sm90(fn, a, warps, lambda arg, kind, value: kind == "tensor")
        with tempfile.TemporaryDirectory() as tmp:
            ptx = os.path.join(tmp, "k.ptx"); open(ptx, "w").write(kern.asm["ptx"])
            rep = subprocess.run([os.path.join(bindir, "ptxas"), "-arch=sm_90a", "-v", ptx, "-o", os.devnull], capture_output=True, text=True).stderr
            cub = os.path.join(tmp, "k.cubin"); open(cub, "wb").write(kern.asm["cubin"])
            sass = subprocess.run([os.path.join(bindir, "nvdisasm"), "-c", cub], capture_output=True, text=True).stdout
        lines = [l for l in rep.splitlines() if "registers" in l or "spill" in l]
        print("SUPPORT_FIRST", sf, blk, "warps", warps, "|", " ".join(x.strip() for x in lines), "| SASS lines", sum(1 for l in sass.splitlines() if "/*" in l and ";" in l))
if len(sys.argv) > 3:
    import re
    for sf in (False, True):
        a = dict(args, SUPPORT_FIRST=["bool", sf])
        kern = compile_for_sm90(fn, a, warps, lambda arg, kind, value: kind == "tensor")
        ptx = kern.asm["ptx"]
        print(sf, "calls", len(re.findall(r"\bcall", ptx)), "maxnreg", re.findall(r"\.maxnreg \d+", ptx), "local", len(re.findall(r"\.local", ptx)), "bar", len(re.findall(r"bar\.sync|barrier\.sync", ptx)))
        with tempfile.TemporaryDirectory() as tmp:
            cub = os.path.join(tmp, "k.cubin"); open(cub, "wb").write(kern.asm["cubin"])
            sass = subprocess.run([os.path.join(bindir, "nvdisasm"), "-c", cub], capture_output=True, text=True).stdout
        lines = [l for l in sass.splitlines() if "/*" in l and ";" in l]
        idx = [i for i, l in enumerate(lines) if re.search(r"\b(STL|LDL)", l)]
        print("   spill lines at", idx[:20], "of", len(lines))
        for i in idx[:6]:
            print("     ", lines[i].strip()[:110])
