"""decode_step: the one function that reads top to bottom as the algorithm."""

from __future__ import annotations

import torch
from torch import Tensor

from entmaxkv.certificate import dropped_mass_bound
from entmaxkv.config import DecodeConfig, DecodeInfo
from entmaxkv.backend import append, build_step, uses_kernels
from entmaxkv.conventions import default_scale
from entmaxkv.state import PagedKVCache
from entmaxkv.validation import check_decode

__all__ = ["decode_step", "attend_cache"]

DEFAULT_CONFIG = DecodeConfig()  # α = 1.5, Dense; frozen, so one shared default is safe


def decode_step(
    cache: PagedKVCache,
    q: Tensor,
    k_new: Tensor,
    v_new: Tensor,
    config: DecodeConfig = DEFAULT_CONFIG,
    *,
    alibi_slopes: Tensor | None = None,
    with_info: bool = False,
) -> tuple[PagedKVCache, Tensor] | tuple[PagedKVCache, Tensor, DecodeInfo]:
    """Append one token to every sequence, then attend ``q`` over that sequence's tokens
    (the new one included) on the pages the selector picks. (Today's pure-torch path still
    computes every token's score; reading only the selected pages is the kernels' job.)

    Args:
        cache: the cache value to extend; it is not changed as seen through its own lengths.
        q: [B, Hq, 1, D], Hq a multiple of the cache's KV heads (GQA / MQA / MHA).
        k_new, v_new: [B, Hkv, 1, D], the new token's key and value.
        config: α, selector and scale (static).
        alibi_slopes: optional [Hq] ALiBi slopes (bias = slope · (position - newest position)).
        with_info: also return a ``DecodeInfo``.
    Returns ``(cache, out)`` or ``(cache, out, info)``; out: [B, Hq, 1, D] in q's dtype.

    Capacity: in eager use a step on a full cache raises ``ValueError`` before writing.
    Compiled or graph-captured steps cannot raise without a host sync; there a full sequence
    is left unchanged, its output row is NaN and ``info.fits`` is False for it.
    No host synchronisation happens inside the step.

    Gradients (pure-torch reference path; the Triton ops need autograd rules of their own):
    ``out`` is differentiable w.r.t. ``q``, ``k_new``, ``v_new`` and the cache's ``k_pages`` /
    ``v_pages`` (autograd and ``torch.func.grad`` / ``jacrev`` / ``vmap``). Entmax
    uses its analytic Jacobian, so gradient flows only through tokens in the entmax support;
    tokens of pages the selector did not attend get exactly zero gradient. Page selection is
    piecewise constant in q and K and contributes no gradient (the page statistics only feed
    selection). Gaussian ``fixed`` / ``corrected`` weights use an estimated τ, and gradients
    follow that estimate. The append writes into the cache's storage in place, and torch.func
    refuses in-place writes into tensors captured from outside the transformed function: build
    the cache inside it (``dataclasses.replace(cache.fork(), k_pages=k_pages.clone(), ...)``).
    README "Composing with torch.func" has examples.
    """
    if not torch.compiler.is_compiling():
        check_decode(cache, q, k_new, v_new, config, alibi_slopes)
    cache, fits = append(cache, k_new, v_new, uses_kernels(cache.device, cache.dtype, config.backend))
    out, info = attend_cache(cache, q, config, alibi_slopes=alibi_slopes, fits=fits, with_info=with_info)
    return (cache, out, info) if with_info else (cache, out)


def attend_cache(
    cache: PagedKVCache,
    q: Tensor,
    config: DecodeConfig = DEFAULT_CONFIG,
    *,
    alibi_slopes: Tensor | None = None,
    fits: Tensor | None = None,
    with_info: bool = True,
) -> tuple[Tensor, DecodeInfo | None]:
    """Attend ``q`` over the tokens the cache already holds (no append): the second half of
    ``decode_step``, for callers that appended themselves. ``fits`` ([B] bool, default all
    True) marks rows whose append failed; their output is NaN.

    Returns ``(out [B, Hq, 1, D], info)``, info ``None`` unless ``with_info`` (the certificate
    costs another pass over the scores). Shapes as in ``decode_step``. Gradients as in
    ``decode_step``: only through the support, exactly zero on pages not attended.
    """
    alpha = float(config.alpha)
    scale = default_scale(cache.head_dim) if config.scale is None else float(config.scale)
    if fits is None:
        fits = torch.ones_like(cache.seq_lens, dtype=torch.bool)

    kernels = uses_kernels(cache.device, cache.dtype, config.backend)
    step = build_step(cache, q, alpha, scale, alibi_slopes, kernels=kernels, needs_sigma=config.selector.needs_sigma,
                      needs_page_scores=config.selector.reads_page_scores(cache) or with_info,
                      needs_newest_scores=config.selector.needs_newest_scores,
                      needs_means=config.selector.reads_means(alpha) or with_info,
                      box_bound=config.selector.ranks_by_box)
    selection = config.selector.select(step)
    out, tau = step.ops.attend(selection.page_mask, selection.tau, selection.refine_iters, selection.all_pages,
                               fits)  # NaN where the token did not fit
    b, hq, _, d = q.shape
    out = out.reshape(b, hq, 1, d).to(q.dtype)
    if not with_info:
        return out, None

    page_mask = (selection.mask_of(cache) | step.newest) & cache.live_page_mask()[:, None, :]
    if selection.certified is True:  # the selector's proof for every row: nothing with weight dropped
        rows = (b, cache.num_kv_heads, hq // cache.num_kv_heads)
        certified = torch.ones(rows, dtype=torch.bool, device=q.device)
        bound = torch.zeros(rows, dtype=torch.float64, device=q.device)
    else:  # the page-level bound (another τ over the pages), and the selector's proof for some rows
        bound, certified = dropped_mass_bound(step, page_mask)
        if selection.certified is not None:
            certified = certified | selection.certified
            bound = torch.where(selection.certified, torch.zeros_like(bound), bound)
    if selection.tau is not None:
        certified = torch.zeros_like(certified)  # an estimated τ is not the exact one over the pages
    group = hq // cache.num_kv_heads

    def per_query_head(x: Tensor) -> Tensor:  # [B, Hkv] -> [B, Hq]
        return x.repeat_interleave(group, dim=1)

    # tokens attended: full pages hold S each, the newest page what its sequence holds of it
    newest_tokens = cache.seq_lens - ((cache.seq_lens - 1) // cache.page_size) * cache.page_size
    num_tokens = (page_mask & ~step.newest).sum(-1) * cache.page_size + newest_tokens[:, None]
    overflow = selection.overflowed()
    if overflow is None:
        overflow = torch.zeros(b, cache.num_kv_heads, dtype=torch.bool, device=q.device)
    info = DecodeInfo(
        tau=tau.reshape(b, hq),
        num_pages=per_query_head(page_mask.sum(-1)),
        num_tokens=per_query_head(num_tokens),
        dropped_mass_bound=bound.reshape(b, hq),
        certified=certified.reshape(b, hq) & fits[:, None],
        page_mask=page_mask,
        fits=fits,
        overflow=per_query_head(overflow),
    )
    return out, info
