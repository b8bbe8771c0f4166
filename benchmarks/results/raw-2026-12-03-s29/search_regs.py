"""ptxas registers/spills of quest_select's _search_kernel for sm_90 at given P (offline)."""
import json, os, subprocess, sys, tempfile, re
from pathlib import Path
if sys.argv[1] == "record":
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, "tests")
    import torch
    from test_kernels_compile import _encode
    from triton.runtime.interpreter import InterpretedFunction
    import entmaxkv.kernels.quest_select as qs
    for kv in sys.argv[3:]:
        k, v = kv.split("="); setattr(qs, k, eval(v))
    p = int(sys.argv[2])
    specs, run = {}, InterpretedFunction.run
    def recording(self, *args, grid, warmup, **kwargs):
        bound = dict(zip(self.arg_names, args), **kwargs)
        specs[self.fn.__name__] = [self.fn.__module__, self.fn.__name__, {k: _encode(v) for k, v in bound.items()}]
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)
    InterpretedFunction.run = recording
    G = int(os.environ.get("G", 4)); upper = torch.randn(1, 1, G, p); lens = torch.tensor([p * 16 - 40])
    nm = torch.randn(1, 1, G)
    qs.quest_select(upper, upper - 1, upper.abs() + 1, nm, nm.abs() + 1, lens, None, 16, 128, 1.5, -1, 0.125, 1, 1)
    json.dump(specs, open("/tmp/specs.json", "w"))
else:
    sys.path.insert(0, "tests")
    from compile_specs import compile_for_sm90
    import importlib
    import triton.backends.nvidia as nvidia
    ptxas = os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")
    for module, name, args in json.load(open("/tmp/specs.json")).values():
        if name != "_search_kernel":
            continue
        warps = int(sys.argv[2])
        fn = getattr(importlib.import_module(module), name)
        k = compile_for_sm90(fn, args, warps, lambda a, kind, v: kind == "tensor" or (kind == "int" and v % 16 == 0))
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "k.ptx").write_text(k.asm["ptx"])
            out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f"{tmp}/k.ptx", "-o", f"{tmp}/k.cubin"], capture_output=True, text=True).stderr
        print(name, {a: args[a][1] for a in ("BLOCK", "TAIL", "KEYED", "G_STEP") if a in args}, re.findall(r"Used \d+ registers|\d+ bytes spill stores", out))
