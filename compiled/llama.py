"""A functional Llama decode step in the style of gpt-fast, over EntmaxKV's paged caches.

``params`` is a plain pytree (a dict of tensors, one dict per layer) taken from a transformers
Llama-family model; ``LlamaSpec`` holds the static shapes. One step::

    params, spec = params_from_hf(model)
    step = llama_step(spec, ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(coverage=0.125)))
    caches, logits = step(params, caches, token, pos)     # token, pos: [B] int64 on the device

``caches`` is the list of per-layer ``PagedKVCache``s, e.g. ``EntmaxKVCache.states()`` after a
prefill through ``entmaxkv.hf.prefill``. ``pos`` is each row's position, which equals its
cache length (``caches[0].seq_lens``): prefill stores real tokens only. The math mirrors
``transformers.models.llama.modeling_llama`` operation by operation (RMSNorm in float32, RoPE
in float32 cast back), so greedy tokens agree with the HF model through ``entmaxkv.hf``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from entmaxkv.config import DecodeConfig
from entmaxkv.decode import decode_step
from entmaxkv.state import PagedKVCache

__all__ = ["LlamaSpec", "params_from_hf", "llama_step", "forward_token", "random_params"]

Attend = Callable[[PagedKVCache, Tensor, Tensor, Tensor], tuple[PagedKVCache, Tensor]]


@dataclass(frozen=True)
class LlamaSpec:
    """Static shapes of a Llama-family model (hashable: a compiled step specialises on it)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    rms_eps: float
    rope_scaling: float = 1.0  # transformers' ``attention_scaling`` of cos/sin


def params_from_hf(model) -> tuple[dict, LlamaSpec]:
    """The parameter pytree and spec of a transformers ``LlamaForCausalLM`` (or a model with
    the same module layout: Mistral, Qwen2 without biases, SmolLM2). Tensors are shared, not
    copied. RoPE types that change with the sequence (dynamic, longrope) are rejected."""
    cfg = model.config.get_text_config(decoder=True)
    rope_type = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type in ("dynamic", "longrope"):
        raise ValueError(f"rope_type={rope_type!r} changes with the sequence; only static RoPE is supported")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ValueError("projection biases are not supported by entmaxkv.compiled.llama")
    base = model.model

    def layer(block) -> dict:
        attn, mlp = block.self_attn, block.mlp
        return {"wq": attn.q_proj.weight, "wk": attn.k_proj.weight, "wv": attn.v_proj.weight,
                "wo": attn.o_proj.weight, "w_gate": mlp.gate_proj.weight, "w_up": mlp.up_proj.weight,
                "w_down": mlp.down_proj.weight, "attn_norm": block.input_layernorm.weight,
                "mlp_norm": block.post_attention_layernorm.weight}

    params = {"embed": base.embed_tokens.weight, "layers": [layer(b) for b in base.layers],
              "norm": base.norm.weight, "lm_head": model.lm_head.weight,
              "inv_freq": base.rotary_emb.inv_freq}
    from entmaxkv.hf.layers import head_dim_of  # the model is a transformers one: the extra is installed

    head_dim = head_dim_of(cfg)
    spec = LlamaSpec(num_layers=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
                     num_kv_heads=cfg.num_key_value_heads, head_dim=head_dim, hidden=cfg.hidden_size,
                     vocab=params["lm_head"].shape[0], rms_eps=float(cfg.rms_norm_eps),
                     rope_scaling=float(base.rotary_emb.attention_scaling))
    return params, spec


def random_params(spec: LlamaSpec, intermediate: int, *, dtype=torch.bfloat16, device="cpu",
                  rope_base: float = 500000.0, seed: int = 0) -> dict:
    """Random weights of the given shape (for speed measurements; std 0.02 like HF init)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def w(*shape) -> Tensor:
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * 0.02).to(dtype)

    hq, hkv, d, h = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim, spec.head_dim, spec.hidden
    ones = torch.ones(h, dtype=dtype, device=device)
    layers = [{"wq": w(hq, h), "wk": w(hkv, h), "wv": w(hkv, h), "wo": w(h, hq), "w_gate": w(intermediate, h),
               "w_up": w(intermediate, h), "w_down": w(h, intermediate), "attn_norm": ones, "mlp_norm": ones}
              for _ in range(spec.num_layers)]
    inv_freq = 1.0 / (rope_base ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
    return {"embed": w(spec.vocab, h), "layers": layers, "norm": ones, "lm_head": w(spec.vocab, h),
            "inv_freq": inv_freq}


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """transformers' LlamaRMSNorm: normalise in float32, cast back, then scale."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope(pos: Tensor, inv_freq: Tensor, scaling: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin [B, 1, 1, D] for positions pos [B] (float32, as transformers computes them)."""
    freqs = pos[:, None].float() * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * scaling, emb.sin() * scaling
    return cos.to(dtype)[:, None, None, :], sin.to(dtype)[:, None, None, :]


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def forward_token(params: dict, caches: list[PagedKVCache], token: Tensor, pos: Tensor, spec: LlamaSpec,
                  attend: Attend) -> tuple[list[PagedKVCache], Tensor]:
    """One token through the model: token, pos [B] int64 -> (new caches, logits [B, vocab] float32).

    ``attend(cache, q [B, Hq, 1, D], k, v [B, Hkv, 1, D]) -> (cache, out [B, Hq, 1, D])``
    appends and attends (``decode_step`` with a config, or a baseline in benchmarks).
    """
    b, d = token.shape[0], spec.head_dim
    x = F.embedding(token[:, None], params["embed"])  # [B, 1, hidden]
    cos, sin = rope(pos, params["inv_freq"], spec.rope_scaling, x.dtype)
    new_caches = []
    for layer, cache in zip(params["layers"], caches):
        h = rms_norm(x, layer["attn_norm"], spec.rms_eps)
        q = F.linear(h, layer["wq"]).view(b, 1, spec.num_heads, d).transpose(1, 2)
        k = F.linear(h, layer["wk"]).view(b, 1, spec.num_kv_heads, d).transpose(1, 2)
        v = F.linear(h, layer["wv"]).view(b, 1, spec.num_kv_heads, d).transpose(1, 2)
        cache, out = attend(cache, rotate(q, cos, sin), rotate(k, cos, sin), v)
        new_caches.append(cache)
        x = x + F.linear(out.transpose(1, 2).reshape(b, 1, spec.num_heads * d), layer["wo"])
        h = rms_norm(x, layer["mlp_norm"], spec.rms_eps)
        x = x + F.linear(F.silu(F.linear(h, layer["w_gate"])) * F.linear(h, layer["w_up"]), layer["w_down"])
    logits = F.linear(rms_norm(x, params["norm"], spec.rms_eps), params["lm_head"])
    return new_caches, logits[:, 0].float()


def llama_step(spec: LlamaSpec, config: DecodeConfig) -> Callable:
    """``step(params, caches, token, pos) -> (caches, logits)`` decoding with ``config``."""

    def attend(cache: PagedKVCache, q: Tensor, k: Tensor, v: Tensor) -> tuple[PagedKVCache, Tensor]:
        return decode_step(cache, q, k, v, config)

    def step(params: dict, caches: list[PagedKVCache], token: Tensor, pos: Tensor):
        return forward_token(params, caches, token, pos, spec, attend)

    return step
