"""The paged KV cache: an immutable pytree over preallocated storage.

Layout (B batch, H KV heads, P = ceil(capacity / S) pages of S tokens, D head dim):

    k_pages, v_pages   [B, H, P, S, D]  cache dtype   one contiguous block per page
    k_min, k_max       [B, H, P, D]     cache dtype   exact extrema of each full page
    k_mean, k_std      [B, H, P, D]     cache dtype   mean / population std of each full page
    seq_lens           [B]              int64         tokens each sequence holds
    k_codes            [B, H, P, S, W]  uint8         optional (``key_bits``): key codes of each
                                                      full page, see ``keycodes``
    box_min, box_max   [B, H, P, D]     int8          optional (``page_boxes``): each full page's
    box_scale, box_l1  [B, H, P]        float32       8-bit box, see ``page_box``

Statistics of a page are written once, when the page fills, and are final from then on.
Mean and std are computed in float64 and rounded to the cache dtype through float32 (to
nearest even at each step: ``round_stat``), by the torch code here and by the Triton ops alike,
so both store the same bits. Stored in the cache dtype they cost 2·2·D bytes a page and head
(fp16/bf16) instead of 2·4·D: the statistics take 8·D bytes against 64·D of K+V at S = 16.
An fp16 mean cannot overflow (it lies in [kmin, kmax]), nor can an fp16 std: the population
std of values in [a, b] is at most (b − a)/2 <= 65504. Scores of a rounded mean are off by up
to the stored dtype's unit roundoff times the page's |score| scale: ``bounds.mean_scores``
says where that is covered.
The last, partial page of a sequence is always attended in full, so its statistics are never
read (their slots hold stale values until the page fills).

Sharing rule: a new cache value returned by ``prefill`` or ``decode_step`` shares storage
with the value it came from and only writes past that value's ``seq_lens``. Every older value
therefore keeps describing exactly what it described. Two *divergent* continuations of one
value would write the same slots; call ``fork()`` first to give one of them its own storage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

__all__ = ["PagedKVCache", "prefill", "append_token", "stats_dtype_for", "round_stat", "boxes_of", "BOX_FIELDS"]

_TENSOR_FIELDS = ("k_pages", "v_pages", "k_min", "k_max", "k_mean", "k_std", "seq_lens")
BOX_FIELDS = ("box_min", "box_max", "box_scale", "box_l1")


def _tensor_fields(cache: "PagedKVCache") -> tuple[str, ...]:
    """The tensor leaves of ``cache``: ``k_codes`` only when the cache has key codes, the box
    fields only when it has page boxes."""
    return _optional_fields(cache.key_bits, cache.page_boxes)


def _optional_fields(key_bits: int | None, page_boxes: bool) -> tuple[str, ...]:
    return _TENSOR_FIELDS + (("k_codes",) if key_bits is not None else ()) + (BOX_FIELDS if page_boxes else ())


def stats_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """Mean/std are kept in the cache dtype (fp16/bf16 halve the bytes ``page_bounds`` reads
    next to float32; a float64 cache keeps float64 statistics, the oracle's)."""
    return dtype


def round_stat(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A float64 statistic rounded to ``dtype`` the way the Triton ops round it: to float32
    first, then (fp16/bf16) to ``dtype``, each to nearest even. Two steps because a direct
    float64 -> fp16 cast is not the same rounding everywhere (torch may go through float32,
    numpy and the GPU do not); the double rounding costs at most one float32 ulp more."""
    return x if dtype == torch.float64 else x.to(torch.float32).to(dtype)


@dataclass(frozen=True, eq=False)
class PagedKVCache:
    """Frozen paged KV cache. Tensor fields are pytree leaves (the key codes and page boxes
    only when the cache has them); ``page_size``, ``capacity``, ``host_max_len``,
    ``key_bits`` and ``page_boxes`` are static metadata.

    ``host_max_len`` is an upper bound of ``seq_lens`` known on the host, kept in eager use so
    that overflowing ``capacity`` raises before anything is written, without reading device
    memory. Compiled and graph-captured steps carry ``None`` there (see ``without_host_len``)
    and report overflow on the device instead (see ``decode_step``).

    Example::

        cache = PagedKVCache.empty(batch=2, num_kv_heads=4, head_dim=64, capacity=4096)
        cache = prefill(cache, k, v, seq_lens)     # k, v: [2, 4, T, 64]
    """

    k_pages: Tensor
    v_pages: Tensor
    k_min: Tensor
    k_max: Tensor
    k_mean: Tensor
    k_std: Tensor
    seq_lens: Tensor
    page_size: int
    capacity: int
    host_max_len: int | None = 0
    k_codes: Tensor | None = None
    key_bits: int | None = None
    box_min: Tensor | None = None
    box_max: Tensor | None = None
    box_scale: Tensor | None = None
    box_l1: Tensor | None = None
    page_boxes: bool = False

    # ---- construction -------------------------------------------------------------------

    @staticmethod
    def empty(
        *,
        batch: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        page_size: int = 16,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
        key_bits: int | None = None,
        page_boxes: bool = False,
    ) -> "PagedKVCache":
        """Allocate storage for ``capacity`` tokens per sequence; every sequence is empty.

        key_bits: 4 or 8 also keeps low-precision key codes of every full page (written when a
            page fills and by prefill) for token-level score bounds (``keycodes``, used by
            ``Exact``); costs +12.5% (4 bits) or +25% (8 bits) of K+V memory. ``None``: no codes.
        page_boxes: True also keeps an 8-bit box of every full page's key range (written when a
            page fills and by prefill): ``TopK`` then ranks pages by the box's bound on integer
            tensor cores, reading 2·D + 8 bytes a page and head instead of the fp16 min/max's
            4·D (``page_box``); costs 2·D + 8 bytes a page and head, +3.2% of fp16/bf16 K+V memory
            at D = 128, S = 16. Needs 32 <= head_dim <= 512.
        """
        from entmaxkv.keycodes import code_width
        from entmaxkv.validation import check_cache_options, check_empty_args

        check_empty_args(batch, num_kv_heads, head_dim, capacity, page_size, dtype)
        check_cache_options(key_bits, page_boxes, head_dim)
        pages = -(-capacity // page_size)
        pages_shape = (batch, num_kv_heads, pages, page_size, head_dim)
        stats_shape = (batch, num_kv_heads, pages, head_dim)
        sdt = stats_dtype_for(dtype)
        return PagedKVCache(
            k_pages=torch.zeros(pages_shape, dtype=dtype, device=device),
            v_pages=torch.zeros(pages_shape, dtype=dtype, device=device),
            k_min=torch.zeros(stats_shape, dtype=dtype, device=device),
            k_max=torch.zeros(stats_shape, dtype=dtype, device=device),
            k_mean=torch.zeros(stats_shape, dtype=sdt, device=device),
            k_std=torch.zeros(stats_shape, dtype=sdt, device=device),
            seq_lens=torch.zeros(batch, dtype=torch.int64, device=device),
            page_size=page_size,
            capacity=capacity,
            host_max_len=0,
            k_codes=None if key_bits is None else torch.zeros(
                (*pages_shape[:-1], code_width(head_dim, key_bits)), dtype=torch.uint8, device=device),
            key_bits=key_bits,
            **(_empty_boxes(stats_shape, device) if page_boxes else {}),
        )

    def fork(self) -> "PagedKVCache":
        """A copy with storage of its own, for a continuation that diverges from another one
        sharing this value (beam search, speculative branches, re-decoding with new inputs)."""
        return dataclasses.replace(self, **{f: getattr(self, f).clone() for f in _tensor_fields(self)})

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "PagedKVCache":
        """A copy in another dtype and/or on another device (statistics are recomputed from the
        converted keys, so min/max stay exact). For references and tests, not the decode path."""
        dtype = dtype or self.dtype
        conv = {f: getattr(self, f).to(device=device, dtype=dtype) for f in ("k_pages", "v_pages")}
        stats = page_statistics(conv["k_pages"])
        full = self.full_page_mask().to(device=conv["k_pages"].device)[:, None, :, None]
        for f, new in zip(("k_min", "k_max", "k_mean", "k_std"), stats):
            conv[f] = torch.where(full, new, torch.zeros_like(new))
        if self.key_bits is not None:  # codes are relative to the (converted) min/max: recompute
            from entmaxkv.keycodes import encode_keys

            codes = encode_keys(conv["k_pages"], conv["k_min"], conv["k_max"], self.key_bits)
            conv["k_codes"] = torch.where(full[..., None], codes, torch.zeros_like(codes))
        if self.page_boxes:  # from the converted min/max (the same box when the conversion is exact)
            from entmaxkv.page_box import encode_boxes

            for f, new in zip(BOX_FIELDS, encode_boxes(conv["k_min"], conv["k_max"])):
                keep = full if new.dim() == 4 else full[..., 0]
                conv[f] = torch.where(keep, new, torch.zeros_like(new))
        return dataclasses.replace(self, seq_lens=self.seq_lens.to(device=device, copy=True), **conv)

    def with_capacity(self, capacity: int) -> "PagedKVCache":
        """A copy with room for ``capacity`` tokens per sequence (>= the current capacity):
        what the convenience wrappers use to grow. Copies the whole cache; never per step."""
        if capacity < self.capacity:
            raise ValueError(f"capacity can only grow: {capacity} < current {self.capacity}")
        bigger = PagedKVCache.empty(batch=self.batch, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                                    capacity=capacity, page_size=self.page_size, dtype=self.dtype, device=self.device,
                                    key_bits=self.key_bits, page_boxes=self.page_boxes)
        pages = self.num_pages
        for f in (f for f in _tensor_fields(self) if f != "seq_lens"):
            getattr(bigger, f)[:, :, :pages].copy_(getattr(self, f))
        bigger.seq_lens.copy_(self.seq_lens)
        return dataclasses.replace(bigger, host_max_len=self.host_max_len)

    def without_host_len(self) -> "PagedKVCache":
        """The same cache without its host-side length bound: what compiled steps take, so that
        the static metadata does not change (and recompile) at every step."""
        return dataclasses.replace(self, host_max_len=None)

    # ---- geometry -----------------------------------------------------------------------

    @property
    def batch(self) -> int:
        return self.k_pages.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.k_pages.shape[1]

    @property
    def num_pages(self) -> int:
        """Page slots per sequence (static): ``ceil(capacity / page_size)``."""
        return self.k_pages.shape[2]

    @property
    def head_dim(self) -> int:
        return self.k_pages.shape[4]

    @property
    def dtype(self) -> torch.dtype:
        return self.k_pages.dtype

    @property
    def device(self) -> torch.device:
        return self.k_pages.device

    def keys(self) -> Tensor:
        """[B, H, P*S, D] view of the key storage, token-major."""
        b, h, p, s, d = self.k_pages.shape
        return self.k_pages.view(b, h, p * s, d)

    def values(self) -> Tensor:
        """[B, H, P*S, D] view of the value storage, token-major."""
        b, h, p, s, d = self.v_pages.shape
        return self.v_pages.view(b, h, p * s, d)

    def token_mask(self) -> Tensor:
        """[B, P*S] bool: which token slots each sequence holds."""
        pos = torch.arange(self.num_pages * self.page_size, device=self.device)
        return pos[None, :] < self.seq_lens[:, None]

    def tokens_of(self, page_mask: Tensor) -> Tensor:
        """Page mask [B, H, P] (H may be 1) -> token mask [B, H, P*S] of the tokens those pages
        hold: each page's slots, limited to what its sequence holds."""
        return page_mask.repeat_interleave(self.page_size, dim=-1) & self.token_mask()[:, None, :]

    def full_page_mask(self) -> Tensor:
        """[B, P] bool: pages that are full (their statistics are final)."""
        page = torch.arange(self.num_pages, device=self.device)
        return page[None, :] < (self.seq_lens // self.page_size)[:, None]

    def live_page_mask(self) -> Tensor:
        """[B, P] bool: pages holding at least one token (full pages and the partial one)."""
        page = torch.arange(self.num_pages, device=self.device)
        return page[None, :] * self.page_size < self.seq_lens[:, None]


def _empty_boxes(stats_shape: tuple, device) -> dict[str, Tensor]:
    """Zeroed box storage for pages of ``stats_shape`` [B, H, P, D] (``PagedKVCache.empty``)."""
    return dict(box_min=torch.zeros(stats_shape, dtype=torch.int8, device=device),
                box_max=torch.zeros(stats_shape, dtype=torch.int8, device=device),
                box_scale=torch.zeros(stats_shape[:-1], dtype=torch.float32, device=device),
                box_l1=torch.zeros(stats_shape[:-1], dtype=torch.float32, device=device), page_boxes=True)


def _flatten(cache: PagedKVCache):
    children = [getattr(cache, f) for f in _tensor_fields(cache)]
    return children, (cache.page_size, cache.capacity, cache.host_max_len, cache.key_bits, cache.page_boxes)


def _unflatten(children, context) -> PagedKVCache:
    page_size, capacity, host_max_len, key_bits, page_boxes = context
    fields = dict(zip(_optional_fields(key_bits, page_boxes), children))
    return PagedKVCache(**fields, page_size=page_size, capacity=capacity, host_max_len=host_max_len,
                        key_bits=key_bits, page_boxes=page_boxes)


def _flatten_with_keys(cache: PagedKVCache):
    children, context = _flatten(cache)
    return [(pytree.GetAttrKey(f), c) for f, c in zip(_tensor_fields(cache), children)], context


pytree.register_pytree_node(
    PagedKVCache,
    _flatten,
    _unflatten,
    serialized_type_name="entmaxkv.PagedKVCache",
    flatten_with_keys_fn=_flatten_with_keys,
)


# ---- page statistics ------------------------------------------------------------------------


def page_statistics(pages: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Statistics of whole pages. pages: [..., S, D] -> four [..., D] tensors in the cache
    dtype: min, max, mean and population std.

    Mean and std are computed in float64 and rounded once (``round_stat``). The float64 sum of
    S <= 8192 fp16 keys is exact in any order (every fp16 value is a multiple of 2^-24 below
    2^16: partial sums are integers below 2^53 times 2^-24), so the kernels' sums, whatever
    their order, give the mean bits this gives. bf16 and float32 keys sum exactly unless one
    channel of a page spans some 40 (bf16) or 25 (float32) binades; then the last float64
    bit, and very rarely a stored bit, may depend on the order. The std's float64 rounding
    depends on the order too: a stored bit differs only within ~1e-16 of a rounding tie."""
    s = pages.shape[-2]
    wide = pages.to(torch.float64)
    mean = wide.sum(dim=-2) / s  # sum, then one IEEE division: what the kernels do
    std = ((wide - mean.unsqueeze(-2)).square().sum(dim=-2) / s).sqrt()
    sdt = stats_dtype_for(pages.dtype)
    return pages.amin(dim=-2), pages.amax(dim=-2), round_stat(mean, sdt), round_stat(std, sdt)


def prefill(cache: PagedKVCache, k: Tensor, v: Tensor, seq_lens: Tensor | list[int]) -> PagedKVCache:
    """Load padded prompts into an empty cache.

    Args:
        cache: a cache whose sequences are all empty (from ``PagedKVCache.empty``).
        k, v: [B, H_kv, T, D] in the cache dtype; positions at or past ``seq_lens[b]`` are
            padding and are ignored.
        seq_lens: int [B] (tensor or list), each in [0, min(T, capacity)].

    Returns the new cache value (sharing storage with ``cache``, which stays empty as seen
    through its own ``seq_lens``). This runs outside decode steps, so it validates values on
    the host.

    Prefill twice on one storage raises ``ValueError``: an empty value's ``seq_lens`` cannot
    tell whether another value sharing its storage has written tokens, so prefill reads the
    storage itself (the marker: fresh storage from ``PagedKVCache.empty`` is all zeros, and any
    nonzero key or value slot means it is in use). Tokens whose keys and values are all
    exactly 0 leave no mark and are not detected.
    """
    from entmaxkv.validation import check_prefill

    seq_lens = check_prefill(cache, k, v, seq_lens)
    # Positions past capacity can only be padding (seq_lens <= capacity was checked).
    t = min(k.shape[2], cache.num_pages * cache.page_size)
    k, v = k[:, :, :t], v[:, :, :t]
    b, h, _, d = k.shape
    s = cache.page_size
    pages = -(-t // s)
    pos = torch.arange(pages * s, device=cache.device)
    valid = (pos[None, :] < seq_lens[:, None])[:, None, :, None]  # [B, 1, pages*S, 1]

    def to_pages(x: Tensor) -> Tensor:
        padded = x.new_zeros(b, h, pages * s, d)
        padded[:, :, :t] = x
        # where, not multiply: padding may hold anything (NaN included) and must not leak.
        return torch.where(valid, padded, torch.zeros_like(padded)).view(b, h, pages, s, d)

    cache.k_pages[:, :, :pages].copy_(to_pages(k))
    cache.v_pages[:, :, :pages].copy_(to_pages(v))

    full = (torch.arange(pages, device=cache.device)[None, :] < (seq_lens // s)[:, None])[:, None, :, None]
    if cache.device.type == "cuda" and cache.dtype != torch.float64:
        # the page_statistics op (entmaxkv.kernels): every full page in one launch, boxes included
        torch.ops.entmaxkv.page_statistics(cache.k_pages, seq_lens, cache.k_min, cache.k_max, cache.k_mean,
                                           cache.k_std, *boxes_of(cache))
    else:
        new_stats = page_statistics(cache.k_pages[:, :, :pages])
        for field, new in zip(("k_min", "k_max", "k_mean", "k_std"), new_stats):
            slot = getattr(cache, field)[:, :, :pages]
            slot.copy_(torch.where(full, new, slot))
        if cache.page_boxes:
            _write_boxes(cache, (slice(None), slice(None), slice(0, pages)), full[..., 0])
    if cache.key_bits is not None:
        _write_codes(cache, (slice(None), slice(None), slice(0, pages)), full[..., None])

    return dataclasses.replace(
        cache,
        seq_lens=seq_lens.clone(),
        host_max_len=None if cache.host_max_len is None else int(seq_lens.max()),
    )


def append_token(cache: PagedKVCache, k_new: Tensor, v_new: Tensor) -> tuple[PagedKVCache, Tensor]:
    """Append one token to every sequence, writing in place past ``cache.seq_lens``.

    Args:
        k_new, v_new: [B, H_kv, 1, D] in the cache dtype.

    Returns ``(new_cache, fits)`` where ``fits`` [B] bool says which sequences had room.
    A sequence that is full keeps its length and its contents: its slot 0 is rewritten with its
    own value (the indexed write needs some target), nothing wraps or goes out of bounds, and
    the caller reports the overflow. No host synchronisation.
    """
    s = cache.page_size
    b = cache.batch
    lens = cache.seq_lens
    fits = lens < cache.capacity
    pos = torch.where(fits, lens, torch.zeros_like(lens))  # rows that do not fit rewrite slot 0 unchanged
    page, slot = pos // s, pos % s
    rows = torch.arange(b, device=cache.device)

    for store, new in ((cache.k_pages, k_new), (cache.v_pages, v_new)):
        old = store[rows, :, page, slot]  # [B, H, D]
        store[rows, :, page, slot] = torch.where(fits[:, None, None], new[:, :, 0], old)

    # The new token completes its page: that page's statistics become final.
    completes = fits & (slot == s - 1)
    new_stats = page_statistics(cache.k_pages[rows, :, page])  # each [B, H, D]
    for field, new in zip(("k_min", "k_max", "k_mean", "k_std"), new_stats):
        store = getattr(cache, field)
        old = store[rows, :, page]
        store[rows, :, page] = torch.where(completes[:, None, None], new, old)
    if cache.page_boxes:
        _write_boxes(cache, (rows, slice(None), page), completes[:, None])
    if cache.key_bits is not None:
        write_completed_page_codes(cache, lens, fits)

    new_lens = lens + fits.to(lens.dtype)
    host = None if cache.host_max_len is None else cache.host_max_len + 1
    return dataclasses.replace(cache, seq_lens=new_lens, host_max_len=host), fits


def write_completed_page_codes(cache: PagedKVCache, lens: Tensor, fits: Tensor) -> None:
    """After appending one token at position ``lens`` [B] (where ``fits``): encode the pages that
    token completed into ``k_codes`` (their statistics must be written already). No host sync."""
    s = cache.page_size
    pos = torch.where(fits, lens, torch.zeros_like(lens))
    page, slot = pos // s, pos % s
    rows = torch.arange(cache.batch, device=cache.device)
    _write_codes(cache, (rows, slice(None), page), (fits & (slot == s - 1))[:, None, None, None])


def _write_codes(cache: PagedKVCache, index: tuple, write: Tensor) -> None:
    """Encode the pages at ``index`` (of k_pages, [..., S, D]) from their stored min/max into
    ``k_codes`` where ``write`` (broadcastable to [..., S, W]) holds; keep the rest."""
    from entmaxkv.keycodes import encode_keys

    kmin, kmax = cache.k_min[index], cache.k_max[index]
    codes = encode_keys(cache.k_pages[index], kmin, kmax, cache.key_bits)
    old = cache.k_codes[index]
    cache.k_codes[index] = torch.where(write, codes, old)


def boxes_of(cache: PagedKVCache) -> tuple:
    """The cache's four box tensors (``BOX_FIELDS``), or four Nones without page boxes: the
    ops' optional arguments."""
    return tuple(getattr(cache, f) for f in BOX_FIELDS) if cache.page_boxes else (None,) * 4


def _write_boxes(cache: PagedKVCache, index: tuple, write: Tensor) -> None:
    """The boxes of the pages at ``index`` (of k_min, [..., D]) from their stored min/max, where
    ``write`` (broadcastable to [...]) holds; keep the rest. No host sync."""
    from entmaxkv.page_box import encode_boxes

    for field, new in zip(BOX_FIELDS, encode_boxes(cache.k_min[index], cache.k_max[index])):
        store = getattr(cache, field)
        old = store[index]
        store[index] = torch.where(write[..., None] if new.dim() > write.dim() else write, new, old)
