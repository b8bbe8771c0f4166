"""The dense entmax Triton op (``entmaxkv.kernels.triton_entmax``) against ``entmaxkv.entmax``.

On the CPU the op runs in Triton's interpreter (``TRITON_INTERPRET=1``, set in conftest); the
``gpu`` test repeats the comparison on CUDA. The oracle is ``ekv.entmax`` in float64 (itself
tested against the entmax library and a naive bisection in test_entmax.py); the op computes in
float32, so fp32 tolerances are float32-sized and fp16/bf16 ones allow the output rounding
(bf16: one ulp, as the interpreter truncates on the cast back).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import entmaxkv as ekv
from entmaxkv.kernels.triton_entmax import MAX_BLOCK, entmax_rows, triton_entmax

pytestmark = pytest.mark.interpreter  # CPU tensors through the kernel; the CUDA test is marked gpu

ALPHAS = [1.0, 1.25, 1.5, 2.0]
# absolute tolerance on probabilities (in [0, 1]) per output dtype
ATOL = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def oracle(x, alpha):
    """float64 entmax of x's values, rounded to x's dtype like the op's output."""
    return ekv.entmax(x.double(), alpha=alpha).to(x.dtype)


def check(x, alpha, atol=None):
    out = triton_entmax(x, alpha=alpha, backend="triton")
    assert out.shape == x.shape and out.dtype == x.dtype
    expected = oracle(x, alpha)
    tol = ATOL[x.dtype] if atol is None else atol
    torch.testing.assert_close(out.double(), expected.double(), rtol=0, atol=tol, equal_nan=True)
    return out


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(alpha, dtype):
    g = torch.Generator().manual_seed(int(alpha * 100))
    x = (torch.randn(3, 5, 37, generator=g) * 3).to(dtype)
    out = check(x, alpha)
    sums = out.double().sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=40 * ATOL[dtype])


@pytest.mark.parametrize("alpha", ALPHAS)
def test_rows_longer_than_one_block(alpha):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2 * MAX_BLOCK + 77, generator=g) * 4
    check(x, alpha)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("offset", [1e4, -3e4])
def test_large_offsets(alpha, offset):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 50, generator=g) * 2 + offset
    # the float32 inputs themselves are what the oracle sees: only the op's rounding differs
    check(x, alpha, atol=5e-6)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_rows_of_minus_inf_and_masked_entries(alpha):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(4, 9, generator=g)
    x[0] = float("-inf")  # a whole row masked: ekv.entmax gives zeros (α = 1.5, 2) or NaN
    x[1, 3:] = float("-inf")  # ragged length
    x[2, ::2] = float("-inf")
    out = check(x, alpha)
    assert (out[1:][torch.isneginf(x[1:])] == 0).all()
    if alpha in (1.5, 2.0):
        assert (out[0] == 0).all()
    else:
        assert out[0].isnan().all()


@given(
    rows=st.integers(1, 3),
    n=st.integers(1, 70),
    alpha=st.sampled_from(ALPHAS),
    lens=st.lists(st.integers(0, 70), min_size=3, max_size=3),
    spread=st.sampled_from([0.1, 1.0, 30.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_ragged_rows_hypothesis(rows, n, alpha, lens, spread, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g) * spread
    for r in range(rows):
        x[r, min(lens[r], n):] = float("-inf")
    check(x, alpha)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_original_call_pattern(dtype, alpha):
    """The original tests: decode scores [B, H, 1, N], entmax over N."""
    g = torch.Generator().manual_seed(17)
    scores = (torch.randn(2, 4, 1, 300, generator=g) * 2).to(dtype)
    out = check(scores, alpha)
    assert out.shape == (2, 4, 1, 300)


def test_every_output_entry_is_written():
    """Launch the kernel on a NaN-filled output buffer: masked tails and block loops must
    still write every entry."""
    from entmaxkv.kernels.triton_entmax import BISECTION_STEPS, _entmax_rows_kernel

    x = torch.randn(3, 2 * 64 + 5)
    for mode, alpha in ((0, 1.0), (2, 2.0), (1, 1.5), (3, 1.25)):  # kernels.common.alpha_kind
        out = torch.full_like(x, float("nan"))
        _entmax_rows_kernel[(3,)](x, out, x.shape[1], alpha, BISECTION_STEPS, BLOCK=64, MODE=mode)
        torch.testing.assert_close(out.double(), oracle(x, alpha).double(), rtol=0, atol=ATOL[x.dtype])


def test_non_contiguous_input():
    x = torch.randn(40, 6).t()  # [6, 40] strided
    check(x, 1.5)


def test_backend_auto_uses_the_reference_on_cpu():
    x = torch.randn(2, 10, dtype=torch.float64)
    assert torch.equal(triton_entmax(x, alpha=1.5), ekv.entmax(x, alpha=1.5))


def test_argument_errors():
    with pytest.raises(ValueError, match="alpha"):
        triton_entmax(torch.randn(3), alpha=2.5)
    with pytest.raises(ValueError, match="backend"):
        triton_entmax(torch.randn(3), backend="cuda")
    with pytest.raises(TypeError, match="x must be"):
        triton_entmax([1.0, 2.0])
    with pytest.raises(TypeError, match="floating"):
        triton_entmax(torch.arange(3), backend="triton")


def test_opcheck():
    x = torch.randn(3, 4, 20)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        for alpha in (1.0, 1.5, 1.25):
            torch.library.opcheck(entmax_rows, (x, alpha), test_utils=("test_schema", "test_faketensor",
                                                                        "test_aot_dispatch_dynamic"))


def test_compiles_fullgraph():
    x = torch.randn(2, 33)

    def f(t):
        return torch.ops.entmaxkv.entmax_rows(t * 2, 1.5) + 1

    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), f(x), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(alpha, dtype):
    torch._dynamo.reset()  # a fresh compile cache per case: 12 cases share one lambda's code object
    g = torch.Generator().manual_seed(19)
    x = (torch.randn(2, 8, 1, 3000, generator=g) * 3).to(dtype)
    x[0, 0, 0] = float("-inf")
    x[1, :, :, 1000:] = float("-inf")
    x[1, 1] += 1e4 if dtype == torch.float32 else 0
    out = triton_entmax(x.cuda(), alpha=alpha)  # backend "auto" picks the op on CUDA
    torch.testing.assert_close(out.cpu().double(), oracle(x, alpha).double(), rtol=0,
                               atol=ATOL[dtype], equal_nan=True)
    compiled = torch.compile(lambda t: triton_entmax(t, alpha=alpha), fullgraph=True)
    torch.testing.assert_close(compiled(x.cuda()), out, rtol=0, atol=ATOL[dtype], equal_nan=True)


def test_every_specialisation_compiles_for_sm90(tmp_path):
    """The interpreter never compiles; compile each (dtype, α-mode) specialisation of the
    kernel for sm_90 on the CPU (tests/compile_specs.py, Triton's bundled ptxas; no GPU)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    specs = [["entmaxkv.kernels.triton_entmax", "_entmax_rows_kernel",
              {"x_ptr": ["tensor", dt], "out_ptr": ["tensor", dt], "n_cols": ["int", 300], "alpha": ["float", 1.5],
               "n_bisect": ["int", 40], "BLOCK": ["int", 512], "MODE": ["int", mode]}]
             for dt in ("float16", "bfloat16", "float32") for mode in range(4)]
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(specs))
    script = Path(__file__).with_name("compile_specs.py")
    result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                            env=dict(os.environ, TRITON_INTERPRET="0"), timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "12 of 12 specialisations compiled for sm_90" in result.stdout
