"""The original top-k entry point, as a thin wrapper over ``decode_step`` with ``TopK``."""

from __future__ import annotations

from torch import Tensor

from entmaxkv.config import DecodeConfig
from entmaxkv.legacy import run_legacy_decode
from entmaxkv.quest_cache import QuestKVCache
from entmaxkv.topk import TopK

__all__ = ["quest_sparse_attention_decode_paged"]


def quest_sparse_attention_decode_paged(
    q: Tensor,
    quest_cache: QuestKVCache,
    k_new: Tensor,
    v_new: Tensor,
    out: Tensor,
    token_budget: int,
    cache_seqlens: Tensor,
    q_seqlens: Tensor,
    alibi_slopes: Tensor | None = None,
    alpha: float = 1.5,
    splits: int = 32,
    niter: int = 10,
    append_cache: bool = True,
    use_triton_criticality: bool = True,
) -> Tensor:
    """Top-k sparse entmax decode, the original signature. Writes into ``out`` and returns it.

    q, out: [B, H_q, 1, D] (H_q a multiple of H_kv: GQA works here); k_new, v_new:
    [B, H_kv, 1, D], appended first when ``append_cache`` (otherwise the cache must already
    hold them). The newest page is always attended, plus the ``token_budget // page_size``
    best other pages by the Quest bound — ``TopK(token_budget=token_budget, sink_pages=0)``.

    Accepted for compatibility, with no effect: ``cache_seqlens`` (the cache knows its lengths;
    checked for shape), ``q_seqlens`` (decode has one query token; checked for shape),
    ``splits`` and ``use_triton_criticality`` (kernel hints of the original), ``niter`` (τ is
    computed exactly here).
    """
    page_size = quest_cache.page_size
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < page_size:
        raise ValueError(f"token_budget must be an int >= one page ({page_size} tokens), got {token_budget!r}")
    config = DecodeConfig(alpha=alpha, selector=TopK(token_budget=token_budget, sink_pages=0))
    return run_legacy_decode(q, quest_cache, k_new, v_new, out, config, alibi_slopes=alibi_slopes,
                             append_cache=append_cache, cache_seqlens=cache_seqlens, q_seqlens=q_seqlens)
