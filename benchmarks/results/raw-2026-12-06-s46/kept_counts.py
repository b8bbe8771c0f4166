"""How many pages gaussian_tau's cut keeps a row on needle inputs (the Gaussian step's own moments: B = 2,
64K, 32/8, α = 1.5, the torch reference's μ and σ), with the low end top − 1 (sessions 16–45) and with
session 46's (a page's (α−1)·μ less S^−(α−1)). CPU, float32 cache; mirrors the kernel's float32 cut.

    .venv/bin/python benchmarks/results/raw-2026-12-06-s46/kept_counts.py
"""
import math
import torch
import entmaxkv as ekv
from entmaxkv.backend import build_step
from entmaxkv.synthetic import needle_inputs
from entmaxkv.kernels.gaussian_tau import NEGLIGIBLE

n, alpha = 65536, 1.5
k, v, q, kn, vn = needle_inputs(batch=2, num_kv_heads=8, group=4, head_dim=128, context=n, needles=4, run=16, seed=n)
cache = ekv.prefill(ekv.PagedKVCache.empty(batch=2, num_kv_heads=8, head_dim=128, capacity=n + 64, dtype=torch.float32), k, v, [n, n])
from entmaxkv.state import append_token
cache, _ = append_token(cache, kn, vn)
step = build_step(cache, q, alpha, 128 ** -0.5, None, kernels=False, needs_sigma=True)
c, S = alpha - 1, cache.page_size
mu, sd = step.means.double() * c, step.sigma.double() * c
cand = step.candidates[:, 0][:, None, None, :]
top_page = torch.where(cand, mu, -math.inf).amax(-1)
top_exact = (step.newest_scores.double() * c).amax(-1)
power = 1 / c
for name, least in [("top - 1", torch.maximum(top_page, top_exact) - 1),
                    ("Jensen", torch.maximum(top_page - S ** (-c), top_exact - 1))]:
    a = (mu - least[..., None]).float()
    s32 = sd.float()
    delta = -a / s32
    log_bound = power * torch.log(power * s32 / (math.e * delta)) - 0.5 * delta * delta
    negligible = (a < 0) & (log_bound < math.log(NEGLIGIBLE / S) - 1)
    kept = (cand & ~negligible).sum(-1)
    print(name, "pages", int(cand.sum()), "kept per row: min", int(kept.min()), "median", int(kept.median()),
          "max", int(kept.max()), "rows > 64:", int((kept > 64).sum()), "of", kept.numel(), "top_page", float(top_page.mean()), "top_exact", float(top_exact.mean()))
