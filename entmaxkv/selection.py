"""What every selector sees and returns, and the baseline selector ``Dense``.

A selector decides, per (sequence, KV head), which pages the step attends; the query heads of
a GQA group share that page set. The page holding the newest token is always attended, so a
selector only chooses among the other (full) pages.

Selectors speak pages: they see page-level quantities (safe score bounds, mean-key scores,
the Gaussian σ, the newest page's exact scores) and a few primitives (pick the best pages,
a safe lower bound of τ over a page set). Token scores exist only inside the attention —
the reference's or the kernels' (``Step.ops``), chosen once per step by ``entmaxkv.backend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from entmaxkv.state import PagedKVCache

__all__ = ["Step", "StepOps", "Selection", "Selector", "Dense"]


class StepOps(Protocol):
    """The primitives a backend gives selectors and the decode step (see ``entmaxkv.backend``),
    and the step's page masks ``newest`` and ``candidates`` (``Step`` has them)."""

    newest: Tensor
    candidates: Tensor

    def top_pages(self, key: Tensor, count: Tensor | int) -> Tensor:
        """[B, Hkv, P] bool: per row the ``count`` candidate pages (``Step.candidates``: full,
        not the newest) with the largest keys (ties to the lower page index; −inf never; keys
        off the candidates are ignored); +inf keys are forced pages, kept even beyond ``count``.
        Do not modify the returned mask in place (build a new one: ``mask | other``): a backend
        may keep data behind it (the kernel ops keep its page list and raise, in eager use, if
        the mask was changed)."""

    def quest_top_pages(self, upper: Tensor, means: Tensor | None, budget_pages: int | None,
                        coverage: float | None, sink_pages: int, recent_pages: int) -> Tensor:
        """[B, Hkv, P] bool: ``TopK``'s selection in one primitive (the kernel ops run it as
        one kernel). Ranks candidates by ``topk.rank_key`` of ``upper`` [B, Hkv, G, P]
        (``means``, or None, only serves the attention's score floor), forces the first
        ``sink_pages`` and the ``recent_pages`` before the newest page, and keeps
        ``budget_pages`` pages or, when that is None, ceil(n·coverage − 1e-9) of each row's
        n candidates (``topk.quest_count``); forced pages are kept beyond that count. The same
        contract as ``top_pages``' mask: do not modify it in place."""

    def gaussian_pages(self, mu: Tensor, sigma: Tensor, upper: Tensor, tau_hat: Tensor, max_quantile: float,
                       safety_margin_z: float, excess_margin_fraction: float, outlier_margin: float | None,
                       sink_pages: int, recent_pages: int) -> tuple[Tensor, Tensor]:
        """``(keep [B, Hkv, P] bool, tau_floor [B, Hkv, G] float64)``: ``Gaussian``'s page rule
        (``gaussian.gaussian_keep``, z from ``max_quantile``: ``gaussian.page_max_z``) over the
        candidates, with the first ``sink_pages`` and the ``recent_pages`` before the newest page
        forced (the kernel ops run it as one op). The same contract as ``top_pages``' mask: do
        not modify it in place."""

    def attend(self, page_mask: Tensor | None, tau: Tensor | None = None, refine_iters: int = 0,
               all_pages: bool = False, fits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Entmax attention over the tokens of ``page_mask`` [B, Hkv, P] plus the newest page
        (always attended, whether the mask holds it or not): ``(out [B, Hkv, G, D],
        tau [B, Hkv, G] float64)``; ``tau`` as in ``reference.attend``; ``all_pages``
        promises the mask holds every live page (and then it may be None: built only where it
        is read); ``fits`` [B] bool (the append's): outputs of sequences whose token did not fit
        are NaN."""

    def tau_lower_bound(self, page_mask: Tensor) -> Tensor:
        """[B, Hkv, G] float64: a lower bound of the exact τ over the tokens of ``page_mask``
        [B, Hkv, P] and the newest page (included whether the mask holds it or not; rounding
        included), hence of the dense τ."""

    def pages_above(self, upper: Tensor, tau_low: Tensor) -> Tensor:
        """[B, Hkv, P] bool: the candidate pages whose safe bound ``upper`` [B, Hkv, G, P]
        some query head could place above its τ lower bound ``tau_low`` [B, Hkv, G] float64
        (``certificate.pages_above``): the pages an exclusion round keeps (the kernel ops run it
        as one op). The same contract as ``top_pages``' mask: do not modify it in place."""

    def gaussian_tau(self, mu: Tensor, sigma: Tensor, exact_scores: Tensor, iters: int) -> Tensor:
        """[B, Hkv, G] float64: the Gaussian page model's τ̂ (``gaussian.solve_gaussian_tau``)
        over the step's candidate pages (``Step.candidates``; μ, σ: [B, Hkv, G, P]) and the
        exactly known ``exact_scores`` [B, Hkv, G, S]. The kernel ops find the candidates from
        the lengths: a Gaussian step on the kernels builds no page mask."""


@dataclass(frozen=True, eq=False)
class Step:
    """One decode step after the append: the inputs a selector may use.

    Attributes:
        cache: the cache including the new token; q: [B, Hq, 1, D]; alpha, scale, alibi_slopes;
        upper: [B, Hkv, G, P] safe bounds of every score in each page (meaningful on full pages);
            None when the selector does not read page scores (``Selector.needs_page_scores``);
        means: [B, Hkv, G, P] scores of the page mean keys (a score some token attains), or None;
        sigma: [B, Hkv, G, P] the Gaussian model's score std per page, or None when the
            selector did not ask for it (``Selector.needs_sigma``);
        newest_scores: [B, Hkv, G, S] exact scores of the newest page's slots (−inf past the
            sequence), in the work dtype; None without page scores or when the selector does
            not read them (``Selector.needs_newest_scores``);
        ops: the backend's primitives (``StepOps``);
        newest (property): [B, 1, P] bool, the page holding each sequence's newest token
            (always attended);
        candidates (property): [B, 1, P] bool, full pages other than the newest: what
            selectors choose from.
    The two masks are built on first use (by ``ops``, once per step): TopK and Gaussian steps
    on the kernels never need them.
    """

    cache: PagedKVCache
    q: Tensor
    alpha: float
    scale: float
    alibi_slopes: Tensor | None
    upper: Tensor | None
    means: Tensor | None
    sigma: Tensor | None
    newest_scores: Tensor | None
    ops: StepOps

    @property
    def newest(self) -> Tensor:
        return self.ops.newest

    @property
    def candidates(self) -> Tensor:
        return self.ops.candidates


def live_pages(cache: PagedKVCache) -> Tensor:
    """[B, Hkv, P] bool: every live page of ``cache`` (an expanded view of its [B, P] mask)."""
    return cache.live_page_mask()[:, None, :].expand(cache.batch, cache.num_kv_heads, cache.num_pages)


@dataclass(frozen=True)
class Selection:
    """A selector's answer. page_mask: [B, Hkv, P] bool (the newest page is added by the
    caller), or None with ``all_pages`` (``mask_of`` builds it where it is read). tau: optional
    [B, Hkv, G] threshold to use instead of the exact τ over the selected tokens (Gaussian
    ``fixed`` / ``corrected`` modes), refined by ``refine_iters`` safeguarded Newton steps (see
    ``entmaxkv.refine``). all_pages: the selection is every
    live page (lets a backend skip building a page list). certified: the selector's own proof
    that the exact τ over the pages gives dense entmax, finer than the page-level certificate:
    an optional [B, Hkv, G] bool, or True for every row (``Exact`` without a cap and with key
    codes: a proof by construction, no tensor, so a step that asks for no info launches nothing
    for it). overflow: optional [B, Hkv] bool, rows whose fixed-capacity candidate list
    overflowed and that fell back to every page; or, instead, candidate_count [B, Hkv] (the
    candidates found) and candidate_capacity (the list's capacity), from which
    ``overflowed`` derives it where it is read — a step that asks for no info launches
    nothing for it."""

    page_mask: Tensor | None
    tau: Tensor | None = None
    refine_iters: int = 0
    all_pages: bool = False
    certified: Tensor | bool | None = None
    overflow: Tensor | None = None
    candidate_count: Tensor | None = None
    candidate_capacity: int | None = None

    def __post_init__(self):
        if self.page_mask is None and not self.all_pages:
            raise ValueError("Selection: page_mask [B, Hkv, P] bool is required unless all_pages=True")

    def overflowed(self) -> Tensor | None:
        """[B, Hkv] bool rows whose candidate list overflowed, or None when nothing says."""
        if self.overflow is not None or self.candidate_count is None:
            return self.overflow
        return self.candidate_count > self.candidate_capacity

    def mask_of(self, cache: PagedKVCache) -> Tensor:
        """[B, Hkv, P] bool: the page mask, or every live page of ``cache`` when it is None."""
        return self.page_mask if self.page_mask is not None else live_pages(cache)


class Selector:
    """Base class of page selectors: frozen dataclasses with one method."""

    needs_sigma = False  # whether ``Step.sigma`` must be computed
    needs_page_scores = True  # whether ``Step.upper`` / ``Step.means`` must be computed
    needs_newest_scores = True  # whether ``Step.newest_scores`` must be computed (with page scores)
    ranks_by_box = False  # whether ``Step.upper`` is the 8-bit box's bound on a cache with page boxes

    def select(self, step: Step) -> Selection:
        raise NotImplementedError

    def reads_page_scores(self, cache: PagedKVCache) -> bool:
        """Whether a step on ``cache`` must compute the page-level quantities (``Step.upper``,
        ``Step.means``, the newest page's scores); ``needs_page_scores`` unless a selector
        knows better for some caches."""
        return self.needs_page_scores

    def reads_means(self, alpha: float) -> bool:
        """Whether a step at ``alpha`` that computes page scores needs ``Step.means`` (and the
        |score| scale the kernels compute with them): True unless a selector knows better."""
        return True

    def check(self, alpha: float) -> None:
        """Raise ValueError if this selector cannot serve ``alpha``."""


@dataclass(frozen=True)
class Dense(Selector):
    """Attend every page: the baseline, equal to ``reference.dense_decode``. Reads no page
    statistics (unless a step asks for its certificate)."""

    needs_page_scores = False

    def select(self, step: Step) -> Selection:
        # no mask: the kernels attend every page without one, and building it (with the zero-filled
        # list it went with) cost a Dense step four small launches (~5 µs on the H200)
        return Selection(None, all_pages=True)
