import pytest
import torch

import entmaxkv as ekv
from entmaxkv.diagnostics import diagnose, page_gaussianity
from helpers import make_cache, random_step


@pytest.mark.parametrize("selector", [ekv.TopK(token_budget=8), ekv.Gaussian(), ekv.Exact(max_pages=2)], ids=repr)
def test_diagnostics_agree_with_the_dense_reference(selector):
    cache, _, _ = make_cache(41, 2, 2, 8, 4, [45, 30], spread=2.0)
    q, kn, vn = random_step(torch.Generator().manual_seed(42), 2, 4, 2, 8)
    config = ekv.DecodeConfig(alpha=1.5, selector=selector)
    new, out, diag = diagnose(cache, q, kn, vn, config)
    _, expected = ekv.decode_step(cache.fork(), q, kn, vn, config)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # diagnose is a drop-in step
    dense, tau = ekv.dense_decode(new, q, 1.5)
    torch.testing.assert_close(diag.tau_true, tau)
    assert (diag.true_dropped_mass <= diag.dropped_mass_bound + 1e-12).all()
    assert ((diag.support_recall == 1) == (diag.true_dropped_mass == 0)).all()
    torch.testing.assert_close(diag.l2_error, (out - dense).reshape(2, 4, -1).norm(dim=-1))
    assert diag.total_pages.tolist() == [[12] * 4, [8] * 4] and (diag.num_pages <= diag.total_pages).all()
    assert diag.tau_hat.shape == (2, 4) and ((diag.cosine <= 1 + 1e-12) & (diag.cosine > -1)).all()


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
