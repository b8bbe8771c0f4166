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


@pytest.mark.parametrize("x", [torch.arange(4), torch.tensor([True, False]), [0.0, 1.0]])
def test_non_float_input_is_a_type_error(x):
    for f in (ekv.entmax, ekv.entmax_threshold):
        with pytest.raises(TypeError, match="x must be a floating-point tensor"):
            f(x, alpha=1.5)


# ---- shift invariance (issue 7, item 4) --------------------------------------------------------

LOW_ATOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.mark.parametrize("dtype", list(LOW_ATOL), ids=str)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("offset", [0.0, 1000.0, -3000.0])
def test_entmax_is_shift_invariant_in_every_dtype(dtype, alpha, offset):
    # The oracle sees exactly the rounded inputs, minus the offset in float64 (exact there).
    x = (torch.randn(6, 64, dtype=torch.float64) * 3 + offset).to(dtype)
    expected = torch.stack([naive_entmax(row.double() - offset, alpha) for row in x])
    p = ekv.entmax(x, alpha=alpha)
    assert p.dtype == dtype
    torch.testing.assert_close(p.double(), expected, rtol=0, atol=LOW_ATOL[dtype])
    torch.testing.assert_close(p.double().sum(-1), torch.ones(6, dtype=torch.float64), rtol=0,
                               atol=64 * LOW_ATOL[dtype])


@pytest.mark.parametrize("alpha", ALPHAS)
def test_threshold_shifts_by_lin_alpha_times_the_offset(alpha):
    x = torch.randn(5, 40, dtype=torch.float64)
    lin = alpha - 1 if alpha > 1 else 1.0
    for offset in (1e4, -1e6):
        torch.testing.assert_close(ekv.entmax_threshold(x + offset, alpha=alpha) - lin * offset,
                                   ekv.entmax_threshold(x, alpha=alpha), rtol=0, atol=1e-8)
        torch.testing.assert_close(ekv.entmax(x + offset, alpha=alpha), ekv.entmax(x, alpha=alpha),
                                   rtol=0, atol=1e-9)


# ---- analytic backward (issue 7, item 5) --------------------------------------------------------

GRAD_ALPHAS = [1.0, 1.25, 4 / 3, 1.5, 1.75, 2.0]


@pytest.mark.parametrize("alpha", GRAD_ALPHAS)
@pytest.mark.parametrize("spread", [0.5, 3.0])
def test_gradcheck_and_gradgradcheck_of_entmax_and_threshold(alpha, spread):
    x = (torch.randn(3, 9, dtype=torch.float64) * spread).requires_grad_()
    x.data[0, 5:] = float("-inf")  # masked entries: zero weight, zero gradient
    for f in (lambda t: ekv.entmax(t, alpha=alpha), lambda t: ekv.entmax_threshold(t, alpha=alpha)):
        assert torch.autograd.gradcheck(f, x)  # -inf ± eps is -inf: numerical gradient 0 there too
        assert torch.autograd.gradgradcheck(f, x)


@given(n=st.integers(2, 30), alpha=st.sampled_from([1.25, 1.3, 1.5, 1.75, 2.0]), seed=st.integers(0, 2**31 - 1))
def test_backward_matches_the_entmax_library(n, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(4, n, generator=g, dtype=torch.float64) * 2).requires_grad_()
    upstream = torch.randn(4, n, generator=g, dtype=torch.float64)
    ours, = torch.autograd.grad(ekv.entmax(x, alpha=alpha), x, upstream)
    theirs, = torch.autograd.grad(entmax_lib.entmax_bisect(x, alpha=alpha, dim=-1, n_iter=100), x, upstream)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-9)


def test_gradient_flows_only_through_the_support():
    x = torch.tensor([[2.0, 1.9, -1.0, -5.0]], dtype=torch.float64, requires_grad=True)
    p = ekv.entmax(x, alpha=1.5)
    assert (p[0, 2:] == 0).all()
    jac = torch.autograd.functional.jacobian(lambda t: ekv.entmax(t, alpha=1.5), x)[0, :, 0, :]
    assert (jac[:, 2:] == 0).all() and (jac[2:, :] == 0).all()
    assert (jac[:2, :2] != 0).all()


def _tie_rows(alpha):
    """Rows with an entry exactly at τ (p = 0 there): ((α-1)·x_top - τ) and the tie are exact."""
    c = 1.0 / (alpha - 1.0)
    one = [c, 0.0, -1.0, -3.0]  # z = (1, 0, ...): τ = 0, support of one token, x[1] at τ
    rows = [one]
    if alpha == 2.0:
        rows.append([1.0, 1.0, 0.5, -1.0])  # τ = 0.5: support of two, x[2] at τ
    return torch.tensor(rows, dtype=torch.float64), [1] + ([2] if alpha == 2.0 else [])


@pytest.mark.parametrize("alpha", [1.25, 1.5, 1.75, 2.0])
def test_ties_at_tau_take_the_one_sided_jacobian_with_the_tie_outside(alpha):
    rows, tied = _tie_rows(alpha)
    for x, t in zip(rows, tied):
        p = ekv.entmax(x, alpha=alpha)
        assert p[t] == 0 and p[0] > 0
        jac = torch.func.jacrev(lambda u: ekv.entmax(u, alpha=alpha))(x)
        tau_grad = torch.func.grad(lambda u: ekv.entmax_threshold(u, alpha=alpha))(x)
        assert torch.isfinite(jac).all() and torch.isfinite(tau_grad).all()
        # Move the tied entry just below τ: there entmax is differentiable (gradcheck below) and,
        # the Jacobian being continuous from that side, equal to what the backward gives at the tie.
        nudged = x.clone()
        nudged[t] -= 1e-4  # well beyond gradcheck's finite-difference step (1e-6)
        assert torch.autograd.gradcheck(lambda u: ekv.entmax(u, alpha=alpha), nudged.requires_grad_())
        torch.testing.assert_close(jac, torch.func.jacrev(lambda u: ekv.entmax(u, alpha=alpha))(nudged.detach()),
                                   rtol=0, atol=1e-5)
        if t == 1:  # support of one token: p is locally constant, τ moves with the top score only
            assert (jac == 0).all()
            lin = alpha - 1
            torch.testing.assert_close(tau_grad, torch.tensor([lin, 0, 0, 0], dtype=torch.float64))


@pytest.mark.parametrize("alpha", [1.25, 1.5, 1.75, 2.0])
def test_support_of_one_token_has_zero_jacobian_and_passes_gradgradcheck(alpha):
    x = torch.tensor([[3.0 / (alpha - 1), 0.0, -1.0], [0.3, 9.0, 0.1]], dtype=torch.float64, requires_grad=True)
    assert ((ekv.entmax(x, alpha=alpha) > 0).sum(-1) == 1).all()
    assert torch.autograd.gradcheck(lambda t: ekv.entmax(t, alpha=alpha), x)
    assert torch.autograd.gradgradcheck(lambda t: ekv.entmax(t, alpha=alpha), x)
    assert torch.autograd.gradgradcheck(lambda t: ekv.entmax_threshold(t, alpha=alpha), x)


@pytest.mark.parametrize("alpha", [1.0, 1.25, 1.5, 2.0])
def test_float32_gradient_is_close_to_float64(alpha):
    x = torch.randn(4, 50, dtype=torch.float64) * 2 + 500  # a shared offset, as attention scores have
    upstream = torch.randn(4, 50, dtype=torch.float64)
    grads = []
    for dtype in (torch.float64, torch.float32):
        t = x.to(dtype).requires_grad_()
        grads.append(torch.autograd.grad(ekv.entmax(t, alpha=alpha), t, upstream.to(dtype))[0].double())
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-4)



@pytest.mark.parametrize("alpha", [1.0, 1.5, 1.25])
def test_hessian_by_reverse_over_reverse_is_symmetric_and_matches_finite_differences(alpha):
    x = torch.randn(6, dtype=torch.float64) * 2
    tau = lambda t: ekv.entmax_threshold(t, alpha=alpha)  # noqa: E731
    hess = torch.func.jacrev(torch.func.jacrev(tau))(x)
    torch.testing.assert_close(hess, hess.T, rtol=0, atol=1e-12)
    eps = 1e-6
    columns = [(torch.func.grad(tau)(x + eps * e) - torch.func.grad(tau)(x - eps * e)) / (2 * eps)
               for e in torch.eye(6, dtype=torch.float64)]
    torch.testing.assert_close(hess, torch.stack(columns, 1), rtol=0, atol=1e-6)


def test_forward_mode_is_refused_with_a_clear_error():
    with pytest.raises(RuntimeError, match="jvp"):
        torch.func.jacfwd(lambda t: ekv.entmax(t, alpha=1.5))(torch.randn(4, dtype=torch.float64))
