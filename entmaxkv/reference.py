"""The oracle: dense and paged entmax decode over a ``PagedKVCache`` in plain torch.

Everything faster is compared to these functions. They run on any device and in float64;
for lower-precision caches scores and outputs are computed in float32 and τ in float64.

Scores follow one convention: s_i = scale · q·k_i + slope_h · (i - (L - 1)) when ALiBi slopes
are given (L = the sequence length, so the newest token has bias 0 and older ones a penalty
for positive slopes). Attention weights are ``entmax(s, alpha)`` over the tokens attended.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entmaxkv.conventions import (
    alibi_bias, default_scale, group_queries, pages_to_mask, query_positions, work_dtype,
)
from entmaxkv.entmax import entmax_with_threshold, lin, rho
from entmaxkv.refine import refine_tau, usable_tau
from entmaxkv.state import PagedKVCache

__all__ = [
    "dense_decode",
    "paged_decode",
    "token_scores",
    "attend",
    "group_queries",
    "default_scale",
    "work_dtype",
    "pages_to_mask",
]


def token_scores(
    cache: PagedKVCache, q: Tensor, scale: float, alibi_slopes: Tensor | None = None
) -> Tensor:
    """Scores of every token slot: [B, Hkv, G, P*S] in the work dtype, -inf past ``seq_lens``."""
    wdt = work_dtype(cache.dtype)
    qg = group_queries(q, cache.num_kv_heads).to(wdt)
    s = torch.einsum("bhgd,bhnd->bhgn", qg, cache.keys().to(wdt)) * scale
    if alibi_slopes is not None:
        pos = torch.arange(s.shape[-1], device=s.device)
        s = s + alibi_bias(alibi_slopes.to(wdt), pos, query_positions(cache), cache.num_kv_heads)
    valid = cache.token_mask()[:, None, None, :]
    return torch.where(valid, s, torch.full_like(s, float("-inf")))


def attend(
    scores: Tensor, values: Tensor, token_mask: Tensor, alpha: float, tau: Tensor | None = None,
    refine_iters: int = 0,
) -> tuple[Tensor, Tensor]:
    """Entmax attention over the tokens in ``token_mask``.

    Args:
        scores: [B, Hkv, G, N] (-inf where invalid); values: [B, Hkv, N, D];
        token_mask: [B, Hkv, N] bool, the tokens attended (shared by a GQA group);
        tau: optional [B, Hkv, G] estimated threshold to use instead of the exact one over the
            mask (α > 1): lowered by ``refine.usable_tau``, refined by ``refine_iters``
            safeguarded Newton steps (``refine.refine_tau``); weights are renormalised.
    Returns ``(out [B, Hkv, G, D], tau [B, Hkv, G] float64)``, τ the threshold used.
    """
    s = torch.where(token_mask[:, :, None, :], scores, torch.full_like(scores, float("-inf")))
    s64 = s.double()
    if tau is None:
        # one Function for both: its backward is entmax's analytic Jacobian (support only)
        p, tau = entmax_with_threshold(s64, alpha, dim=-1)
    else:  # an estimated τ: gradients follow this formula and the estimate's own
        z = lin(alpha) * s64
        tau = usable_tau(tau.double(), z.amax(-1))
        if refine_iters:
            tau = refine_tau(tau, z, alpha, refine_iters)
        p = rho(z - tau.double().unsqueeze(-1), alpha)
    p = torch.where(torch.isneginf(s64), torch.zeros_like(p), p)  # NaN stays visible
    p = p / p.sum(-1, keepdim=True)
    v = torch.where(token_mask[..., None], values, torch.zeros_like(values))  # no 0·NaN leaks
    out = torch.einsum("bhgn,bhnd->bhgd", p.to(scores.dtype), v.to(scores.dtype))
    return out, tau.double()


def _decode(cache, q, page_mask, alpha, scale, alibi_slopes) -> tuple[Tensor, Tensor]:
    scale = default_scale(cache.head_dim) if scale is None else scale
    scores = token_scores(cache, q, scale, alibi_slopes)
    token_mask = cache.tokens_of(page_mask)
    out, tau = attend(scores, cache.values(), token_mask, alpha)
    b, hq = q.shape[:2]
    return out.reshape(b, hq, 1, -1).to(q.dtype), tau.reshape(b, hq)


def dense_decode(
    cache: PagedKVCache,
    q: Tensor,
    alpha: float = 1.5,
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Entmax attention of q over every token each sequence holds.

    Args:
        q: [B, Hq, 1, D] with Hq a multiple of the cache's KV heads (GQA; Hq == Hkv is MHA).
        alibi_slopes: optional [Hq].
    Returns ``(out [B, Hq, 1, D] in q's dtype, tau [B, Hq] float64)``.
    """
    all_pages = torch.ones(cache.batch, cache.num_kv_heads, cache.num_pages, dtype=torch.bool, device=q.device)
    return _decode(cache, q, all_pages, alpha, scale, alibi_slopes)


def paged_decode(
    cache: PagedKVCache,
    q: Tensor,
    page_indices: Tensor,
    alpha: float = 1.5,
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Entmax attention of q over the listed pages only (tokens past ``seq_lens`` never count).

    Args:
        page_indices: int [B, Hkv, M], the pages each (sequence, KV head) attends; negative
            entries are empty slots. All query heads of a GQA group share their KV head's list.
    Returns ``(out [B, Hq, 1, D], tau [B, Hq] float64)`` with τ exact over the listed tokens.
    """
    return _decode(cache, q, pages_to_mask(page_indices, cache.num_pages), alpha, scale, alibi_slopes)
