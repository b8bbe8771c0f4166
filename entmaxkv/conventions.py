"""Conventions shared by the reference (the oracle) and the product path: GQA grouping, the
ALiBi bias, the work dtype and the default scale. Kept apart from ``reference`` so that the
product path never imports the oracle.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["work_dtype", "default_scale", "group_queries", "query_positions", "alibi_bias", "pages_to_mask"]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and sums are computed in float32, or float64 for a float64 cache."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def group_queries(q: Tensor, num_kv_heads: int) -> Tensor:
    """[B, Hq, 1, D] -> [B, Hkv, G, D]: query head h belongs to KV head h // G."""
    b, hq, _, d = q.shape
    return q.reshape(b, num_kv_heads, hq // num_kv_heads, d)


def query_positions(cache) -> Tensor:
    """[B] position of the query: the newest token, ``seq_lens - 1``."""
    return cache.seq_lens - 1


def alibi_bias(slopes: Tensor, positions: Tensor, q_pos: Tensor, num_kv_heads: int) -> Tensor:
    """slope_h · (position - q_pos). slopes: [Hq]; positions: [N] or [B, N]; q_pos: [B].
    Returns [B, Hkv, G, N]."""
    g = slopes.numel() // num_kv_heads
    rel = (positions if positions.dim() == 2 else positions[None, :]) - q_pos[:, None]
    return slopes.reshape(1, num_kv_heads, g, 1) * rel[:, None, None, :].to(slopes.dtype)


def pages_to_mask(page_indices: Tensor, num_pages: int) -> Tensor:
    """[B, Hkv, M] page indices (negative = empty slot, duplicates allowed) -> [B, Hkv, P] bool.
    Out of place, so that vmap batches it."""
    idx = page_indices.long()
    slot = torch.where(idx >= 0, idx, torch.full_like(idx, num_pages))
    mask = torch.zeros(*idx.shape[:-1], num_pages + 1, dtype=torch.bool, device=idx.device)
    return mask.scatter(-1, slot, True)[..., :num_pages]
