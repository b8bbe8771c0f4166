"""Low-precision key codes per page, and the rigorous score intervals they give.

A full page p stores, besides its keys, one code per key element relative to the page's own
per-channel min and max (statistics the cache keeps anyway):

    step_pd = (kmax_pd - kmin_pd) · fl(1 / (2^bits - 1))   (one rounded product: ``code_steps``)
    code_id = round((k_id - kmin_pd) / step_pd)      in [0, 2^bits - 1]  (0 where step is 0)
    k̂_id   = kmin_pd + code_id · step_pd             |k_id - k̂_id| <= step_pd / 2 (+ rounding)

4-bit codes are packed two per byte along D (element 2j in the low nibble, 2j+1 in the high
one), 8-bit codes one per byte. Storage: ``[B, H, P, S, ceil(D·bits/8)]`` uint8, page-major like
the keys, so a kernel streams one page's codes as one contiguous block. Extra memory: bits/16
of the fp16/bf16 keys, i.e. +12.5% of K+V for 4 bits and +25% for 8 bits.

For a query, every token i of full page p has a score interval (``code_scores``):

    ŝ_i = scale · (q·kmin_p + Σ_d (q_d·step_pd)·code_id)  (+ ALiBi bias)
    ε_p = scale · Σ_d |q_d| · (step_pd / 2 + r·M_pd),      M_pd = max(|kmin_pd|, |kmax_pd|)

such that |s̃_i - ŝ_i| <= ε_p where s̃_i is the score ``reference.token_scores`` computes.
r covers every floating-point rounding: the code itself (computing (k - kmin)/step can land
a rounding error away from the nearest code: <= 4·eps·M per element), computing ŝ (a
D-term dot product over magnitudes <= 3·M: 3·γ) and the reference's own score rounding (γ·M),
with γ = ``bounds._gamma`` of the work dtype; ALiBi adds 4·eps·|slope|·span twice. A
constant channel has step 0: its contribution is exact up to rounding. ε_p is one dot
product of |q| with a per-page vector, the same shape of work as the Quest bound.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entmaxkv.bounds import _gamma
from entmaxkv.conventions import alibi_bias, group_queries, query_positions, work_dtype

__all__ = ["KEY_BITS", "code_width", "code_steps", "encode_keys", "unpack_codes", "decode_keys",
           "code_scores", "code_radius"]

KEY_BITS = (4, 8)


def code_width(head_dim: int, bits: int) -> int:
    """Bytes of codes per token: ceil(D·bits / 8)."""
    return -(-head_dim * bits // 8)


def code_steps(kmin: Tensor, kmax: Tensor, bits: int) -> Tensor:
    """[..., D] code step (kmax - kmin)·fl(1/(2^bits - 1)) in the work dtype (float32, float64
    for a float64 cache). Encoding and scoring both use exactly this tensor.

    A multiplication by the reciprocal rounded to the work dtype, not the IEEE quotient: one
    correctly rounded product, the same on every backend (torch on the CPU and CUDA, the
    interpreter, the kernels' one FMUL — an IEEE division is ~9 instructions with a slow-path
    branch there, in the scan's per-page work). Nothing needs the quotient: a code is exact for
    any step s > 0 with (kmax − kmin)/s <= 2^bits − 1 + 1/2 (here it is within a few ulps of
    2^bits − 1), so every key lies within s/2 of kmin + code·s up to the rounding r covers."""
    wdt = work_dtype(kmin.dtype)
    span = kmax.to(wdt) - kmin.to(wdt)
    # a tensor factor: the reciprocal rounded once, to the work dtype, as the kernels' constant
    return span * torch.full_like(span, 1.0 / (2**bits - 1))


def encode_keys(pages: Tensor, kmin: Tensor, kmax: Tensor, bits: int) -> Tensor:
    """Codes of whole pages. pages: [..., S, D]; kmin, kmax: [..., D] (the pages' extrema).
    Returns uint8 [..., S, code_width(D, bits)]."""
    wdt = work_dtype(pages.dtype)
    step = code_steps(kmin, kmax, bits).unsqueeze(-2)
    lo = kmin.to(wdt).unsqueeze(-2)
    ratio = (pages.to(wdt) - lo) / torch.where(step > 0, step, torch.ones_like(step))
    top = float(2**bits - 1)
    code = torch.where(step > 0, ratio.round().clamp(0, top), torch.zeros_like(ratio)).to(torch.uint8)
    if bits == 8:
        return code
    if code.shape[-1] % 2:
        code = torch.cat([code, torch.zeros_like(code[..., :1])], dim=-1)
    return code[..., 0::2] | (code[..., 1::2] << 4)


def unpack_codes(codes: Tensor, bits: int, head_dim: int) -> Tensor:
    """uint8 [..., code_width] -> int codes [..., D] (uint8 values in [0, 2^bits - 1])."""
    if bits == 8:
        return codes
    both = torch.stack([codes & 0x0F, codes >> 4], dim=-1)
    return both.flatten(-2)[..., :head_dim]


def decode_keys(codes: Tensor, kmin: Tensor, kmax: Tensor, bits: int) -> Tensor:
    """Reconstructed keys kmin + code·step: [..., S, D] in the work dtype."""
    step = code_steps(kmin, kmax, bits).unsqueeze(-2)
    c = unpack_codes(codes, bits, kmin.shape[-1]).to(step.dtype)
    return kmin.to(step.dtype).unsqueeze(-2) + c * step


def code_radius(cache, bits: int) -> Tensor:
    """[B, Hkv, P, D] per-element radius δ_pd = step_pd/2 + r·M_pd: |k - k̂| plus every
    rounding margin, so that ε_p = scale · |q|·δ_p (see the module docstring)."""
    wdt = work_dtype(cache.dtype)
    step = code_steps(cache.k_min, cache.k_max, bits)
    mag = torch.maximum(cache.k_min.to(wdt).abs(), cache.k_max.to(wdt).abs())
    r = 8 * torch.finfo(wdt).eps + 6 * _gamma(wdt, cache.head_dim)
    return step / 2 + r * mag


def code_scores(cache, q: Tensor, scale: float, alibi_slopes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Score estimates from the key codes and their error bound.

    Args:
        cache: a ``PagedKVCache`` with ``key_bits`` set; q: [B, Hq, 1, D].
    Returns ``(s_hat [B, Hkv, G, P*S], eps [B, Hkv, G, P])`` in the work dtype with
    |s̃_i - ŝ_i| <= eps_p for every token i of every *full* page p (s̃ = the reference score);
    other slots hold meaningless values. One pass over the codes; eps is one dot product per
    page.
    """
    bits = cache.key_bits
    wdt = work_dtype(cache.dtype)
    qg = group_queries(q, cache.num_kv_heads).to(wdt)  # [B, Hkv, G, D]
    step = code_steps(cache.k_min, cache.k_max, bits)  # [B, Hkv, P, D]
    codes = unpack_codes(cache.k_codes, bits, cache.head_dim).to(wdt)  # [B, Hkv, P, S, D]
    base = torch.einsum("bhgd,bhpd->bhgp", qg, cache.k_min.to(wdt))
    qstep = qg[:, :, :, None, :] * step[:, :, None, :, :]  # [B, Hkv, G, P, D]
    s_hat = (base.unsqueeze(-1) + torch.einsum("bhgpd,bhpsd->bhgps", qstep, codes)) * scale
    b, h, g, p, s = s_hat.shape
    s_hat = s_hat.reshape(b, h, g, p * s)
    eps = torch.einsum("bhgd,bhpd->bhgp", qg.abs(), code_radius(cache, bits)) * scale
    if alibi_slopes is not None:
        pos = torch.arange(p * s, device=s_hat.device)
        s_hat = s_hat + alibi_bias(alibi_slopes.to(wdt), pos, query_positions(cache), cache.num_kv_heads)
        span = float(p * s)
        slopes = alibi_slopes.to(wdt).abs().reshape(1, cache.num_kv_heads, -1, 1)
        eps = eps + 8 * torch.finfo(wdt).eps * slopes * span
    return s_hat, eps
