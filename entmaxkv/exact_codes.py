"""Certified-exact candidates from key codes: the token-level half of ``Exact``.

With key codes (``keycodes``) every token i of a full page has a score interval
ŝ_i ± ε_p around its reference score s̃_i. For one decode step:

1. scan the codes of every full page (other than the newest) -> ŝ_i, ε_p;
2. seed: for each query head and each residue class r of the pages mod ``top_tokens``, the
   page whose best token is best by ŝ - ε (``class_seed``: the head's best page is always
   among them, and the scan can keep these with one atomic max per page instead of a
   selection over all pages afterwards); τ_low = a safe lower bound of the entmax threshold
   of the values z = the head's own seed pages' code lower bounds max_i (ŝ_i − ε) and the
   newest page's exact scores (``seed_tau_bound``). No key of the seed is read: each value is
   at most some distinct token's score s̃ (the best token of a page has s̃ >= ŝ − ε), and τ
   rises with every score and with every token added, so τ_low <= τ̃(all tokens);
3. candidates: tokens with lin(α)·(ŝ + ε) > τ_low for some head of the group;
4. the attended set A = candidates + the newest page; exact τ over A;
5. output from A's support.

Why A gives dense entmax exactly. Every token outside A has lin·s̃ <= lin·(ŝ + ε) <= τ_low <=
τ̃(all): zero weight at the dense τ, so the dense τ is also the root over A alone — τ̃(A) =
τ̃(all) — and the outputs agree. The seed need not be attended.

Before session 25 the seed's τ was over the seed pages' exact scores (K of up to G·top_tokens
pages read, and one more attention launch pair a step); on SmolLM2 real attention
(``benchmarks/keycodes_real.py``) the lower bounds give about 1.7× the candidates (4-bit,
α = 1.5: 25 / 85 / 268 tokens a KV head, median / p90 / max, against 15 / 46 / 140), still
a few hundred at most and fewer bytes than the seed's keys were.

Static shapes: candidates go to a fixed-capacity list of ``capacity`` token slots per
(sequence, KV head), padded with -1, ranked by how far they can reach above τ_low. A row with
more candidates than that overflows: the caller must fall back to a correct path (every page)
and say so — the list is never silently truncated. This is the shape a kernel mirrors: one
pass over page-major codes with a per-page step vector, a τ bound from a small seed, and a
compaction into a fixed-size list. (A page of the seed contributes one value, its best
token's lower bound.)

Two implementations of steps 1-3, chosen by the step's backend: on the reference
(``ReferenceOps``) the torch scan below (``keycodes.code_scores``: every code unpacked, token
scores [B, Hkv, G, N] in memory); on the kernels (``KernelOps``) the ops of
``entmaxkv.kernels.code_scan``: pass 1 keeps each page's best ŝ and ε per head, the seed's two
small launches list it (each page once, with the |score| scale of its pages), score the newest
page (its best score and scale, so the step reads no ``page_scores``) and solve the seed's τ
from the lower bounds, and pass 2 rescans only the pages whose best upper
bound reaches τ_low (lowering the seed's τ to it itself), appending candidates to the list
with an atomic counter and their pages to the attention's page list (every page on an
overflowed row). Both give the same seed and candidate set up to the rounding of ŝ (the
sums' order differs), and τ_low within the two margins' difference (the reference's margin
is per value, the kernels' per |score| scale; the kernels' τ search stops within float64
rounding of the root on every input simulated, ``code_scan.SEED_TAU_ROUNDS``, and at a lower
bound whatever happens); the kernel list is in increasing token order once read, and its
page mask holds every candidate's page (the reference's: the listed ones); on overflowed
rows the kernel mask is every coded page (the fallback both attend).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entmaxkv.backend import KernelOps
from entmaxkv.bounds import score_rounding_errors, worst_over
from entmaxkv.conventions import pages_to_mask
from entmaxkv.entmax import entmax_threshold, lin
from entmaxkv.keycodes import code_scores
from entmaxkv.selection import Step

__all__ = ["CodeCandidates", "code_candidates", "class_seed"]


@dataclass(frozen=True, eq=False)
class CodeCandidates:
    """Result of ``code_candidates``.

    index: [B, Hkv, C] int64 candidate token slots (position p·S + j), -1 in unused entries
        (reference: ranked by reach; kernels: increasing);
    count: [B, Hkv] int64 candidates found (may exceed C);
    overflow (property): [B, Hkv] bool, count > C (the list is then incomplete: do not use
        it alone), computed when read (a step reads it only for its info);
    tau_low: [B, Hkv, G] float64, the τ lower bound that decided the candidates;
    page_mask: [B, Hkv, P] bool, pages holding a listed candidate (kernels: any candidate,
        and every coded page on an overflowed row);
    attended: [B, Hkv, P] bool, what ``Exact`` attends: the candidates' pages, every full page
        (other than the newest) on an overflowed row (the fallback);
    seed_pages (property): [B, Hkv, P] bool, the full pages whose code lower bounds gave τ_low
        (each head its own; the newest page's scores came on top); seed_list: the same as [B, Hkv, M] page indices, −1 for
        none (the kernels list each page once; the reference may repeat one).

    ``index`` and ``count`` are views computed when read: a decode step reads only
    ``page_mask`` and ``overflow``, so on the kernel path it never pays for ordering the list
    (``torch.compile`` drops unread values anyway; eager steps and graphs of them do not).
    """

    found_index: Tensor  # the list as found: int64 ranked (reference), or int32 unordered (kernels)
    found_count: Tensor  # int64 (reference) or int32 (kernels)
    capacity: int
    tau_low: Tensor
    page_mask: Tensor
    seed_list: Tensor
    attended: Tensor

    @property
    def seed_pages(self) -> Tensor:
        return pages_to_mask(self.seed_list, self.page_mask.shape[-1])

    @property
    def index(self) -> Tensor:
        if self.found_index.dtype == torch.int64:  # the reference's ranked list
            return self.found_index
        # the atomic counter leaves the kernels' list unordered: sort it (−1 padding last) so
        # that what a caller reads is reproducible
        last = torch.iinfo(torch.int32).max  # above every token slot
        index = torch.where(self.found_index < 0, last, self.found_index).sort(-1).values
        return torch.where(index == last, -1, index).long()

    @property
    def count(self) -> Tensor:
        return self.found_count.long()

    @property
    def overflow(self) -> Tensor:
        return self.found_count > self.capacity


def code_candidates(step: Step, top_tokens: int, capacity: int) -> CodeCandidates:
    """Steps 1-3 above for a cache with key codes (α > 1). No host sync, static shapes."""
    if isinstance(step.ops, KernelOps):
        return _kernel_candidates(step, top_tokens, capacity)
    cache, c = step.cache, lin(step.alpha)
    s = cache.page_size
    s_hat, eps = code_scores(cache, step.q, step.scale, step.alibi_slopes)
    eps = eps.repeat_interleave(s, dim=-1)  # per token slot
    coded = cache.tokens_of(step.candidates)[:, :, None, :]  # [B, 1, 1, N] full, not newest
    neg_inf = torch.full_like(s_hat, float("-inf"))
    low = torch.where(coded, s_hat - eps, neg_inf)
    high = torch.where(coded, s_hat + eps, neg_inf)

    n = low.shape[-1]
    page_low = low.reshape(*low.shape[:3], cache.num_pages, s).amax(-1)  # [B, Hkv, G, P]
    seed = class_seed(page_low, top_tokens)
    tau_low = seed_tau_bound(step, page_low, seed, top_tokens)  # [B, Hkv, G]

    reach = (c * high.double() - tau_low.unsqueeze(-1)).amax(2)  # [B, Hkv, N] (amax keeps a NaN)
    # a token is dropped only when its bound provably stays at or below τ_low: a NaN bound (a NaN
    # key's page statistics, or a NaN τ_low) keeps it, so NaN reaches the output as in dense entmax
    is_cand = ~(reach <= 0)
    count = is_cand.sum(-1)
    inf = torch.full_like(reach, float("inf"))
    rank = torch.where(reach.isnan(), inf, reach)  # a NaN bound ranks first: it must be attended
    value, index = torch.where(is_cand, rank, -inf).topk(min(capacity, n), dim=-1)
    index = torch.where(value > float("-inf"), index, torch.full_like(index, -1))
    page_index = torch.where(index >= 0, index // s, index)
    page_mask = pages_to_mask(page_index, cache.num_pages)
    overflow = count > capacity
    return CodeCandidates(
        found_index=index,
        found_count=count,
        capacity=capacity,
        tau_low=tau_low,
        page_mask=page_mask,
        seed_list=seed,
        attended=torch.where(overflow[..., None], step.candidates.expand_as(page_mask), page_mask),
    )


def seed_tau_bound(step: Step, page_low: Tensor, seed: Tensor, slots: int) -> Tensor:
    """Step 2's τ_low on the reference ([B, Hkv, G] float64, in units of (α−1)·score): for each
    query head, the entmax threshold of the values z = the code lower bounds ``page_low``
    [B, Hkv, G, P] (fl(ŝ − ε) of each page's best token, the work dtype) of its own ``slots``
    seed pages (``class_seed``'s [B, Hkv, G·slots], −1 for none) and the newest page's scores,
    lowered by what rounding could have moved it. No key is read for the seed.

    Why it is below the dense τ: each value is at most the score of a distinct token (a page's
    best token has s̃ >= ŝ − ε), τ rises with every score and with every token added. The
    margin: a page_low may sit above ŝ − ε by its subtraction's rounding (<= eps·|z| of the work
    dtype), a newest score off the exact one by ``score_rounding_errors``; τ's own float64 error
    as in ``certificate.safe_tau_lower_bound``."""
    cache, alpha = step.cache, step.alpha
    b, hkv, g, p = page_low.shape
    own = seed.reshape(b, hkv, g, slots)
    neg_inf = torch.tensor(float("-inf"), dtype=page_low.dtype, device=page_low.device)
    low = torch.where(own >= 0, page_low.gather(-1, own.clamp_min(0)), neg_inf)  # [B, Hkv, G, slots]
    newest = cache.tokens_of(step.newest)[:, :, None, :]  # [B, 1 or Hkv, 1, N]
    scores = step.ops.scores  # the reference's token scores [B, Hkv, G, N]
    fresh = torch.where(newest, scores, neg_inf.to(scores.dtype))
    z = torch.cat([low.double(), fresh.double()], -1)
    tau = entmax_threshold(z, alpha, dim=-1)
    finite = z.isfinite()
    size = z.abs().where(finite, torch.zeros_like(z))
    slot_round = torch.finfo(page_low.dtype).eps * size[..., :slots].amax(-1)
    errors = score_rounding_errors(cache, step.q, step.scale, step.alibi_slopes)
    rounding = torch.maximum(slot_round, worst_over(errors, newest[:, :, 0].expand(-1, hkv, -1)).double())
    n = finite.sum(-1).clamp_min(1).double()
    c = lin(alpha)
    own_error = 16 * n * torch.finfo(torch.float64).eps * (tau.abs() + c * size.amax(-1) + 1)
    return tau - c * rounding - own_error


def class_seed(page_low: Tensor, slots: int) -> Tensor:
    """The seed of step 2 (the reference of ``code_bounds``' seed): for each query head and each
    residue class r of the pages mod ``slots``, the page with the largest ``page_low`` (the best
    token's code lower bound, −inf on pages without codes), compared as float32 (so float64
    caches rank like the kernel), ties to the lower page. Every head's best page is among them.

    page_low: [B, Hkv, G, P]. Returns [B, Hkv, G·slots] int64 pages, −1 where a class holds no
    coded page (a page several heads chose appears once per head)."""
    b, hkv, g, p = page_low.shape
    rows = -(-p // slots)
    key = torch.nn.functional.pad(page_low.float(), (0, rows * slots - p), value=float("-inf"))
    value, row = key.reshape(b, hkv, g, rows, slots).max(-2)  # first maximum: the lower page on ties
    page = row * slots + torch.arange(slots, device=page_low.device)
    return torch.where(value > float("-inf"), page, torch.full_like(page, -1)).reshape(b, hkv, g * slots)


def _kernel_candidates(step: Step, top_tokens: int, capacity: int) -> CodeCandidates:
    """Steps 1-3 through the ``code_bounds`` / ``code_candidates`` ops: two passes over the
    codes (the second over candidate pages only) and the seed's τ bound; a handful of
    launches, never a token-score tensor, no selection over the pages.

    Glue kept out, each without changing a result: the ops write only coded pages, which are
    exactly ``step.candidates`` (full pages before the newest one), so nothing is masked with
    it again; ``code_bounds`` lists the seed itself (each page once, with the |score| scale of
    its pages: no page mask, no ``select_pages``, no ``page_scores``); ``code_candidates`` turns the
    seed's τ into the safe bound itself (``KernelOps._safe_tau``'s arithmetic); ``KernelOps`` attends the
    newest page whatever the list says, so the seed goes without it; the list is ordered only
    when read (``CodeCandidates.index``); ``code_candidates`` lists the attended pages itself
    (the overflow fallback included), so the attention needs no ``select_pages``."""
    cache, ops = step.cache, step.ops
    args = (ops.q, cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, step.alibi_slopes)  # q: [B, Hq, D]
    # the seed's τ [B, Hkv, G] from its code lower bounds and the newest page's scores (no key of
    # the seed read: ``seed_tau_bound`` is the reference)
    page_max, eps, _, newest_max, newest_mag, seed, seed_count, seed_mag, tau_seed, newest_floor = \
        torch.ops.entmaxkv.code_bounds(*args, cache.key_bits, step.scale, False, cache.k_pages, top_tokens, step.alpha)
    # what page_bounds would have given (if the step skipped it)
    ops.adopt_newest_page(newest_max, newest_mag, newest_floor)
    # the op lowers τ by KernelOps._safe_tau's margin itself (no torch arithmetic)
    index, count, page_mask, tau_low, page_list, page_count = torch.ops.entmaxkv.code_candidates(
        *args, page_max, eps, tau_seed, cache.key_bits, step.scale, lin(step.alpha), capacity, seed_count, seed_mag,
        ops.newest_magnitude, step.alpha)
    # the op's mask already holds every coded page on overflowed rows; its list goes to the attention
    ops.remember_list(page_mask, page_list, page_count)
    return CodeCandidates(
        found_index=index,
        found_count=count,
        capacity=capacity,
        tau_low=tau_low,
        page_mask=page_mask,
        seed_list=seed,
        attended=page_mask,
    )
