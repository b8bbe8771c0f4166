"""Quest top-k selection: keep the pages with the best score upper bounds, within a budget.

GQA. The query heads of a group share one page set, so their per-head bounds must be combined
into one ranking. Entmax weights depend on scores only through lin(α)·s - τ_h, and each head's
τ_h sits just below that head's top score. So what decides whether a page can matter to head h
is how far its bound U_hp reaches relative to what head h can reach at all, in units of lin(α).
Each head's reference is its best candidate bound, L_h = max_p U_hp, and a page is ranked by

    key_p = max_h lin(α)·(U_hp - L_h)  (<= 0; 0 for each head's best page),

how close it comes to some head's best page. It is the Quest ranking when the group has one
head, and it does not let a head with large raw scores (or loose bounds) drown the others.
Until 2026-11-29 the reference was a score each head attains (the best page-mean score, or
the newest page's best score); on real attention (SmolLM2-135M, every layer and head, 4K and
8K tokens, α = 1 and 1.5, TopK 6.25% and 12.5%: ``benchmarks/topk_reference_real.py``)
L_h = max_p U_hp keeps the median cosine to dense attention and lifts its 5th percentile
in 7 of 8 settings (e.g. 0.73 -> 0.82 at 8K, α = 1.5, 6.25%; 0.88 -> 0.92 at 4K, α = 1,
12.5%), and it needs no page means: a TopK step reads none (the attention's score floor comes
from the newest page's best score alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entmaxkv.entmax import lin
from entmaxkv.selection import Selection, Selector, Step
from entmaxkv.state import PagedKVCache
from entmaxkv.validation import check_count

__all__ = ["TopK", "rank_key", "group_rank_key", "top_pages", "forced_pages", "forced_page_mask", "quest_count",
           "VACUOUS_KEY"]

VACUOUS_KEY = 3.4028234663852886e38  # float32's largest: the rank key of a page with a +inf bound


def rank_key(upper: Tensor, candidates: Tensor, alpha: float) -> Tensor:
    """[B, Hkv, P] ranking key of each candidate page (-inf for pages that are not candidates).

    upper: [B, Hkv, G, P] (``Step.upper``); candidates: [B, 1, P] bool.

    A bound of +inf is vacuous (a page box of non-finite keys, or past float32's range): the
    page could hold any score, so it ranks first — key ``VACUOUS_KEY``, above every finite
    key (those are <= 0), below the forced pages' +inf, so that it still counts against the
    budget — and each head's reference is its best *finite* bound (one +inf would otherwise
    make every other key −inf and the row select nothing)."""
    finite = candidates[:, :, None, :] & (upper < float("inf"))
    on_candidates = torch.where(finite, upper, torch.full_like(upper, float("-inf")))
    reference = on_candidates.amax(-1, keepdim=True)  # [B, Hkv, G, 1] each head's best finite bound
    key = (lin(alpha) * (upper - reference)).amax(2)
    key = torch.where(key == float("inf"), torch.full_like(key, VACUOUS_KEY), key)
    return torch.where(candidates, key, torch.full_like(key, float("-inf")))


def group_rank_key(step: Step) -> Tensor:
    """``rank_key`` of a step."""
    return rank_key(step.upper, step.candidates, step.alpha)


def top_pages(key: Tensor, count: Tensor | int) -> Tensor:
    """[B, Hkv, P] bool: the ``count`` pages with the largest finite key (count may be a
    per-row tensor broadcastable to [B, Hkv, 1]). Static shapes, no host sync."""
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter(-1, order, torch.arange(key.shape[-1], device=key.device).expand_as(order))
    return (rank < count) & torch.isfinite(key)


def forced_page_mask(cache: PagedKVCache, candidates: Tensor, sink_pages: int, recent_pages: int) -> Tensor:
    """[B, 1, P] bool: candidate pages kept whatever their score: the first ``sink_pages``
    (attention sinks) and the ``recent_pages`` full pages just before the newest one."""
    page = torch.arange(cache.num_pages, device=cache.device)
    newest_page = ((cache.seq_lens - 1) // cache.page_size)[:, None, None]
    recent = (page < newest_page) & (page >= newest_page - recent_pages)
    return ((page < sink_pages) | recent) & candidates


def forced_pages(step: Step, sink_pages: int, recent_pages: int) -> Tensor:
    """``forced_page_mask`` of a step."""
    return forced_page_mask(step.cache, step.candidates, sink_pages, recent_pages)


def quest_count(candidates: Tensor, budget_pages: int | None, coverage: float | None) -> Tensor | int:
    """Pages a TopK row keeps before forced pages: ``budget_pages``, or ceil(n·coverage) of its
    n candidates (float64, less 1e-9 so that an exact product is not rounded up)."""
    if budget_pages is not None:
        return budget_pages
    n = candidates.sum(-1, keepdim=True)  # [B, 1, 1]
    return torch.ceil(n.to(torch.float64) * coverage - 1e-9).to(n.dtype)


@dataclass(frozen=True)
class TopK(Selector):
    """Keep the best full pages by the Quest bound, plus the newest page.

    On a cache with page boxes (``PagedKVCache.empty(..., page_boxes=True)``) and without ALiBi
    the bound is the 8-bit box's (``page_box``): a little looser than the exact key range's
    (the ranking on SmolLM2's attention: ``benchmarks/page_box_real.py``), half the bytes.

    Exactly one of:
        token_budget: attend at most ``token_budget // page_size`` full pages (the newest,
            possibly partial page comes on top);
        coverage: attend ``ceil(coverage · n)`` of a sequence's n full pages; 1.0 is dense.
    Options:
        sink_pages: the first pages, always kept (attention sinks); default 1.
        recent_pages: full pages just before the newest one, always kept; default 0.
    Forced pages count against the budget; they are kept even when they exceed it.
    """

    token_budget: int | None = None
    coverage: float | None = None
    sink_pages: int = 1
    recent_pages: int = 0

    def __post_init__(self) -> None:
        if (self.token_budget is None) == (self.coverage is None):
            raise ValueError("TopK takes exactly one of token_budget (tokens) or coverage (fraction of pages), "
                             f"got token_budget={self.token_budget}, coverage={self.coverage}")
        check_count("token_budget", self.token_budget, allow_none=True)
        if self.coverage is not None and (isinstance(self.coverage, bool) or not (
                isinstance(self.coverage, (int, float)) and 0 < self.coverage <= 1)):
            raise ValueError(f"coverage must be in (0, 1], got {self.coverage!r}")
        check_count("sink_pages", self.sink_pages)
        check_count("recent_pages", self.recent_pages)

    needs_newest_scores = False  # the backend's quest_top_pages finds the newest page's best score itself
    ranks_by_box = True  # on a cache with page boxes (and without ALiBi): half the bytes of the min/max

    def reads_means(self, alpha: float) -> bool:
        # The rank reads bounds only. At α > 1 the attention filters its survivors from a score
        # floor, which the best selected mean would raise above the newest page's best score;
        # on the H200 reading the means cost more than that filter saves (α = 1.5, 128K: 105.9
        # µs with them, 89.2 without; perf-log row 45), so a TopK step reads none.
        return False

    def select(self, step: Step) -> Selection:
        budget = None if self.token_budget is None else self.token_budget // step.cache.page_size
        return Selection(step.ops.quest_top_pages(step.upper, step.means, budget, self.coverage, self.sink_pages,
                                                  self.recent_pages))

