"""How good a selection was, measured against the dense reference (for analysis, not decoding).

    new_cache, out, diag = diagnose(cache, q, k_new, v_new, config)
    diag.support_recall, diag.true_dropped_mass, diag.dropped_mass_bound, diag.tau_hat, ...

Everything is per (batch, query head), float64. ``page_gaussianity`` needs scipy
(``pip install "entmaxkv[diagnostics]"``); the rest is plain torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entmaxkv.config import DecodeConfig
from entmaxkv.decode import decode_step
from entmaxkv.entmax import entmax
from entmaxkv.gaussian import gaussian_tau_hat, page_gaussians
from entmaxkv.reference import default_scale, dense_decode
from entmaxkv.backend import build_step
from entmaxkv.state import PagedKVCache

__all__ = ["StepDiagnostics", "diagnose", "page_gaussianity", "format_mass_bound"]


def format_mass_bound(bound: float | Tensor) -> str:
    """How to print a dropped-mass bound: a mass is at most 1, so a bound >= 1 says nothing and
    prints as "no bound"; otherwise in scientific notation. A tensor of bounds (as
    ``info.dropped_mass_bound``, [B, Hq]) prints as nested lists of those::

        format_mass_bound(torch.tensor([[2.5e-3, 1.0]]))  # '[[2.50e-03, no bound]]'
    """
    if isinstance(bound, Tensor):
        return _format_nested(bound.detach().cpu().tolist())
    return "no bound" if bound >= 1 else f"{bound:.2e}"


def _format_nested(bounds) -> str:
    if isinstance(bounds, list):
        return "[" + ", ".join(_format_nested(b) for b in bounds) + "]"
    return format_mass_bound(bounds)


@dataclass(frozen=True)
class StepDiagnostics:
    """Per (batch, query head), all [B, Hq].

    support_recall: fraction of the dense entmax support (tokens with weight > 0) attended.
    true_dropped_mass / dropped_mass_bound: dense weight outside the attended pages, and the
        step's certified bound on it (bound >= true always; in [0, 1], where 1 is vacuous:
        print it with ``format_mass_bound``).
    tau_true: τ of dense attention; tau_used: the τ the step used; tau_hat: the Gaussian
        model's estimate (α > 1).
    num_pages / total_pages: pages attended and pages held.
    l2_error, relative_error, cosine: output vs. dense attention.
    certified: the step's own certificate.
    """

    support_recall: Tensor
    true_dropped_mass: Tensor
    dropped_mass_bound: Tensor
    tau_true: Tensor
    tau_used: Tensor
    tau_hat: Tensor | None
    num_pages: Tensor
    total_pages: Tensor
    l2_error: Tensor
    relative_error: Tensor
    cosine: Tensor
    certified: Tensor


def diagnose(
    cache: PagedKVCache,
    q: Tensor,
    k_new: Tensor,
    v_new: Tensor,
    config: DecodeConfig,
    *,
    alibi_slopes: Tensor | None = None,
) -> tuple[PagedKVCache, Tensor, StepDiagnostics]:
    """Run one decode step with ``config`` and compare it with dense attention.

    Returns ``(new_cache, out, diagnostics)`` exactly as ``decode_step`` would have, so it can
    replace a step inside a decode loop.
    """
    new, out, info = decode_step(cache, q, k_new, v_new, config, alibi_slopes=alibi_slopes, with_info=True)
    alpha = float(config.alpha)
    scale = default_scale(new.head_dim) if config.scale is None else float(config.scale)
    dense_out, tau_true = dense_decode(new, q, alpha, scale, alibi_slopes)
    step = build_step(new, q, alpha, scale, alibi_slopes, kernels=False, needs_sigma=True)  # the oracle
    b, hq = q.shape[:2]
    weights = entmax(step.ops.scores.double(), alpha=alpha)  # [B, Hkv, G, N]
    attended = new.tokens_of(info.page_mask)[:, :, None, :]
    support = weights > 0
    recall = (support & attended).sum(-1) / support.sum(-1).clamp_min(1)
    dropped = torch.where(attended, torch.zeros_like(weights), weights).sum(-1)
    tau_hat = None
    if alpha > 1:
        mu, sigma = page_gaussians(step)
        tau_hat = gaussian_tau_hat(step, mu, sigma).reshape(b, hq)

    o, d = out.double().reshape(b, hq, -1), dense_out.double().reshape(b, hq, -1)
    l2 = (o - d).norm(dim=-1)
    return new, out, StepDiagnostics(
        support_recall=recall.reshape(b, hq),
        true_dropped_mass=dropped.reshape(b, hq),
        dropped_mass_bound=info.dropped_mass_bound,
        tau_true=tau_true,
        tau_used=info.tau,
        tau_hat=tau_hat,
        num_pages=info.num_pages,
        total_pages=new.live_page_mask().sum(-1, keepdim=True).expand(b, hq),
        l2_error=l2,
        relative_error=l2 / d.norm(dim=-1).clamp_min(1e-30),
        cosine=torch.nn.functional.cosine_similarity(o, d, dim=-1),
        certified=info.certified,
    )


def page_gaussianity(cache: PagedKVCache, q: Tensor, scale: float | None = None) -> Tensor:
    """Kolmogorov–Smirnov distance [B, Hq] between the standardised scores of full pages,
    (s - μ_p) / σ_p pooled over pages, and N(0, 1): how well the Gaussian page model fits.
    0 is a perfect fit. Needs scipy."""
    try:
        from scipy import stats
    except ImportError as err:  # an optional extra: say how to get it
        raise ImportError('page_gaussianity needs scipy: pip install "entmaxkv[diagnostics]"') from err
    scale = default_scale(cache.head_dim) if scale is None else scale
    step = build_step(cache, q, 1.5, scale, None, kernels=False, needs_sigma=True)
    mu, sigma = page_gaussians(step)
    s, p = cache.page_size, cache.num_pages
    scores = step.ops.scores.double().reshape(*mu.shape[:3], p, s)
    z = (scores - mu.unsqueeze(-1)) / sigma.clamp_min(1e-12).unsqueeze(-1)
    full = cache.full_page_mask()  # [B, P]
    b, hkv, g = mu.shape[:3]
    out = torch.zeros(b, hkv * g, dtype=torch.float64)
    for i in range(b):
        for h in range(hkv * g):
            sample = z[i, h // g, h % g][full[i]].flatten()
            if sample.numel():
                out[i, h] = stats.kstest(sample.cpu().numpy(), "norm").statistic
    return out
