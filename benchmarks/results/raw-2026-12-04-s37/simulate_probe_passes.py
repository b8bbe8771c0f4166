"""Session 37: how many counting passes the threshold search takes, one probe a pass (the
kernel's regula falsi with the Illinois halving, ``bracketed``) against three (``gen``), on
SyntheticStream's TopK rank keys and on heavy-tailed keys. Float32 images, the kernel's
arithmetic in numpy. Run from the repository root: python benchmarks/results/raw-2026-12-04-s37/simulate_probe_passes.py
"""
import math, sys
import numpy as np, torch
from entmaxkv.synthetic import SyntheticStream
from entmaxkv.topk import rank_key

def ordered(x):  # float32 -> int32 order-preserving
    x = np.where(x == 0, np.float32(0), x).astype(np.float32)
    b = x.view(np.int32).astype(np.int64)
    mag = (1 << 31) - 1
    return np.where(b < 0, b ^ mag, b)

def value_of(u):
    mag = (1 << 31) - 1
    b = u ^ mag if u < 0 else u
    return float(np.array([b], dtype=np.int64).astype(np.int32).view(np.float32)[0])

def bracketed(u, k, lo, hi, c_lo, c_hi, probes=8):
    kf = float(k); clm, chm = float(c_lo), float(c_hi); side = 0; passes = 0; done = False; probe = lo; i = 0
    while hi > lo + 1 and not done:
        f = (clm - kf - 0.5) / (clm - chm)
        guess = value_of(lo) * (1 - f) + value_of(hi - 1) * f
        middle = (lo + hi) // 2
        probe = int(ordered(np.array([guess], dtype=np.float32))[0]) if i < probes else middle
        probe = min(max(probe, lo + 1), hi - 1)
        c = int((u >= probe).sum()); passes += 1
        up = c >= k
        if up:
            chm = (chm + kf + 0.5) * 0.5 if side == 1 else chm; clm = float(c); lo = probe
        else:
            clm = (clm + kf + 0.5) * 0.5 if side == -1 else clm; chm = float(c); c_hi = c; hi = probe
        side = 1 if up else -1; done = c == k; i += 1
    return passes

def f2o(v):
    return int(ordered(np.array([v], dtype=np.float32))[0])

def keys_of(n, seed, hkv=8):
    st = SyntheticStream(batch=1, num_kv_heads=hkv, group=4, head_dim=128, seed=seed)
    k, v = st.prompt(n); q, _, _ = st.step()
    P = n // 16
    kp = k[:, :, :P * 16].reshape(1, hkv, P, 16, 128)
    kmin, kmax = kp.amin(3), kp.amax(3)
    qg = q.reshape(1, hkv, 4, 128)[..., None, :] / math.sqrt(128)
    upper = torch.maximum(qg * kmin[:, :, None], qg * kmax[:, :, None]).sum(-1)
    cand = torch.ones(1, 1, P, dtype=torch.bool); cand[..., -1] = False
    key = rank_key(upper, cand, 1.5)
    nc = P - 1
    key[..., :1] = float("inf"); key[..., nc - 1:nc] = float("inf")
    return [key[0, h, :nc].numpy().astype(np.float32) for h in range(hkv)]

def datasets():
    rng = np.random.default_rng(0)
    for n in (8192 * 2, 32768, 65536, 131072, 262144):
        for seed in range(2):
            for x in keys_of(n, n * 7 + seed):
                yield f"stream{n}", x
    for P in (2048, 8192, 16384):
        yield "normal", rng.standard_normal(P).astype(np.float32)
        yield "expo", -rng.exponential(size=P).astype(np.float32)
        yield "cauchy", rng.standard_cauchy(P).astype(np.float32)
        x = rng.standard_normal(P).astype(np.float32); x[:5] = -1e30; yield "outlier", x
        yield "ties", rng.integers(0, 4, P).astype(np.float32)
        yield "logn", -np.exp(rng.standard_normal(P) * 5).astype(np.float32)

def gen(u, k, lo, hi, c_lo, c_hi, spread, mode, probes=8):
    passes = 0; i = 0
    while hi > lo + 1:
        m = float(c_lo - c_hi); vlo, vhi = value_of(lo), value_of(hi - 1)
        d = max(1.0, spread * m)
        interp = lambda t: f2o(vlo * (1 - (c_lo - t) / m) + vhi * ((c_lo - t) / m))
        mid = (lo + hi) // 2
        if i >= probes:
            q = (hi >> 2) - (lo >> 2)
            ps = [lo + q, mid, lo + 3 * q] if q > 0 else [mid] * 3
        elif mode == "3i":
            ps = [interp(k + 0.5 + d), interp(k + 0.5), interp(k + 0.5 - d)]
        elif mode == "2i+mid":
            ps = [interp(k + 0.5 + d), interp(k + 0.5 - d), mid]
        elif mode == "3i+mid@odd":
            ps = [interp(k + 0.5 + d), interp(k + 0.5), interp(k + 0.5 - d)] if i % 2 == 0 else [interp(k + 0.5 + d), mid, interp(k + 0.5 - d)]
        ps = sorted(min(max(p, lo + 1), hi - 1) for p in ps)
        n = [int((u >= p).sum()) for p in ps]
        passes += 1; i += 1
        if any(c == k for c in n):
            return passes
        nlo, nclo = lo, c_lo
        for p, c in zip(ps, n):
            if c >= k: nlo, nclo = p, c
        nhi, nchi = hi, c_hi
        for p, c in reversed(list(zip(ps, n))):
            if c < k: nhi, nchi = p, c
        lo, c_lo, hi, c_hi = nlo, nclo, nhi, nchi
    return passes

res = {}
for name, x in datasets():
    u = ordered(x); nc = len(x); n_inf = int(np.isinf(x).sum()); fin = u[np.isfinite(x)]
    for cov in (0.125, 0.0625, 0.03, 0.25):
        kk = math.ceil(nc * cov - 1e-9)
        if kk <= n_inf: continue
        lo, hi = int(fin.min()), int(fin.max()) + 1
        r = res.setdefault((name, cov), {})
        r.setdefault("rf", []).append(bracketed(u, kk, lo, hi, nc, n_inf))
        for mode in ("3i", "2i+mid", "3i+mid@odd"):
            for pr in (8, 32):
                r.setdefault(f"{mode}/{pr}", []).append(gen(u, kk, lo, hi, nc, n_inf, 0.15, mode, pr))
for key, r in res.items():
    print(key, {k: max(v) for k, v in r.items()})
