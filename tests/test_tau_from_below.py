"""``sparse_decode``'s exact τ search for α = 1.5 and 2 (``_exact_from_below``), run alone.

The op's own tests compare whole outputs with the reference, which would also pass if the
search never succeeded (the bisection behind it is the old, slower path). Here a probe kernel
runs the helper on score rows and reports τ, whether the search found it, and in how many
rounds: τ must equal the sort-based reference's, the search must succeed on ordinary rows,
and a row whose exact tie makes it stall must say so (``found`` False) rather than return a
wrong τ. Both of the helper's paths run: scores held in registers and streamed from memory.
"""

import pytest
import torch

from helpers import fresh_seed

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import triton.language as tl  # noqa: E402

from entmaxkv.entmax import _sorted_threshold  # noqa: E402
from entmaxkv.kernels.sparse_decode import EXACT_ITERS, _exact_from_below  # noqa: E402

BLOCK = 64


@triton.jit
def _probe(scores, n, out, lin, ITERS: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr,
           IN_REGS: tl.constexpr):
    r = tl.arange(0, BLOCK)
    z = tl.load(scores + r, mask=r < n, other=float("-inf")).to(tl.float64) * lin
    zmax = tl.max(z)
    tau, found = _exact_from_below(scores, 0, n, z, lin, zmax - 1.0, zmax, ITERS, KIND, BLOCK // 4, IN_REGS)
    tl.store(out, tau)
    tl.store(out + 1, found.to(tl.float64))


def probe(s: torch.Tensor, alpha: float, in_regs: bool, iters: int = EXACT_ITERS) -> tuple[float, bool]:
    out = torch.full((2,), float("nan"), dtype=torch.float64)
    _probe[(1,)](s, s.numel(), out, alpha - 1.0, ITERS=iters, KIND=2 if alpha == 2.0 else 1, BLOCK=BLOCK,
                 IN_REGS=in_regs)
    return float(out[0]), bool(out[1] == 1)


@pytest.mark.parametrize("in_regs", [True, False], ids=["registers", "streamed"])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_the_search_finds_the_exact_tau(alpha, in_regs):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    for trial in range(12):
        n = int(torch.randint(1, BLOCK + 1, (1,), generator=g))
        if trial % 2:  # from near-uniform to one dominant token
            s = torch.randn(n, generator=g, dtype=torch.float64) * (float(torch.rand((), generator=g)) * 6 + 0.1)
        else:  # many tokens within 1 of the top (z): the first support is too large, rounds are needed
            s = torch.rand(n, generator=g, dtype=torch.float64) * 1.5 / (alpha - 1.0)
        tau, found = probe(s, alpha, in_regs)
        want = float(_sorted_threshold(s * (alpha - 1.0), alpha))
        assert found, (seed, trial, n)
        assert abs(tau - want) <= 1e-12 * (1 + abs(want)), (seed, trial, tau, want)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_a_tie_at_tau_never_gives_a_wrong_tau(alpha):
    """Scores built so that one token sits exactly at τ (zero weight): the search either
    finds τ or reports that it did not (then the op bisects)."""
    lin = alpha - 1.0
    z_top = torch.tensor([2.0, 1.75, 1.5], dtype=torch.float64)
    tau = float(_sorted_threshold(z_top, alpha))
    s = torch.cat([z_top, torch.tensor([tau, tau - 0.25, tau - 3.0], dtype=torch.float64)]) / lin
    got, found = probe(s, alpha, True)
    if found:
        assert abs(got - tau) <= 1e-12 * (1 + abs(tau)), (got, tau)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_a_search_cut_short_reports_it(alpha):
    """With one round and many tokens near the top, the first support is too large: the
    search must say it did not find τ (the caller then bisects), not return the first guess."""
    s = torch.linspace(0.0, 0.9, 40, dtype=torch.float64) / (alpha - 1.0)
    _, found = probe(s, alpha, True, iters=1)
    assert not found
