"""Hugging Face transformers integration (needs the ``models`` extra).

One call decodes a Llama-family model through EntmaxKV::

    import entmaxkv as ekv
    from entmaxkv import hf
    model, tok = hf.load_smollm2()                  # or any transformers Llama-family model
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out, cache = hf.generate(model, ids, ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(coverage=0.125)),
                             max_new_tokens=20, do_sample=False)

``generate`` switches the model's attention to ``"entmaxkv"`` for the call, gives
``model.generate`` an ``EntmaxKVCache`` sized for prompt + new tokens and restores the previous
attention afterwards. Every ``model.generate`` option that keeps one sequence per row works
(greedy, sampling, streamers, stopping criteria); beam search raises. Ragged batches: pad on
the left and pass ``attention_mask``; prefill stores each row's real tokens only.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager

from torch import Tensor

from entmaxkv.config import DecodeConfig
from entmaxkv.hf._extra import require
from entmaxkv.hf.attention import NAME, dense_causal_entmax, register
from entmaxkv.hf.cache import EntmaxKVCache, EntmaxKVLayer
from entmaxkv.hf.layers import layer_configs
from entmaxkv.hf.models import load_smollm2, smollm2_path

__all__ = ["generate", "prefill", "attention", "cache_kwarg", "EntmaxKVCache", "EntmaxKVLayer", "load_smollm2",
           "smollm2_path", "dense_causal_entmax", "register", "require", "NAME", "layer_configs"]


@contextmanager
def attention(model):
    """Within the block the model attends through EntmaxKV (it then needs an ``EntmaxKVCache``)."""
    register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


def cache_kwarg(model) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def generate(model, input_ids: Tensor, config: DecodeConfig | Sequence[DecodeConfig], *, max_new_tokens: int,
             attention_mask: Tensor | None = None, page_size: int = 16, record_info: bool = False,
             dense_layers: int = 0, key_bits: int | None = None, page_boxes: bool = False,
             **generate_kwargs) -> tuple[object, EntmaxKVCache]:
    """``model.generate`` decoding through EntmaxKV with ``config``.

    Args:
        input_ids: [B, T] prompt ids, left-padded when ragged (then pass ``attention_mask``).
        config: α, selector (and scale; ``None`` takes the model's), or one config per layer.
        dense_layers: layers below this index decode with ``Dense()`` (see ``hf.layers``).
        key_bits, page_boxes: the cache options (``PagedKVCache.empty``; ``EntmaxKVCache``).
        record_info: keep each decode step's ``DecodeInfo`` per layer (``cache.layers[i].infos``).
        generate_kwargs: passed to ``model.generate`` (``do_sample``, ``streamer``, ...).
    Returns ``(output, cache)``: ``output`` is what ``model.generate`` returns (the sequences
    [B, T + new], or a ``GenerateOutput`` with ``return_dict_in_generate=True``); the cache holds
    each layer's ``PagedKVCache`` (and ``DecodeInfo``s with ``record_info``).
    """
    if generate_kwargs.get("num_beams", 1) != 1:
        raise ValueError("entmaxkv.hf.generate does not support beam search yet: num_beams must be 1")
    if generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("num_return_sequences must be 1: repeat the prompt rows instead")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    cache = EntmaxKVCache(model.config, input_ids.shape[1] + max_new_tokens, config, page_size=page_size,
                          record_info=record_info, dense_layers=dense_layers, key_bits=key_bits,
                          page_boxes=page_boxes)
    with attention(model):
        out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             **{cache_kwarg(model): cache}, **generate_kwargs)
    return out, cache


def prefill(model, input_ids: Tensor, config: DecodeConfig | Sequence[DecodeConfig], *, capacity: int,
            attention_mask: Tensor | None = None, page_size: int = 16,
            dense_layers: int = 0, key_bits: int | None = None,
            page_boxes: bool = False) -> tuple[Tensor, EntmaxKVCache]:
    """One forward over the prompt into a fresh ``EntmaxKVCache`` of ``capacity`` tokens.

    ``config``, ``dense_layers``, ``key_bits`` and ``page_boxes`` as in ``generate``; they decide
    how later steps through the returned cache decode (the prompt itself always attends
    densely). Note that
    ``entmaxkv.compiled.llama.llama_step`` takes one config for every layer.
    Returns ``(logits [B, T, vocab], cache)``; ``cache.states()`` hands the per-layer
    ``PagedKVCache``s to the functional step (``entmaxkv.compiled.llama``).
    """
    cache = EntmaxKVCache(model.config, capacity, config, page_size=page_size, dense_layers=dense_layers,
                          key_bits=key_bits, page_boxes=page_boxes)
    with attention(model):
        out = model(input_ids, attention_mask=attention_mask, use_cache=True, **{cache_kwarg(model): cache})
    return out.logits, cache
