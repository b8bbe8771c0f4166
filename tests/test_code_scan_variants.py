"""The selectable forms of the key-code scan (``code_scan`` constants the lead times on the
H200 with ``benchmarks/keycodes_gpu.py --variants``) against the reference, as the default
form is in ``test_kernels_codes.py``: the head loop not unrolled (``UNROLL_HEADS = False``),
the codes read byte by byte (``WORD_CODES = False``), the newest page in the scan's launch
(``NEWEST_IN_SCAN = True``), T tokens of a page in each thread (``THREAD_TOKENS = T``). Every
variant must stay correct, not only the default.
"""

import pytest
import torch

import test_kernels_codes as codes_tests  # its tests run here under each variant (not collected twice)
from helpers import fresh_seed, kernel_launches
from test_kernels_codes import BOUNDS_CASES, SEED_TAU_CASES, coded_pages, coded_setup

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import entmaxkv.kernels.code_scan as code_scan  # noqa: E402

VARIANTS = [("UNROLL_HEADS", False), ("WORD_CODES", False), ("NEWEST_IN_SCAN", True), ("THREAD_TOKENS", 4)]


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


@pytest.mark.parametrize("tokens", [2, 4])
@pytest.mark.parametrize("case", BOUNDS_CASES)  # every dtype, 4 and 8 bits, GQA 1-4 (3: padded heads), ALiBi
def test_thread_tokens_bounds_equal_the_reference(tokens, case, monkeypatch, poison):
    """``THREAD_TOKENS``: ŝ, ε and page_max against the float64 reference (pages of 4 tokens:
    T = 4 holds a whole page in a thread, T = 2 half of one), on the word and the byte paths."""
    monkeypatch.setattr(code_scan, "THREAD_TOKENS", tokens)
    codes_tests.test_code_bounds_equal_the_reference(*case, poison)


@pytest.mark.parametrize("case", [BOUNDS_CASES[i] for i in (1, 2)])  # float32 8 bits ALiBi, float16 4 bits
def test_thread_tokens_with_byte_codes_equal_the_reference(case, monkeypatch, poison):
    """``THREAD_TOKENS`` on the byte path of float32 work (``WORD_CODES = False``; float64
    work takes it always, in the cases above)."""
    monkeypatch.setattr(code_scan, "THREAD_TOKENS", 4)
    monkeypatch.setattr(code_scan, "WORD_CODES", False)
    codes_tests.test_code_bounds_equal_the_reference(*case, poison)


@pytest.mark.parametrize("tokens,page,block_p,bits,group,alibi,dtype,scale", [
    (4, 16, 2, 4, 4, False, torch.float16, 0.3), (2, 16, 4, 8, 1, True, torch.float32, 0.3),
    (4, 4, 1, 8, 2, True, torch.bfloat16, 0.3), (8, 16, 2, 4, 3, False, torch.float64, 0.3),
    (4, 16, 2, 4, 2, False, torch.float32, -0.3), (2, 4, 2, 8, 4, False, torch.float16, 0.3),
])
def test_thread_tokens_equal_the_default_form(tokens, page, block_p, bits, group, alibi, dtype, scale, monkeypatch,
                                              poison):
    """Under the interpreter the token-group tile holds the default tile's values at the same
    places (token j·T + i at j·T + i), so page_max, ε and every coded token's ŝ equal the
    default form's bit for bit — a token or channel put in the wrong place shows here; pages of
    16 tokens (the benchmark's) and 4, ragged rows, a block not dividing the page count. Also
    the step's call (no scores, no ALiBi: the page best taken before q·kmin and the scale;
    a negative scale takes the min) against the call with scores, bit for bit."""
    seed = fresh_seed()
    lens = codes_tests.lengths(seed, 3, page)
    if all((n - 1) // page == 0 for n in lens):  # every row within its first page (~0.2% of seeds: CI
        lens[-1] += page                         # drew one): one coded page at least, for the checks below
    cache = codes_tests.coded_cache(seed, lens, 2, 24, page, bits, dtype, capacity=(max(lens) // page + 2) * page)
    g = torch.Generator().manual_seed(seed + 1)
    q = (torch.randn(3, 2 * group, 24, generator=g, dtype=torch.float64) * 2).to(dtype)
    slopes = torch.rand(2 * group, generator=g) * 0.2 if alibi else None
    args = (q, cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes, bits, scale)
    monkeypatch.setattr(code_scan, "BLOCK_P", block_p)
    outs = []
    for t in (1, tokens):
        monkeypatch.setattr(code_scan, "THREAD_TOKENS", t)
        outs.append((code_scan.code_bounds(*args, True), code_scan.code_bounds(*args, False)))
    coded = coded_pages(cache).expand_as(outs[0][0][0])
    tokens_coded = coded.repeat_interleave(page, -1)
    assert bool(coded.any()), seed
    (base, base_step), (got, got_step) = outs
    assert torch.equal(base[0], got[0]) and torch.equal(base[1], got[1]), seed
    assert torch.equal(base[2][tokens_coded], got[2][tokens_coded]), seed
    assert torch.equal(got_step[0], got[0]) and torch.equal(got_step[1], got[1]), seed
    assert torch.equal(base_step[0], got_step[0]), seed


@pytest.mark.parametrize("tokens", [2, 4])
def test_thread_tokens_on_any_page_block_and_head_dim(tokens, monkeypatch, poison):
    """``THREAD_TOKENS`` with the launch-block and odd-head-dim cases of ``test_kernels_codes``
    (blocks not dividing the page count, D = 15 and 9: a last byte with one channel)."""
    monkeypatch.setattr(code_scan, "THREAD_TOKENS", tokens)
    for case in [(2, torch.float32, 4, 2, False, 15), (4, torch.float16, 4, 4, False, 9),
                 (8, torch.bfloat16, 4, 4, True, 16)]:
        codes_tests.test_scan_ops_on_any_page_block_and_head_dim(*case, False, monkeypatch, poison)  # CUDA cores


def test_thread_tokens_specialisations_compile_for_sm90(monkeypatch, tmp_path):
    """The token-group form compiles for sm_90 (the interpreter never compiles): code_bounds'
    specialisations of ``test_kernels_compile.record_code_scan`` (4 and 8 bits, every cache
    dtype, ALiBi, scores, the step's form) at T = 4, and T = 2 with a negative scale, through
    ``compile_specs.py`` without the interpreter (Triton's bundled ptxas; no GPU)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_kernels_compile import _encode, record_code_scan

    specs: dict[str, list] = {}

    def record_spec(kernel, bound):
        bound = {k: _encode(v) for k, v in bound.items()}
        if kernel.fn.__name__ == "_code_bounds_kernel" and bound["T"][1] > 1:
            key = json.dumps([v if k.isupper() or v[0] == "tensor" else v[0] for k, v in sorted(bound.items())])
            specs.setdefault(key, [kernel.fn.__module__, kernel.fn.__name__, bound])

    with kernel_launches(record_spec):
        monkeypatch.setattr(code_scan, "THREAD_TOKENS", 4)
        record_code_scan(monkeypatch)
        monkeypatch.setattr(code_scan, "THREAD_TOKENS", 2)  # and T = 2 with a negative scale, 4 and 8 bits
        for bits in (4, 8):
            cache, q, _, _ = coded_setup(0, torch.float16, bits, 2, False, d=16, lens=[40])
            code_scan.code_bounds(q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens,
                                  None, bits, -0.25, False)
    monkeypatch.undo()
    assert any(s[2]["NEG_SCALE"][1] for s in specs.values()) and len(specs) >= 10, len(specs)
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(list(specs.values())))
    script = Path(__file__).with_name("compile_specs.py")
    result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                            env=dict(os.environ, TRITON_INTERPRET="0"), timeout=1200)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "compiled for sm_90" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("launch", [(2, 1), (4, 2), (2, 2), (8, 4)])
@pytest.mark.parametrize("tokens", [2, 4])
@pytest.mark.parametrize("dtype,bits,alibi", [
    (torch.float16, 4, False), (torch.float16, 8, True), (torch.bfloat16, 4, True), (torch.float32, 4, False),
    # why T > 1 is not the default: with THREAD_TOKENS = 4 as the default, the H200 gave a float32
    # cache with ALiBi a page_max that is not bit for bit the max of the stored ŝ (session 9,
    # call 5; both within the certificate's rounding allowance). Not run at these launches since.
    pytest.param(torch.float32, 4, True, marks=pytest.mark.xfail(
        reason="page_max vs stored ŝ differ in the last bits for float32 + ALiBi on the H200", strict=False)),
])
def test_thread_tokens_on_cuda_match_the_reference(launch, tokens, dtype, bits, alibi, monkeypatch):
    """``THREAD_TOKENS`` compiled for the GPU at the launches the lead may time, against the
    reference (``test_code_scan_on_cuda_matches_the_reference``: ŝ within the rounding part, ε,
    page_max, the interval, both passes' candidates)."""
    monkeypatch.setattr(code_scan, "THREAD_TOKENS", tokens)
    monkeypatch.setattr(code_scan, "BLOCK_P", launch[0])
    monkeypatch.setattr(code_scan, "NUM_WARPS", launch[1])
    codes_tests.test_code_scan_on_cuda_matches_the_reference(dtype, bits, alibi)
    # the step's call (page best before q·kmin and the scale) equals the call with scores, bit for bit
    stream, cache = codes_tests.cuda_cache(dtype, bits, seed=bits + 2 * alibi)
    q, _, _ = stream.step()
    slopes = torch.rand(16, device="cuda") * 0.01 if alibi else None
    args = (q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes, bits, 128 ** -0.5)
    with_scores, step = code_scan.code_bounds(*args, True), code_scan.code_bounds(*args, False)
    assert torch.equal(with_scores[0], step[0]) and torch.equal(with_scores[1], step[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,value", VARIANTS + [("NUM_WARPS", 1)])
def test_variant_on_cuda_matches_the_reference(name, value, monkeypatch):
    """The compiled variants (and one warp a program) against the reference on the GPU."""
    monkeypatch.setattr(code_scan, name, value)
    codes_tests.test_code_scan_on_cuda_matches_the_reference(torch.float16, 4, True)
