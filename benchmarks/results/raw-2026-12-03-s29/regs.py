"""Registers and spills of quest_select's kernels at the 128K B = 1 shape (after one launch)."""
import torch
import entmaxkv.kernels.quest_select as qs

b, hkv, g, p = 1, 8, 4, 8196
dev = "cuda"
upper = torch.randn(b, hkv, g, p, device=dev)
means = upper - 1
absmax = upper.abs() + 1
nmax = torch.randn(b, hkv, g, device=dev)
nmag = nmax.abs() + 1
lens = torch.tensor([131072], device=dev)
for fused in (True, False):  # noqa
    qs.FUSED_KEYS = fused
    out = torch.ops.entmaxkv.quest_select(upper, means, absmax, nmax, nmag, lens, None, 16, 128, 1.5, -1, 0.125, 1, 1)
    torch.cuda.synchronize()
ref = None
for name in ("_search_kernel", "_keys_kernel", "_chunk_best_upper_kernel", "_list_kernel"):
    fn = getattr(qs, name)
    for dev_caches in fn.device_caches.values():
        cache = dev_caches[0]
        for key, k in cache.items():
            print(name, "regs", getattr(k, "n_regs", "?"), "spills", getattr(k, "n_spills", "?"),
                  "warps", k.metadata.num_warps)
