"""The selectable forms of the key-code scan (``code_scan`` constants the lead times on the
H200 with ``benchmarks/keycodes_gpu.py --variants``) against the reference, as the default
form is in ``test_kernels_codes.py``: the head loop not unrolled (``UNROLL_HEADS = False``),
the codes read byte by byte (``WORD_CODES = False``), the newest page in the scan's launch
(``NEWEST_IN_SCAN = True``). Every variant must stay correct, not only the default.
"""

import pytest
import torch

import test_kernels_codes as codes_tests  # its tests run here under each variant (not collected twice)
from helpers import fresh_seed
from test_kernels_codes import BOUNDS_CASES, SEED_TAU_CASES, coded_pages, coded_setup

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import entmaxkv.kernels.code_scan as code_scan  # noqa: E402

VARIANTS = [("UNROLL_HEADS", False), ("WORD_CODES", False), ("NEWEST_IN_SCAN", True)]


@pytest.mark.parametrize("name,value", VARIANTS)
@pytest.mark.parametrize("case", [BOUNDS_CASES[i] for i in (0, 2, 4, 6)])  # float32/16, bfloat16, float64
def test_variant_bounds_equal_the_reference(name, value, case, monkeypatch, poison):
    monkeypatch.setattr(code_scan, name, value)
    codes_tests.test_code_bounds_equal_the_reference(*case, poison)


@pytest.mark.parametrize("name,value", VARIANTS)
@pytest.mark.parametrize("case", [SEED_TAU_CASES[i] for i in (1, 2)])  # ALiBi with GQA 2; GQA 4, several chunks
def test_variant_seed_and_newest_page_equal_the_reference(name, value, case, monkeypatch, poison):
    monkeypatch.setattr(code_scan, name, value)
    codes_tests.test_code_bounds_seed_and_newest_page_equal_the_reference(*case, poison, monkeypatch)


@pytest.mark.parametrize("bits,group,alibi", [(4, 4, False), (8, 3, True)])
def test_head_loop_equals_the_unrolled_heads(bits, group, alibi, monkeypatch, poison):
    """Under the interpreter both forms run the same operations in the same order: equal bit
    for bit (page_max, ε and ŝ of coded tokens; the step's call with the seed too)."""
    seed = fresh_seed()
    cache, q, slopes, _ = coded_setup(seed, torch.float16, bits, group, alibi, d=24)
    args = (q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes, bits, 0.3)
    outs = []
    for unroll in (True, False):
        monkeypatch.setattr(code_scan, "UNROLL_HEADS", unroll)
        outs.append((code_scan.code_bounds(*args, True), code_scan.code_bounds(*args, False, cache.k_pages, 2)))
    tokens = coded_pages(cache).repeat_interleave(cache.page_size, -1).expand_as(outs[0][0][2])
    (scores1, step1), (scores0, step0) = outs
    assert torch.equal(scores1[0], scores0[0]) and torch.equal(scores1[1], scores0[1]), seed
    assert torch.equal(scores1[2][tokens], scores0[2][tokens]), seed
    for i in range(8):
        assert torch.equal(step1[i], step0[i]), (seed, i)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,value", VARIANTS + [("NUM_WARPS", 1)])
def test_variant_on_cuda_matches_the_reference(name, value, monkeypatch):
    """The compiled variants (and one warp a program) against the reference on the GPU."""
    monkeypatch.setattr(code_scan, name, value)
    codes_tests.test_code_scan_on_cuda_matches_the_reference(torch.float16, 4, True)
