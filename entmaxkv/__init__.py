"""EntmaxKV: sparse α-entmax attention over a paged KV cache for long-context decoding.

    import entmaxkv as ekv
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=8, head_dim=128, capacity=4096)
    cache = ekv.prefill(cache, k, v, seq_lens)
    cache, out = ekv.decode_step(cache, q, k_new, v_new, ekv.DecodeConfig(alpha=1.5))
"""

from entmaxkv.config import DecodeConfig, DecodeInfo
from entmaxkv.decode import decode_step
from entmaxkv.entmax import entmax, entmax_threshold
from entmaxkv.exact import Exact
from entmaxkv.gaussian import Gaussian
from entmaxkv.quest_cache import QuestKVCache
from entmaxkv.reference import dense_decode, paged_decode
from entmaxkv.selection import Dense, Selector
from entmaxkv.state import PagedKVCache, prefill
from entmaxkv.topk import TopK

__version__ = "0.1.0"

__all__ = [
    "PagedKVCache",
    "prefill",
    "decode_step",
    "DecodeConfig",
    "DecodeInfo",
    "Dense",
    "TopK",
    "Gaussian",
    "Exact",
    "Selector",
    "entmax",
    "entmax_threshold",
    "dense_decode",
    "QuestKVCache",
    "paged_decode",
]
