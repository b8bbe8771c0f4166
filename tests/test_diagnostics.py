import math

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.diagnostics import diagnose, format_mass_bound, page_gaussianity
from helpers import make_cache, random_step
from naive import naive_decode, naive_entmax


def naive_tau(scores, alpha):
    """τ of one row by plain float64 bisection (log-sum-exp for softmax)."""
    if alpha == 1.0:
        return torch.logsumexp(scores, 0).item()
    z = (alpha - 1) * scores
    lo, hi = z.max().item() - 1, z.max().item()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (z - mid).clamp_min(0).pow(1 / (alpha - 1)).sum().item() >= 1 else (lo, mid)
    return lo


@pytest.mark.parametrize("selector", [ekv.TopK(token_budget=8), ekv.Gaussian(), ekv.Exact(max_pages=2)], ids=repr)
def test_diagnostics_agree_with_independent_oracles(selector):
    """Every field against plain float64 loops (tests/naive.py), not against the formulas
    diagnose itself uses."""
    lens, group, d = [45, 30], 2, 8
    cache, keys, values = make_cache(41, 2, 2, d, 4, lens, spread=2.0)
    q, kn, vn = random_step(torch.Generator().manual_seed(42), 2, 4, 2, d)
    config = ekv.DecodeConfig(alpha=1.5, selector=selector)
    new, out, diag = diagnose(cache, q, kn, vn, config)
    _, expected, info = ekv.decode_step(cache.fork(), q, kn, vn, config, with_info=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # diagnose is a drop-in step
    for b, n in enumerate(lens):
        k = torch.cat([keys[b], kn[b].double()], 1)  # [Hkv, n + 1, D], the new token last
        v = torch.cat([values[b], vn[b].double()], 1)
        dense = naive_decode(k, v, q[b, :, 0], 1.5)  # [Hq, D]
        for h in range(4):
            s = (k[h // group] @ q[b, h, 0].double()) / math.sqrt(d)
            p = naive_entmax(s, 1.5)
            kept = info.page_mask[b, h // group].repeat_interleave(4)[: n + 1]
            support = p > 0
            o = out[b, h, 0].double()
            assert diag.tau_true[b, h].item() == pytest.approx(naive_tau(s, 1.5), abs=1e-10)
            assert diag.support_recall[b, h].item() == pytest.approx((support & kept).sum().item() / support.sum().item())
            assert diag.true_dropped_mass[b, h].item() == pytest.approx(p[~kept].sum().item(), abs=1e-12)
            assert diag.true_dropped_mass[b, h] <= diag.dropped_mass_bound[b, h] + 1e-12
            assert diag.l2_error[b, h].item() == pytest.approx((o - dense[h]).norm().item(), rel=1e-9, abs=1e-12)
            assert diag.relative_error[b, h].item() == pytest.approx((o - dense[h]).norm().item() / dense[h].norm().item(),
                                                                     rel=1e-9, abs=1e-12)
            assert diag.cosine[b, h].item() == pytest.approx(float(o @ dense[h]) / (o.norm() * dense[h].norm()).item(),
                                                             abs=1e-12)
            assert diag.num_pages[b, h].item() == len({i // 4 for i in kept.nonzero().flatten().tolist()})
        assert diag.total_pages[b].tolist() == [math.ceil((n + 1) / 4)] * 4
    assert diag.tau_hat.shape == (2, 4) and torch.isfinite(diag.tau_hat).all()


def test_mass_bounds_of_one_or_more_print_as_no_bound():
    assert format_mass_bound(1.0) == "no bound" and format_mass_bound(3e4) == "no bound"
    assert format_mass_bound(0.0) == "0.00e+00" and format_mass_bound(2.5e-3) == "2.50e-03"
    # a step's [B, Hq] bounds, and a 0-d tensor
    assert format_mass_bound(torch.tensor([[2.5e-3, 1.0], [0.0, 3e4]])) == "[[2.50e-03, no bound], [0.00e+00, no bound]]"
    assert format_mass_bound(torch.tensor(2.5e-3, dtype=torch.float64)) == "2.50e-03"


def test_page_gaussianity_tells_gaussian_pages_from_others():
    g = torch.Generator().manual_seed(43)
    d, pages, size = 8, 64, 16
    gauss = torch.randn(1, 1, pages * size, d, generator=g, dtype=torch.float64)
    spiky = torch.where(torch.rand(1, 1, pages * size, d, generator=g) < 0.05, 5.0, 0.0).double()
    q = torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64)
    fits = []
    for k in (gauss, spiky):
        cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=pages * size,
                                       page_size=size, dtype=torch.float64)
        cache = ekv.prefill(cache, k, k, [pages * size])
        fits.append(page_gaussianity(cache, q).item())
    assert fits[0] < 0.05 < fits[1]
