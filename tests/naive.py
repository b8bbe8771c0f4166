"""Independent float64 oracles written for the tests: plain loops, no code from entmaxkv."""

import math

import torch


def naive_entmax(scores: torch.Tensor, alpha: float, iters: int = 200) -> torch.Tensor:
    """1-D float64 entmax by bisection on τ (softmax for α = 1)."""
    x = scores.double()
    if alpha == 1.0:
        return torch.softmax(x, dim=0)
    z = (alpha - 1) * x
    lo, hi = z.max().item() - 1.0, z.max().item()
    for _ in range(iters):
        mid = (lo + hi) / 2
        total = (z - mid).clamp_min(0).pow(1 / (alpha - 1)).sum().item()
        lo, hi = (mid, hi) if total >= 1 else (lo, mid)
    p = (z - lo).clamp_min(0).pow(1 / (alpha - 1))
    return p / p.sum()


def naive_threshold(z: torch.Tensor, power: float, iters: int = 200) -> torch.Tensor:
    """[...] float64: the root τ of Σ_i [z_i − τ]_+^power = 1 over the last dimension of z
    (−inf values carry no weight; −inf where every value is), by bisection from
    [max z − 1, max z]; the lower end, so at most the root."""
    z = z.double()
    top = z.amax(-1)
    lo, hi = top - 1, top
    for _ in range(iters):
        mid = (lo + hi) / 2
        total = (z - mid[..., None]).clamp_min(0).pow(power).nan_to_num(0.0).sum(-1)
        lo, hi = torch.where(total >= 1, mid, lo), torch.where(total >= 1, hi, mid)
    return lo


def naive_decode(keys, values, q, alpha, scale=None, slopes=None):
    """Attention of one sequence. keys, values: [Hkv, L, D] (all tokens, the new one last);
    q: [Hq, D]; slopes: [Hq] or None. Returns [Hq, D] float64."""
    hkv, length, d = keys.shape
    hq = q.shape[0]
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(hq, d, dtype=torch.float64)
    for h in range(hq):
        kv = h // (hq // hkv)
        s = (keys[kv].double() @ q[h].double()) * scale
        if slopes is not None:
            s = s + float(slopes[h]) * (torch.arange(length, dtype=torch.float64) - (length - 1))
        out[h] = naive_entmax(s, alpha) @ values[kv].double()
    return out
