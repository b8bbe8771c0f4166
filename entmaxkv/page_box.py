"""8-bit page boxes and the Quest bound on them in integer arithmetic: the float64 reference of
``entmaxkv::page_box_upper`` (``kernels/page_box_upper.py``). A cache made with
``page_boxes=True`` stores every full page's box (``encode_boxes``; written with the page's
statistics) and ``TopK`` ranks its pages by ``box_upper`` (perf-log rows 133–134).

A page's box (one KV head, full page, per channel d):

    scale = the smallest float32 with 127·scale >= a, a = max_d max(|kmin_d|, |kmax_d|)  (1 if a = 0)
    code_min_d = floor(kmin_d / scale),  code_max_d = ceil(kmax_d / scale)     in [-127, 127]
    l1 = Σ_d max(|code_min_d|, |code_max_d|)                                    (an integer <= 127·D)

so code_min·scale <= kmin and code_max·scale >= kmax: 2·D + 8 bytes a page instead of 2·2·D.
A query head's codes: step t = the smallest power of two, at least 2^-126, with 127·t >= max_d
|q_d| (1 if q = 0), q_code_d = floor(q_d / t + 1/2), |q_d − q_code_d·t| <= t/2. Since x -> max(x·lo, x·hi) is
max(|lo|, |hi|)-Lipschitz, every score of the page satisfies

    q·k <= Σ_d max(q_d·lo_d, q_d·hi_d)
        <= scale·t·(I + l1 / 2),   I = Σ_d relu(q_code_d)·code_max_d + min(q_code_d, 0)·code_min_d,

and |q·k| <= mag = 128·t·scale·l1. I is an exact int8 × int8 -> int32 sum (|I| <= 127·l1 <=
127²·D), so the kernel runs it on integer tensor cores straight from the stored codes, with no
conversion; I + l1/2 is a half-integer below 2^23 for D <= 512, exact in float32. ``box_upper``
adds (γ + 4·eps)·mag: γ (``rounding_gamma``) covers the attention's own rounding of a score, as
every page bound here does, and 4·eps the kernel's float32 roundings — attn_scale's cast, the
step scale·t·attn_scale (t a power of two), adding the slack term to I + l1/2 and the one
product: within 2·eps·mag in all. Outside that model: steps below 2^-126 (keys and queries so
small that scale·t·attn_scale is subnormal), where the kernel's products round absolutely.
At the other end the bound is +inf (vacuous): a query head not finite in float32, a step that
overflows it (``box_upper``). The kernel's float32 bound is +inf where this float64 one is past
float32's largest value and float32's lowest where it is below its lowest; ``TopK`` ranks a
page with a +inf bound first (``topk.rank_key``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from entmaxkv.conventions import group_queries

__all__ = ["box_codes", "encode_boxes", "query_codes", "box_upper", "CODE_MAX"]

CODE_MAX = 127
F32_EPS = 2.0 ** -23


def box_codes(k_min: Tensor, k_max: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """[..., P, D] page minima and maxima (any float dtype) -> (code_min, code_max [..., P, D]
    int8, scale [..., P] float32, l1 [..., P] float32), the box above; checks its input
    (a host sync: ``encode_boxes`` is the same without)."""
    if k_min.shape != k_max.shape or k_min.dim() < 2:
        raise ValueError(f"k_min and k_max must share a shape [..., P, D], got {tuple(k_min.shape)} and "
                         f"{tuple(k_max.shape)}")
    lo, hi = k_min.double(), k_max.double()
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()) or bool((lo > hi).any()):
        raise ValueError("k_min and k_max must be finite with k_min <= k_max")
    return encode_boxes(k_min, k_max)


def encode_boxes(k_min: Tensor, k_max: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``box_codes`` without checks or host syncs: what the cache stores when a page fills (the
    kernels' ``page_box_of`` writes the same bits). A page with a non-finite min or max, or
    whose a/127 overflows float32 (float64 keys beyond 4.3e40), gets the vacuous box: codes
    ∓127 and scale +inf, so that every bound of it is +inf."""
    lo, hi = k_min.double(), k_max.double()
    finite = (torch.isfinite(lo) & torch.isfinite(hi)).all(-1)  # [..., P]
    lo = torch.where(finite[..., None], lo, torch.zeros_like(lo))
    hi = torch.where(finite[..., None], hi, torch.zeros_like(hi))
    a = torch.maximum(lo.abs(), hi.abs()).amax(-1)  # [..., P]
    scale = (a / CODE_MAX).to(torch.float32)  # two roundings, each to nearest: floor or ceil of a/127 in float32
    scale = torch.where(CODE_MAX * scale.double() < a, torch.nextafter(scale, torch.full_like(scale, float("inf"))),
                        scale)  # rounded down: the next float32 up
    scale = torch.where(a > 0, scale, torch.ones_like(scale))
    vacuous = ~finite | torch.isinf(scale)
    s = torch.where(vacuous, torch.ones_like(scale), scale).double()[..., None]
    code_min = torch.floor(lo / s)  # the quotient's rounding corrected both ways: products are exact
    code_min = torch.where(code_min * s > lo, code_min - 1, code_min)
    code_min = torch.where((code_min + 1) * s <= lo, code_min + 1, code_min).clamp_min(-CODE_MAX)
    code_max = torch.ceil(hi / s)
    code_max = torch.where(code_max * s < hi, code_max + 1, code_max)
    code_max = torch.where((code_max - 1) * s >= hi, code_max - 1, code_max).clamp_max(CODE_MAX)
    code_min = torch.where(vacuous[..., None], -CODE_MAX, code_min)
    code_max = torch.where(vacuous[..., None], CODE_MAX, code_max)
    scale = torch.where(vacuous, float("inf"), scale)
    l1 = torch.maximum(code_min.abs(), code_max.abs()).sum(-1)
    return code_min.to(torch.int8), code_max.to(torch.int8), scale, l1.to(torch.float32)


def query_codes(q: Tensor) -> tuple[Tensor, Tensor]:
    """[..., D] queries -> (codes [..., D] int8, step [...] float64 power of two), as above."""
    x = q.double()
    m = x.abs().amax(-1)
    _, e = torch.frexp(m / CODE_MAX)
    t = torch.ldexp(torch.ones_like(m), e)
    t = torch.where(CODE_MAX * t < m, 2 * t, t)
    t = torch.where(CODE_MAX * (t / 2) >= m, t / 2, t)
    t = torch.where(m > 0, t.clamp_min(2.0 ** -126), torch.ones_like(t))
    return torch.floor(x / t[..., None] + 0.5).to(torch.int8), t


def box_upper(q: Tensor, code_min: Tensor, code_max: Tensor, scale: Tensor, l1: Tensor, attn_scale: float,
              gamma: float) -> tuple[Tensor, Tensor]:
    """float64 (upper, mag) [B, Hkv, G, P]: the safe bound above plus (gamma + 4·eps)·mag, and
    mag. q: [B, Hq, D]; codes [B, Hkv, P, D]; scale, l1 [B, Hkv, P].

    Vacuous (upper and mag +inf), as in the kernel, which works in float32: a query head with
    an entry that is not finite in float32 (inf, NaN, or a float64 beyond 3.4e38), and a page
    whose step scale·t·attn_scale overflows float32 (a vacuous box's scale is +inf)."""
    finite = torch.isfinite(q.float()).all(-1)  # [B, Hq]
    qc, t = query_codes(torch.where(finite[..., None], q, torch.zeros_like(q)))  # [B, Hq, D], [B, Hq]
    hkv = code_min.shape[1]
    qg = group_queries(qc.double()[:, :, None], hkv)  # [B, Hkv, G, D]
    tg = t.reshape(t.shape[0], hkv, -1, 1)
    integer = (torch.einsum("bhgd,bhpd->bhgp", qg.clamp_min(0), code_max.double())
               + torch.einsum("bhgd,bhpd->bhgp", qg.clamp_max(0), code_min.double()))
    step32 = scale[:, :, None, :] * tg.float() * torch.tensor(attn_scale, dtype=torch.float32)  # the kernel's
    vacuous = ~finite.reshape(tg.shape) | ~torch.isfinite(step32)
    s = torch.where(vacuous, 1.0, scale.double()[:, :, None, :] * tg * attn_scale)
    mag = 128 * s * l1.double()[:, :, None, :]
    upper = s * (integer + l1.double()[:, :, None, :] / 2) + (gamma + 4 * F32_EPS) * mag
    return upper.masked_fill(vacuous, float("inf")), mag.masked_fill(vacuous, float("inf"))
