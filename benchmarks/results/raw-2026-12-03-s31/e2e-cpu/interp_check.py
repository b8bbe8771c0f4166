"""Run the real decode_step (Triton interpreter, float32 cache) on e2e-like and SyntheticStream
inputs; capture sparse_decode's scratch (cand_n, cand_s, part_m) and count the tau kernel's
survivors total = #{s : lin*s > lin*max - 1} gathered, per query head."""
import os, sys, math, types
os.environ["TRITON_INTERPRET"] = "1"
import torch
torch.set_num_threads(1)
sys.path.insert(0, "/tmp/e2e31")
import entmaxkv as ekv
import entmaxkv.kernels.sparse_decode as sd
from survivors import model_inputs, stream_inputs, HKV, G, D

captured = []


class TorchShim(types.ModuleType):
    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *a, **k):
        t = torch.empty(*a, **k)
        captured.append(t)
        return t


sd.torch = TorchShim("torchshim")

n = int(sys.argv[1])
for which in sys.argv[2].split(","):
    k, q, kn = (model_inputs if which == "model" else stream_inputs)(n)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(1, HKV, n, D, generator=g)
    cache = ekv.prefill(ekv.PagedKVCache.empty(batch=1, num_kv_heads=HKV, head_dim=D, capacity=n + 42,
                                               dtype=torch.float32), k[None], v, [n]).without_host_len()
    for name, sel in (("TopK12.5", ekv.TopK(coverage=0.125)), ("Dense", ekv.Dense())):
        captured.clear()
        cfg = ekv.DecodeConfig(alpha=1.5, selector=sel, backend="triton")
        _, out, info = ekv.decode_step(cache.fork(), q[None, :, None], kn[None, :, None], torch.zeros(1, HKV, 1, D),
                                       cfg, with_info=True)
        cand_s, cand_i, cand_n, part_m = captured[0], captured[1], captured[2], captured[3]
        rows = cand_n.numel()
        nsp1 = rows // (G * HKV)
        cap = cand_s.numel() // rows
        cs = cand_s.view(G * HKV, nsp1, cap)
        cn = cand_n.view(G * HKV, nsp1)
        pm = part_m.view(G * HKV, nsp1).max(1).values
        totals, nmax = [], []
        for r in range(G * HKV):
            t = 0
            for sp in range(nsp1):
                c = int(cn[r, sp])
                t += int((0.5 * cs[r, sp, :c].double() > 0.5 * float(pm[r]) - 1).sum())
            totals.append(t)
            nmax.append(int(cn[r].max()))
        tok = info.num_tokens[0].tolist()
        srt = sorted(totals)
        print(f"{which} n={n} {name}: splits {nsp1 - 1}, tau-kernel survivors min/med/max {srt[0]}/{srt[len(srt)//2]}/{srt[-1]}"
              f" (V loops of 16: max {math.ceil(srt[-1] / 16)}); per-split counts max {max(nmax)}; "
              f"support (info tokens attended {tok[0]}); tau mean {info.tau.mean():.3f}", flush=True)
