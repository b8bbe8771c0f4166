"""Certified-exact entmax selection.

τ computed over any subset of the tokens is <= the true τ (adding tokens can only raise it),
so a page whose safe bound satisfies (α-1)·U_p <= τ_subset holds only zero-weight tokens.
Rounds: compute a safe lower bound of τ over the current set C, then set C to every candidate
page that bound cannot exclude (for any query head of the group). Excluded tokens have zero
weight at τ_C, so dropping them leaves τ unchanged, and adding the rest can only raise it: the
exact τ over C never decreases from round to round. The safe bounds are lowered by a rounding
margin that grows with the set's |score| scale and size, so they need not rise with it, and a
later round can bring back a page an earlier one excluded. Without a page cap the last round's
set is certified by construction — every page outside it was excluded by that round's bound, a
safe lower bound of the true τ — and the selection says so (``info.certified``; the page-level
re-check of the final set with its own bound can miss by the margin). With ``max_pages`` the
set is truncated to the best pages and the step reports whether the page-level certificate
still holds.

With key codes in the cache (``PagedKVCache.empty(..., key_bits=4 or 8)``) the bounds are per
token instead: see ``exact_codes``. There the attended pages are those holding a candidate
token; a row whose candidates overflow ``max_candidates`` falls back to every page (still
exact) and ``info.overflow`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entmaxkv.entmax import lin
from entmaxkv.exact_codes import code_candidates
from entmaxkv.selection import Selection, Selector, Step
from entmaxkv.state import PagedKVCache
from entmaxkv.topk import group_rank_key
from entmaxkv.validation import check_count

__all__ = ["Exact"]


@dataclass(frozen=True)
class Exact(Selector):
    """Certified-exact entmax (α > 1): the output equals dense entmax up to rounding whenever
    ``info.certified`` is True (with a NaN key that the step reads, the output is NaN, as
    dense entmax's is: README, Conventions).

    initial_pages: pages seeding τ, chosen by the group ranking of ``TopK``; default 8.
    rounds: exclusion rounds (fixed, no data-dependent control flow); ``None`` (default) means
        1 without ``max_pages`` and 2 with it. Without a cap the first round's set is already
        certified: a further round would attend that whole set to select the one the final
        attention reads again (from a τ bound over it) — more bytes read and launches for the
        same output. With a cap, rounds narrow the set before the cap truncates it (a
        truncated set is certified only if what it drops is excluded). 0: the seed pages
        alone, certified only where the page-level check says so.
    max_pages: static cap on the full pages attended; ``None`` (default) means no cap, and
        then every step with at least one round is certified — at the cost of reading
        whatever the bounds cannot exclude (on real attention page bounds are loose: see
        ../shared/FINDINGS.md). A NaN bound excludes nothing, so without a cap NaN keys reach
        the output; with one, the cap's ranking can drop a NaN page (not certified then).
    With key codes (``use_codes`` and a cache with ``key_bits``), the three options above are
    unused and these apply; every step is then certified (a token whose code bound is NaN
    stays a candidate, so a NaN key gives NaN):
    top_tokens: seed pages per query head: the pages split into ``top_tokens`` residue
        classes (page mod top_tokens), and from each the page whose best token is best by its
        code lower bound (``exact_codes.class_seed``: the head's best page is always one;
        the scan keeps them without a selection over the pages). Their code lower bounds (one
        value a page, its best token's) and the newest page's scores seed the τ lower bound;
        no key of theirs is read. Default 8 (on SmolLM2 real attention, 8 and 32 classes gave
        the same candidate counts within 10%, session 25).
    max_candidates: static capacity of the candidate token list per (sequence, KV head);
        default 512. A row with more candidates attends every page and sets ``info.overflow``.
    use_codes: use the cache's key codes when it has them; default True.
    """

    initial_pages: int = 8
    rounds: int | None = None
    max_pages: int | None = None
    top_tokens: int = 8
    max_candidates: int = 512
    use_codes: bool = True

    def __post_init__(self) -> None:
        check_count("initial_pages", self.initial_pages)
        check_count("rounds", self.rounds, allow_none=True)
        check_count("max_pages", self.max_pages, allow_none=True)
        check_count("top_tokens", self.top_tokens)
        check_count("max_candidates", self.max_candidates)
        if not isinstance(self.use_codes, bool):
            raise TypeError(f"use_codes must be a bool, got {type(self.use_codes).__name__}")

    @property
    def exclusion_rounds(self) -> int:
        """``rounds`` as given, or its default: 1 without ``max_pages``, 2 with it."""
        if self.rounds is not None:
            return self.rounds
        return 1 if self.max_pages is None else 2

    def check(self, alpha: float) -> None:
        if alpha <= 1.0:
            raise ValueError(f"Exact selection needs alpha > 1 (softmax has no exact zeros), got alpha={alpha}")

    def reads_page_scores(self, cache: PagedKVCache) -> bool:
        # with key codes the scan gives everything the selection reads (page scores only
        # serve the page-level certificate: asked for by ``with_info``)
        return not (self.use_codes and cache.key_bits is not None)

    def select(self, step: Step) -> Selection:
        if self.use_codes and step.cache.key_bits is not None:
            return self._select_with_codes(step)
        # the best ``initial_pages`` by ``TopK``'s group ranking (one op on the kernels, which also
        # gives the attention its score floor)
        chosen = step.ops.quest_top_pages(step.upper, step.means, self.initial_pages, None, 0, 0)
        key = group_rank_key(step) if self.max_pages is not None else None
        for _ in range(self.exclusion_rounds):
            tau_low = step.ops.tau_lower_bound(chosen)  # [B, Hkv, G], over the newest page too
            alive = step.ops.pages_above(step.upper, tau_low)
            if key is not None:
                alive = step.ops.top_pages(torch.where(alive, key, torch.full_like(key, float("-inf"))), self.max_pages)
            chosen = alive
        # Without a cap the exclusion is the proof: every page left out has (α−1)·U <= a safe
        # lower bound of τ for each head of its group, so it holds no weight, and the set
        # attended holds the support. (Re-checking the final set with its own τ bound, as the
        # page-level certificate does, can fail: that bound's rounding margin grows with the
        # set's |score| scale and size, and a page just below the first bound can sit above it.)
        proven = self.max_pages is None and self.exclusion_rounds > 0
        return Selection(chosen, certified=True if proven else None)

    def _select_with_codes(self, step: Step) -> Selection:
        found = code_candidates(step, self.top_tokens, self.max_candidates)
        # exact by the argument in exact_codes, and trivially so on the fallback rows
        return Selection(found.attended, certified=True, candidate_count=found.found_count,
                         candidate_capacity=found.capacity)
