"""What every selector sees and returns, and the baseline selector ``Dense``.

A selector decides, per (sequence, KV head), which pages the step attends; the query heads of
a GQA group share that page set. The page holding the newest token is always attended, so a
selector only chooses among the other (full) pages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entmaxkv.bounds import mean_scores, quest_bounds
from entmaxkv.reference import token_scores
from entmaxkv.state import PagedKVCache

__all__ = ["Step", "Selection", "Selector", "Dense"]


@dataclass(frozen=True, eq=False)
class Step:
    """One decode step after the append: the inputs a selector may use.

    Attributes:
        cache: the cache including the new token; q: [B, Hq, 1, D];
        scores: [B, Hkv, G, P*S] token scores, -inf past ``seq_lens`` (reference path);
        upper: [B, Hkv, G, P] safe Quest bounds (meaningful on full pages);
        means: [B, Hkv, G, P] scores of the page mean keys;
        newest: [B, 1, P] bool, the page holding each sequence's newest token (always attended);
        candidates: [B, 1, P] bool, full pages other than the newest: what selectors choose from.
    """

    cache: PagedKVCache
    q: Tensor
    alpha: float
    scale: float
    alibi_slopes: Tensor | None
    scores: Tensor
    upper: Tensor
    means: Tensor
    newest: Tensor
    candidates: Tensor

    @staticmethod
    def build(cache: PagedKVCache, q: Tensor, alpha: float, scale: float, alibi_slopes: Tensor | None) -> "Step":
        page = torch.arange(cache.num_pages, device=cache.device)
        newest = (page[None, :] == ((cache.seq_lens - 1) // cache.page_size)[:, None])[:, None, :]
        return Step(
            cache=cache,
            q=q,
            alpha=alpha,
            scale=scale,
            alibi_slopes=alibi_slopes,
            scores=token_scores(cache, q, scale, alibi_slopes),
            upper=quest_bounds(cache, q, scale, alibi_slopes),
            means=mean_scores(cache, q, scale, alibi_slopes),
            newest=newest,
            candidates=cache.full_page_mask()[:, None, :] & ~newest,
        )


@dataclass(frozen=True)
class Selection:
    """A selector's answer. page_mask: [B, Hkv, P] bool (the newest page is added by the
    caller). tau: optional [B, Hkv, G] threshold to use instead of the exact τ over the
    selected tokens (Gaussian ``fixed`` / ``corrected`` modes). certified: optional
    [B, Hkv, G] bool, the selector's own proof that the exact τ over the pages gives dense
    entmax (``Exact`` with key codes, whose token-level bounds are finer than the page-level
    certificate). overflow: optional [B, Hkv] bool, rows whose fixed-capacity candidate list
    overflowed and that fell back to every page."""

    page_mask: Tensor
    tau: Tensor | None = None
    certified: Tensor | None = None
    overflow: Tensor | None = None


class Selector:
    """Base class of page selectors: frozen dataclasses with one method."""

    def select(self, step: Step) -> Selection:
        raise NotImplementedError

    def check(self, alpha: float) -> None:
        """Raise ValueError if this selector cannot serve ``alpha``."""


@dataclass(frozen=True)
class Dense(Selector):
    """Attend every page: the baseline, equal to ``reference.dense_decode``."""

    def select(self, step: Step) -> Selection:
        c = step.cache
        return Selection(c.live_page_mask()[:, None, :].expand(c.batch, c.num_kv_heads, c.num_pages))
