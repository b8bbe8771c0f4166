"""Input checks with messages that show expected vs. actual.

Decode-step checks look only at shapes, dtypes, devices and host-side metadata: they never
read device memory (no host sync) and are skipped while compiling.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_empty_args", "check_cache_options", "check_prefill", "check_decode", "check_query", "check_alpha",
           "check_count", "check_real", "check_config"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_alpha(alpha: object) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float in [1, 2], got {type(alpha).__name__}")
    if not 1.0 <= float(alpha) <= 2.0:
        raise ValueError(f"alpha must be in [1, 2], got {alpha}")


def check_count(name: str, value: object, *, allow_none: bool = False) -> None:
    """A selector's count argument: an int >= 0 (or None where allowed), else ValueError."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        what = "an int >= 0 or None" if allow_none else "an int >= 0"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_real(name: str, value: object) -> float:
    """A finite real number (not a bool): returned as a float, else TypeError / ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_config(config: object) -> None:
    """``config`` must be a DecodeConfig (whose fields were checked when it was built)."""
    from entmaxkv.config import DecodeConfig

    if not isinstance(config, DecodeConfig):
        raise TypeError(f"config must be an entmaxkv.DecodeConfig, got {type(config).__name__} {config!r}")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def check_empty_args(batch, num_kv_heads, head_dim, capacity, page_size, dtype) -> None:
    for name, value in (("batch", batch), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
                        ("capacity", capacity), ("page_size", page_size)):
        _positive_int(name, value)
    if page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two, got {page_size}")
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype}")


def check_cache_options(key_bits, page_boxes, head_dim: int | None) -> None:
    """``PagedKVCache.empty``'s ``key_bits`` (None, 4 or 8) and ``page_boxes`` (a bool; boxes need
    32 <= head_dim <= 512, checked when ``head_dim`` is known)."""
    from entmaxkv.keycodes import KEY_BITS

    if key_bits is not None and (type(key_bits) is not int or key_bits not in KEY_BITS):  # not True, not 4.0
        raise ValueError(f"key_bits must be None, 4 or 8, got {key_bits!r}")
    if not isinstance(page_boxes, bool):
        raise TypeError(f"page_boxes must be a bool, got {page_boxes!r}")
    if page_boxes and head_dim is not None and not 32 <= head_dim <= 512:
        raise ValueError(f"page_boxes needs 32 <= head_dim <= 512 (the box bound's int8 tensor cores), got "
                         f"head_dim={head_dim}")


def _tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _shape(name: str, x: Tensor, expected: tuple, what: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {what} = {tuple(expected)}, got {tuple(x.shape)}")


def _like_cache(name: str, x: Tensor, cache) -> None:
    if x.dtype != cache.dtype:
        raise TypeError(f"{name} must have the cache dtype {cache.dtype}, got {x.dtype}")
    if x.device != cache.device:
        raise ValueError(f"{name} must be on the cache device {cache.device}, got {x.device}")


def check_prefill(cache, k: Tensor, v: Tensor, seq_lens) -> Tensor:
    """Validate prefill inputs (host-side reads allowed: prefill is not a decode step).
    Returns seq_lens as an int64 tensor on the cache device."""
    _tensor("k", k), _tensor("v", v)
    b, h, d = cache.batch, cache.num_kv_heads, cache.head_dim
    if k.dim() != 4:
        raise ValueError(f"k must be [B, H_kv, T, D] = [{b}, {h}, T, {d}], got shape {tuple(k.shape)}")
    t = k.shape[2]
    _shape("k", k, (b, h, t, d), "[B, H_kv, T, D]")
    _shape("v", v, (b, h, t, d), "[B, H_kv, T, D]")
    _like_cache("k", k, cache), _like_cache("v", v, cache)
    if isinstance(seq_lens, Tensor):
        if seq_lens.dtype.is_floating_point or seq_lens.dtype == torch.bool:
            raise TypeError(f"seq_lens must be an integer tensor, got {seq_lens.dtype}")
        lens = seq_lens.to(device=cache.device, dtype=torch.int64)
    else:
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in seq_lens):
            raise TypeError(f"seq_lens must be a list of ints or an int tensor, got {seq_lens!r}")
        lens = torch.tensor(list(seq_lens), dtype=torch.int64, device=cache.device)
    _shape("seq_lens", lens, (b,), "[B]")
    host = lens.tolist()
    if cache.seq_lens.any():
        raise ValueError("prefill needs an empty cache (all seq_lens 0); got seq_lens "
                         f"{cache.seq_lens.tolist()}. Use decode_step to extend a cache.")
    if (cache.k_pages != 0).any() or (cache.v_pages != 0).any():
        # The value says "empty" through its own seq_lens, but another value sharing its storage
        # (an earlier prefill, or decode steps) wrote tokens there: prefill would silently
        # overwrite them under that value. Fresh storage is all zeros (PagedKVCache.empty).
        raise ValueError("prefill needs fresh storage: this cache value is empty, but its storage already "
                         "holds tokens written through another value sharing it (an earlier prefill or "
                         "decode_step), which prefill would overwrite. Allocate with PagedKVCache.empty().")
    for name, limit in (("T (the padded length of k)", t), ("capacity", cache.capacity)):
        bad = [(i, n) for i, n in enumerate(host) if n < 0 or n > limit]
        if bad:
            raise ValueError(f"seq_lens must be in [0, {name} = {limit}]; got {bad[:4]} as (row, length)")
    valid = (torch.arange(t, device=k.device)[None, :] < lens[:, None])[:, None, :, None]
    for name, x in (("k", k), ("v", v)):
        bad = valid & ~torch.isfinite(x)
        if bad.any():
            row, head, pos, _ = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} holds NaN or Inf inside seq_lens, first at "
                             f"[batch {row}, head {head}, position {pos}]")
    return lens


def check_query(cache, q: Tensor, config, alibi_slopes) -> None:
    """Checks of the attention inputs (query, config, slopes); never reads device memory."""
    from entmaxkv.state import PagedKVCache

    if not isinstance(cache, PagedKVCache):
        raise TypeError(f"cache must be a PagedKVCache, got {type(cache).__name__}")
    _tensor("q", q)
    b, h, d = cache.batch, cache.num_kv_heads, cache.head_dim
    if q.dim() != 4 or q.shape[0] != b or q.shape[2] != 1 or q.shape[3] != d:
        raise ValueError(f"q must have shape [B, H_q, 1, D] = [{b}, H_q, 1, {d}], got {tuple(q.shape)}")
    if q.shape[1] % h:
        raise ValueError(f"q's head count H_q = {q.shape[1]} must be a multiple of the cache's "
                         f"H_kv = {h} (GQA groups)")
    _like_cache("q", q, cache)
    if alibi_slopes is not None:
        _tensor("alibi_slopes", alibi_slopes)
        _shape("alibi_slopes", alibi_slopes, (q.shape[1],), "[H_q]")
        if alibi_slopes.device != cache.device:
            raise ValueError(f"alibi_slopes must be on {cache.device}, got {alibi_slopes.device}")
    check_config(config)


def check_decode(cache, q: Tensor, k_new: Tensor, v_new: Tensor, config, alibi_slopes) -> None:
    """Shape/dtype/device checks of a decode step; never reads device memory."""
    check_query(cache, q, config, alibi_slopes)
    _tensor("k_new", k_new), _tensor("v_new", v_new)
    expected = (cache.batch, cache.num_kv_heads, 1, cache.head_dim)
    _shape("k_new", k_new, expected, "[B, H_kv, 1, D]")
    _shape("v_new", v_new, expected, "[B, H_kv, 1, D]")
    _like_cache("k_new", k_new, cache), _like_cache("v_new", v_new, cache)
    if cache.host_max_len is not None and cache.host_max_len + 1 > cache.capacity:
        raise ValueError(f"cache is full: a sequence holds {cache.host_max_len} tokens and capacity is "
                         f"{cache.capacity}; allocate a larger cache (PagedKVCache.empty(capacity=...))")
