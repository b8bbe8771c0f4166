"""Per-layer decode configs for the HF cache: keep the lowest layers dense.

Quest (Tang et al., 2024) leaves the first two layers dense: there attention is flat, every
page's bound looks alike, and a page budget drops mass that the layers above amplify. On
SmolLM2 at α = 1 the same holds (``benchmarks/results/real-model.md``). ``layer_configs``
turns one ``DecodeConfig`` (or one per layer) into the list ``EntmaxKVCache`` decodes with::

    configs = layer_configs(config, num_layers=30, dense_layers=2)  # layers 0, 1: Dense()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from entmaxkv.config import DecodeConfig
from entmaxkv.selection import Dense

__all__ = ["head_dim_of", "layer_configs"]


def layer_configs(config: DecodeConfig | Sequence[DecodeConfig], num_layers: int,
                  dense_layers: int = 0) -> list[DecodeConfig]:
    """One ``DecodeConfig`` per layer.

    Args:
        config: the config of every layer, or a sequence of ``num_layers`` configs (layer i
            decodes with ``config[i]``).
        num_layers: the model's decoder layers.
        dense_layers: layers ``0 .. dense_layers - 1`` decode with ``Dense()`` (same α, scale
            and backend as their own config); 0 keeps the configs as given.
    Raises TypeError / ValueError naming the argument.
    """
    if isinstance(config, DecodeConfig):
        configs = [config] * num_layers
    elif isinstance(config, Sequence) and not isinstance(config, str):
        configs = list(config)
        if len(configs) != num_layers:
            raise ValueError(f"config must be a DecodeConfig or one per layer ({num_layers}), got {len(configs)}")
        bad = [i for i, c in enumerate(configs) if not isinstance(c, DecodeConfig)]
        if bad:
            raise TypeError(f"config[{bad[0]}] must be a DecodeConfig, got {type(configs[bad[0]]).__name__}")
    else:
        raise TypeError(f"config must be a DecodeConfig or a sequence of them, got {type(config).__name__}")
    if isinstance(dense_layers, bool) or not isinstance(dense_layers, int):
        raise TypeError(f"dense_layers must be an int, got {type(dense_layers).__name__}")
    if not 0 <= dense_layers <= num_layers:
        raise ValueError(f"dense_layers must be in [0, {num_layers}] (the model's layers), got {dense_layers}")
    return [dataclasses.replace(c, selector=Dense()) if i < dense_layers else c for i, c in enumerate(configs)]


def head_dim_of(text_config) -> int | None:
    """The attention's head dimension: ``head_dim`` where the config sets it (it may differ
    from hidden_size / heads), else hidden_size // num_attention_heads; None if neither is known."""
    explicit = getattr(text_config, "head_dim", None)
    if explicit:
        return int(explicit)
    hidden, heads = getattr(text_config, "hidden_size", None), getattr(text_config, "num_attention_heads", None)
    return hidden // heads if hidden and heads else None
