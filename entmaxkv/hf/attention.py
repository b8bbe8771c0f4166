"""The attention function transformers calls for ``attn_implementation="entmaxkv"``.

Prefill (the forward that fills an empty layer): the prompt's keys and values go into the
paged cache, with padding stripped (each row's real tokens at positions 0..len-1, as
``generate``'s position ids number them), and the prompt attends densely: SDPA for α = 1
(transformers' own function, so prompt logits are bit-identical to stock), dense causal
entmax for α > 1 (prompt and decode attention must be the same function).
Decode (one new token): ``ekv.decode_step`` on the layer's paged cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entmaxkv.decode import decode_step
from entmaxkv.entmax import entmax
from entmaxkv.hf._extra import require
from entmaxkv.hf.cache import EntmaxKVLayer, current_layer
from entmaxkv.state import prefill

__all__ = ["NAME", "register", "entmaxkv_attention", "dense_causal_entmax"]

NAME = "entmaxkv"  # no "/" in the name: transformers would read it as a hub kernel

_tf = require("transformers")
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402


def register() -> None:
    """Register the attention function and its mask builder under ``NAME`` (idempotent).

    The mask builder is SDPA's: without one, transformers passes ``attention_mask=None`` and
    padding would be invisible to prefill.
    """
    _tf.AttentionInterface.register(NAME, entmaxkv_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def entmaxkv_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                       scaling: float | None = None, dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """transformers attention interface: query [B, Hq, q_len, D] (RoPE applied), key/value
    [B, Hkv, q_len, D] (the new tokens only: ``EntmaxKVLayer.update`` returns them unchanged),
    attention_mask [B, 1, q_len, kv_len] bool or None. Returns ([B, q_len, Hq, D], None)."""
    layer = current_layer()
    if not isinstance(layer, EntmaxKVLayer) or layer.layer_idx != getattr(module, "layer_idx", None):
        raise RuntimeError("attn_implementation='entmaxkv' needs an EntmaxKVCache: use entmaxkv.hf.generate "
                           "or pass cache=EntmaxKVCache(...)")
    if dropout:
        raise ValueError("entmaxkv attention is for inference: dropout must be 0 (call model.eval())")
    config = layer.attend_config(scaling)
    q_len = query.shape[2]
    if layer.length == q_len:  # this forward filled the empty layer: prefill
        layer.state = prefill(layer.state, *_compact(key, value, attention_mask))
        if config.alpha == 1.0:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                                          scaling=config.scale, **kwargs)
        return dense_causal_entmax(query, key, value, attention_mask, config.alpha, config.scale), None
    result = decode_step(layer.state, query, key, value, config, with_info=layer.record_info)
    layer.state, out = result[0], result[1]
    if layer.record_info:
        layer.infos.append(result[2])
    return out.transpose(1, 2).contiguous(), None


def _valid_keys(mask: Tensor | None, batch: int, length: int, device) -> Tensor:
    """[B, T] bool: the prompt positions that are real tokens (not padding)."""
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    last = mask[:, 0, -1, :length]  # the last query sees every real token under left padding
    return last if last.dtype == torch.bool else last == 0  # additive float masks: 0 = attend


def _compact(key: Tensor, value: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Move each row's real tokens to the front (order kept): (k, v, seq_lens [B])."""
    b, _, t, d = key.shape
    valid = _valid_keys(mask, b, t, key.device)
    order = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)  # real tokens first
    idx = order[:, None, :, None].expand(-1, key.shape[1], -1, d)
    return key.gather(2, idx), value.gather(2, idx), valid.sum(-1)


def dense_causal_entmax(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, alpha: float,
                        scale: float, chunk: int = 256) -> Tensor:
    """Dense α-entmax attention over a prompt, causal (and padding-masked when ``mask`` is given).

    query [B, Hq, T, D], key/value [B, Hkv, T, D], mask [B, 1, T, T] bool or None.
    Returns [B, T, Hq, D]. Queries go in chunks of ``chunk`` rows to bound memory; scores and
    weights are float32 (float64 for float64 input). Rows that see no key (padding queries)
    get zeros.
    """
    b, hq, t, d = query.shape
    group = hq // key.shape[1]
    wdt = torch.float64 if query.dtype == torch.float64 else torch.float32
    k = key.repeat_interleave(group, dim=1).to(wdt)
    v = value.repeat_interleave(group, dim=1).to(wdt)
    pos = torch.arange(t, device=query.device)
    out = torch.empty(b, hq, t, d, dtype=query.dtype, device=query.device)
    for start in range(0, t, chunk):
        rows = slice(start, min(start + chunk, t))
        s = torch.matmul(query[:, :, rows].to(wdt), k.transpose(-1, -2)) * scale  # [B, Hq, c, T]
        allowed = pos[None, :] <= pos[rows, None]  # causal
        if mask is not None:
            m = mask[:, :, rows, :t]
            allowed = allowed & (m if m.dtype == torch.bool else m == 0)
        s = s.masked_fill(~allowed, float("-inf"))
        p = torch.where(allowed.any(-1, keepdim=True), entmax(s, alpha), 0.0)  # no NaN from empty rows
        out[:, :, rows] = torch.matmul(p, v).to(query.dtype)
    return out.transpose(1, 2).contiguous()
