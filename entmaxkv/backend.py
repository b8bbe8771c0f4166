"""The one seam between the pure-torch reference and the Triton ops.

``DecodeConfig.backend`` picks where a step's arithmetic runs: ``"auto"`` (the default) runs the
Triton ops on CUDA and the reference elsewhere; ``"triton"`` forces the ops (on a CPU that
means Triton's interpreter, for tests); ``"torch"`` forces the reference. Everything else —
selectors, certificates, the decode step — is written once against ``Step`` and ``StepOps``.

The reference scores every token (it defines correctness). The kernel path reads the page
statistics once (``page_bounds``: ``page_scores`` plus the newest page's best score and
magnitude), hands selectors page-level quantities, turns their page sets into fixed-capacity
page lists (``select_pages``) and attends only those pages (``sparse_decode``): token scores
exist only inside that op. ``TopK`` asks for its whole selection at once
(``StepOps.quest_top_pages``), which the kernel path runs as one ``quest_select`` op (three
launches) that also gives the attention its score floor: an eager TopK step is append,
``page_bounds``, ``quest_select`` and ``sparse_decode``'s two kernels, plus a few small launches
(``benchmarks/count_step_ops.py`` counts them).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from typing import NamedTuple

import torch
from torch import Tensor

from entmaxkv.bounds import _gamma, mean_scores, quest_bounds, score_rounding_errors, worst_over
from entmaxkv.certificate import pages_above, safe_tau_lower_bound
from entmaxkv.conventions import group_queries, pages_to_mask, work_dtype
from entmaxkv.entmax import lin
from entmaxkv.gaussian import gaussian_keep, page_max_z, solve_gaussian_tau
from entmaxkv.page_box import box_upper
from entmaxkv.newest_page import candidate_page_mask, newest_page_mask, newest_page_scores
from entmaxkv.reference import attend, token_scores
from entmaxkv.selection import Step, live_pages
from entmaxkv.state import PagedKVCache, append_token, boxes_of
from entmaxkv.topk import forced_page_mask, quest_count, rank_key, top_pages

if importlib.util.find_spec("triton") is not None:
    import entmaxkv.kernels  # noqa: F401  (registers torch.ops.entmaxkv.*)
    from entmaxkv.kernels.page_scores import mean_slack, rounding_gamma
    from entmaxkv.kernels.sparse_decode import TAU_EXACT, TAU_GIVEN, TAU_REFINED, bisection_gap

    sparse_decode_module = importlib.import_module("entmaxkv.kernels.sparse_decode")  # its TAU_ONLY, read per call
    listed_tau_module = importlib.import_module("entmaxkv.kernels.listed_tau")  # LISTED_TAU, MAX_TOKENS

__all__ = ["BACKENDS", "uses_kernels", "build_step", "append", "ReferenceOps", "KernelOps",
           "safe_tau_composition"]

BACKENDS = ("auto", "torch", "triton")
GAUSSIAN_EXPANSIONS = 30  # bracket expansions of the τ̂ solver (solve_gaussian_tau's default)


def uses_kernels(device: torch.device, dtype: torch.dtype, backend: str) -> bool:
    """Whether a step on a cache of ``dtype`` on ``device`` runs the Triton ops. ``"auto"``
    keeps float64 caches (the oracle's dtype) on the reference."""
    if backend == "auto":
        return device.type == "cuda" and dtype != torch.float64
    return backend == "triton"


def append(cache: PagedKVCache, k_new: Tensor, v_new: Tensor, kernels: bool) -> tuple[PagedKVCache, Tensor]:
    """``state.append_token`` through the ``append_token`` op or the reference."""
    if not kernels:
        return append_token(cache, k_new, v_new)
    # a completed page's statistics, key codes and box (if the cache keeps them) are written by the op;
    # it reads k_new / v_new as dense [B, Hkv, 1, D] rows (a strided view, e.g. k[:, :, -1:], is copied)
    new_lens, fits = torch.ops.entmaxkv.append_token(cache.k_pages, cache.v_pages, cache.k_min, cache.k_max,
                                                     cache.k_mean, cache.k_std, cache.seq_lens, k_new.contiguous(),
                                                     v_new.contiguous(),
                                                     cache.capacity, cache.k_codes, cache.key_bits or 0,
                                                     *boxes_of(cache))
    host = None if cache.host_max_len is None else cache.host_max_len + 1
    return dataclasses.replace(cache, seq_lens=new_lens, host_max_len=host), fits


def build_step(cache: PagedKVCache, q: Tensor, alpha: float, scale: float, alibi_slopes: Tensor | None, *,
               kernels: bool, needs_sigma: bool, needs_page_scores: bool = True,
               needs_newest_scores: bool = True, needs_means: bool = True, box_bound: bool = False) -> Step:
    """Everything a selector may look at, computed by the chosen backend. Without
    ``needs_page_scores`` (``Dense`` without a certificate) the page-level quantities and the
    newest page's scores are None: no page statistic is read, nothing is computed ahead of
    the attention. Without ``needs_newest_scores`` (``TopK``) ``Step.newest_scores`` is None;
    on the kernels the step is then one ``page_bounds`` launch (the newest page's best score
    and magnitude come from it). Without ``needs_means`` (``TopK``) ``Step.means``
    is None and the kernels read no page mean (nor compute the |score| scale ``absmax``).

    With ``box_bound`` (``TopK``), on a cache with page boxes and without ALiBi, ``Step.upper``
    is the 8-bit box's bound (``page_box``), on both backends; on the kernels a step without
    σ and means is then one ``box_bounds`` launch, which reads no min/max."""
    if kernels and alibi_slopes is not None:
        # the ops index the slopes as a dense [Hq] vector (a strided view gave wrong outputs:
        # found by a review in session 20); a no-op, no copy, for a contiguous one
        alibi_slopes = alibi_slopes.contiguous()
    if not needs_page_scores:
        ops = (KernelOps(cache, q, alpha, scale, alibi_slopes) if kernels
               else ReferenceOps(cache, q, alpha, scale, alibi_slopes))
        return Step(cache, q, alpha, scale, alibi_slopes, None, None, None, None, ops)
    boxed = box_bound and cache.page_boxes and alibi_slopes is None
    if kernels:
        q_rows = q[:, :, 0].contiguous()
        if boxed and not needs_sigma and not needs_means:  # one launch, the box alone: no min/max read
            page_upper, *newest = torch.ops.entmaxkv.box_bounds(q_rows, *boxes_of(cache), cache.seq_lens,
                                                                 cache.k_pages, scale)
            bounds = (page_upper.to(newest[0].dtype), None, None, None, *newest)
        else:
            bounds = torch.ops.entmaxkv.page_bounds(
                q_rows, cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens,
                alibi_slopes, cache.k_pages, cache.page_size, scale, needs_sigma, needs_means)
            if boxed:  # the step's bound is the box's; page_bounds gives the means σ and absmax
                bounds = (torch.ops.entmaxkv.page_box_upper(q_rows, *boxes_of(cache), cache.seq_lens, cache.page_size,
                                                            scale).to(bounds[0].dtype), *bounds[1:])
        upper, absmax, means, sigma, newest_max, newest_mag, newest_scores, newest_floor = bounds
        if not needs_means:
            means = absmax = None
        ops = KernelOps(cache, q, alpha, scale, alibi_slopes, upper, means, absmax, newest_max, newest_mag,
                        newest_floor)
        return Step(cache, q, alpha, scale, alibi_slopes, upper, means, sigma if needs_sigma else None,
                    newest_scores if needs_newest_scores else None, ops)
    newest_scores = newest_page_scores(cache, q, scale, alibi_slopes) if needs_newest_scores else None
    upper = box_bounds(cache, q, scale) if boxed else quest_bounds(cache, q, scale, alibi_slopes)
    means = mean_scores(cache, q, scale, alibi_slopes) if needs_means else None
    sigma = page_sigma(cache, q, scale, alibi_slopes) if needs_sigma else None
    ops = ReferenceOps(cache, q, alpha, scale, alibi_slopes)
    return Step(cache, q, alpha, scale, alibi_slopes, upper, means, sigma, newest_scores, ops)


def box_bounds(cache: PagedKVCache, q: Tensor, scale: float) -> Tensor:
    """[B, Hkv, G, P] in the work dtype: the 8-bit box bound of every page (``page_box.box_upper``,
    float64, with the work dtype's γ), the reference of ``page_box_upper``."""
    wdt = work_dtype(cache.dtype)
    upper, _ = box_upper(q[:, :, 0], *boxes_of(cache), scale, _gamma(wdt, cache.head_dim))
    # past the work dtype's range: +inf above, its lowest below (never −inf), as the kernel
    return upper.clamp_min(torch.finfo(wdt).min).to(wdt)


def page_sigma(cache: PagedKVCache, q: Tensor, scale: float, alibi_slopes: Tensor | None) -> Tensor:
    """[B, Hkv, G, P] score std of every page under the Gaussian model (work dtype):
    scale·sqrt(Σ_d q_d²·std_pd²), plus the ALiBi bias variance within a page. The stored std
    (cache dtype) is converted exactly to the work dtype first, as ``page_scores`` does."""
    wdt = work_dtype(cache.dtype)
    qg = group_queries(q, cache.num_kv_heads).to(wdt)
    var = torch.einsum("bhgd,bhpd->bhgp", qg.square(), cache.k_std.to(wdt).square()) * scale ** 2
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(wdt).reshape(1, cache.num_kv_heads, -1, 1)
        var = var + slopes.square() * (cache.page_size ** 2 - 1) / 12  # positions uniform in a page
    return var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()  # no infinite gradient at σ = 0


class PageSets:
    """The step's page masks, built on first use (TopK and Gaussian steps on the kernels never
    need them): ``newest`` [B, 1, P] (the page holding each sequence's newest token) and
    ``candidates`` [B, 1, P] (full pages other than the newest)."""

    def __init__(self, cache: PagedKVCache):
        self.cache = cache
        self._newest: Tensor | None = None
        self._candidates: Tensor | None = None

    @property
    def newest(self) -> Tensor:
        if self._newest is None:
            self._newest = newest_page_mask(self.cache)
        return self._newest

    @property
    def candidates(self) -> Tensor:
        if self._candidates is None:
            self._candidates = candidate_page_mask(self.cache)
        return self._candidates


class ReferenceOps(PageSets):
    """The oracle's primitives: every token scored in plain torch."""

    def __init__(self, cache: PagedKVCache, q: Tensor, alpha: float, scale: float, alibi_slopes: Tensor | None):
        super().__init__(cache)
        self.q, self.alpha, self.scale, self.alibi_slopes = q, alpha, scale, alibi_slopes
        self.scores = token_scores(cache, q, scale, alibi_slopes)
        self._errors: Tensor | None = None

    def top_pages(self, key: Tensor, count: Tensor | int) -> Tensor:
        key = torch.where(self.candidates, key, torch.full_like(key, float("-inf")))  # candidates only
        return top_pages(key, count) | torch.isposinf(key)

    def quest_top_pages(self, upper: Tensor, means: Tensor | None, budget_pages: int | None,
                        coverage: float | None, sink_pages: int, recent_pages: int) -> Tensor:
        key = rank_key(upper, self.candidates, self.alpha)
        forced = forced_page_mask(self.cache, self.candidates, sink_pages, recent_pages)
        key = torch.where(forced, torch.full_like(key, float("inf")), key)
        count = quest_count(self.candidates, budget_pages, coverage)
        return self.top_pages(key, count)  # forced pages (key +inf) always kept

    def gaussian_pages(self, mu: Tensor, sigma: Tensor, upper: Tensor, tau_hat: Tensor, max_quantile: float,
                       safety_margin_z: float, excess_margin_fraction: float, outlier_margin: float | None,
                       sink_pages: int, recent_pages: int) -> tuple[Tensor, Tensor]:
        forced = forced_page_mask(self.cache, self.candidates, sink_pages, recent_pages)
        z = page_max_z(max_quantile, self.cache.page_size, mu)
        return gaussian_keep(self.candidates, forced, mu, sigma, upper, tau_hat, z, self.alpha, safety_margin_z,
                             excess_margin_fraction, outlier_margin)

    def attend(self, page_mask: Tensor | None, tau: Tensor | None = None, refine_iters: int = 0,
               all_pages: bool = False, fits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if page_mask is None:  # all_pages without a mask
            page_mask = live_pages(self.cache)
        tokens = self.cache.tokens_of(page_mask | self.newest)
        out, tau = attend(self.scores, self.cache.values(), tokens, self.alpha, tau, refine_iters)
        if fits is not None:
            out = torch.where(fits[:, None, None, None], out, float("nan"))
        return out, tau

    def tau_lower_bound(self, page_mask: Tensor) -> Tensor:
        if self._errors is None:  # per-token rounding bounds, once per step
            self._errors = score_rounding_errors(self.cache, self.q, self.scale, self.alibi_slopes)
        tokens = self.cache.tokens_of(page_mask | self.newest)
        return safe_tau_lower_bound(self.scores, tokens, self.alpha, worst_over(self._errors, tokens))

    def pages_above(self, upper: Tensor, tau_low: Tensor) -> Tensor:
        return pages_above(upper, tau_low, self.candidates, self.alpha)

    def gaussian_tau(self, mu: Tensor, sigma: Tensor, exact_scores: Tensor, iters: int) -> Tensor:
        count = torch.where(self.candidates[:, :, None, :], float(self.cache.page_size), 0.0).to(mu.dtype).expand_as(mu)
        return solve_gaussian_tau(mu, sigma, count, exact_scores, self.alpha, iters=iters)


class ListedMask(NamedTuple):
    """What ``KernelOps`` remembers of the last mask an op built with its page list, so that
    ``attend`` of that very mask, unmodified, reuses the list (and score floor), and
    ``tau_lower_bound`` the |score| scale (``pages_above``'s), instead of computing them again."""

    mask: Tensor  # [B, Hkv, P] bool
    pages: Tensor  # [B, Hkv, M] int32, candidates only, −1 padded
    count: Tensor  # [B, Hkv] int32
    version: int | None  # the mask's version counter (None when compiling: dynamo cannot read it)
    floor: Tensor | None  # [B, Hkv, G], the attention's score floor, or None: attend computes it
    magnitude: Tensor | None  # [B, Hkv, G], the kept pages' |score| scale (pages_above, quest_top_pages), or None
    max_count: int | None = None  # a static bound on ``count`` (quest_top_pages with a page budget), or None


class KernelOps(PageSets):
    """The Triton ops' primitives. Page sets become page lists of static capacity P (the
    cache's page slots); only full pages other than the newest go into a list — the attention
    op always adds the newest page itself. ``upper`` … ``newest_floor`` are ``page_bounds``'
    outputs (None for a step without page scores)."""

    def __init__(self, cache: PagedKVCache, q: Tensor, alpha: float, scale: float, alibi_slopes: Tensor | None,
                 upper: Tensor | None = None, means: Tensor | None = None, absmax: Tensor | None = None,
                 newest_max: Tensor | None = None, newest_magnitude: Tensor | None = None,
                 newest_floor: Tensor | None = None):
        super().__init__(cache)
        self.alpha, self.scale, self.alibi_slopes = alpha, scale, alibi_slopes
        self.q = q[:, :, 0].contiguous()
        self.upper, self.means, self.absmax = upper, means, absmax
        if (newest_max is None) != (newest_floor is None):
            raise ValueError("KernelOps: newest_max and newest_floor ([B, Hkv, G], page_bounds' outputs) "
                             "come together or not at all")
        self.newest_max, self.newest_magnitude = newest_max, newest_magnitude
        self.gamma = rounding_gamma(work_dtype(cache.dtype), cache.head_dim)
        # of top_pages / quest_top_pages / gaussian_pages / pages_above / remember_list
        self._listed: ListedMask | None = None
        self._floor = newest_floor  # the newest page's score floor, with newest_max

    def _list(self, page_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Page mask -> (pages [B, Hkv, P] int32 padded with −1, count [B, Hkv] int32)."""
        c = self.cache
        chosen = (page_mask & self.candidates).expand(c.batch, c.num_kv_heads, c.num_pages)
        keys = torch.where(chosen, 0.0, float("-inf")).to(torch.float32)
        counts = torch.full((c.batch, c.num_kv_heads), c.num_pages, dtype=torch.int32, device=c.device)
        return torch.ops.entmaxkv.select_pages(keys, counts, c.num_pages)

    def _keep_list(self, mask: Tensor, pages: Tensor, count: Tensor, floor: Tensor | None,
                   magnitude: Tensor | None = None, max_count: int | None = None) -> Tensor:
        # in eager use an in-place edit of the mask is caught by its version counter (dynamo
        # cannot read it: compiled steps trust the contract)
        version = None if torch.compiler.is_compiling() else mask._version
        self._listed = ListedMask(mask, pages, count, version, floor, magnitude, max_count)
        return mask

    def _remembered(self, page_mask: Tensor | None) -> ListedMask | None:
        """The remembered list of ``page_mask`` if it is that very mask, unmodified (an in-place
        edit raises), else None."""
        listed = self._listed
        if listed is None or page_mask is not listed.mask:
            return None
        if listed.version is not None and page_mask._version != listed.version:
            raise ValueError("a selector modified a mask returned by StepOps (top_pages, pages_above, ...) "
                             "in place; build a new mask instead (mask = mask | other)")
        return listed

    def remember_list(self, mask: Tensor, pages: Tensor, count: Tensor) -> None:
        """A selector that built the page list of ``mask`` itself ([B, Hkv, P] int32 full pages
        other than the newest, ``count`` [B, Hkv] int32 used): ``attend(mask)`` uses it
        instead of listing the mask again (the same contract: do not modify ``mask`` in place)."""
        self._keep_list(mask, pages, count, None)

    def top_pages(self, key: Tensor, count: Tensor | int) -> Tensor:
        c = self.cache
        key = torch.where(self.candidates, key, torch.full_like(key, float("-inf")))  # candidates only
        forced = torch.isposinf(key).sum(-1)
        if isinstance(count, int):  # a count past P means every page; the op takes int32 (no wrap-around)
            count = min(count, c.num_pages)
        rows = torch.zeros((c.batch, c.num_kv_heads, 1), dtype=torch.int64, device=c.device)
        want = torch.maximum((rows + count)[..., 0], forced).to(torch.int32).contiguous()  # count: int or [B, *, 1]
        pages, count = torch.ops.entmaxkv.select_pages(key.contiguous(), want, c.num_pages)
        return self._keep_list(pages_to_mask(pages, c.num_pages), pages, count, None)

    def quest_top_pages(self, upper: Tensor, means: Tensor | None, budget_pages: int | None,
                        coverage: float | None, sink_pages: int, recent_pages: int) -> Tensor:
        # one op: rank key, forced pages, count, page list, mask, the attention's score floor and
        # (with page means) the |score| scale of the pages' tokens for tau_lower_bound
        c = self.cache
        pages, count, mask, floor, magnitude = torch.ops.entmaxkv.quest_select(
            upper.contiguous(), None if means is None else means.contiguous(), self.absmax, self.newest_max,
            self.newest_magnitude, c.seq_lens,
            self.alibi_slopes, c.page_size, c.head_dim, self.alpha, -1 if budget_pages is None else budget_pages,
            0.0 if coverage is None else float(coverage), sink_pages, recent_pages)
        # the list holds max(budget, forced) pages at most: a static bound for listed_tau
        bound = None if budget_pages is None else max(budget_pages, sink_pages + recent_pages)
        return self._keep_list(mask, pages, count, floor, None if means is None else magnitude, bound)

    def gaussian_pages(self, mu: Tensor, sigma: Tensor, upper: Tensor, tau_hat: Tensor, max_quantile: float,
                       safety_margin_z: float, excess_margin_fraction: float, outlier_margin: float | None,
                       sink_pages: int, recent_pages: int) -> tuple[Tensor, Tensor]:
        # one op: margins, kept pages, their list and the attention's score floor (about a
        # hundred torch launches otherwise)
        c = self.cache
        mu, sigma, upper = mu.contiguous(), sigma.contiguous(), upper.contiguous()
        scored = self.means is not None and self.newest_max is not None  # else attend finds its own floor
        newest = self._newest_floor() if scored else torch.full(mu.shape[:3], float("-inf"), dtype=mu.dtype,
                                                                   device=mu.device)
        pages, count, mask, tau_floor, floor = torch.ops.entmaxkv.gaussian_select(
            mu, sigma, upper, self.means if scored else mu, self.absmax if scored else mu,
            tau_hat.to(torch.float64).contiguous(), max_quantile, newest, c.seq_lens, self.alibi_slopes,
            c.page_size, self.alpha, float(safety_margin_z), float(excess_margin_fraction),
            0.0 if outlier_margin is None else float(outlier_margin), outlier_margin is not None, sink_pages,
            recent_pages, mean_slack((self.means if scored else mu).dtype, c.page_size, c.head_dim))
        return self._keep_list(mask, pages, count, floor if scored else None), tau_floor

    def attend(self, page_mask: Tensor | None, tau: Tensor | None = None, refine_iters: int = 0,
               all_pages: bool = False, fits: Tensor | None = None, with_output: bool = True) -> tuple[Tensor, Tensor]:
        """``StepOps.attend``; ``with_output=False``: τ alone (the output is [B, Hkv, G, 0], no V read)."""
        c = self.cache
        b = self.q.shape[0]
        floor = None
        if all_pages:  # sparse_decode reads no list (dense=True): an empty one, no fill launched
            pages = torch.empty((b, c.num_kv_heads, 1), dtype=torch.int32, device=c.device)
            count = torch.empty((b, c.num_kv_heads), dtype=torch.int32, device=c.device)
        elif (listed := self._remembered(page_mask)) is not None:
            pages, count, floor = listed.pages, listed.count, listed.floor
        else:
            pages, count = self._list(page_mask)
        if floor is None:
            floor = self.score_floor(page_mask)
        return self._attend_list(pages, count, floor, tau, refine_iters, all_pages, fits, with_output)

    def _attend_list(self, pages: Tensor, count: Tensor, floor: Tensor | None, tau: Tensor | None = None,
                     refine_iters: int = 0, all_pages: bool = False,
                     fits: Tensor | None = None, with_output: bool = True) -> tuple[Tensor, Tensor]:
        """``attend`` of a page list (``sparse_decode``'s [B, Hkv, M] int32 + count [B, Hkv])."""
        c = self.cache
        b, hq, d = self.q.shape
        mode = TAU_EXACT if tau is None else (TAU_REFINED if refine_iters else TAU_GIVEN)
        tau_in = None if tau is None else tau.reshape(b, hq).to(torch.float64).contiguous()
        out, tau_used = torch.ops.entmaxkv.sparse_decode(
            self.q, c.k_pages, c.v_pages, None, pages, count, c.seq_lens, self.alibi_slopes, tau_in,
            None if floor is None else floor.reshape(b, hq).contiguous(), fits, self.alpha, self.scale, all_pages,
            mode, refine_iters, with_output)
        return (out.reshape(b, c.num_kv_heads, hq // c.num_kv_heads, out.shape[-1]),
                tau_used.reshape(b, c.num_kv_heads, -1))

    def adopt_newest_page(self, newest_max: Tensor, newest_magnitude: Tensor, newest_floor: Tensor) -> None:
        """Take the newest page's best score, |score| scale and score floor [B, Hkv, G] from
        another op (``code_bounds``) when this step did not run ``page_bounds``: the score floor
        and the τ bounds use them."""
        if self.newest_max is None:
            self.newest_max, self.newest_magnitude, self._floor = newest_max, newest_magnitude, newest_floor

    def gaussian_tau(self, mu: Tensor, sigma: Tensor, exact_scores: Tensor, iters: int) -> Tensor:
        # the candidates as the lengths (the kernels compare page ends): no mask, two launches fewer
        return torch.ops.entmaxkv.gaussian_tau(mu.contiguous(), sigma.contiguous(), self.cache.seq_lens,
                                               exact_scores.contiguous(), self.alpha, iters, GAUSSIAN_EXPANSIONS)

    def score_floor(self, page_mask: Tensor | None) -> Tensor | None:
        """[B, Hkv, G]: a score that some attended token reaches for sure — the best mean-key
        score of an attended full page (the mean key is a convex combination of the page's
        keys) or the newest page's best score — less what rounding could have added to it:
        ``mean_slack·absmax`` for a mean score (the mean's computation, its rounding to the
        cache dtype, two dot products; derived in ``kernels.page_scores.mean_slack``).
        Lets the attention drop tokens that cannot be in the support from its first page on.
        None without page scores (the attention then filters from its running maximum)."""
        if self.newest_max is None:
            return None
        newest = self._newest_floor()
        if self.means is None:
            return newest
        if page_mask is None:  # all_pages without a mask
            page_mask = live_pages(self.cache)
        chosen = (page_mask & self.candidates)[:, :, None, :]
        d, s = self.cache.head_dim, self.cache.page_size
        slack = mean_slack(self.means.dtype, s, d) * self.absmax
        if self.alibi_slopes is not None:  # means carry the page-centre bias; a token may sit lower
            c = self.cache
            slack = slack + self.alibi_slopes.abs().reshape(1, c.num_kv_heads, -1, 1).to(slack.dtype) * (s - 1) / 2
        means = torch.where(chosen, self.means - slack, torch.full_like(self.means, float("-inf"))).amax(-1)
        return torch.maximum(means, newest.to(means.dtype))

    def tau_lower_bound(self, page_mask: Tensor) -> Tensor:
        listed = self._remembered(page_mask)
        if listed is not None and self._listed_tau_fits(listed):
            # a short list (Exact's initial pages): scores, τ and its margin in one launch
            c = self.cache
            return torch.ops.entmaxkv.listed_tau(
                self.q, c.k_pages, listed.pages, listed.count, c.seq_lens, self.alibi_slopes, listed.magnitude,
                self.newest_magnitude, self.alpha, self.scale, self.gamma, listed.max_count)
        # τ alone: the attention reads no V
        _, tau = self.attend(page_mask, with_output=not sparse_decode_module.TAU_ONLY)
        if listed is not None and listed.magnitude is not None:
            return self._safe_tau(tau, listed.magnitude, listed.count)
        if self.absmax is None:  # no |score| scale: a bound without it would not be safe
            raise ValueError("tau_lower_bound needs the page scores' |score| scale (absmax): build the step with "
                             "page means (needs_means=True)")
        chosen = (page_mask & self.candidates)[:, :, None, :]
        magnitude = torch.where(chosen, self.absmax, torch.zeros_like(self.absmax)).amax(-1)
        return self._safe_tau(tau, magnitude, chosen[:, :, 0].sum(-1))

    def pages_above(self, upper: Tensor, tau_low: Tensor) -> Tensor:
        # one op: the mask, its page list and score floor (for attend), its pages' |score| scale
        # and count (for tau_lower_bound), instead of ~30 small launches and a select_pages
        c = self.cache
        if self.means is None or self.newest_max is None:  # no page means or no newest page: the composition
            return pages_above(upper, tau_low, self.candidates, self.alpha)
        pages, count, mask, magnitude, floor = torch.ops.entmaxkv.pages_above(
            upper.contiguous(), self.absmax, self.means, tau_low.to(torch.float64).contiguous(), self._newest_floor(),
            c.seq_lens, self.alibi_slopes, c.page_size, self.alpha, mean_slack(self.means.dtype, c.page_size,
                                                                               c.head_dim))
        return self._keep_list(mask, pages, count, floor, magnitude)

    def _listed_tau_fits(self, listed: ListedMask) -> bool:
        """Whether ``listed_tau`` takes the list: on (``LISTED_TAU``), α > 1, the |score| scales
        known, and a static bound on the count whose tokens fit its registers."""
        return (bool(listed_tau_module.LISTED_TAU) and self.alpha > 1 and listed.magnitude is not None
                and self.newest_magnitude is not None and listed.max_count is not None
                and (listed.max_count + 1) * self.cache.page_size <= listed_tau_module.MAX_TOKENS)

    def _newest_floor(self) -> Tensor:
        """[B, Hkv, G] the newest page's best score less what rounding could have added to it
        (``newest_max − newest_slack·newest_magnitude``: written by the op that scored the newest
        page, ``page_bounds`` or ``code_bounds``, beside its other outputs — no launch of its own)."""
        return self._floor

    def _safe_tau(self, tau: Tensor, magnitude: Tensor, full_pages: Tensor) -> Tensor:
        """τ over ``full_pages`` [B, Hkv] full pages plus the newest one, lowered by what
        rounding could have moved it; magnitude [B, Hkv, G]: the |score| scale of the full
        pages' tokens (``safe_tau_composition``, as one op)."""
        c = self.cache
        wdt = work_dtype(c.dtype)
        slopes = None if self.alibi_slopes is None else self.alibi_slopes.contiguous()
        return torch.ops.entmaxkv.safe_tau(tau.contiguous(), magnitude.contiguous(), self.newest_magnitude.contiguous(),
                                           full_pages.contiguous(), c.seq_lens, slopes, c.page_size, c.num_pages,
                                           self.alpha, self.gamma, torch.finfo(wdt).eps,
                                           bisection_gap(self.alpha, wdt))


def safe_tau_composition(cache: PagedKVCache, alpha: float, gamma: float, tau: Tensor, magnitude: Tensor,
                         newest_magnitude: Tensor, full_pages: Tensor, alibi_slopes: Tensor | None) -> Tensor:
    """[B, Hkv, G] float64: τ [B, Hkv, G] over ``full_pages`` [B, Hkv] full pages plus the
    newest one, lowered by what rounding could have moved it on the kernel path; magnitude,
    newest_magnitude [B, Hkv, G]: the |score| scale of the full pages' and the newest page's
    tokens; γ the work dtype's dot-product rounding factor. The torch form of
    ``entmaxkv::safe_tau`` (its oracle in the tests)."""
    c, a = cache, lin(alpha)
    magnitude = torch.maximum(magnitude, newest_magnitude).double()
    wdt = work_dtype(c.dtype)
    rounding = gamma * magnitude
    if alibi_slopes is not None:
        span = float(c.num_pages * c.page_size)
        slopes = alibi_slopes.double().abs().reshape(1, c.num_kv_heads, -1)
        rounding = rounding + 4 * torch.finfo(wdt).eps * slopes * span
        magnitude = magnitude + slopes * span
    newest_tokens = c.seq_lens - ((c.seq_lens - 1) // c.page_size) * c.page_size
    n = (full_pages * c.page_size + newest_tokens[:, None]).double().unsqueeze(-1)
    eps64, eps32 = torch.finfo(torch.float64).eps, torch.finfo(torch.float32).eps
    # τ is solved in float64 on float32 scores; α − 1 enters the kernels rounded to float32
    own = 16 * n * eps64 * (tau.abs() + a * magnitude + 1) + eps32 * a * magnitude
    own = own + bisection_gap(alpha, wdt)  # τ a bisection midpoint (α ∉ {1, 1.5, 2}), not an exact formula
    return tau - a * rounding - own
