"""QuestKVCache: the original EntmaxKV's mutable cache object, over the functional core.

It holds a ``PagedKVCache`` and replaces it on every call. Capacity: set it up front with
``max_seq_len``, or let the object grow by reallocation when a sequence would outgrow it —
geometrically (doubling), so appends cost amortised O(1) copies. The functional core itself
never copies per step; new code should use ``entmaxkv.PagedKVCache`` and ``decode_step``.
"""

from __future__ import annotations

from torch import Tensor

from entmaxkv.state import PagedKVCache, append_token, prefill

__all__ = ["QuestKVCache"]

MIN_SLACK = 256  # tokens of room left after the prompt when max_seq_len is not given


class QuestKVCache:
    """Mutable paged KV cache with the original API.

    Example (the original quick start)::

        cache = QuestKVCache(page_size=16)
        cache.initialize(k_prefill, v_prefill)     # [B, H_kv, T, D]
        cache.append(k_new, v_new)                 # [B, H_kv, 1, D]
    """

    def __init__(self, page_size: int = 16, max_seq_len: int | None = None):
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a positive power of two, got {page_size!r}")
        if max_seq_len is not None and (not isinstance(max_seq_len, int) or max_seq_len < 1):
            raise ValueError(f"max_seq_len must be a positive int or None, got {max_seq_len!r}")
        self.page_size = page_size
        self.max_seq_len = max_seq_len
        self.cache: PagedKVCache | None = None

    def initialize(self, k: Tensor, v: Tensor, seq_lens: Tensor | list[int] | None = None) -> None:
        """Load a prompt. k, v: [B, H_kv, T, D]; seq_lens: optional per-row lengths (<= T)."""
        if not isinstance(k, Tensor) or k.dim() != 4:
            raise ValueError(f"k must be a [B, H_kv, T, D] tensor, got {getattr(k, 'shape', type(k).__name__)}")
        b, h, t, d = k.shape
        if self.max_seq_len is not None:
            if self.max_seq_len < t:
                raise ValueError(f"max_seq_len = {self.max_seq_len} is shorter than the prompt (T = {t})")
            capacity = self.max_seq_len
        else:
            capacity = max(2 * t, t + MIN_SLACK)
        empty = PagedKVCache.empty(batch=b, num_kv_heads=h, head_dim=d, capacity=capacity,
                                   page_size=self.page_size, dtype=k.dtype, device=k.device)
        self.cache = prefill(empty, k, v, [t] * b if seq_lens is None else seq_lens)

    def ensure_room(self, tokens: int = 1) -> None:
        """Grow (double) the capacity if a sequence has fewer than ``tokens`` free slots.
        With ``max_seq_len`` set, running out is an error instead."""
        cache = self.require()
        needed = cache.host_max_len + tokens
        if needed <= cache.capacity:
            return
        if self.max_seq_len is not None:
            raise ValueError(f"max_seq_len = {self.max_seq_len} reached; create the cache with a larger max_seq_len")
        self.cache = cache.with_capacity(max(needed, 2 * cache.capacity))

    def append(self, k_new: Tensor, v_new: Tensor) -> None:
        """Append one token per sequence. k_new, v_new: [B, H_kv, 1, D]."""
        cache = self.require()
        expected = (cache.batch, cache.num_kv_heads, 1, cache.head_dim)
        for name, x in (("k_new", k_new), ("v_new", v_new)):
            if not isinstance(x, Tensor) or tuple(x.shape) != expected:
                raise ValueError(f"{name} must have shape [B, H_kv, 1, D] = {expected}, got {getattr(x, 'shape', None)}")
            if x.dtype != cache.dtype or x.device != cache.device:
                raise TypeError(f"{name} must be {cache.dtype} on {cache.device}, got {x.dtype} on {x.device}")
        self.ensure_room(1)
        self.cache, _ = append_token(self.cache, k_new, v_new)

    def require(self) -> PagedKVCache:
        if self.cache is None:
            raise RuntimeError("call initialize(k, v) before using the cache")
        return self.cache

    @property
    def seq_lens(self) -> Tensor:
        """[B] tokens each sequence holds (on the device)."""
        return self.require().seq_lens

    @property
    def k_cache(self) -> Tensor:
        """[B, H_kv, T, D] view of the keys, T the longest sequence (padding past each length)."""
        cache = self.require()
        return cache.keys()[:, :, : cache.host_max_len]

    @property
    def v_cache(self) -> Tensor:
        """[B, H_kv, T, D] view of the values, like ``k_cache``."""
        cache = self.require()
        return cache.values()[:, :, : cache.host_max_len]

    def __repr__(self) -> str:
        if self.cache is None:
            return f"QuestKVCache(page_size={self.page_size}, uninitialised)"
        c = self.cache
        return (f"QuestKVCache(page_size={self.page_size}, batch={c.batch}, kv_heads={c.num_kv_heads}, "
                f"head_dim={c.head_dim}, tokens<={c.host_max_len}, capacity={c.capacity})")
