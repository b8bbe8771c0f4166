"""``code_bounds``' seed launches (``code_scan._seed``: the chunk programs, then the per-row
merge) run alone on crafted page bounds.

``test_kernels_codes`` checks the seed on page_max − ε of real codes: random float values,
so float32 ties never happen, and its few pages fit in one round of the [G, ROUNDS, K] tile.
Here the launches read page_max and ε built to have what those cannot: several chunks a row
(``SEED_CHUNK`` patched small: a ragged last chunk, chunks smaller than the class count so a
class is empty in some chunks, and one chunk for the whole row), several rounds (ROUNDS 1 and
2 through ``SEED_TILE``, in both launches) on up to 8 pages a class, exact ties (within a
chunk and across chunk boundaries) and float64 values that differ but round to the same
float32 (the seed compares as float32, ties to the lower page), classes with no coded page,
and rows with no coded page at all. Oracle: ``class_seed`` (sets of pages per row, each
listed once, −1 padded, and the count). page_max and ε carry float64 parts below float32's
resolution, so page_max − ε must be rounded to float32 once, after the difference (rounding
each term first changes some near-ties: caught in about 2 runs of 3). The chunk scratch is
poisoned with the largest packed value (page P − 1 beating every bound): a chunk entry left
unwritten cannot pass.
"""

import pytest
import torch

from helpers import fresh_seed

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import triton.language as tl  # noqa: E402

import entmaxkv.kernels.code_scan as code_scan  # noqa: E402
from entmaxkv.exact_codes import class_seed  # noqa: E402
from naive import naive_threshold  # noqa: E402

B, HKV, P, S, D = 4, 2, 23, 2, 4


def crafted_bounds(seed: int, b: int, hkv: int, g: int, p: int, s: int, work: torch.dtype):
    """page_max, ε [B, Hkv, G, P] and seq_lens [B] as pass 1 leaves them (−inf / 0 past the
    coded pages), with values drawn from a few levels so that ties are common, and in float64
    nudges below float32's resolution (distinct in float64, equal as float32)."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.tensor([1, 2 + s, p * s + 1, int(torch.randint(2, p * s + 2, (1,), generator=gen))][:b])
    coded = (lens - 1).clamp(min=0) // s  # [B]
    level = torch.randint(0, 3, (b, hkv, g, p), generator=gen).double()
    page_max = level + 0.5
    if work == torch.float64:  # below float32's rounding of ~0.5..2.5: equal as float32
        page_max = page_max + torch.randint(0, 8, (b, hkv, g, p), generator=gen).double() * 2.0 ** -26
    eps = torch.where(torch.rand((b, hkv, g, p), generator=gen) < 0.5, 0.25, 0.0).double()
    if work == torch.float64:  # ε off float32's grid: page_max − ε must be rounded once, not each term
        eps = eps + torch.randint(0, 8, (b, hkv, g, p), generator=gen).double() * 2.0 ** -26
    return dead_past_coded(page_max, eps, coded, work) + (lens, coded)


def dead_past_coded(page_max, eps, coded, work):
    """−inf / 0 on pages at or past ``coded`` [B], as pass 1 writes them."""
    dead = torch.arange(page_max.shape[-1])[None, None, None, :] >= coded[:, None, None, None]
    page_max = torch.where(dead, float("-inf"), page_max).to(work)
    eps = torch.where(dead, 0.0, eps).to(work)
    return page_max.contiguous(), eps.contiguous()


@pytest.fixture
def poison_scratch(monkeypatch):
    """torch.empty hands out the largest packed seed value (int64: the key of a NaN-like bound
    at page P − 1, above every real entry), −7 (int32) and NaN (floats)."""
    empty = torch.empty
    top = ((2 ** 32 - 1) << 31) | 1

    def poisoned(*args, **kwargs):
        t = empty(*args, **kwargs)
        if t.dtype == torch.int64:
            return t.fill_(top)
        return t.fill_(float("nan") if t.dtype.is_floating_point else -7)

    monkeypatch.setattr(torch, "empty", poisoned)


def run_seed(monkeypatch, page_max, eps, lens, group, slots, chunk, rounds, seed, alpha=0.0):
    """``code_scan._seed`` with SEED_CHUNK = chunk and SEED_TILE giving ROUNDS = rounds ->
    (pages, count, mag, tau) (tau [0] unless alpha > 1)."""
    work = page_max.dtype
    gp, kp = 1 << (group - 1).bit_length(), 1 << (slots - 1).bit_length()
    monkeypatch.setattr(code_scan, "SEED_CHUNK", chunk)
    monkeypatch.setattr(code_scan, "SEED_TILE", gp * kp * rounds)
    gen = torch.Generator().manual_seed(seed + 1)
    b, hkv = page_max.shape[:2]
    q = torch.randn(b, hkv * group, D, generator=gen, dtype=work)
    k_min = -torch.rand(b, hkv, P, D, generator=gen, dtype=work)
    k_max = torch.rand(b, hkv, P, D, generator=gen, dtype=work)
    scale_t = torch.full((1,), 0.5, dtype=torch.float64)
    return code_scan._seed(q, k_min, k_max, lens, scale_t, page_max, eps, 0.5, slots, S, D,
                           tl.float64 if work == torch.float64 else tl.float32, alpha=alpha)


def assert_seed_is_class_seed(pages, count, page_max, eps, slots, info):
    want = class_seed(page_max - eps, slots)
    for i in range(page_max.shape[0]):
        for j in range(page_max.shape[1]):
            n = int(count[i, j])
            listed = pages[i, j, :n].tolist()
            expect = set(x for x in want[i, j].tolist() if x >= 0)
            assert len(listed) == len(set(listed)), (info, i, j, listed)
            assert set(listed) == expect, (info, i, j, sorted(listed), sorted(expect))
            assert bool((pages[i, j, n:] == -1).all()), (info, i, j)


# (work dtype, G, K, SEED_CHUNK): chunks of 5 and 7 pages (23 pages: 5 and 4 chunks, the last
# ragged) and 3 (8 chunks, fewer pages than classes: some classes empty in each chunk), and the
# default (one chunk a row)
CASES = [(torch.float64, 2, 3, 5), (torch.float32, 3, 4, 7), (torch.float64, 1, 1, 4), (torch.float32, 2, 8, 3),
         (torch.float32, 3, 4, 512)]


@pytest.mark.parametrize("rounds", [1, 2])
@pytest.mark.parametrize("work,group,slots,chunk", CASES)
def test_seed_equals_class_seed_on_ties_many_chunks_and_rounds(work, group, slots, chunk, rounds, monkeypatch,
                                                               poison_scratch):
    seed = fresh_seed()
    for trial in range(4):  # fresh draws: float32 near-ties decide a class only now and then
        s = seed + 7 * trial
        page_max, eps, lens, coded = crafted_bounds(s, B, HKV, group, P, S, work)
        alpha = (1.5, 2.0, 1.25)[trial % 3]  # the seed's τ (no newest page) on the same inputs
        pages, count, _, tau = run_seed(monkeypatch, page_max, eps, lens, group, slots, chunk, rounds, s, alpha)
        assert_seed_is_class_seed(pages, count, page_max, eps, slots, (s, coded.tolist()))
        # τ of each head's own class seed's lower bounds: the oracle's root, at most 2^−29 below
        own = class_seed(page_max - eps, slots).reshape(*page_max.shape[:3], slots)
        z = (alpha - 1) * torch.where(own >= 0, (page_max - eps).gather(-1, own.clamp_min(0)), float("-inf")).double()
        want = naive_threshold(z, 1 / (alpha - 1))
        rows = own.amax(-1) >= 0  # a head with no coded page has no value: τ = −inf
        assert bool(torch.isneginf(tau[~rows]).all()), s
        gap = (want - tau)[rows]
        assert bool(((gap >= -1e-12 * (1 + want[rows].abs())) & (gap <= 2.0**-29)).all()), (s, gap)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_seed_tau_is_a_lower_bound_after_any_number_of_rounds(alpha, monkeypatch, poison_scratch):
    """The exact support search of the seed's τ (α = 1.5 and 2) stops at a lower bound whatever
    its round count: with 1 or 2 rounds (``SEED_TAU_ROUNDS`` patched) many heads are not
    settled and keep their last Newton point — never above the root (a head that returned its
    last support formula instead could sit above it) and never below the floor z_max − 1; with
    the default rounds every head reaches the root (within float64 rounding)."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    group, slots = 3, 8
    lens = torch.full((B,), P * S + 1)  # every page coded: a class's value is its best page's
    page_max = torch.rand(B, HKV, group, P, generator=gen, dtype=torch.float64) * 2.0
    eps = torch.rand(B, HKV, group, P, generator=gen, dtype=torch.float64) * 0.1
    own = class_seed(page_max - eps, slots).reshape(B, HKV, group, slots)
    z = (alpha - 1) * (page_max - eps).gather(-1, own)
    want = naive_threshold(z, 1 / (alpha - 1))
    unsettled, default = 0, code_scan.SEED_TAU_ROUNDS
    for rounds in (1, 2, default):
        monkeypatch.setattr(code_scan, "SEED_TAU_ROUNDS", rounds)
        tau = run_seed(monkeypatch, page_max, eps, lens, group, slots, 512, 1, seed, alpha)[3]
        assert bool((tau <= want + 1e-12 * (1 + want.abs())).all()), (seed, rounds, (tau - want).max())
        assert bool((tau >= z.amax(-1) - 1).all()), (seed, rounds)
        if rounds < default:
            unsettled += int((tau < want - 1e-9).sum())
        else:
            assert bool(((want - tau).abs() <= 1e-12 * (1 + want.abs())).all()), (seed, (want - tau).abs().max())
    assert unsettled > 0, seed  # the few-round runs did leave heads short of the root


@pytest.mark.parametrize("work,group,slots,chunk", CASES[:4])
def test_seed_ties_across_chunks_go_to_the_lower_page_and_the_last_chunk_counts(work, group, slots, chunk,
                                                                                monkeypatch, poison_scratch):
    """Deterministic rows: (0) every page ties (float32-equal bounds): each class's lowest page;
    (1) each class's best bound sits twice, in the row's last coded chunk (the ragged one) and
    in a later class row of an earlier chunk where there is one: the earlier page; (2) each
    class's strict best in the last coded chunk only: that page."""
    seed = fresh_seed()
    b, hkv, g = 3, HKV, group
    coded = torch.tensor([P, P - 1, P - 2])
    base = torch.rand(b, hkv, g, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    page_max = torch.full((b, hkv, g, P), 1.0, dtype=torch.float64)
    if work == torch.float64:
        page_max[0] += torch.randint(0, 4, (hkv, g, P)).double() * 2.0 ** -30  # equal as float32
    page_max[1:] = base[1:]  # in [0, 1): below the planted bests
    last_lo = (coded - 1) // chunk * chunk  # first page of each row's last coded chunk
    for r in range(slots):
        # row 1: the best twice, in the last chunk and in an earlier chunk of the same class
        late = [x for x in range(int(last_lo[1]), int(coded[1])) if x % slots == r]
        early = [x for x in range(r, int(last_lo[1]), slots) if x // chunk != late[0] // chunk] if late else []
        if late and early:
            page_max[1, :, :, late[0]] = 2.0
            page_max[1, :, :, early[-1]] = 2.0
        # row 2: the strict best in the last chunk
        late = [x for x in range(int(last_lo[2]), int(coded[2])) if x % slots == r]
        if late:
            page_max[2, :, :, late[-1]] = 3.0
    eps = torch.zeros_like(page_max)
    page_max, eps = dead_past_coded(page_max, eps, coded, work)
    lens = coded * S + 1
    for rounds in (1, 2):
        pages, count, _, _ = run_seed(monkeypatch, page_max, eps, lens, group, slots, chunk, rounds, seed)
        assert_seed_is_class_seed(pages, count, page_max, eps, slots, (seed, rounds))
        listed = [set(pages[i, 0, :int(count[i, 0])].tolist()) for i in range(b)]
        assert listed[0] == set(range(min(slots, P))), (seed, listed[0])  # ties: the lowest page of each class
        assert max(listed[2]) >= int(last_lo[2]), (seed, listed[2])  # the last chunk's pages won
