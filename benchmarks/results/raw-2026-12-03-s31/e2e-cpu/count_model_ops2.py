import os, sys, collections
os.environ["TRITON_INTERPRET"] = "1"
import torch
torch.set_num_threads(1)
sys.path.insert(0, "/work/main/benchmarks")
import entmaxkv as ekv
from count_step_ops import Counter, patched, NO_KERNEL
from entmaxkv.compiled import LlamaSpec, random_params, forward_token
from entmaxkv.backend import append

spec = LlamaSpec(num_layers=2, num_heads=8, num_kv_heads=2, head_dim=64, hidden=128, vocab=64, rms_eps=1e-5)
dtype = torch.float16
params = random_params(spec, 64, dtype=dtype)
ctx = 1000

def launches(counter):
    a = {k: v for k, v in counter.ops.items() if k not in NO_KERNEL and "::" not in k}
    return a, dict(counter.kernels)

def run(attend):
    g = torch.Generator().manual_seed(1)
    caches = []
    for _ in range(spec.num_layers):
        c = ekv.PagedKVCache.empty(batch=1, num_kv_heads=2, head_dim=64, capacity=ctx + 42, dtype=dtype)
        k = torch.randn(1, 2, ctx, 64, generator=g).to(dtype)
        caches.append(ekv.prefill(c, k, k, [ctx]).without_host_len())
    token = torch.zeros(1, dtype=torch.int64); pos = torch.full((1,), ctx, dtype=torch.int64)
    forward_token(params, [c.fork() for c in caches], token, pos, spec, attend)
    forks = [c.fork() for c in caches]
    counter = Counter(); restore = patched(counter)
    try:
        with counter:
            forward_token(params, forks, token, pos, spec, attend)
    finally:
        restore()
    return launches(counter), caches

def none(cache, q, k, v):
    return append(cache, k, v, True)[0], q

(base_aten, base_tr), _ = run(none)
for alpha, sel in ((1.5, ekv.TopK(coverage=0.125)), (1.0, ekv.TopK(coverage=0.125)), (1.5, ekv.Dense())):
    cfg = ekv.DecodeConfig(alpha=alpha, selector=sel, scale=spec.head_dim ** -0.5, backend="triton")
    grab = {}
    def attend(cache, q, k, v):
        if "a" not in grab:
            grab["a"] = (cache.fork(), q.clone(), k.clone(), v.clone())
        return ekv.decode_step(cache, q, k, v, cfg)
    (aten, tr), caches = run(attend)
    da = collections.Counter(aten); da.subtract(base_aten)
    dt = collections.Counter(tr); dt.subtract(base_tr)
    da = {k: v for k, v in da.items() if v}; dt = {k: v for k, v in dt.items() if v}
    # standalone step on the same inputs
    cache, q, k, v = grab["a"]
    c2 = Counter(); restore = patched(c2)
    try:
        with c2:
            ekv.decode_step(cache.fork(), q, k, v, cfg)
    finally:
        restore()
    sa, st = launches(c2)
    print(f"alpha {alpha} {type(sel).__name__}: model minus none, over {spec.num_layers} layers: aten {da} triton {dt}")
    print(f"    standalone decode_step: aten {sa} triton {st}")
