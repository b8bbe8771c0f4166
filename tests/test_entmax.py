import entmax as entmax_lib
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import entmaxkv as ekv
from naive import naive_entmax

ALPHAS = [1.0, 1.25, 4 / 3, 1.5, 1.75, 2.0]


@given(
    rows=st.integers(1, 4),
    n=st.integers(1, 40),
    alpha=st.sampled_from(ALPHAS) | st.floats(1.01, 1.99),
    spread=st.sampled_from([0.1, 1.0, 10.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_entmax_is_a_distribution_equal_to_naive_bisection(rows, n, alpha, spread, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g, dtype=torch.float64) * spread
    p = ekv.entmax(x, alpha=alpha)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(rows, dtype=torch.float64), rtol=0, atol=1e-12)
    for r in range(rows):
        torch.testing.assert_close(p[r], naive_entmax(x[r], alpha), rtol=0, atol=1e-9)


@given(n=st.integers(1, 50), seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([1.5, 2.0, 1.3]))
def test_entmax_matches_the_entmax_library(n, seed, alpha):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    expected = {
        1.5: lambda t: entmax_lib.entmax15(t, dim=-1),
        2.0: lambda t: entmax_lib.sparsemax(t, dim=-1),
        1.3: lambda t: entmax_lib.entmax_bisect(t, alpha=1.3, dim=-1, n_iter=80),
    }[alpha](x)
    torch.testing.assert_close(ekv.entmax(x, alpha=alpha), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_threshold_reproduces_the_weights(alpha):
    x = torch.randn(5, 33, dtype=torch.float64) * 2
    tau = ekv.entmax_threshold(x, alpha=alpha)
    lin = alpha - 1 if alpha > 1 else 1.0
    if alpha == 1.0:
        p = torch.exp(x - tau[:, None])
    else:
        p = (lin * x - tau[:, None]).clamp_min(0).pow(1 / lin)
    torch.testing.assert_close(p.sum(-1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.7])
def test_masked_entries_get_zero_and_do_not_count(alpha):
    x = torch.randn(4, 20, dtype=torch.float64)
    masked = x.clone()
    masked[:, 12:] = float("-inf")
    p = ekv.entmax(masked, alpha=alpha)
    assert (p[:, 12:] == 0).all()
    torch.testing.assert_close(p[:, :12], ekv.entmax(x[:, :12], alpha=alpha), rtol=0, atol=1e-10)


def test_dim_argument_and_dtype_are_respected():
    x = torch.randn(7, 3, 5)
    p = ekv.entmax(x, alpha=1.5, dim=0)
    assert p.dtype == x.dtype and p.shape == x.shape
    torch.testing.assert_close(p, ekv.entmax(x.movedim(0, -1), alpha=1.5).movedim(-1, 0))
    assert ekv.entmax_threshold(x, alpha=2.0, dim=1).shape == (7, 5)


def test_entmax_is_sparse_and_sparsemax_example():
    assert ekv.entmax(torch.tensor([3.0, 1.0, -2.0]), alpha=2.0).tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("alpha", [0.5, 2.5, -1.0])
def test_alpha_out_of_range_is_a_value_error(alpha):
    with pytest.raises(ValueError, match="alpha must be in \\[1, 2\\]"):
        ekv.entmax(torch.zeros(3), alpha=alpha)


def test_alpha_of_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="alpha"):
        ekv.entmax(torch.zeros(3), alpha=torch.tensor(1.5))
