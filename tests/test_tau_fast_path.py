"""``sparse_decode`` (TAU_EXACT, α = 1.5 and 2) takes the exact search from below, not the
bisection behind it.

The op's other tests compare outputs with the reference, which the bisection fallback passes
too: they would not notice the fast path never being taken (the op launched with
EXACT_ITERS = 0, ``found`` ignored, the search skipped). Here the bisection is given no
steps (``bisection_steps`` patched to 0): its τ is then the midpoint of [zmax − 1, zmax − ε]
followed by one exact-formula pass, wrong on most rows, so the outputs match the reference
only if every row's τ came from ``_exact_from_below``. Fresh float64 scores (no exact ties,
which may legitimately stall the search), ragged lengths, GQA, scores in registers and
streamed (one row with more survivors than BLOCK_REGS).

The fallback itself (bisection, then the exact formula over the support it found, summed with
the search's ``_shifted_sums``) is checked the other way round: no search rounds, a bisection
too short to reach 1e-12 alone.
"""

import random

import pytest
import torch

import entmaxkv as ekv
from helpers import fresh_seed, make_cache

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import entmaxkv.kernels.sparse_decode as sd  # noqa: E402


def case(alpha):
    """Fresh float64 scores over two ragged rows (one with more survivors than BLOCK_REGS), the
    page lists of all their full pages, and the dense reference's (out, τ)."""
    seed = fresh_seed()
    rng = random.Random(seed)
    lens = [300 + rng.randrange(17), 17 + rng.randrange(40)]  # 300+: more survivors than BLOCK_REGS
    cache, _, _ = make_cache(seed, 2, 1, 16, 16, lens, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, 1, 16, generator=g, dtype=torch.float64) * (0.05 if alpha == 2.0 else 0.2)
    newest = (cache.seq_lens - 1) // 16
    pages = torch.full((2, 1, cache.num_pages), -1, dtype=torch.int32)
    for i in range(2):
        pages[i, 0, : int(newest[i])] = torch.arange(int(newest[i]), dtype=torch.int32)
    count = newest.int()[:, None].contiguous()
    return seed, cache, q, pages, count, ekv.dense_decode(cache, q, alpha, 0.3)


def assert_equals_the_reference(alpha, seed, cache, q, pages, count, want, want_tau):
    for dense in (False, True):
        out, tau = sd.sparse_decode(q[:, :, 0].contiguous(), cache.k_pages, cache.v_pages, None, pages, count,
                                    cache.seq_lens, None, None, None, None, alpha, 0.3, dense, sd.TAU_EXACT, 0)
        err = float((out - want[:, :, 0]).abs().max() / want.abs().max())
        assert err < 1e-10, (seed, dense, err)
        torch.testing.assert_close(tau, want_tau.reshape(2, 2), rtol=1e-12, atol=1e-12, msg=f"seed {seed}")


@pytest.mark.parametrize("small_regs", [1, 64])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_exact_tau_needs_no_bisection(alpha, small_regs, monkeypatch):
    """Every register form of the solve: the short row (at most 57 survivors) in the small
    block (``SMALL_REGS`` = 64) or in the ``BLOCK_REGS`` one (``SMALL_REGS`` = 1), the long row
    streamed."""
    seed, cache, q, pages, count, (want, want_tau) = case(alpha)
    monkeypatch.setattr(sd, "bisection_steps", lambda work: 0)
    monkeypatch.setattr(sd, "SMALL_REGS", small_regs)
    assert_equals_the_reference(alpha, seed, cache, q, pages, count, want, want_tau)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_the_bisection_fallback_finishes_with_the_exact_tau(alpha, monkeypatch):
    """The other way round: the search given no rounds (``EXACT_ITERS`` = 0, as when it
    stalls), so every row takes the bisection and its exact finish (the support above the
    bisection's τ, then the exact formula over it). With 30 steps the bracket is ~1e-9 wide:
    the support is right (no fresh score sits that close to τ) but the midpoint alone misses
    the reference's τ by far more than the 1e-12 asked; only the finish reaches it."""
    seed, cache, q, pages, count, (want, want_tau) = case(alpha)
    monkeypatch.setattr(sd, "EXACT_ITERS", 0)
    monkeypatch.setattr(sd, "bisection_steps", lambda work: 30)
    assert_equals_the_reference(alpha, seed, cache, q, pages, count, want, want_tau)


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_survivors_just_above_the_floor_keep_their_weight(alpha):
    """One token per query head dominates: a few others score just above the floor
    (α − 1)·max s − 1 (by δ < 1e-3 in z = (α − 1)·s), so τ sits within δ of the floor and they
    carry small non-zero weights. Every filter on the way (the scores kernel's, its re-filter,
    the τ kernel's gather) must keep them: a floor off by 1e-3 drops them and moves the output
    by ~δ, far beyond the 1e-10 asked; ragged lengths, the rest of the tokens far below."""
    seed, cache, q, pages, count, _ = case(alpha)
    g = torch.Generator().manual_seed(seed + 3)
    lin = alpha - 1.0
    q = torch.zeros_like(q)
    q[..., 0] = 1.0 / 0.3  # the score of a token is its key's channel 0 (scale 0.3)
    k0 = torch.full(cache.k_pages.shape[:-1], -40.0, dtype=torch.float64)  # [B, 1, P, S]: far below
    for i in range(2):
        n = int(cache.seq_lens[i])
        slots = torch.randperm(n, generator=g)[:7]
        top = 3.0 + float(torch.rand((), generator=g, dtype=torch.float64))
        delta = torch.rand(6, generator=g, dtype=torch.float64) * 1e-3
        k0.view(2, 1, -1)[i, 0, slots[0]] = top
        k0.view(2, 1, -1)[i, 0, slots[1:]] = top - (1.0 - delta) / lin  # z just above the floor
    cache.k_pages[..., 0] = k0
    want, want_tau = ekv.dense_decode(cache, q, alpha, 0.3)
    assert_equals_the_reference(alpha, seed, cache, q, pages, count, want, want_tau)
