"""The ``gaussian_select`` op (under Triton's interpreter) against ``gaussian.gaussian_keep``,
the torch rule it replaces on the kernel path. Page scores are drawn directly; entries of
pages that are not candidates are NaN (the op must not read them); rows hold no candidate,
one, or many, over one chunk or several."""

import random

import pytest
import torch

from entmaxkv.gaussian import _normal_quantile, gaussian_keep
from entmaxkv.newest_page import candidate_page_mask
from entmaxkv.topk import forced_page_mask
from helpers import fresh_seed, lengths_only_cache

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels.gaussian_select import gaussian_select  # noqa: E402

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
    return cache, mu, sigma, upper, tau_hat, rnd


@pytest.mark.parametrize("chunk", [1024, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_gaussian_select_equals_the_torch_rule(group, dtype, chunk, poison, monkeypatch):
    monkeypatch.setattr("entmaxkv.kernels.gaussian_select.CHUNK", chunk)  # 4: ten chunks a row
    seed = fresh_seed()
    cache, mu, sigma, upper, tau_hat, rnd = _case(seed, group, dtype)
    candidates = candidate_page_mask(cache)
    off = ~candidates[:, :, None, :].expand_as(mu)
    mu, sigma, upper = (x.masked_fill(off, float("nan")) for x in (mu, sigma, upper))
    for _ in range(3):
        alpha = rnd.choice([1.5, 2.0, 4 / 3])
        z = _normal_quantile(rnd.choice([0.995, 0.5, 0.9]) ** (1 / S), mu.double())
        safety, excess = rnd.choice([0.0, 0.5]), rnd.choice([0.0, 0.1, 1.0])
        outlier = rnd.choice([None, 0.0, 1.0])
        sink, recent = rnd.choice([0, 1, 3]), rnd.choice([0, 2])
        msg = f"seed {seed} α {alpha} z {float(z)} margins {safety} {excess} {outlier} sink {sink} recent {recent}"
        forced = forced_page_mask(cache, candidates, sink, recent)
        want, want_floor = gaussian_keep(candidates, forced, mu, sigma, upper, tau_hat, z, alpha, safety, excess,
                                         outlier)
        pages, count, mask, floor = gaussian_select(mu, sigma, upper, tau_hat, z, cache.seq_lens, S, alpha, safety,
                                                    excess, 0.0 if outlier is None else outlier, outlier is not None,
                                                    sink, recent)
        # the means are summed in another order: τ_floor agrees to rounding, and a page decided
        # the other way must sit within rounding of its threshold (none has, so far)
        torch.testing.assert_close(floor, want_floor, rtol=1e-12, atol=1e-12, msg=msg)
        assert torch.equal(mask, want), msg
        assert torch.equal(count, mask.sum(-1).to(torch.int32)), msg
        for row, n, m in zip(pages.flatten(0, 1), count.flatten(), mask.flatten(0, 1)):
            assert row[: int(n)].tolist() == m.nonzero().flatten().tolist(), msg
            assert bool((row[int(n):] == -1).all()), msg
    assert not bool(mask[0].any()), "a row without candidates keeps nothing"


def test_gaussian_select_keeps_forced_pages_and_margins_matter(poison):
    """Hand-made rows: a huge τ̂ keeps only forced pages (and, with the outlier rule, pages
    whose bound reaches it); a τ̂ far below every page keeps every candidate."""
    cache, mu, sigma, upper, tau_hat, _ = _case(fresh_seed(), 2, torch.float64)
    z = _normal_quantile(0.995 ** (1 / S), mu)
    candidates = candidate_page_mask(cache)
    high = torch.full_like(tau_hat, 1e6)
    _, _, mask, _ = gaussian_select(mu, sigma, upper, high, z, cache.seq_lens, S, 1.5, 0.0, 0.0, 0.0, False, 1, 2)
    assert torch.equal(mask, forced_page_mask(cache, candidates, 1, 2).expand_as(mask))
    upper = upper.clone()
    upper[1, 0, 1, 0] = 3e6  # (α − 1)·U = 1.5e6 >= τ̂ + 1: the outlier rule keeps page 0 of row (1, 0)
    _, _, mask, _ = gaussian_select(mu, sigma, upper, high, z, cache.seq_lens, S, 1.5, 0.0, 0.0, 1.0, True, 0, 0)
    assert mask.nonzero().tolist() == [[1, 0, 0]]
    low = torch.full_like(tau_hat, -1e6)
    _, _, mask, _ = gaussian_select(mu, sigma, upper, low, z, cache.seq_lens, S, 1.5, 0.0, 0.0, 0.0, False, 0, 0)
    assert torch.equal(mask, candidates.expand_as(mask))


def test_gaussian_select_opcheck():
    """Fake tensor, schema and dispatch checks of the op's registration."""
    cache, mu, sigma, upper, tau_hat, _ = _case(fresh_seed(), 2, torch.float32)
    z = _normal_quantile(0.995 ** (1 / S), tau_hat)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        torch.library.opcheck(torch.ops.entmaxkv.gaussian_select.default,
                              (mu, sigma, upper, tau_hat, z, cache.seq_lens, S, 1.5, 0.0, 0.1, 1.0, True, 1, 0))
