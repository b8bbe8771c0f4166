"""The ``safe_tau`` op (under Triton's interpreter) against ``backend.safe_tau_composition``,
the torch code it replaces on the kernel path: the same float64 operations in the same order,
so the same bits on the CPU; ragged lengths (a newest page of 1 token, a full one), full-page
counts from 0 up, ALiBi or not, α with and without an exact τ formula and softmax (α = 1:
the log-sum-exp, a = 1 — an independent review found a = 0 there), float32 and float64
work, NaN in, NaN out."""

import dataclasses

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.backend import safe_tau_composition
from entmaxkv.kernels.page_scores import rounding_gamma
from helpers import fresh_seed

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels.safe_tau import safe_tau  # noqa: E402
from entmaxkv.kernels.sparse_decode import bisection_steps  # noqa: E402

S = 8


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group", [1, 4])
def test_safe_tau_equals_the_torch_composition(group, dtype, alpha, alibi, poison):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, hkv, p = 3, 2, 37
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=16, capacity=p * S, page_size=S, dtype=dtype)
    cache = dataclasses.replace(cache, seq_lens=torch.tensor([1, 2 * S, 5 * S + 3]))  # only the lengths are read
    tau = torch.randn(b, hkv, group, generator=g, dtype=torch.float64) * 3
    tau[0, 0, 0] = float("nan")
    magnitude = (torch.rand(b, hkv, group, generator=g, dtype=torch.float64) * 10).to(dtype)
    newest = (torch.rand(b, hkv, group, generator=g, dtype=torch.float64) * 10).to(dtype)
    full = torch.randint(0, p, (b, hkv), generator=g)
    slopes = (torch.rand(hkv * group, generator=g) * 0.2 - 0.1).to(dtype) if alibi else None
    gamma = rounding_gamma(dtype if dtype == torch.float64 else torch.float32, 16)
    want = safe_tau_composition(cache, alpha, gamma, tau, magnitude, newest, full, slopes)
    extra = 0.0 if alpha in (1.0, 1.5, 2.0) else 2.0 ** -bisection_steps(dtype if dtype == torch.float64
                                                                         else torch.float32)
    got = safe_tau(tau, magnitude, newest, full.to(torch.int32), cache.seq_lens, slopes, S, p, alpha, gamma,
                   torch.finfo(dtype).eps, extra)
    msg = f"seed {seed}"
    assert got.dtype == torch.float64
    assert torch.equal(got.isnan(), want.isnan()) and bool(got[0, 0, 0].isnan()), msg
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want)), f"{msg}: {(got - want).abs().max()}"
    assert bool((got[~got.isnan()] < tau[~got.isnan()]).all()), msg


def test_safe_tau_opcheck():
    b, hkv, g = 2, 2, 3
    tau = torch.randn(b, hkv, g, dtype=torch.float64)
    mag = torch.rand(b, hkv, g)
    lens = torch.tensor([5, 40])
    full = torch.tensor([[0, 1], [4, 2]], dtype=torch.int32)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        for slopes in (None, torch.rand(hkv * g)):
            torch.library.opcheck(torch.ops.entmaxkv.safe_tau.default,
                                  (tau, mag, mag, full, lens, slopes, S, 6, 1.5, 1e-5, 2.0 ** -23, 0.0))
