"""The original Gaussian-aware entry point, as a thin wrapper over ``decode_step``."""

from __future__ import annotations

from torch import Tensor

from entmaxkv.config import DecodeConfig
from entmaxkv.gaussian import TAU_MODES, Gaussian
from entmaxkv.legacy import run_legacy_decode
from entmaxkv.quest_cache import QuestKVCache

__all__ = ["quest_sparse_attention_decode_gaussian_aware_entmax"]


def quest_sparse_attention_decode_gaussian_aware_entmax(
    q: Tensor,
    quest_cache: QuestKVCache,
    k_new: Tensor,
    v_new: Tensor,
    out: Tensor,
    alpha: float = 1.5,
    safety_margin_z: float = 0.0,
    max_quantile: float = 0.995,
    alibi_slopes: Tensor | None = None,
    scale: float | None = None,
    splits: int = 32,
    niter: int = 2,
    append_cache: bool = True,
    tau_mode: str = "exact",
    tau_correction_iters: int | None = None,
    clamp_tau: bool = True,
    threshold_excess_margin_fraction: float | None = 0.1,
    tau_clamp_page_max_quantile: float = 0.5,
    q_seqlens: Tensor | None = None,
    cache_seqlens: Tensor | None = None,
) -> Tensor:
    """Gaussian-aware sparse entmax decode, the original signature. Writes into ``out``.

    tau_mode: "exact" (exact τ over the selected pages), "fixed" (the Gaussian τ̂), or
    "corrected" (τ̂ plus ``tau_correction_iters`` Newton steps on the selected tokens; default
    1). As in the original, "fixed" with ``tau_correction_iters > 0`` refines τ̂ too.
    ``threshold_excess_margin_fraction=None`` means 0. See ``entmaxkv.Gaussian`` for the rule.

    Accepted for compatibility, with no effect: ``splits`` and ``niter`` (kernel hints of the
    original), ``q_seqlens`` and ``cache_seqlens`` (checked for shape; the cache knows its
    lengths — the original did not accept ``cache_seqlens``, so its own quick start failed).
    """
    if not isinstance(tau_mode, str) or tau_mode.lower() not in TAU_MODES:
        raise ValueError(f"tau_mode must be one of {TAU_MODES}, got {tau_mode!r}")
    mode = tau_mode.lower()
    if mode == "fixed" and tau_correction_iters:
        mode = "corrected"
    selector = Gaussian(
        tau_mode=mode,
        safety_margin_z=safety_margin_z,
        max_quantile=max_quantile,
        clamp_tau=clamp_tau,
        threshold_excess_margin_fraction=threshold_excess_margin_fraction or 0.0,
        tau_clamp_page_max_quantile=tau_clamp_page_max_quantile,
        correction_iters=tau_correction_iters,
    )
    config = DecodeConfig(alpha=alpha, selector=selector, scale=scale)
    return run_legacy_decode(q, quest_cache, k_new, v_new, out, config, alibi_slopes=alibi_slopes,
                             append_cache=append_cache, cache_seqlens=cache_seqlens, q_seqlens=q_seqlens)
