"""Exact scores of the page holding each sequence's newest token.

That page is always attended and its statistics are not final (it may be partial), so
selectors see its scores exactly. Pure torch: one page of keys per (sequence, KV head).
"""

from __future__ import annotations

import torch
from torch import Tensor

from entmaxkv.conventions import alibi_bias, group_queries, query_positions, work_dtype
from entmaxkv.state import PagedKVCache

__all__ = ["newest_page", "newest_page_scores", "newest_page_magnitude", "newest_page_mask", "candidate_page_mask"]


def newest_page_mask(cache: PagedKVCache) -> Tensor:
    """[B, 1, P] bool: the page holding each sequence's newest token (none for an empty one)."""
    page = torch.arange(cache.num_pages, device=cache.device)
    return (page[None, :] == ((cache.seq_lens - 1) // cache.page_size)[:, None])[:, None, :]


def candidate_page_mask(cache: PagedKVCache) -> Tensor:
    """[B, 1, P] bool: full pages other than the newest one — the pages before the newest
    token's page, (len − 1) // S of them (none for an empty sequence): page p is one iff its
    end (p + 1)·S is below len (p < (len − 1) // S ⇔ (p + 1)·S <= len − 1), which takes two
    launches on a GPU (the ends, a comparison) instead of four."""
    s = cache.page_size
    ends = torch.arange(s, (cache.num_pages + 1) * s, s, device=cache.device)
    return (ends[None, :] < cache.seq_lens[:, None])[:, None, :]


def newest_page(cache: PagedKVCache) -> tuple[Tensor, Tensor]:
    """``(keys [B, Hkv, S, D], positions [B, S])`` of each sequence's newest page."""
    page = (cache.seq_lens - 1).clamp_min(0) // cache.page_size
    rows = torch.arange(cache.batch, device=cache.device)
    keys = cache.k_pages[rows, :, page]  # [B, Hkv, S, D]
    positions = page[:, None] * cache.page_size + torch.arange(cache.page_size, device=cache.device)
    return keys, positions


def newest_page_scores(cache: PagedKVCache, q: Tensor, scale: float, alibi_slopes: Tensor | None) -> Tensor:
    """[B, Hkv, G, S] scores of the newest page's slots in the work dtype (computed as
    ``reference.token_scores`` does), −inf past each sequence's length."""
    wdt = work_dtype(cache.dtype)
    keys, positions = newest_page(cache)
    qg = group_queries(q, cache.num_kv_heads).to(wdt)
    s = torch.einsum("bhgd,bhsd->bhgs", qg, keys.to(wdt)) * scale
    if alibi_slopes is not None:
        s = s + alibi_bias(alibi_slopes.to(wdt), positions, query_positions(cache), cache.num_kv_heads)
    valid = (positions < cache.seq_lens[:, None])[:, None, None, :]
    return torch.where(valid, s, torch.full_like(s, float("-inf")))


def newest_page_magnitude(cache: PagedKVCache, q: Tensor, scale: float) -> Tensor:
    """[B, Hkv, G] max over the newest page's tokens of scale·|q|·|k| (>= |score| without
    ALiBi): the scale of those scores' rounding errors."""
    wdt = work_dtype(cache.dtype)
    keys, positions = newest_page(cache)
    qg = group_queries(q, cache.num_kv_heads).to(wdt).abs()
    mag = torch.einsum("bhgd,bhsd->bhgs", qg, keys.to(wdt).abs()) * scale
    valid = (positions < cache.seq_lens[:, None])[:, None, None, :]
    return torch.where(valid, mag, torch.zeros_like(mag)).amax(-1)
