"""The ``gaussian_select`` op (under Triton's interpreter) against ``gaussian.gaussian_keep``,
the torch rule it replaces on the kernel path, and its score floor against
``KernelOps.score_floor``'s composition. Page scores are drawn directly; entries of pages that
are not candidates are NaN (the op must not read them); rows hold no candidate, one, or many,
over one chunk or several."""

import math
import random

import pytest
import torch

from entmaxkv.gaussian import gaussian_keep, page_max_quantile
from entmaxkv.newest_page import candidate_page_mask
from entmaxkv.topk import forced_page_mask
from helpers import fresh_seed, kept_pages_floor, kernel_step_after_append, lengths_only_cache

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels.gaussian_select import gaussian_select  # noqa: E402
from entmaxkv.kernels.page_scores import mean_slack  # noqa: E402

S = 8


def _case(seed: int, group: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    b, hkv, p = 4, 2, 37
    cache = lengths_only_cache(rnd, p, S, dtype, hkv)
    shape = (b, hkv, group, p)
    mu = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * 2
    sigma = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    upper = mu + 3 * sigma + torch.rand(shape, generator=g, dtype=torch.float64).to(dtype) * 4
    tau_hat = torch.randn(b, hkv, group, generator=g, dtype=torch.float64) + 1.0
    # the floor's inputs: page mean scores (other than μ: the op must read the right one),
    # their |score| scale, the newest page's floor (−inf: no token yet) and ALiBi slopes
    means = (mu + torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)).to(dtype)
    absmax = (means.abs() + torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)).to(dtype)
    newest = (torch.randn(b, hkv, group, generator=g, dtype=torch.float64) * 2).to(dtype)
    newest[1, 0] = float("-inf")
    slopes = torch.rand(hkv * group, generator=g, dtype=torch.float64).to(dtype) * 0.1 - 0.05
    return cache, mu, sigma, upper, tau_hat, rnd, (means, absmax, newest, slopes)


def _select(cache, mu, sigma, upper, tau_hat, quantile, alpha, safety, excess, outlier, sink, recent, floor_inputs,
            alibi=False):
    """The op with the margins as ``Gaussian`` takes them (``outlier`` None: no outlier rule)."""
    means, absmax, newest, slopes = floor_inputs
    return gaussian_select(mu, sigma, upper, means, absmax, tau_hat, quantile, newest, cache.seq_lens,
                           slopes if alibi else None, S, alpha, safety, excess, 0.0 if outlier is None else outlier,
                           outlier is not None, sink, recent, mean_slack(mu.dtype, S, 16))


@pytest.mark.parametrize("chunk", [256, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_gaussian_select_equals_the_torch_rule(group, dtype, chunk, poison, monkeypatch):
    monkeypatch.setattr("entmaxkv.kernels.gaussian_select.CHUNK", chunk)  # 4: ten chunks a row
    seed = fresh_seed()
    cache, mu, sigma, upper, tau_hat, rnd, (means, absmax, newest, slopes) = _case(seed, group, dtype)
    candidates = candidate_page_mask(cache)
    off = ~candidates[:, :, None, :].expand_as(mu)
    mu, sigma, upper, means, absmax = (x.masked_fill(off, float("nan")) for x in (mu, sigma, upper, means, absmax))
    slack = mean_slack(dtype, S, 16)
    for _ in range(3):
        alpha = rnd.choice([1.5, 2.0, 4 / 3])
        quantile = rnd.choice([0.995, 0.5, 0.9, 1e-9])  # 1e-9: z < 0
        z = page_max_quantile(quantile, S)
        safety, excess = rnd.choice([0.0, 0.5]), rnd.choice([0.0, 0.1, 1.0])
        outlier = rnd.choice([None, 0.0, 1.0])
        sink, recent = rnd.choice([0, 1, 3]), rnd.choice([0, 2])
        alibi = rnd.choice([False, True])
        msg = (f"seed {seed} α {alpha} z {float(z)} margins {safety} {excess} {outlier} sink {sink} recent {recent} "
               f"ALiBi {alibi}")
        forced = forced_page_mask(cache, candidates, sink, recent)
        want, want_floor = gaussian_keep(candidates, forced, mu, sigma, upper, tau_hat, z, alpha, safety, excess,
                                         outlier)
        pages, count, mask, tau_floor, floor = _select(cache, mu, sigma, upper, tau_hat, quantile, alpha, safety,
                                                       excess, outlier, sink, recent, (means, absmax, newest, slopes),
                                                       alibi)
        # the means are summed in another order: τ_floor agrees to rounding, and a page decided
        # the other way must sit within rounding of its threshold (none has, so far)
        torch.testing.assert_close(tau_floor, want_floor, rtol=1e-12, atol=1e-12, msg=msg)
        assert torch.equal(mask, want), msg
        want_floor = kept_pages_floor(mask, means, absmax, newest, slopes if alibi else None, slack, S)
        assert torch.equal(floor, want_floor), msg
        assert torch.equal(count, mask.sum(-1).to(torch.int32)), msg
        for row, n, m in zip(pages.flatten(0, 1), count.flatten(), mask.flatten(0, 1)):
            assert row[: int(n)].tolist() == m.nonzero().flatten().tolist(), msg
            assert bool((row[int(n):] == -1).all()), msg
    assert not bool(mask[0].any()), "a row without candidates keeps nothing"


@pytest.mark.parametrize("quantile", [0.995, 0.5, 1e-9])
def test_gaussian_select_takes_the_references_z_bit_for_bit(quantile, poison):
    """A page whose model maximum c·(μ + z·σ) sits exactly on τ̂ (margins 0) is not kept, one a
    hair above it is: the op computes z from the quantile as the reference does, to the last
    bit (a z one ulp off flips the first page)."""
    cache, mu, sigma, upper, tau_hat, _, floor_inputs = _case(fresh_seed(), 1, torch.float64)
    alpha, c = 1.5, 0.5
    z = page_max_quantile(quantile, S)
    mu, sigma = torch.full_like(mu, -50.0), torch.full_like(sigma, 1.0)
    mu[..., 0], mu[..., 1] = 0.0, math.ulp(abs(z)) * 4  # page 0 on the threshold, page 1 above it
    tau_hat = torch.full_like(tau_hat, c * z)  # c·(0 + z·1), exactly: c is a power of two
    candidates = candidate_page_mask(cache)
    forced = forced_page_mask(cache, candidates, 0, 0)
    want, _ = gaussian_keep(candidates, forced, mu, sigma, upper, tau_hat, z, alpha, 0.0, 0.0, None)
    _, _, mask, _, _ = _select(cache, mu, sigma, upper, tau_hat, quantile, alpha, 0.0, 0.0, None, 0, 0, floor_inputs)
    assert torch.equal(mask, want)
    held = candidates[:, 0, 1]  # rows whose page 1 is a candidate keep it, and never page 0
    assert bool(held.any()) and torch.equal(mask[:, :, 1], held[:, None].expand_as(mask[:, :, 1]))
    assert not bool(mask[:, :, 0].any())


def test_gaussian_step_with_a_quantile_next_to_one():
    """max_quantile = 1 − 2^−53: q^(1/S) rounds to 1 and z is +inf (every page with σ > 0 kept);
    both backends run the step and agree."""
    import entmaxkv as ekv
    from helpers import make_cache, random_step

    cache, _, _ = make_cache(3, 2, 2, 16, S, [S * 6 + 3, 40], dtype=torch.float64)
    q, k, v = random_step(torch.Generator().manual_seed(3), 2, 4, 2, 16, torch.float64)
    sel = ekv.Gaussian(max_quantile=1 - 2.0 ** -53)
    _, want = ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, sel, backend="torch"))
    _, got = ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, sel, backend="triton"))
    assert bool(torch.isfinite(want).all())
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_gaussian_select_keeps_forced_pages_and_margins_matter(poison):
    """Hand-made rows: a huge τ̂ keeps only forced pages (and, with the outlier rule, pages
    whose bound reaches it); a τ̂ far below every page keeps every candidate."""
    cache, mu, sigma, upper, tau_hat, _, floor_inputs = _case(fresh_seed(), 2, torch.float64)
    candidates = candidate_page_mask(cache)
    high = torch.full_like(tau_hat, 1e6)
    _, _, mask, _, _ = _select(cache, mu, sigma, upper, high, 0.995, 1.5, 0.0, 0.0, None, 1, 2, floor_inputs)
    assert torch.equal(mask, forced_page_mask(cache, candidates, 1, 2).expand_as(mask))
    upper = upper.clone()
    upper[1, 0, 1, 0] = 3e6  # (α − 1)·U = 1.5e6 >= τ̂ + 1: the outlier rule keeps page 0 of row (1, 0)
    _, _, mask, _, floor = _select(cache, mu, sigma, upper, high, 0.995, 1.5, 0.0, 0.0, 1.0, 0, 0, floor_inputs)
    assert mask.nonzero().tolist() == [[1, 0, 0]]
    # no page kept elsewhere: the newest page's floor alone (−inf in row (1, 0) without it)
    means, absmax, newest, _ = floor_inputs
    assert torch.equal(floor[0], newest[0]) and torch.equal(floor[1, 1], newest[1, 1])
    assert torch.equal(floor[2:], newest[2:])
    assert torch.equal(floor[1, 0], means[1, 0, :, 0] - mean_slack(torch.float64, S, 16) * absmax[1, 0, :, 0])
    low = torch.full_like(tau_hat, -1e6)
    _, _, mask, _, _ = _select(cache, mu, sigma, upper, low, 0.995, 1.5, 0.0, 0.0, None, 0, 0, floor_inputs)
    assert torch.equal(mask, candidates.expand_as(mask))


def test_gaussian_select_opcheck():
    """Fake tensor, schema and dispatch checks of the op's registration."""
    cache, mu, sigma, upper, tau_hat, _, (means, absmax, newest, slopes) = _case(fresh_seed(), 2, torch.float32)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        for alibi in (None, slopes):
            torch.library.opcheck(torch.ops.entmaxkv.gaussian_select.default,
                                  (mu, sigma, upper, means, absmax, tau_hat, 0.995, newest, cache.seq_lens, alibi, S,
                                   1.5, 0.0, 0.1, 1.0, True, 1, 0, 2.0 ** -10))


@pytest.mark.parametrize("alibi", [False, True])
def test_gaussian_pages_floor_equals_a_fresh_steps(alibi):
    """The score floor ``KernelOps.gaussian_pages`` remembers for ``attend`` is the bits
    ``score_floor`` computes for the same mask in a step that never ran it, and the attention
    over the mask gives the same output and τ."""
    from entmaxkv.gaussian import gaussian_tau_hat

    seed = fresh_seed()
    cache, fresh = kernel_step_after_append(seed, alibi, 1.5, needs_sigma=True)
    step = fresh()
    tau_hat = gaussian_tau_hat(step, step.means, step.sigma)
    mask, _ = step.ops.gaussian_pages(step.means, step.sigma, step.upper, tau_hat - 0.5, 0.995, 1.0, 0.1, None, 0, 0)
    msg = f"seed {seed}"
    assert bool(mask.any()) and not bool(mask.all()), msg
    other = fresh().ops
    assert torch.equal(step.ops._listed.floor, other.score_floor(mask.clone())), msg
    out, tau = step.ops.attend(mask)
    want_out, want_tau = other.attend(mask.clone())
    assert torch.equal(out, want_out) and torch.equal(tau, want_tau), msg


@pytest.mark.parametrize("alibi", [False, True])
def test_gaussian_pages_floor_with_float64_mu(alibi):
    """A model μ in float64 (``StepOps.gaussian_pages`` does not fix its dtype): the floor's
    slack is still the page means' (float32), as ``score_floor``'s (from an independent
    review: the slack followed μ's dtype and the floor came out ~0.5 too high)."""
    from entmaxkv.gaussian import gaussian_tau_hat

    seed = fresh_seed()
    cache, fresh = kernel_step_after_append(seed, alibi, 1.5, needs_sigma=True)
    step = fresh()
    mu, sigma = step.means.double(), step.sigma.double()
    tau_hat = gaussian_tau_hat(step, mu, sigma)
    mask, _ = step.ops.gaussian_pages(mu, sigma, step.upper.double(), tau_hat - 0.5, 0.995, 1.0, 0.1, None, 0, 0)
    assert bool(mask.any()), seed
    assert torch.equal(step.ops._listed.floor, fresh().ops.score_floor(mask.clone())), f"seed {seed}"


@pytest.mark.parametrize("alibi", [False, True])
def test_gaussian_pages_without_page_means_leaves_the_floor_to_attend(alibi):
    """A step without page means (a custom selector's μ): the op's floor is not taken, and
    the attention finds its own, as a step that never ran the op (from an independent review)."""
    from entmaxkv.backend import build_step

    seed = fresh_seed()
    cache, fresh = kernel_step_after_append(seed, alibi, 1.5, needs_sigma=True)
    ref = fresh()

    def lean():
        return build_step(cache, ref.q, 1.5, ref.scale, ref.alibi_slopes, kernels=True, needs_sigma=True,
                          needs_means=False)

    step = lean()
    assert step.means is None
    mu = ref.upper + 10.0  # a model μ above every score
    tau_hat = torch.full(mu.shape[:3], -1e3, dtype=torch.float64)
    mask, _ = step.ops.gaussian_pages(mu, ref.sigma, ref.upper, tau_hat, 0.9, 0.0, 0.0, None, 0, 0)
    assert bool(mask.any()), seed
    assert step.ops._listed.floor is None, seed
    out, tau = step.ops.attend(mask)
    want_out, want_tau = lean().ops.attend(mask.clone())
    assert torch.equal(out, want_out) and torch.equal(tau, want_tau), f"seed {seed}"

