"""The fused TopK ops (``page_bounds``, ``quest_select``; under Triton's interpreter) against the
torch code they replace, and the TopK step through them against the reference.

``quest_select`` must select exactly what the torch composition (``topk.rank_key``,
``forced_page_mask``, ``quest_count``, ``select_pages``) selects from the same page scores,
and give the same score floor as ``KernelOps.score_floor``: bit for bit. Inputs are fresh
random caches (the seed is in every message) with ragged lengths whose newest page is just
started or exactly full, duplicated pages (exact ties), forced pages beyond the budget, and
poisoned op outputs (a value a kernel forgot to write, or read where it should not, fails).
"""

import dataclasses
import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import entmaxkv as ekv
from entmaxkv.backend import KernelOps
from entmaxkv.newest_page import candidate_page_mask, newest_page_magnitude, newest_page_mask, newest_page_scores
from entmaxkv.reference import token_scores
from entmaxkv.topk import forced_page_mask, quest_count, rank_key, top_pages
from helpers import fresh_seed, make_cache, on_both_backends, random_step, use_sample, use_search

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels.page_scores import newest_slack, page_bounds, page_scores, rounding_gamma  # noqa: E402
from entmaxkv.kernels.quest_select import quest_select  # noqa: E402
from entmaxkv.kernels import quest_select as quest_select_module  # noqa: E402  (its switches)

S = 8  # small pages: many pages per short sequence


def edge_lengths(seed: int, batch: int) -> list[int]:
    """Ragged lengths whose newest page holds 1, 2, S − 1 or S tokens (just started … exactly
    full), including a sequence of one page only."""
    g = random.Random(seed)
    lens = [S * g.randrange(2, 12) + g.choice([1, 2, S - 1, S]) for _ in range(batch)]
    lens[-1] = g.choice([1, S, S + 1])  # no candidate page, or one
    return lens


def with_ties(cache, seed: int):
    """Copies some pages' statistics onto others: their bounds and means tie exactly."""
    g = random.Random(seed)
    for _ in range(4):
        i, j = g.randrange(cache.num_pages), g.randrange(cache.num_pages)
        for f in ("k_min", "k_max", "k_mean", "k_std"):
            getattr(cache, f)[:, :, j] = getattr(cache, f)[:, :, i]
    return cache


def after_append(seed, batch, hkv, group, d, dtype, alibi, ties=True):
    """A cache after one append and the step's query (and ALiBi slopes). ``ties`` copies page
    statistics between pages (exact ties for the selection tests); those pages' statistics then
    no longer describe their keys, so properties that relate the two need ``ties=False``."""
    cache, _, _ = make_cache(seed, batch, hkv, d, S, edge_lengths(seed, batch), dtype=dtype, spread=2.0)
    if ties:
        cache = with_ties(cache, seed)
    g = torch.Generator().manual_seed(seed)
    q, k, v = random_step(g, batch, hkv * group, hkv, d, dtype)
    cache, _ = ekv.state.append_token(cache, k, v)
    slopes = torch.rand(hkv * group, generator=g).to(torch.float64 if dtype == torch.float64 else torch.float32) * 0.3
    return cache, q, slopes if alibi else None


def step_bounds(cache, q, slopes):
    """``page_bounds`` of the step's query [B, Hq, 1, D] over the cache (scale 0.3, no σ)."""
    return page_bounds(q[:, :, 0].contiguous(), cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens,
                       slopes, cache.k_pages, S, 0.3, False)


def torch_selection(cache, q, alpha, slopes, upper, means, absmax, newest_max, newest_mag, budget, coverage, sink,
                    recent):
    """The torch composition the kernel replaces, on the same page scores: (mask, floor)
    (means and absmax None: the floor from the newest page alone)."""
    candidates = candidate_page_mask(cache)
    key = rank_key(upper, candidates, alpha)
    key = torch.where(forced_page_mask(cache, candidates, sink, recent), float("inf"), key)
    mask = top_pages(key, quest_count(candidates, budget, coverage)) | torch.isposinf(key)
    newest_floor = torch.add(newest_max, newest_mag, alpha=-newest_slack(newest_max.dtype, cache.head_dim))
    ops = KernelOps(cache, q, alpha, 0.3, slopes, upper, means, absmax, newest_max, newest_mag, newest_floor)
    return mask, ops.score_floor(mask)


def small_blocks(monkeypatch, layout: str) -> None:
    """The threshold search (``registers``, ``chunked``, ``streamed``; rows here hold 9–37
    pages, which the op would rank: ``RANK_PAGES`` 0 makes it search) or the ranking
    (``ranked``). ``chunked``: the row-parallel kernels take 4 pages a program (so several
    programs share a row, the last one ragged) and so does the list launch, while the search
    holds the row in registers (as at 128K on the GPU: 17 list chunks of a 16,384-lane row);
    ``streamed``: also a selection block of 8 pages, so the search streams its keys from memory
    instead of holding the row in registers, and counts per chunk block by block; ``ranked``:
    4 pages a rank program (256 comparisons at most: 32 + 16 lanes a row, a ragged last block),
    4 pages a list program (each counts the chunks before it itself). The searched rows of
    9–37 pages are held as a power-of-two block and a tail block (``search_block``: 37 pages
    as 32 + 16 lanes, the tail one partial list chunk in ``registers``, four in ``chunked``);
    ``one block``: as ``registers`` with one block of next_pow2(P) lanes (``TAIL_BLOCKS``
    off), and ``ranked one block`` as ``ranked`` so (rows of 64 lanes); ``ranked, many rows``: as
    ``ranked`` with the rank blocks of a launch with many rows (8 pages a program);
    ``registers, other start`` (``chunked, other start``): as ``registers`` (``chunked``: ten
    keys programs count into a row's histogram) with the search's other start (``HIST_BITS``
    12 ⇄ 0: from the keys' histogram, or from counting passes over the whole row), so both
    stay tested whichever is the default."""
    if layout.endswith(", other start"):
        layout = layout.removesuffix(", other start")
        other = 12 if quest_select_module.HIST_BITS == 0 else 0
        monkeypatch.setattr("entmaxkv.kernels.quest_select.HIST_BITS", other)
    if layout == "ranked, many rows":  # the rank blocks of many rows (``MANY_ROWS``): 8 pages
        layout = "ranked"
        monkeypatch.setattr("entmaxkv.kernels.quest_select.MANY_ROWS", 1)
        monkeypatch.setattr("entmaxkv.kernels.quest_select.RANK_PAIRS_MANY_ROWS", 512)
    if layout == "ranked one block":
        layout = "ranked"
        monkeypatch.setattr("entmaxkv.kernels.quest_select.TAIL_BLOCKS", False)
    if layout == "one block":
        monkeypatch.setattr("entmaxkv.kernels.quest_select.TAIL_BLOCKS", False)
    if layout == "tail chunks":  # 2-page list chunks: the tail's 16 lanes are 8 of them, and on
        # 37-page rows (the newest page the 37th) the tail chunks 16 and 17 both hold candidates
        monkeypatch.setattr("entmaxkv.kernels.quest_select.LIST_CHUNK", 2)
    if layout in ("chunked", "streamed", "ranked"):
        monkeypatch.setattr("entmaxkv.kernels.quest_select.CHUNK", 4)
        monkeypatch.setattr("entmaxkv.kernels.quest_select.LIST_CHUNK", 4)
    if layout == "streamed":
        monkeypatch.setattr("entmaxkv.kernels.quest_select.MAX_BLOCK", 8)
    if layout == "ranked":
        monkeypatch.setattr("entmaxkv.kernels.quest_select.RANK_PAIRS", 256)
    else:
        monkeypatch.setattr("entmaxkv.kernels.quest_select.RANK_PAGES", 0)


def selected_magnitude(mask, absmax):
    """[B, Hkv, G]: the largest absmax of a selected page per head, 0 where none is (what
    ``KernelOps.tau_lower_bound`` composes for a mask it did not list)."""
    return torch.where(mask[:, :, None, :], absmax, torch.zeros_like(absmax)).amax(-1)


@pytest.mark.parametrize("dtype, group, layout", [
    (dtype, group, "registers") for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    for group in (1, 2, 4)] + [(torch.float32, 4, "chunked"), (torch.float16, 2, "chunked"),
                               (torch.float32, 2, "one block"), (torch.float64, 4, "one block"),
                               (torch.float32, 4, "registers, other start"),
                               (torch.float64, 2, "registers, other start"),
                               (torch.float32, 4, "streamed"), (torch.float64, 1, "streamed")]
    + [(dtype, group, "ranked") for dtype, group in ((torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 1),
                                                     (torch.float64, 2))]
    + [(torch.float32, 2, "ranked, many rows")])
def test_quest_select_equals_the_torch_composition(dtype, group, layout, poison, monkeypatch):
    small_blocks(monkeypatch, layout)
    seed = fresh_seed()
    rnd = random.Random(seed)
    for alibi in (False, True):
        cache, q, slopes = after_append(seed, 3, 2, group, 16, dtype, alibi)
        upper, absmax, means, _, newest_max, newest_mag, _, _ = step_bounds(cache, q, slopes)
        for alpha in rnd.sample([1.0, 1.5, 4 / 3, 2.0], 2):
            budget = rnd.choice([None, 0, 1, 3, 100])
            coverage = rnd.choice([0.125, 0.3, 1.0, 1 / 3]) if budget is None else None
            sink, recent = rnd.choice([0, 1, 2]), rnd.choice([0, 2, 5])
            msg = f"seed {seed} alibi {alibi} α {alpha} budget {budget} coverage {coverage} sink {sink} recent {recent}"
            want_mask, want_floor = torch_selection(cache, q, alpha, slopes, upper, means, absmax, newest_max,
                                                    newest_mag, budget, coverage, sink, recent)
            pages, count, mask, floor, magnitude = quest_select(
                upper, means, absmax, newest_max, newest_mag, cache.seq_lens, slopes, S, 16, alpha,
                -1 if budget is None else budget, 0.0 if coverage is None else coverage, sink, recent)
            assert torch.equal(mask, want_mask.expand_as(mask)), msg
            assert torch.equal(magnitude, selected_magnitude(mask, absmax)), msg
            assert torch.equal(count, want_mask.expand_as(mask).sum(-1).to(torch.int32)), msg
            for b in range(cache.batch):
                for h in range(cache.num_kv_heads):
                    n = int(count[b, h])
                    assert pages[b, h, :n].tolist() == want_mask[b, h].nonzero().flatten().tolist(), msg
                    assert (pages[b, h, n:] == -1).all(), msg
            assert torch.equal(floor, want_floor), msg


# (budget, coverage) of the random-ties test. (None, 0.56): a row with 25 candidates,
# fl(25 · 0.56) = 14.000000000000002, so the count needs the − 1e-9; (40, None): more pages than
# any row has, so the eligible count sets how many are kept.
RANDOM_TIES_SETTINGS = ((None, 0.56), (None, 0.125), (None, 1 / 3), (0, None), (2, None), (5, None), (40, None))


RANDOM_TIES_LAYOUTS = ("registers", "registers, other start", "one block", "tail chunks", "chunked",
                       "chunked, other start", "streamed", "ranked", "ranked one block", "ranked, many rows")


@pytest.mark.parametrize("layout", RANDOM_TIES_LAYOUTS)
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_quest_select_on_random_page_scores_with_ties(wide, group, layout, poison, monkeypatch, settings=None):
    """Page scores drawn directly (not from a cache): the newest page's best score is above
    the best mean for some heads and below it for others, so both floor terms matter, each
    head's L_h differs, and values on a coarse grid tie within and across heads. Entries of
    pages that are not candidates are NaN: the kernel must not read them. Some draws give a few
    pages −inf bounds on every head: their keys are −inf, not eligible (where the budget exceeds
    the eligible keys, their count bounds the selection). Some give a few pages a +inf bound on
    one head (vacuous: the key is float32's largest, ranked first but not forced). Some draws
    pass no means (α = 1's TopK step): the floor is then the newest page's term. Each case
    runs two of the seven (budget, coverage) settings (a launch costs seconds in the
    interpreter): case i of a layout's six, shifted by the layout's index o, settings i + o and
    i + o − 1 (mod 7), so that every layout meets all seven and every (group, dtype) case meets
    each setting in some layout. ``settings`` (callers): run these instead."""
    small_blocks(monkeypatch, layout)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    dtype = torch.float64 if wide else torch.float32
    b, hkv, p = 3, 2, 37
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=16, capacity=p * S, page_size=S, dtype=dtype)
    lens = torch.tensor([rnd.randrange(1, p * S + 1), 25 * S + rnd.randrange(1, S + 1), p * S])
    cache = dataclasses.replace(cache, seq_lens=lens)  # only the lengths are read
    case = (2 * {1: 0, 2: 1, 4: 2}.get(group, rnd.randrange(3)) + wide  # other groups (3): a random pair
            + RANDOM_TIES_LAYOUTS.index(layout))
    if settings is None:
        settings = (RANDOM_TIES_SETTINGS[case % 7], RANDOM_TIES_SETTINGS[(case - 1) % 7])
    for budget, coverage in settings:
        upper = (torch.randn(b, hkv, group, p, generator=g, dtype=dtype) * 4).round() / 2
        means = upper - (torch.rand(b, hkv, group, p, generator=g, dtype=dtype) * 6).round() / 2
        newest_max = (torch.randn(b, hkv, group, generator=g, dtype=dtype) * 4).round() / 2
        absmax = upper.abs() + torch.rand(b, hkv, group, p, generator=g, dtype=dtype)
        newest_mag = newest_max.abs() + 1
        if rnd.random() < 0.5:  # pages no head can score on (bounds −inf): keys −inf, not eligible
            upper[:, :, :, torch.randperm(p, generator=g)[:3]] = float("-inf")
        if rnd.random() < 0.5:  # vacuous bounds (+inf) on one head of a few pages of each row
            upper[:, :, rnd.randrange(group), torch.randperm(p, generator=g)[:rnd.randrange(1, 4)]] = float("inf")
        off = ~candidate_page_mask(cache)[:, :, None, :].expand_as(upper)
        upper, means, absmax = (x.masked_fill(off, float("nan")) for x in (upper, means, absmax))
        if rnd.random() < 0.3:
            means = absmax = None
        alpha = rnd.choice([1.0, 1.5, 2.0, 4 / 3])
        sink, recent = rnd.choice([0, 1, 3]), rnd.choice([0, 1, 4])
        slopes = torch.rand(hkv * group, generator=g, dtype=dtype) if rnd.random() < 0.5 else None
        msg = (f"seed {seed} α {alpha} budget {budget} coverage {coverage} sink {sink} recent {recent} "
               f"means {means is not None}")
        q = torch.zeros(b, hkv * group, 1, 16, dtype=dtype)
        want_mask, want_floor = torch_selection(cache, q, alpha, slopes, upper, means, absmax, newest_max,
                                                newest_mag, budget, coverage, sink, recent)
        pages, count, mask, floor, magnitude = quest_select(upper, means, absmax, newest_max, newest_mag,
                                                            cache.seq_lens, slopes, S, 16, alpha,
                                                            -1 if budget is None else budget,
                                                            0.0 if coverage is None else coverage, sink, recent)
        assert torch.equal(mask, want_mask.expand_as(mask)), msg
        if means is None:  # no absmax: no magnitude either (it stays 0)
            assert not magnitude.any(), msg
        else:
            assert torch.equal(magnitude, selected_magnitude(mask, absmax)), msg
        assert torch.equal(count, mask.sum(-1).to(torch.int32)), msg
        assert torch.equal(floor, want_floor), msg
        # the list is the mask's pages, increasing, then −1 (streamed: a list position and a tie
        # count carried from block to block)
        for row, n, m in zip(pages.flatten(0, 1), count.flatten(), mask.flatten(0, 1)):
            assert row[: int(n)].tolist() == m.nonzero().flatten().tolist(), msg
            assert bool((row[int(n):] == -1).all()), msg


@pytest.mark.parametrize("top", [0, 17, 35, 38])
def test_quest_select_ranks_keys_in_every_block(top, poison, monkeypatch):
    """Ranked rows of 40 pages in 4-page rank blocks and 4-page list chunks, the best key at
    page ``top`` (38: the last rank block holding a candidate, 39 is the newest page), budget 1
    and 3: the selection is that page (and the next best), wherever its block is — a rank grid
    one block short, or a block skipped, loses it. (Review of session 10: no other test put a
    candidate in a row's last rank block.)"""
    small_blocks(monkeypatch, "ranked")
    p, group = 40, 2
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=16, capacity=p * S, page_size=S,
                                   dtype=torch.float32)
    cache = dataclasses.replace(cache, seq_lens=torch.tensor([p * S]))  # 39 candidates
    upper = -torch.arange(p, dtype=torch.float32).expand(1, 1, group, p).contiguous()
    upper[..., top] = 10.0
    newest_max, newest_mag = torch.zeros(1, 1, group), torch.ones(1, 1, group)
    q = torch.zeros(1, group, 1, 16)
    for budget in (1, 3):
        want_mask, want_floor = torch_selection(cache, q, 1.5, None, upper, None, None, newest_max, newest_mag,
                                                budget, None, 0, 0)
        pages, count, mask, floor, _ = quest_select(upper, None, None, newest_max, newest_mag, cache.seq_lens, None, S,
                                                 16, 1.5, budget, 0.0, 0, 0)
        assert torch.equal(mask, want_mask.expand_as(mask)) and bool(mask[0, 0, top]), (top, budget)
        assert pages[0, 0, : int(count[0, 0])].tolist() == want_mask[0, 0].nonzero().flatten().tolist()
        assert torch.equal(floor, want_floor)


@pytest.mark.parametrize("layout", ["chunked", "streamed", "ranked"])
def test_quest_select_reads_no_key_past_the_candidates(layout, finite_poison, monkeypatch):
    """As ``test_quest_select_on_random_page_scores_with_ties``, with torch.empty handing out
    floats filled with 1e30 instead of NaN: the rank keys past the n candidates are never
    written, and a read of them with a mask to P instead of n would see a finite key above
    every real one (NaN, like −inf, is not eligible and hides such a read)."""
    test_quest_select_on_random_page_scores_with_ties(False, 2, layout, None, monkeypatch)


@pytest.mark.parametrize("gather", [4096, 16, 0])
@pytest.mark.parametrize("wide", [False, True])
def test_quest_select_on_sampled_streamed_rows(wide, gather, finite_poison, monkeypatch):
    """Streamed rows of up to 699 candidates (64-page blocks) long enough for a sampled bracket
    (128 keys in runs of 2), counted by (row, 64-page chunk) programs (``row_passes``), the keys
    between the bracket's ends gathered (``GATHER`` 4,096), too many to gather (16: the search
    streams the confirmed bracket) or none (0); counts whose sample rank misses the row's ends
    (budget 3, coverage 0.99: no usable bracket; budget 3 is also the forced pages' count, so
    the k largest are the +inf keys), a row whose top keys lie only where no run of the sample
    reads (the counts refute it), a short row, and rows of 2 and 0 candidates (keys past a row's
    candidates are never written: torch.empty hands out 1e30, as in the test above, and so does
    the gather's scratch, where a read past the gathered keys would find it). On the smooth
    rows at coverage 0.3 the bracket is usable and, with GATHER 4,096, its keys fit: the fast
    path is the one tested (the brackets are read from the op's allocations)."""
    empty = torch.empty  # (finite_poison's)
    allocated = []

    def recording_empty(*args, **kwargs):
        allocated.append(empty(*args, **kwargs))
        return allocated[-1]

    monkeypatch.setattr(torch, "empty", recording_empty)
    monkeypatch.setattr("entmaxkv.kernels.quest_select.MAX_BLOCK", 64)
    monkeypatch.setattr("entmaxkv.kernels.quest_select.LIST_CHUNK", 64)
    monkeypatch.setattr("entmaxkv.kernels.quest_select.COUNT_CHUNK", 64)
    monkeypatch.setattr("entmaxkv.kernels.quest_select.RANK_PAGES", 0)
    use_sample(monkeypatch, gather)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    b, hkv, group, p = 4, 2, 2, 700
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=16, capacity=p * S, page_size=S, dtype=dtype)
    cache = dataclasses.replace(cache, seq_lens=torch.tensor([p * S, 300 * S + 3, 2 * S + 1, S]))  # 699, 300, 2, 0
    read = (torch.arange(p) % 10) < 2  # where the sample's runs read a 699-candidate row (gap 10)
    for budget, coverage, alpha in ((None, 0.3, 1.5), (150, None, 1.0), (3, None, 1.5), (None, 0.99, 2.0)):
        upper = torch.randn(b, hkv, group, p, generator=g, dtype=dtype) * 3
        upper[0, 1, :, ~read] += 40  # the top keys only where no run reads
        upper[1, 0, :, :40] = 1.0  # exact ties
        newest_max = torch.randn(b, hkv, group, generator=g, dtype=dtype)
        newest_mag = newest_max.abs() + 1
        off = ~candidate_page_mask(cache)[:, :, None, :].expand_as(upper)
        upper = upper.masked_fill(off, float("nan"))
        msg = f"seed {seed} budget {budget} coverage {coverage} GATHER {gather}"
        q = torch.zeros(b, hkv * group, 1, 16, dtype=dtype)
        want_mask, want_floor = torch_selection(cache, q, alpha, None, upper, None, None, newest_max, newest_mag,
                                                budget, coverage, 1, 2)
        allocated.clear()
        pages, count, mask, floor, _ = quest_select(upper, None, None, newest_max, newest_mag, cache.seq_lens, None, S, 16,
                                                 alpha, -1 if budget is None else budget,
                                                 0.0 if coverage is None else coverage, 1, 2)
        if coverage == 0.3:  # bracket rows (lo, hi, usable, n) and totals (c_lo, c_hi, eligible, slots)
            bracket = next(t for t in allocated if t.dtype == torch.int64 and t.shape == (b, hkv, 4))
            totals = next(t for t in allocated if t.dtype == torch.int32 and t.shape == (b, hkv, 4))
            smooth = [(0, 0), (1, 1)]  # rows of 699 and 300 candidates without planted keys
            assert all(int(bracket[i, j, 2]) == 1 for i, j in smooth), f"{msg}: {bracket[..., 2]}"
            between = totals[..., 0] - totals[..., 1]
            assert all(0 < int(between[i, j]) <= 4096 for i, j in smooth), f"{msg}: {between}"
        assert torch.equal(mask, want_mask.expand_as(mask)), msg
        assert torch.equal(floor, want_floor), msg
        for row, n, m in zip(pages.flatten(0, 1), count.flatten(), mask.flatten(0, 1)):
            assert row[: int(n)].tolist() == m.nonzero().flatten().tolist(), msg
            assert bool((row[int(n):] == -1).all()), msg


@pytest.mark.parametrize("search", ["radix1", "radix2"])
@pytest.mark.parametrize("wide, group, layout", [(False, 2, "registers"), (True, 4, "registers"),
                                                 (False, 1, "streamed")])
def test_quest_select_with_the_bitwise_search(search, wide, group, layout, poison, monkeypatch):
    """The tests above with the bitwise threshold search (they take the default, the
    interpolation search) on a few of their cases (streamed rows are slow under the
    interpreter: one case, and tests/test_threshold_search.py streams every search too, on the
    keys that tell them apart)."""
    use_search(monkeypatch, search)
    every = RANDOM_TIES_SETTINGS if layout == "registers" else None  # a registers launch is ~3 s
    test_quest_select_on_random_page_scores_with_ties(wide, group, layout, None, monkeypatch, every)
    if layout == "registers":
        test_quest_select_equals_the_torch_composition(torch.float64 if wide else torch.float16, group, layout, None,
                                                       monkeypatch)


@pytest.mark.parametrize("dtype, group", [(torch.float32, 1), (torch.float16, 2), (torch.bfloat16, 4),
                                          (torch.float64, 2)])
def test_page_bounds_newest_page_quantities_equal_the_torch_ones(dtype, group, poison):
    seed = fresh_seed()
    for alibi in (False, True):
        cache, q, slopes = after_append(seed, 4, 2, group, 24, dtype, alibi)
        q3 = q[:, :, 0].contiguous()
        got = page_bounds(q3, cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens, slopes,
                          cache.k_pages, S, 0.3, True)
        want = page_scores(q3, cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens, slopes, S, 0.3,
                           True)
        full = cache.full_page_mask()[:, None, None, :].expand_as(want[0])
        for x, y in zip(got[:4], want):  # the same kernel: the page quantities are unchanged, bit for bit
            assert torch.equal(x[full], y[full]), f"seed {seed}"
        newest_max, newest_mag, newest_scores, newest_floor = got[4:]
        # the score floor, written beside them: what KernelOps computed with torch, to the bit
        floor = torch.add(newest_max, newest_mag, alpha=-newest_slack(newest_max.dtype, 24))
        torch.testing.assert_close(newest_floor, floor, rtol=0, atol=0, msg=f"seed {seed}")
        torch_scores = newest_page_scores(cache, q, 0.3, slopes)
        torch_max = torch_scores.amax(-1)
        torch_mag = newest_page_magnitude(cache, q, 0.3)
        # the float64 truth: the kernel's rounding stays within γ·magnitude (what the floor assumes)
        exact = token_scores(cache.to(torch.float64), q.double(), 0.3, None if slopes is None else slopes.double())
        newest = newest_page_mask(cache)[:, :, None, :].repeat_interleave(S, -1) & cache.token_mask()[:, None, None, :]
        exact_max = torch.where(newest, exact, float("-inf")).amax(-1)
        eps = torch.finfo(newest_max.dtype).eps
        allowed = 2.0 * (24 + 2) * eps * newest_mag.double()  # γ·magnitude: the dot product's rounding
        if alibi:  # and the bias's own (a product and a sum, |bias| < slope·S)
            allowed = allowed + 4 * eps * slopes.double().abs().reshape(1, 2, group) * S
        err = (newest_max.double() - exact_max).abs()
        assert bool((err <= allowed).all()), f"seed {seed} alibi {alibi}: {err.max()}"
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(newest_max, torch_max.to(newest_max.dtype), **tol, msg=f"seed {seed}")
        torch.testing.assert_close(newest_mag, torch_mag.to(newest_mag.dtype), **tol, msg=f"seed {seed}")
        # every slot's score (−inf past the length, as the torch code has it), and its best is newest_max
        assert torch.equal(newest_scores.isneginf(), torch_scores.isneginf()), f"seed {seed}"
        torch.testing.assert_close(newest_scores, torch_scores.to(newest_scores.dtype), **tol, msg=f"seed {seed}")
        assert torch.equal(newest_scores.amax(-1), newest_max), f"seed {seed}"
        assert not newest_max.isnan().any() and not newest_mag.isnan().any() and not newest_scores.isnan().any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_page_bounds_without_means_gives_the_same_bounds(dtype, poison):
    """``with_mean=False`` (α = 1's TopK step) reads no mean: upper and the newest page's
    quantities are those of the full launch bit for bit, absmax and mean are empty."""
    seed = fresh_seed()
    for alibi in (False, True):
        cache, q, slopes = after_append(seed, 3, 2, 2, 24, dtype, alibi)
        q3 = q[:, :, 0].contiguous()
        args = (q3, cache.k_min, cache.k_max, torch.full_like(cache.k_mean, float("nan")), cache.k_std,
                cache.seq_lens, slopes, cache.k_pages, S, 0.3, False)
        lean = page_bounds(*args, False)
        full = page_bounds(*args[:3], cache.k_mean, *args[4:], True)
        pages = cache.full_page_mask()[:, None, None, :].expand_as(full[0])
        assert torch.equal(lean[0][pages], full[0][pages]), f"seed {seed}"
        assert lean[1].numel() == 0 and lean[2].numel() == 0
        for x, y in zip(lean[4:], full[4:]):
            assert torch.equal(x, y), f"seed {seed}"


TOPKS = [ekv.TopK(token_budget=24), ekv.TopK(token_budget=0, sink_pages=2, recent_pages=3),
         ekv.TopK(coverage=0.125), ekv.TopK(coverage=0.3, sink_pages=0, recent_pages=2), ekv.TopK(coverage=1.0)]


@pytest.mark.parametrize("dtype, group", [(torch.float64, 1), (torch.float32, 4)])
def test_topk_step_through_the_ops_selects_what_the_reference_selects(dtype, group):
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 3, 2, 16, S, edge_lengths(seed, 3), dtype=dtype, spread=2.0)
    g = torch.Generator().manual_seed(seed)
    q, k, v = random_step(g, 3, 2 * group, 2, 16, dtype)
    for i, sel in enumerate(TOPKS):  # each selector with another α, ALiBi on every other one
        alpha, alibi = (1.0, 1.5, 2.0)[i % 3], i % 2 == 1
        slopes = torch.rand(2 * group, generator=g).to(dtype) * 0.3 if alibi else None
        (_, o1, i1), (_, o2, i2) = on_both_backends(cache, q, k, v, alpha, sel, slopes)
        msg = f"{sel} α {alpha} alibi {alibi} seed {seed}"
        assert torch.equal(i1.page_mask, i2.page_mask), msg
        assert torch.equal(i1.num_tokens, i2.num_tokens), msg
        tol = 1e-9 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(o2, o1, rtol=tol, atol=tol, msg=msg)


class DispatchedOps(TorchDispatchMode):
    """The names of the ops dispatched inside it (``namespace::name``), in order."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(f"{func.namespace}::{func.overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


def test_a_topk_step_on_the_kernels_dispatches_no_selector_glue():
    """The TopK step is the four ops plus the append's bookkeeping: no newest-page scoring,
    ranking, masks or floor in torch (their op names would show up here)."""
    cache, _, _ = make_cache(3, 2, 2, 16, S, [70, 41], dtype=torch.float16)
    q, k, v = random_step(torch.Generator().manual_seed(3), 2, 4, 2, 16, torch.float16)
    for sel in (ekv.TopK(coverage=0.125), ekv.TopK(token_budget=16, recent_pages=2)):
        seen = DispatchedOps()
        with seen:
            ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, sel, backend="triton"))
        ours = [n for n in seen.names if n.startswith("entmaxkv::")]
        assert ours == ["entmaxkv::append_token", "entmaxkv::page_bounds", "entmaxkv::quest_select",
                        "entmaxkv::sparse_decode"], ours
        glue = {"aten::bmm", "aten::amax", "aten::arange", "aten::scatter", "aten::sort", "aten::ceil", "aten::index",
                "aten::maximum", "aten::full_like", "aten::eq"}
        assert not glue & set(seen.names), sorted(glue & set(seen.names))


def test_a_dense_step_on_the_kernels_builds_no_page_mask():
    """A Dense step is the append and the attention: no live-page mask (arange, a product, a
    comparison) and no zero-filled page list — the dense kernel reads neither. With a
    certificate asked for, the mask is built where it is read, and the kernel ops' mean floor
    over every page is the one over the live pages' mask."""
    from entmaxkv.backend import build_step
    from entmaxkv.selection import live_pages

    cache, _, _ = make_cache(3, 2, 2, 16, S, [70, 41], dtype=torch.float16)
    q, k, v = random_step(torch.Generator().manual_seed(3), 2, 4, 2, 16, torch.float16)
    seen = DispatchedOps()
    with seen:
        ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, ekv.Dense(), backend="triton"))
    ours = [n for n in seen.names if n.startswith("entmaxkv::")]
    assert ours == ["entmaxkv::append_token", "entmaxkv::sparse_decode"], ours
    glue = {"aten::arange", "aten::lt", "aten::mul", "aten::zeros", "aten::zero_", "aten::expand"}
    assert not glue & set(seen.names), sorted(glue & set(seen.names))
    step = build_step(cache, q, 1.5, 0.25, None, kernels=True, needs_sigma=False)
    assert torch.equal(step.ops.score_floor(None), step.ops.score_floor(live_pages(cache)))


def test_opcheck_the_fused_ops():
    cache, _, _ = make_cache(1, 2, 2, 16, 16, [48, 48], capacity=48, dtype=torch.float32)
    q, _, _ = random_step(torch.Generator().manual_seed(1), 2, 4, 2, 16, torch.float32)
    c, q3 = cache, q[:, :, 0].contiguous()
    out = page_bounds(q3, c.k_min, c.k_max, c.k_mean, c.k_std, c.seq_lens, None, c.k_pages, 16, 0.25, False)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        torch.library.opcheck(torch.ops.entmaxkv.page_bounds.default,
                              (q3, c.k_min, c.k_max, c.k_mean, c.k_std, c.seq_lens, None, c.k_pages, 16, 0.25, True))
        torch.library.opcheck(torch.ops.entmaxkv.quest_select.default,
                              (out[0], out[2], out[1], out[4], out[5], c.seq_lens, None, 16, 16, 1.5, -1, 0.5, 1, 1))
        torch.library.opcheck(torch.ops.entmaxkv.quest_select.default,
                              (out[0], None, None, out[4], out[5], c.seq_lens, None, 16, 16, 1.0, -1, 0.5, 1, 1))
        torch.library.opcheck(torch.ops.entmaxkv.page_bounds.default,
                              (q3, c.k_min, c.k_max, c.k_mean, c.k_std, c.seq_lens, None, c.k_pages, 16, 0.25, False,
                               False))


def test_opcheck_quest_select_on_streamed_rows(monkeypatch):
    """opcheck on rows the op counts with (row, chunk) programs (``row_passes``: a sampled
    bracket, atomics into the op's own scratch tensors), as at 1M tokens."""
    monkeypatch.setattr("entmaxkv.kernels.quest_select.MAX_BLOCK", 16)
    monkeypatch.setattr("entmaxkv.kernels.quest_select.LIST_CHUNK", 16)
    monkeypatch.setattr("entmaxkv.kernels.quest_select.COUNT_CHUNK", 16)
    monkeypatch.setattr("entmaxkv.kernels.quest_select.RANK_PAGES", 0)
    monkeypatch.setattr("entmaxkv.kernels.select_pages.SAMPLE", 32)
    g = torch.Generator().manual_seed(fresh_seed())
    b, hkv, group, p = 2, 2, 2, 100
    upper = torch.randn(b, hkv, group, p, generator=g)
    newest_max, newest_mag = torch.randn(b, hkv, group, generator=g), torch.ones(b, hkv, group)
    seq_lens = torch.tensor([p * 16, 60 * 16 + 1])
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        torch.library.opcheck(torch.ops.entmaxkv.quest_select.default,
                              (upper, None, None, newest_max, newest_mag, seq_lens, None, 16, 16, 1.5, -1, 0.3, 1, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pages, search, wide", [
    (pages, search, False) for pages in (1000, 8300, 20000)  # ranked (16K tokens); 128K in registers; 320K streamed
    for search in ("interpolate", "radix1", "radix2")] + [(pages, "interpolate", True) for pages in (8300, 20000)])
@pytest.mark.parametrize("hist_bits", [0, 12])
def test_quest_select_on_the_gpu_equals_the_torch_composition(pages, search, wide, hist_bits, monkeypatch):
    """The compiled kernel (both row layouts, both threshold searches) on long rows of drawn
    page scores, and a real TopK step's page_bounds / quest_select against the torch code on
    the same device; rows in registers (their search started from the keys' histogram or
    not: ``hist_bits``) and streamed rows (counted over (row, chunk) programs) in float64 too."""
    use_search(monkeypatch, search)
    monkeypatch.setattr("entmaxkv.kernels.quest_select.HIST_BITS", hist_bits)
    seed = fresh_seed()
    g = torch.Generator(device="cuda").manual_seed(seed)
    b, hkv, group = 2, 8, 4
    dtype, work = (torch.float64, torch.float64) if wide else (torch.float16, torch.float32)
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=128, capacity=pages * 16, dtype=dtype,
                                   device="cuda")
    cache = dataclasses.replace(cache, seq_lens=torch.tensor([pages * 16 - 5, pages * 8], device="cuda"))
    shape = (b, hkv, group, pages)
    upper = (torch.randn(shape, generator=g, device="cuda", dtype=work) * 8).round() / 4
    means = upper - torch.rand(shape, generator=g, device="cuda", dtype=work) * 2
    absmax = upper.abs() + 1
    newest_max = torch.randn(shape[:3], generator=g, device="cuda", dtype=work) * 2
    newest_mag = newest_max.abs() + 1
    slopes = torch.rand(hkv * group, generator=g, device="cuda", dtype=work) * 0.01
    q = torch.zeros(b, hkv * group, 1, 128, device="cuda", dtype=dtype)
    for budget, coverage, sink, recent in ((None, 0.125, 1, 4), (256, None, 2, 0), (None, 0.0625, 0, 0)):
        for alpha in (1.0, 1.5):
            want_mask, want_floor = torch_selection(cache, q, alpha, slopes, upper, means, absmax, newest_max,
                                                    newest_mag, budget, coverage, sink, recent)
            pages_, count, mask, floor, _ = quest_select(upper, means, absmax, newest_max, newest_mag, cache.seq_lens,
                                                      slopes, 16, 128, alpha, -1 if budget is None else budget,
                                                      0.0 if coverage is None else coverage, sink, recent)
            msg = f"seed {seed} budget {budget} coverage {coverage} α {alpha}"
            assert torch.equal(mask, want_mask.expand_as(mask)), msg
            assert torch.equal(count, mask.sum(-1).to(torch.int32)), msg
            first = torch.where(mask, torch.arange(pages, device="cuda"), pages).sort(-1).values
            n = int(count.max())
            assert torch.equal(torch.where(first[..., :n] == pages, -1, first[..., :n]).int(), pages_[..., :n]), msg
            assert torch.equal(floor, want_floor), msg


@pytest.mark.parametrize("search", ["interpolate", "radix1", "radix2"])
@pytest.mark.parametrize("where", ["top", "bottom"])
def test_quest_select_finds_keys_that_only_the_tail_holds(search, where, poison, monkeypatch):
    """37-page rows held as 32 + 16 lanes, the extreme keys only in the tail: the best page
    (budget 1: the threshold is the row's largest key), or the two worst (budget 35 of 36: the
    threshold is the second smallest key). A search whose range or counts missed the tail would
    bracket the wrong keys. Distinct keys, no forced pages."""
    small_blocks(monkeypatch, "registers")
    use_search(monkeypatch, search)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, hkv, group, p = 2, 2, 2, 37
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=16, capacity=p * S, page_size=S,
                                   dtype=torch.float32)
    cache = dataclasses.replace(cache, seq_lens=torch.full((b,), p * S))  # 36 candidates a row
    upper = torch.randn(b, hkv, group, p, generator=g)
    if where == "top":
        upper[..., 33] = upper.amax(-1) + 10.0
        budget = 1
    else:
        upper[..., 34] = upper.amin(-1) - 10.0
        upper[..., 35] = upper.amin(-1) - 20.0
        budget = 35
    newest_max = torch.randn(b, hkv, group, generator=g)
    newest_mag = newest_max.abs() + 1
    q = torch.zeros(b, hkv * group, 1, 16)
    want_mask, want_floor = torch_selection(cache, q, 1.5, None, upper, None, None, newest_max, newest_mag, budget,
                                            None, 0, 0)
    pages, count, mask, floor, _ = quest_select(upper, None, None, newest_max, newest_mag, cache.seq_lens, None, S, 16,
                                             1.5, budget, 0.0, 0, 0)
    msg = f"seed {seed} {where} {search}"
    assert torch.equal(mask, want_mask.expand_as(mask)), msg
    assert bool(mask[..., 33].all()) if where == "top" else not bool(mask[..., 35].any()), msg
    assert torch.equal(count, mask.sum(-1).to(torch.int32)), msg
    assert torch.equal(floor, want_floor), msg


@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_the_newest_floor_rounds_the_same_fused_or_not(head_dim):
    """The floor's newest-page term max − c·magnitude is the same float32 whether computed as
    one fused multiply-subtract (the GPU's ``quest_select``, torch's ``add(alpha=−c)`` on the
    CPU) or as a product and a difference (the interpreter), because c = ``newest_slack`` is a
    power of two, so c·magnitude is exact: which is what lets the ops' floor equal the torch
    composition's bit for bit everywhere. With c = 2γ itself the two differ on these heads."""
    g = torch.Generator().manual_seed(fresh_seed())
    n = 1 << 16
    top = torch.randn(n, generator=g) * torch.pow(10.0, torch.rand(n, generator=g) * 5 - 5)  # 1e-5 .. 1
    mag = top.abs() + torch.rand(n, generator=g) * 100  # c·magnitude of top's size: rounding shows
    for c in (newest_slack(torch.float32, head_dim), 2 * rounding_gamma(torch.float32, head_dim)):
        fused = (top.double() - c * mag.double()).float()  # one rounding (exact in float64 first)
        apart = top - torch.tensor(c, dtype=torch.float32) * mag
        same = torch.equal(fused, apart)
        assert same == (c == newest_slack(torch.float32, head_dim)), (head_dim, c)


@pytest.mark.parametrize("pages, want", [(1, (16, 0)), (16, (16, 0)), (17, (32, 0)), (31, (32, 0)), (33, (32, 16)),
                                         (40, (32, 16)), (64, (64, 0)), (519, (512, 16)), (8192, (8192, 0)),
                                         (8196, (8192, 16)), (8300, (8192, 128)), (12288, (8192, 4096)),
                                         (12289, (16384, 0)), (16384, (16384, 0)), (16385, (16384, 0))])
def test_search_block_holds_the_row_in_fewer_lanes(pages, want):
    """(BLOCK, TAIL) of a row: a power-of-two block and a tail only where the two hold fewer
    lanes than one block of next_pow2(P); together they cover the row (up to MAX_BLOCK, past
    which the row streams in MAX_BLOCK-lane chunks)."""
    from entmaxkv.kernels.quest_select import MAX_BLOCK, search_block

    block, tail = search_block(pages)
    assert (block, tail) == want
    assert block + tail >= min(pages, MAX_BLOCK + 1) or block == MAX_BLOCK


def test_the_list_is_as_long_as_the_selection_can_keep():
    """``list_capacity``: ceil(P·coverage) or the budget, at least the forced pages, at most P
    and at least 1 (the list's length sizes ``sparse_decode``'s splits; too short a list drops
    pages, which the tests above see as a list shorter than the mask)."""
    from entmaxkv.kernels.quest_select import list_capacity

    assert list_capacity(516, -1, 0.125, 1, 0) == 65  # ceil(64.5)
    assert list_capacity(512, -1, 0.125, 0, 0) == 64  # exact: no page more
    assert list_capacity(516, -1, 0.0, 2, 3) == 5  # the forced pages
    assert list_capacity(516, 700, 0.0, 0, 0) == 516  # a budget past P keeps every page
    assert list_capacity(516, 0, 0.0, 0, 0) == 1  # an empty list still has a slot
    assert list_capacity(10, -1, 1.0, 0, 0) == 10


@pytest.mark.parametrize("pages", [4, 2000])  # a ranked row, and a searched one
def test_an_unsupported_histogram_width_is_a_value_error_on_every_row_length(pages, monkeypatch):
    monkeypatch.setattr("entmaxkv.kernels.quest_select.HIST_BITS", 13)
    upper = torch.zeros(1, 1, 1, pages)
    newest = torch.zeros(1, 1, 1)
    with pytest.raises(ValueError, match="HIST_BITS must be 0, 12 or 14, got 13"):
        quest_select(upper, None, None, newest, newest, torch.tensor([S * pages]), None, S, 16, 1.5, 2, 0.0, 0, 0)
