"""Edge cases of the selection ops (under Triton's interpreter): cases the op tests did not
reach, each found by a mutation of the kernel that the existing tests let through.

- ``quest_select`` reads its rank keys from a scratch row that only pages < n are written to.
  ``poison`` fills fresh memory with NaN, and a NaN key is exactly as ineligible as −inf, so a
  read of an unwritten key (a load masked with ``< P`` instead of ``< n``) passed. Here fresh
  float memory holds +inf (a forced page): such a read keeps pages that are not candidates.
- Query groups that are not a power of two (G = 3: SmolLM2's 9 query and 3 KV heads) pad the
  head axis (G_PAD = 4) in every kernel; the op tests drew groups 1, 2 and 4 only.
"""

import pytest
import torch

import entmaxkv as ekv
from helpers import fresh_seed, make_cache, on_both_backends, random_step

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import test_gaussian_select  # noqa: E402
import test_quest_select  # noqa: E402


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


def test_selector_counts_reach_the_kernels_as_32_bit_ints(monkeypatch):
    """Inductor (torch 2.11, seen on the H200) sizes a triton_op kernel's int arguments to 32
    bits and fails on a 64-bit one, so selector counts beyond 2^31 − 1 (valid: "all pages")
    must be clamped on the host. Records every plain int a decode step passes to a kernel; the
    selections still equal the reference's (Exact's counts go to ``select_pages`` as int32:
    2^32 wrapped to 0 there)."""
    from triton.runtime.interpreter import InterpretedFunction

    seen = []
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        for name, value in dict(zip(self.arg_names, args), **kwargs).items():
            if isinstance(value, int) and not isinstance(value, bool) and not name.isupper():
                seen.append((self.fn.__name__, name, value))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    huge = 2 ** 40
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 1, 16, 16, [16 * 6 + 3, 40], dtype=torch.float32, spread=2.0)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 2, 1, 16, torch.float32)
    for sel in (ekv.TopK(token_budget=huge, sink_pages=huge, recent_pages=huge), ekv.TopK(coverage=0.25, sink_pages=huge),
                ekv.Gaussian(sink_pages=huge, recent_pages=huge),
                # counts that reach select_pages as an int32 tensor: 2^32 must not wrap to 0
                ekv.Exact(initial_pages=2 ** 32, rounds=0), ekv.Exact(initial_pages=1, max_pages=2 ** 32)):
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
