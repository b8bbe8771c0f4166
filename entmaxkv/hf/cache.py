"""A transformers ``Cache`` whose layers hold a ``PagedKVCache``.

``update`` stores nothing itself: it hands the layer to the attention function (which runs
right after it in ``LlamaAttention.forward``) and returns the new keys and values unchanged.
The attention function then prefills the paged cache or runs ``ekv.decode_step`` — the
write and the read happen in one place, with the attention mask at hand (it carries the
padding that prefill must strip). Full K/V are never materialised during decoding.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import torch
from torch import Tensor

from entmaxkv.config import DecodeConfig, DecodeInfo
from entmaxkv.hf._extra import require
from entmaxkv.hf.layers import head_dim_of, layer_configs
from entmaxkv.state import PagedKVCache
from entmaxkv.validation import check_cache_options

_cache_utils = require("transformers").cache_utils

__all__ = ["EntmaxKVCache", "EntmaxKVLayer", "current_layer"]

# transformers < 5.24 passes no kwargs to ``update``; attention follows ``update`` directly in
# the same thread, so a thread-local handoff is safe on every version.
_handoff = threading.local()


def current_layer() -> "EntmaxKVLayer | None":
    """The layer whose ``update`` ran last in this thread (read by the attention function)."""
    return getattr(_handoff, "layer", None)


class EntmaxKVLayer(_cache_utils.CacheLayerMixin):
    """One decoder layer's paged cache.

    Attributes:
        state: the ``PagedKVCache`` ([B, Hkv, pages, page_size, D]) once the first forward ran.
        length: host-side count of positions seen (prompt incl. left padding + generated), as
            transformers counts them for masks and ``get_seq_length``. The paged cache itself
            holds each row's real tokens only (``state.seq_lens``, on the device).
        infos: per decode step ``DecodeInfo`` (device tensors) when the cache records them.
    """

    # True would make ``generate`` auto-compile on CUDA with this host-side state: keep False.
    is_compileable = False

    def __init__(self, layer_idx: int, capacity: int, page_size: int, config: DecodeConfig,
                 record_info: bool, key_bits: int | None = None, page_boxes: bool = False):
        super().__init__()
        self.layer_idx, self.capacity, self.page_size = layer_idx, capacity, page_size
        self.key_bits, self.page_boxes = key_bits, page_boxes
        self.config, self.record_info = config, record_info
        self.length = 0
        self.state: PagedKVCache | None = None
        self.infos: list[DecodeInfo] = []

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        b, h, _, d = key_states.shape
        self.state = PagedKVCache.empty(batch=b, num_kv_heads=h, head_dim=d, capacity=self.capacity,
                                        page_size=self.page_size, dtype=key_states.dtype,
                                        device=key_states.device, key_bits=self.key_bits,
                                        page_boxes=self.page_boxes)
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[2]
        if self.length > 0 and n != 1:
            raise NotImplementedError(
                f"EntmaxKVCache extends a filled cache one token at a time, got {n} tokens "
                "(assisted decoding and chunked prefill are not supported)")
        if self.length + n > self.capacity:
            raise ValueError(f"EntmaxKVCache is full: {self.length} + {n} tokens > capacity {self.capacity}")
        self.length += n
        _handoff.layer = self
        return key_states, value_states

    def attend_config(self, scaling: float | None) -> DecodeConfig:
        """The decode config with transformers' score scale (set once)."""
        if self.config.scale is None and scaling is not None:
            self.config = dataclasses.replace(self.config, scale=float(scaling))
        return self.config

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return self.capacity

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("EntmaxKVCache does not support beam search yet (num_beams must be 1)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("EntmaxKVCache cannot repeat a filled cache; expand the prompts instead")

    def batch_select_indices(self, indices: Tensor) -> None:
        raise NotImplementedError("EntmaxKVCache cannot select batch rows of a filled cache")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("EntmaxKVCache cannot be cropped")

    def reset(self) -> None:
        self.length, self.state, self.infos, self.is_initialized = 0, None, [], False


class EntmaxKVCache(_cache_utils.Cache):
    """A transformers cache for decoder-only models, one ``EntmaxKVLayer`` per layer.

    Args:
        model_config: the model's ``PretrainedConfig`` (``model.config``).
        capacity: tokens per sequence (prompt incl. padding + new tokens), preallocated.
        config: the ``DecodeConfig`` every layer decodes with, or a sequence of one per layer;
            ``scale=None`` takes the model's.
        page_size: tokens per page.
        record_info: keep each decode step's ``DecodeInfo`` in ``layer.infos`` (costs the
            certificate pass; for diagnostics and the demo).
        dense_layers: layers below this index decode with ``Dense()`` (``hf.layers``: Quest
            keeps the first two layers dense); 0 keeps ``config``'s selector everywhere.
        key_bits, page_boxes: every layer's ``PagedKVCache`` options (``PagedKVCache.empty``):
            key codes for ``Exact``, 8-bit page boxes for ``TopK``.
    """

    def __init__(self, model_config, capacity: int, config: DecodeConfig | Sequence[DecodeConfig], *,
                 page_size: int = 16, record_info: bool = False, dense_layers: int = 0,
                 key_bits: int | None = None, page_boxes: bool = False):
        text = model_config.get_text_config(decoder=True)
        # checked now, not at the first forward (head_dim: only page boxes constrain it)
        check_cache_options(key_bits, page_boxes, head_dim_of(text) if page_boxes is True else None)
        n = text.num_hidden_layers
        configs = layer_configs(config, n, dense_layers)
        super().__init__(layers=[EntmaxKVLayer(i, capacity, page_size, c, record_info, key_bits, page_boxes)
                                 for i, c in enumerate(configs)])

    def states(self) -> list[PagedKVCache]:
        """Each layer's ``PagedKVCache`` (after prefill), e.g. to hand to ``entmaxkv.compiled.llama``."""
        if any(layer.state is None for layer in self.layers):
            raise ValueError("the cache is empty: run a forward pass (prefill) first")
        return [layer.state for layer in self.layers]
