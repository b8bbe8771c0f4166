"""Certified-exact candidates from key codes: the token-level half of ``Exact``.

With key codes (``keycodes``) every token i of a full page has a score interval
ŝ_i ± ε_p around its reference score s̃_i. For one decode step:

1. scan the codes of every full page (other than the newest) -> ŝ_i, ε_p;
2. seed: the pages holding each query head's ``top_tokens`` best tokens by ŝ - ε (the
   group's union) plus the newest page; τ_low = a safe lower bound of τ over the seed's
   exact scores (``Step.ops.tau_lower_bound``, either backend), so τ_low <= τ̃(seed);
3. candidates: tokens with lin(α)·(ŝ + ε) > τ_low for some head of the group;
4. the attended set A = candidates + the newest page; exact τ over A;
5. output from A's support.

Why A gives dense entmax exactly. A seed token outside A has lin·s̃ <= τ_low <= τ̃(seed): zero
weight at τ̃(seed), so dropping it leaves that τ unchanged, τ̃(seed ∩ A) = τ̃(seed) >= τ_low,
and adding tokens never lowers τ: τ̃(A) >= τ_low. Every token outside A has
lin·s̃ <= lin·(ŝ + ε) <= τ_low <= τ̃(A): zero weight at τ̃(A), so τ over all tokens is τ̃(A)
and the outputs agree. The seed need not be attended.

Static shapes: candidates go to a fixed-capacity list of ``capacity`` token slots per
(sequence, KV head), padded with -1, ranked by how far they can reach above τ_low. A row with
more candidates than that overflows: the caller must fall back to a correct path (every page)
and say so — the list is never silently truncated. This is the shape a kernel mirrors: one
pass over page-major codes with a per-page step vector, a τ bound from a small seed, and a
compaction into a fixed-size list. (The seed is whole pages because selectors speak pages:
``StepOps`` bounds τ over a page set. A token-level seed would read less K.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entmaxkv.entmax import lin
from entmaxkv.keycodes import code_scores
from entmaxkv.conventions import pages_to_mask
from entmaxkv.selection import Step

__all__ = ["CodeCandidates", "code_candidates"]


@dataclass(frozen=True, eq=False)
class CodeCandidates:
    """Result of ``code_candidates``.

    index: [B, Hkv, C] int64 candidate token slots (position p·S + j), -1 in unused entries;
    count: [B, Hkv] int64 candidates found (may exceed C);
    overflow: [B, Hkv] bool, count > C (the list is then incomplete: do not use it alone);
    tau_low: [B, Hkv, G] float64, the τ lower bound that decided the candidates;
    page_mask: [B, Hkv, P] bool, pages holding a listed candidate;
    seed_pages: [B, Hkv, P] bool, the full pages whose exact scores gave τ_low (the newest page
        came on top).
    """

    index: Tensor
    count: Tensor
    overflow: Tensor
    tau_low: Tensor
    page_mask: Tensor
    seed_pages: Tensor


def code_candidates(step: Step, top_tokens: int, capacity: int) -> CodeCandidates:
    """Steps 1-3 above for a cache with key codes (α > 1). No host sync, static shapes."""
    cache, c = step.cache, lin(step.alpha)
    s = cache.page_size
    s_hat, eps = code_scores(cache, step.q, step.scale, step.alibi_slopes)
    eps = eps.repeat_interleave(s, dim=-1)  # per token slot
    coded = cache.tokens_of(step.candidates)[:, :, None, :]  # [B, 1, 1, N] full, not newest
    neg_inf = torch.full_like(s_hat, float("-inf"))
    low = torch.where(coded, s_hat - eps, neg_inf)
    high = torch.where(coded, s_hat + eps, neg_inf)

    n = low.shape[-1]
    best, top = low.topk(min(top_tokens, n), dim=-1)  # [B, Hkv, G, m]
    top_page = torch.where(torch.isfinite(best), top // s, torch.full_like(top, -1)).flatten(2)
    seed_pages = pages_to_mask(top_page, cache.num_pages) & step.candidates
    tau_low = step.ops.tau_lower_bound(seed_pages | step.newest)  # [B, Hkv, G]

    reach = (c * high.double() - tau_low.unsqueeze(-1)).amax(2)  # [B, Hkv, N]
    is_cand = reach > 0
    count = is_cand.sum(-1)
    value, index = torch.where(is_cand, reach, torch.full_like(reach, float("-inf"))).topk(min(capacity, n), dim=-1)
    index = torch.where(torch.isfinite(value), index, torch.full_like(index, -1))
    page_index = torch.where(index >= 0, index // s, index)
    return CodeCandidates(
        index=index,
        count=count,
        overflow=count > capacity,
        tau_low=tau_low,
        page_mask=pages_to_mask(page_index, cache.num_pages),
        seed_pages=seed_pages,
    )
