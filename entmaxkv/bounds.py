"""Page score bounds from page statistics alone, with margins that cover rounding.

The Quest bound: for every token i of page p, q·k_i <= Σ_d max(q_d·kmin_pd, q_d·kmax_pd),
which equals relu(q)·kmax_p + min(q, 0)·kmin_p — two matrix products. With ALiBi the page's
largest bias is added (bias is linear in position, so it peaks at one end of the page).

Every bound here is *safe*: it is inflated by a bound on the floating-point error of the
computation, so that "score <= bound" holds for the exact scores and for the scores the
reference computes. Certificates and pruning rely on that.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entmaxkv.reference import alibi_bias, group_queries, query_positions, work_dtype
from entmaxkv.state import PagedKVCache

__all__ = ["quest_bounds", "score_rounding_errors", "worst_over", "mean_scores", "page_alibi_max"]


def _gamma(dtype: torch.dtype, head_dim: int) -> float:
    """Relative error bound of a length-D dot product plus one scaling, with slack."""
    return 2.0 * (head_dim + 2) * torch.finfo(dtype).eps


def page_alibi_max(cache: PagedKVCache, slopes: Tensor) -> Tensor:
    """[B, Hkv, G, P] the largest ALiBi bias over each page's positions."""
    s = cache.page_size
    first = torch.arange(cache.num_pages, device=cache.device) * s
    q_pos = query_positions(cache)
    at_first = alibi_bias(slopes, first, q_pos, cache.num_kv_heads)
    at_last = alibi_bias(slopes, first + (s - 1), q_pos, cache.num_kv_heads)
    return torch.maximum(at_first, at_last)


def quest_bounds(
    cache: PagedKVCache, q: Tensor, scale: float, alibi_slopes: Tensor | None = None
) -> Tensor:
    """Safe upper bound of every score in each page: [B, Hkv, G, P] in the work dtype.

    Only meaningful for full pages (other pages' statistics are stale).
    """
    wdt = work_dtype(cache.dtype)
    qg = group_queries(q, cache.num_kv_heads).to(wdt)
    kmin, kmax = cache.k_min.to(wdt), cache.k_max.to(wdt)
    pos, neg = qg.clamp_min(0), qg.clamp_max(0)
    u = torch.einsum("bhgd,bhpd->bhgp", pos, kmax) + torch.einsum("bhgd,bhpd->bhgp", neg, kmin)
    mag = torch.einsum("bhgd,bhpd->bhgp", qg.abs(), torch.maximum(kmin.abs(), kmax.abs()))
    u = (u + _gamma(wdt, cache.head_dim) * mag) * scale
    if alibi_slopes is not None:
        bias = page_alibi_max(cache, alibi_slopes.to(wdt))
        u = u + bias + 4 * torch.finfo(wdt).eps * bias.abs()
    return u


def mean_scores(cache: PagedKVCache, q: Tensor, scale: float, alibi_slopes: Tensor | None = None) -> Tensor:
    """scale·q·mean_p (+ the page's mean ALiBi bias): [B, Hkv, G, P] in the work dtype, as
    ``page_scores`` computes it (the stored mean, cache dtype, converted exactly).

    The mean key is a convex combination of the page's keys, so some token of a full page
    scores at least q·(exact mean): a lower bound of the page maximum *up to rounding*. The
    stored mean is rounded to the cache dtype, which can lift this above every score of the
    page by up to the dtype's unit roundoff times the page's |score| scale (2^-11 fp16, 2^-8
    bf16): a use that needs a score some token attains subtracts
    ``kernels.page_scores.mean_slack(...)·absmax`` (``KernelOps.score_floor``). Rankings use
    it as it is.
    """
    wdt = work_dtype(cache.dtype)
    qg = group_queries(q, cache.num_kv_heads).to(wdt)
    mu = torch.einsum("bhgd,bhpd->bhgp", qg, cache.k_mean.to(wdt)) * scale
    if alibi_slopes is not None:
        s = cache.page_size
        centre = torch.arange(cache.num_pages, device=cache.device, dtype=wdt) * s + (s - 1) / 2
        mu = mu + alibi_bias(alibi_slopes.to(wdt), centre, query_positions(cache).to(wdt), cache.num_kv_heads)
    return mu


def score_rounding_errors(
    cache: PagedKVCache, q: Tensor, scale: float, alibi_slopes: Tensor | None = None
) -> Tensor:
    """[B, Hkv, G, N] a bound on |computed score - exact score| of every token slot, for scores
    computed as in ``reference.token_scores``. Take the worst over a selection with
    ``worst_over``; compute this once per step, whatever number of selections it serves."""
    wdt = work_dtype(cache.dtype)
    qg = group_queries(q, cache.num_kv_heads).to(wdt)
    mag = torch.einsum("bhgd,bhnd->bhgn", qg.abs(), cache.keys().to(wdt).abs())
    err = _gamma(wdt, cache.head_dim) * mag * scale
    if alibi_slopes is not None:
        span = float(cache.num_pages * cache.page_size)
        slopes = alibi_slopes.to(wdt).abs().reshape(1, cache.num_kv_heads, -1, 1)
        err = err + 4 * torch.finfo(wdt).eps * slopes * span
    return err


def worst_over(errors: Tensor, token_mask: Tensor) -> Tensor:
    """[B, Hkv, G]: the largest of ``errors`` [B, Hkv, G, N] over ``token_mask`` [B, Hkv, N]."""
    return torch.where(token_mask[:, :, None, :], errors, torch.zeros_like(errors)).amax(-1)
