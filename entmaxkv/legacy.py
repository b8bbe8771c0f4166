"""What the two original entry points share: argument checks, the append, writing ``out``."""

from __future__ import annotations

import torch
from torch import Tensor

from entmaxkv.config import DecodeConfig
from entmaxkv.decode import attend_cache
from entmaxkv.quest_cache import QuestKVCache
from entmaxkv.validation import check_query

__all__ = ["run_legacy_decode"]


def _check_lengths(name: str, x: Tensor | None, batch: int) -> None:
    if x is None:
        return
    if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dim() not in (1, 2) or x.shape[0] != batch:
        raise ValueError(f"{name} must be an int tensor [B] (or [B, H_kv]) with B = {batch}, "
                         f"got {getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")


def run_legacy_decode(
    q: Tensor, quest_cache: QuestKVCache, k_new: Tensor, v_new: Tensor, out: Tensor, config: DecodeConfig,
    *, alibi_slopes: Tensor | None, append_cache: bool, cache_seqlens: Tensor | None, q_seqlens: Tensor | None,
) -> Tensor:
    """Append (if asked), attend with ``config``, write the result into ``out`` and return it."""
    if not isinstance(quest_cache, QuestKVCache):
        raise TypeError(f"quest_cache must be a QuestKVCache, got {type(quest_cache).__name__}")
    cache = quest_cache.require()
    if not isinstance(out, Tensor) or out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"out must be a tensor like q ({q.dtype} {tuple(q.shape)}), got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}")
    _check_lengths("cache_seqlens", cache_seqlens, cache.batch)
    _check_lengths("q_seqlens", q_seqlens, cache.batch)
    check_query(cache, q, config, alibi_slopes)
    if append_cache:
        quest_cache.append(k_new, v_new)  # checks k_new / v_new, grows if needed
    result, _ = attend_cache(quest_cache.cache, q, config, alibi_slopes=alibi_slopes, with_info=False)
    with torch.no_grad():
        out.copy_(result)
    return out
