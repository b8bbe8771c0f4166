"""Edge cases of the selection ops (under Triton's interpreter): cases the op tests did not
reach, each found by a mutation of the kernel that the existing tests let through.

- ``quest_select`` reads its rank keys from a scratch row that only pages < n are written to.
  ``poison`` fills fresh memory with NaN, and a NaN key is exactly as ineligible as −inf, so a
  read of an unwritten key (a load masked with ``< P`` instead of ``< n``) passed. Here fresh
  float memory holds +inf (a forced page): such a read keeps pages that are not candidates.
- Query groups that are not a power of two (G = 3: SmolLM2's 9 query and 3 KV heads) pad the
  head axis (G_PAD = 4) in every kernel; the op tests drew groups 1, 2 and 4 only.
- ``quest_select``'s list launch (session 7 review). Mutations the op tests let through, or
  caught only by a heap-corruption abort: −1 padding up to P instead of M, the per-chunk count
  store or the mask store without its bound (a row's stray writes land in the next row's
  slots and are overwritten there under the interpreter; only the last row's show, in the
  guards here); counting −inf keys among those above the threshold (seen only when a count
  takes every eligible page and −inf keys precede eligible ones). ``list_capacity`` and the
  fake were pinned by two hand-picked values and one opcheck case.
"""

import dataclasses
import math
import random

import pytest
import torch

import entmaxkv as ekv
from helpers import fresh_seed, kernel_launches, make_cache, on_both_backends, random_step

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import test_gaussian_select  # noqa: E402
import test_quest_select  # noqa: E402
from entmaxkv.kernels.quest_select import list_capacity, quest_select  # noqa: E402
from test_quest_select import S  # noqa: E402


@pytest.fixture
def poison_inf(monkeypatch):
    """``poison`` with +inf instead of NaN in fresh float memory (ints −7, bools True): an
    unwritten key then reads as a forced page, not as an ineligible one."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("inf") if t.dtype.is_floating_point else (True if t.dtype == torch.bool else -7))

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))


@pytest.mark.parametrize("wide, group, layout", [(False, 2, "registers"), (True, 3, "registers"),
                                                 (False, 3, "streamed"), (True, 1, "streamed")])
def test_quest_select_never_reads_keys_past_the_candidates(wide, group, layout, poison_inf, monkeypatch):
    """The random page-score test (ties, NaN off the candidates, every layout) with fresh
    memory at +inf: the selection must read no key the keys kernel did not write."""
    test_quest_select.test_quest_select_on_random_page_scores_with_ties(wide, group, layout, None, monkeypatch)


@pytest.mark.parametrize("dtype, layout", [(torch.float32, "registers"), (torch.float64, "chunked")])
def test_quest_select_with_a_group_of_three(dtype, layout, poison, monkeypatch):
    """``quest_select`` on a real cache (ragged lengths, ties, ALiBi) with 3 query heads per
    KV head: the padded fourth head must not enter L_h, the keys or the score floor."""
    test_quest_select.test_quest_select_equals_the_torch_composition(dtype, 3, layout, None, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_page_bounds_newest_scores_with_a_group_of_three(dtype, poison):
    test_quest_select.test_page_bounds_newest_page_quantities_equal_the_torch_ones(dtype, 3, None)


@pytest.mark.parametrize("dtype, chunk", [(torch.float32, 4), (torch.float64, 1024)])
def test_gaussian_select_with_a_group_of_three(dtype, chunk, poison_inf, monkeypatch):
    test_gaussian_select.test_gaussian_select_equals_the_torch_rule(3, dtype, chunk, None, monkeypatch)


def test_decode_step_with_a_group_of_three_equals_the_reference():
    """Gaussian (its ``gaussian_select`` and, for τ modes other than exact, the newest page's
    slot scores from ``page_bounds``) and TopK steps with Hq/Hkv = 9/3, on both backends."""
    seed = fresh_seed()
    lens = [16 * 5 + 1, 16 * 3 + 16, 16 + 7]  # newest page just started, exactly full, one candidate
    cache, _, _ = make_cache(seed, 3, 3, 16, 16, lens, dtype=torch.float64, spread=2.0)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 3, 9, 3, 16)
    slopes = torch.linspace(0.0, 0.2, 9, dtype=torch.float64)
    for sel in (ekv.Gaussian(), ekv.Gaussian(tau_mode="fixed", recent_pages=1),
                ekv.TopK(coverage=0.3, recent_pages=1)):
        for alibi in (None, slopes):
            (_, o1, i1), (_, o2, i2) = on_both_backends(cache, q, k, v, 1.5, sel, alibi)
            msg = f"{sel} alibi {alibi is not None} seed {seed}"
            assert torch.equal(i1.page_mask, i2.page_mask), msg
            torch.testing.assert_close(o2, o1, rtol=1e-9, atol=1e-9, msg=msg)
            torch.testing.assert_close(i2.tau, i1.tau, rtol=1e-9, atol=1e-9, msg=msg)


def test_selector_counts_reach_the_kernels_as_32_bit_ints():
    """Inductor (torch 2.11, seen on the H200) sizes a triton_op kernel's int arguments to 32
    bits and fails on a 64-bit one, so selector counts beyond 2^31 − 1 (valid: "all pages")
    must be clamped on the host. Records every plain int a decode step passes to a kernel; the
    selections still equal the reference's (Exact's counts go to ``select_pages`` as int32:
    2^32 wrapped to 0 there)."""
    seen = []

    def record_ints(kernel, bound):
        for name, value in bound.items():
            if isinstance(value, int) and not isinstance(value, bool) and not name.isupper():
                seen.append((kernel.fn.__name__, name, value))

    huge = 2 ** 40
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 1, 16, 16, [16 * 6 + 3, 40], dtype=torch.float32, spread=2.0)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 2, 1, 16, torch.float32)
    for sel in (ekv.TopK(token_budget=huge, sink_pages=huge, recent_pages=huge), ekv.TopK(coverage=0.25, sink_pages=huge),
                ekv.Gaussian(sink_pages=huge, recent_pages=huge),
                # counts that reach select_pages as an int32 tensor: 2^32 must not wrap to 0
                ekv.Exact(initial_pages=2 ** 32, rounds=0), ekv.Exact(initial_pages=1, max_pages=2 ** 32)):
        with kernel_launches(record_ints):
            masks = [info.page_mask for _, _, info in on_both_backends(cache, q, k, v, 1.5, sel)]
        assert torch.equal(*masks), f"{sel} seed {seed}"
    assert seen, "no kernel launch recorded"
    wide = sorted({(fn, name) for fn, name, value in seen if not -2 ** 31 <= value < 2 ** 31})
    assert not wide, wide


def test_compiled_gaussian_step_through_the_ops_equals_eager():
    """A compiled Gaussian step on the kernels (G = 3) equals eager: the other compile tests
    on the kernels take TopK only. (The fakes' shapes and dtypes are the opchecks' job: with
    the ops opaque, aot_eager runs the real ones, and a wrong fake passed here.)"""
    cache, _, _ = make_cache(5, 2, 1, 16, 16, [16 * 4 + 3, 33], dtype=torch.float32, spread=2.0)
    q, k, v = random_step(torch.Generator().manual_seed(5), 2, 3, 1, 16, torch.float32)
    config = ekv.DecodeConfig(1.5, ekv.Gaussian(tau_mode="fixed", recent_pages=1), backend="triton")
    want_cache, want = ekv.decode_step(cache.fork(), q, k, v, config)
    step = torch.compile(ekv.decode_step, fullgraph=True, backend="aot_eager")
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        got_cache, got = step(cache.fork().without_host_len(), q, k, v, config)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(got_cache.seq_lens, want_cache.seq_lens)



def test_compiled_gaussian_step_recompiled_for_other_configs_and_page_sizes():
    """One compiled ``decode_step`` (one code object) given Gaussian configs that differ in
    their quantiles and caches that differ in page size: the recompiles trace those numbers as
    symbols (automatic dynamic), where z = Φ⁻¹(q^(1/S)) cannot be a host constant; the op
    computes it from the numbers it receives, the reference's clamp on the device. Every call
    equals eager, on the kernels and on the reference."""
    step = torch.compile(ekv.decode_step, fullgraph=True, backend="aot_eager")
    q, k, v = random_step(torch.Generator().manual_seed(6), 2, 4, 2, 16, torch.float32)
    for page_size, quantile, clamp, backend in ((16, 0.995, 0.5, "triton"), (8, 0.9, 0.7, "triton"),
                                                (16, 0.5, 0.9, "triton"), (8, 0.99, 0.6, "torch"),
                                                (16, 0.8, 0.3, "torch")):
        cache, _, _ = make_cache(7, 2, 2, 16, page_size, [16 * 4 + 3, 33], dtype=torch.float32, spread=2.0)
        selector = ekv.Gaussian(tau_mode="fixed", max_quantile=quantile, tau_clamp_page_max_quantile=clamp)
        config = ekv.DecodeConfig(1.5, selector, backend=backend)
        _, want = ekv.decode_step(cache.fork(), q, k, v, config)
        with torch._functorch.config.patch(decompose_custom_triton_ops=False):
            _, got = step(cache.fork().without_host_len(), q, k, v, config)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"S {page_size} q {quantile} {backend}")

# --- quest_select's list launch: chunk prefixes, ties across chunks, the list's length -------

GUARD = 64  # elements of poisoned memory before and after every buffer the op allocates


def guarded_empty(monkeypatch):
    """torch.empty hands out views into larger buffers poisoned like ``poison`` (NaN, −7,
    True), with ``GUARD`` spare elements on both sides -> the list of (buffer, size) made.
    Under the interpreter a row's stray write past its slots lands in the next row's and is
    overwritten when that row's program runs (programs run in order): only the last row's
    writes past the end of an output show, here, in its guard."""
    empty = torch.empty
    made = []

    def alloc(*size, dtype=None, device=None, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)
        numel = math.prod(shape)
        big = empty(numel + 2 * GUARD, dtype=dtype, device=device)
        big.fill_(float("nan") if big.dtype.is_floating_point else (True if big.dtype == torch.bool else -7))
        made.append((big, numel))
        return big[GUARD:GUARD + numel].view(shape)

    monkeypatch.setattr(torch, "empty", alloc)
    return made


def untouched(big: torch.Tensor, numel: int) -> bool:
    """Whether both guards of a ``guarded_empty`` buffer still hold the poison."""
    guard = torch.cat([big[:GUARD], big[GUARD + numel:]])
    if guard.dtype.is_floating_point:
        return bool(guard.isnan().all())
    return bool((guard == (True if guard.dtype == torch.bool else -7)).all())


def tie_rows(seed: int, group: int, p: int, lens: list[int], dtype):
    """Page scores whose rank keys are exactly ``upper`` (α = 2: lin = 1; every mean and the
    newest page's best score 0, so L_h = 0): keys from {0, 1, 2} in runs, so that ties sit
    on both sides of every chunk boundary, and runs of −inf (not eligible, before eligible
    pages: a count that takes every eligible page must not count them); one head carries the
    key, the others lie below it."""
    g = random.Random(seed)
    b = len(lens)
    upper = torch.zeros(b, 1, group, p, dtype=dtype)
    for r in range(b):
        page = 0
        while page < p:
            run = g.choice([1, 3, 4, 5, 9])
            upper[r, 0, 0, page:page + run] = g.choice([0.0, 1.0, 1.0, 2.0, float("-inf")])
            page += run
    upper[:, :, 1:] = upper[:, :, :1] - torch.rand(b, 1, group - 1, p, generator=torch.Generator().manual_seed(seed),
                                                    dtype=dtype)
    means = torch.zeros_like(upper)
    absmax = torch.ones_like(upper)
    newest_max = torch.zeros(b, 1, group, dtype=dtype)
    return upper, means, absmax, newest_max, newest_max + 1


@pytest.mark.parametrize("layout", ["chunked", "streamed"])
def test_quest_select_ties_across_list_chunks(layout, poison, monkeypatch):
    """Rows of 0, 1, 3, 4, 5, 8, 9, 16, 17 and 36 candidates of P = 37 pages (list chunks of
    4 pages, the last one ragged and chunks wholly past n; streamed: search blocks of 8, P a
    multiple of neither), keys in tied runs, and counts that cut the ties before, at and past
    a chunk boundary (the carried tie count, the min with ties_wanted, the chunk prefixes),
    against the torch composition; G = 3 (G_PAD = 4). Every list slot < M is a page or −1,
    and nothing is written outside the outputs (guards)."""
    test_quest_select.small_blocks(monkeypatch, layout)
    seed = fresh_seed()
    p = 37
    lens = [1, 1 * S + 1, 3 * S + 2, 4 * S + 1, 5 * S + S, 8 * S + 1, 9 * S + 3, 16 * S + 1, 17 * S + 2, p * S]
    cache = ekv.PagedKVCache.empty(batch=len(lens), num_kv_heads=1, head_dim=16, capacity=p * S, page_size=S,
                                   dtype=torch.float64)
    cache = dataclasses.replace(cache, seq_lens=torch.tensor(lens))
    upper, means, absmax, newest_max, newest_mag = tie_rows(seed, 3, p, lens, torch.float64)
    q = torch.zeros(len(lens), 3, 1, 16, dtype=torch.float64)
    for budget, coverage, sink, recent in ((None, 0.3, 0, 0), (3, None, 0, 0), (4, None, 1, 0), (5, None, 0, 2),
                                           (7, None, 0, 0), (None, 0.56, 2, 1), (100, None, 0, 0), (0, None, 0, 0)):
        msg = f"seed {seed} budget {budget} coverage {coverage} sink {sink} recent {recent}"
        want_mask, want_floor = test_quest_select.torch_selection(cache, q, 2.0, None, upper, means, absmax,
                                                                  newest_max, newest_mag, budget, coverage, sink,
                                                                  recent)
        with monkeypatch.context() as mp:
            made = guarded_empty(mp)
            pages, count, mask, floor, magnitude = quest_select(
                upper, means, absmax, newest_max, newest_mag, cache.seq_lens, None, S, 16, 2.0,
                -1 if budget is None else budget, 0.0 if coverage is None else coverage, sink, recent)
        assert all(untouched(big, numel) for big, numel in made), msg
        m = list_capacity(p, -1 if budget is None else budget, 0.0 if coverage is None else coverage, sink, recent)
        assert pages.shape == (len(lens), 1, m), msg
        assert torch.equal(mask, want_mask), msg
        assert torch.equal(count, mask.sum(-1).to(torch.int32)), msg
        assert torch.equal(floor, want_floor), msg
        assert torch.equal(magnitude, test_quest_select.selected_magnitude(mask, absmax)), msg
        for row, n, keep in zip(pages.flatten(0, 1), count.flatten(), mask.flatten(0, 1)):
            assert row[: int(n)].tolist() == keep.nonzero().flatten().tolist(), msg
            assert bool((row[int(n):] == -1).all()), msg


def test_list_capacity_bounds_every_count():
    """``list_capacity(P, …)`` >= the pages kept of every row of n < P candidates: the count
    TopK computes (ceil(n·coverage − 1e-9) in float64, or the budget), raised to the forced
    pages (sink and recent, clamped to n), capped by the n candidates — for coverages whose
    products round up or down (0.56, 0.07, 0.29, 1/3, 0.1 …), budgets past P, sink + recent
    past P. (A capacity one short drops a page from the list while the mask keeps it.)"""
    rnd = random.Random(fresh_seed())
    coverages = [0.56, 0.07, 0.29, 1 / 3, 0.1, 0.125, 0.7, 0.9999999999, 1e-12, 1.0] + [rnd.random() for _ in range(20)]
    for p in list(range(1, 70)) + [516, 1025, 8196]:
        for coverage in coverages:
            for sink, recent in ((0, 0), (1, 2), (p, 0), (p, p), (3, p + 5)):
                m = list_capacity(p, -1, coverage, sink, recent)
                assert 1 <= m <= p
                for n in range(p):  # every candidate count of a P-page row
                    count = math.ceil(n * coverage - 1e-9)
                    forced = min(min(sink, n) + min(recent, n), n)
                    assert min(max(count, forced), n) <= m, (p, coverage, sink, recent, n)
            for budget in (0, 1, p - 1, p, p + 1, 10 * p):
                m = list_capacity(p, budget, 0.0, 0, 2)
                assert m == max(1, min(p, max(budget, 2))), (p, budget)
    # the bound is the largest count on some row: the capacity is no longer than it must be
    assert list_capacity(516, -1, 0.125, 0, 0) == max(math.ceil(n * 0.125 - 1e-9) for n in range(516))


@pytest.mark.parametrize("budget, coverage, sink, recent", [(-1, 0.125, 1, 2), (-1, 1.0, 0, 0), (3, 0.0, 0, 0),
                                                           (100, 0.0, 5, 5), (0, 0.0, 0, 0)])
def test_quest_select_fake_has_the_real_shapes(budget, coverage, sink, recent):
    """The fake (torch.compile's view of the op) sizes the list by ``list_capacity`` as the
    real op does, for counts, budgets past P and forced pages (opcheck tries one case)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    b, hkv, g, p = 2, 1, 2, 21
    lens = torch.tensor([p * S, 7 * S + 1])
    x = torch.randn(b, hkv, g, p)
    args = (x, x - 1, x.abs() + 1, x[..., 0], x[..., 0].abs() + 1, lens, None, S, 16, 1.5, budget, coverage, sink,
            recent)
    real = quest_select(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = torch.ops.entmaxkv.quest_select(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                  for a in args))
    assert [tuple(t.shape) for t in fake] == [tuple(t.shape) for t in real]
    assert [t.dtype for t in fake] == [t.dtype for t in real]
