"""Every kernel specialisation the ops launch compiles for sm_90 (H100/H200) — checked on the CPU.

The interpreter runs kernels without compiling them, so errors that only the compiler finds
(int32/int64 mismatches between branches, dot operand dtypes) would first appear on the GPU.
This records the specialisations a small decode launches through every selector, α and cache
dtype, adds the GPU-only ones (native fp16/bf16 dots, decided by the device), and compiles
each for sm_90 in a subprocess without the interpreter (Triton's bundled ptxas; no GPU).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import entmaxkv as ekv
from helpers import SEARCHES, kernel_launches, make_cache, random_step, use_search

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels import page_scores  # noqa: E402

SELECTORS = [ekv.Dense(), ekv.TopK(token_budget=16), ekv.Gaussian(tau_mode="fixed"),
             ekv.Gaussian(tau_mode="corrected"), ekv.Exact(initial_pages=1, rounds=1)]


def _encode(value):
    if isinstance(value, torch.Tensor):
        return ["tensor", str(value.dtype).removeprefix("torch.")]
    if isinstance(value, triton.language.dtype):
        return ["tldtype", value.name]
    for kind in (bool, int, float):
        if isinstance(value, kind):
            return [kind.__name__, value]
    raise TypeError(f"cannot record a kernel argument of type {type(value).__name__}")


def _dot_stages(spec: dict) -> int:
    """The pipeline stages ``page_scores``' launcher gives a looped tensor-core form."""
    more = spec["WITH_MEAN"] == ["bool", True] or spec["WITH_SIGMA"] == ["bool", True]
    return page_scores.DOT_STAGES_WITH_MEAN if more else page_scores.DOT_STAGES


def record_code_scan(monkeypatch) -> None:
    """Exact with key codes (the code_scan ops): 4 and 8 bits, every cache dtype (float64
    too: its exact-division branch), with and without ALiBi; the step's forms (seed, newest
    page, τ margin, page list) and the ops' plain ones (``with_scores``, a given τ_low)."""
    from entmaxkv.kernels.code_scan import code_bounds, code_candidates

    # USE_DOT off: the CUDA-core path for every dtype; on (the default), D = 16: 8 bits
    # take the tensor-core path of float32 work (code_scan.uses_dot), 4 bits the CUDA-core one;
    # D = 32: both widths on tensor cores (4 bits: one dot per nibble), float16 and bfloat16
    for dtype, d, dot in ((torch.float32, 16, False), (torch.float16, 16, False), (torch.bfloat16, 16, False),
                          (torch.float64, 16, False), (torch.float32, 16, True), (torch.float16, 32, True),
                          (torch.bfloat16, 32, True)):
        monkeypatch.setattr("entmaxkv.kernels.code_scan.USE_DOT", dot)
        g = torch.Generator().manual_seed(1)
        k, v = (torch.randn(1, 1, 40, d, generator=g).to(dtype) for _ in range(2))
        q, kn, vn = random_step(g, 1, 2, 1, d, dtype)
        for bits in (4, 8):
            empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=64, dtype=dtype,
                                           key_bits=bits)
            cache = ekv.prefill(empty, k, v, [40])
            for alpha, slopes in ((1.5, None), (1.25, torch.full((2,), 0.1))):
                config = ekv.DecodeConfig(alpha, ekv.Exact(top_tokens=2, max_candidates=8), backend="triton")
                ekv.decode_step(cache.fork(), q, kn, vn, config, alibi_slopes=slopes, with_info=True)
            out = code_bounds(q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens,
                              None, bits, 0.25, True)
            # code_candidates with a given τ_low (the step passes the seed's τ and lowers it itself)
            tau = torch.zeros((1, 1, 2), dtype=torch.float64)
            code_candidates(q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, None,
                            out[0], out[1], tau, bits, 0.25, 0.5, 8)


def record_fused_topk() -> None:
    """TopK's coverage count (the budget one is in SELECTORS) with recent pages, every cache
    dtype, with and without ALiBi (their rows are short: quest_select ranks them); and
    quest_select / select_pages on rows longer than a register block (the streamed layout,
    reached at 16,384 pages on the GPU) and within one, with every threshold search
    (``helpers.SEARCHES``: the interpolation search, the default the steps above take, and the
    bitwise one at both radices, which benchmarks flip to), and quest_select's ranking."""
    from entmaxkv.kernels.quest_select import quest_select

    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        cache, _, _ = make_cache(0, 1, 1, 16, 16, [40], dtype=dtype)
        q, k, v = random_step(torch.Generator().manual_seed(0), 1, 2, 1, 16, dtype)
        for slopes in (None, torch.full((2,), 0.1)):
            config = ekv.DecodeConfig(1.5, ekv.TopK(coverage=0.5, recent_pages=1), backend="triton")
            ekv.decode_step(cache.fork(), q, k, v, config, alibi_slopes=slopes)
    for search in SEARCHES:
        with pytest.MonkeyPatch.context() as mp:
            use_search(mp, search)
            mp.setattr("entmaxkv.kernels.quest_select.RANK_PAGES", 0)  # rows of 40 pages: search them
            for max_block in (16, 64):  # rows of 40 pages: streamed in 16-page blocks, or one block
                mp.setattr("entmaxkv.kernels.quest_select.MAX_BLOCK", max_block)
                mp.setattr("entmaxkv.kernels.select_pages.MAX_BLOCK", max_block)
                for dtype in (torch.float32, torch.float64):
                    x = torch.randn(1, 1, 2, 40, dtype=dtype)
                    lens = torch.tensor([40 * 16])
                    for budget in (-1, 3):
                        quest_select(x, x, x.abs(), x[..., 0], x[..., 0].abs(), lens, None, 16, 16, 1.5, budget, 0.25,
                                     1, 1)
                    torch.ops.entmaxkv.select_pages(x[:, :, 0].contiguous(), torch.tensor([[3]], dtype=torch.int32),
                                                    40)
    for dtype in (torch.float32, torch.float64):  # ranked rows
        x = torch.randn(1, 1, 2, 40, dtype=dtype)
        for budget in (-1, 3):
            quest_select(x, x, x.abs(), x[..., 0], x[..., 0].abs(), torch.tensor([40 * 16]), None, 16, 16, 1.5, budget,
                         0.25, 1, 1)


def record_gaussian_select() -> None:
    """gaussian_select without the outlier rule (the selectors above keep it), on float32 and
    float64 page scores, over one chunk and several."""
    from entmaxkv.kernels.gaussian_select import gaussian_select

    for dtype in (torch.float32, torch.float64):
        x = torch.randn(1, 1, 2, 40, dtype=dtype)
        tau = torch.zeros(1, 1, 2, dtype=torch.float64)
        for chunk in (1024, 16):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr("entmaxkv.kernels.gaussian_select.CHUNK", chunk)
                gaussian_select(x, x.abs(), x, x, x.abs(), tau, 0.995, x[..., 0],
                                torch.tensor([40 * 16]), None, 16, 1.5, 0.0, 0.1, 0.0, False, 1, 0, 2.0 ** -10)


def record_sigma_forms() -> None:
    """page_scores' σ forms the default leaves out, on fp16 and bf16 caches (which take the
    tensor-core form with one tf32 dot): the CUDA-core σ form (``SIGMA_DOT`` off) and the
    tf32x3 dot (``SIGMA_ONE_PASS`` off), each in the Gaussian step with and without ALiBi."""
    for dtype in (torch.float16, torch.bfloat16):
        cache, _, _ = make_cache(0, 1, 1, 16, 16, [40], dtype=dtype)
        q, k, v = random_step(torch.Generator().manual_seed(0), 1, 2, 1, 16, dtype)
        for switch in ("SIGMA_DOT", "SIGMA_ONE_PASS"):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(f"entmaxkv.kernels.page_scores.{switch}", False)
                for slopes in (None, torch.full((2,), 0.1)):
                    config = ekv.DecodeConfig(1.5, ekv.Gaussian(), backend="triton")
                    ekv.decode_step(cache.fork(), q, k, v, config, alibi_slopes=slopes)


def record_gaussian_tau_forms() -> None:
    """gaussian_tau's three forms (``gaussian_tau.splits``, ``spreads``: one kernel, or the kept
    pages in (row, chunk) programs and then the solve, where the rows leave SMs idle; the kept
    pages and the solve apart where they fill the GPU), for the closed-form and quadrature
    moments."""
    cache, _, _ = make_cache(0, 1, 1, 16, 16, [40], dtype=torch.float32)
    q, k, v = random_step(torch.Generator().manual_seed(0), 1, 2, 1, 16, torch.float32)
    for form in ("one", "split", "spread"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("entmaxkv.kernels.gaussian_tau.splits", lambda rows, device: form == "split")
            mp.setattr("entmaxkv.kernels.gaussian_tau.SPREAD", form == "spread")
            mp.setattr("entmaxkv.kernels.gaussian_tau.SPREAD_P", 2)  # the cache's pages in chunks of 2
            mp.setattr("entmaxkv.kernels.gaussian_tau.SPREAD_MIN_PAGES", 0)
            for alpha in (1.5, 1.25):
                ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(alpha, ekv.Gaussian(), backend="triton"))


def record_tau_without_search_rounds() -> None:
    """sparse_decode's τ kernel with no rounds of the search from below (``EXACT_ITERS`` = 0, the
    bisection alone: tests/test_tau_fast_path.py runs it). On the H200 the while loop bounded by
    0 failed to compile (Triton 3.6, in TritonGPUCoalesce, at 33 splits; this CPU compile at the
    interpreter's split count did not reproduce it), so the kernel leaves the loop out."""
    cache, _, _ = make_cache(0, 1, 1, 16, 16, [40], dtype=torch.float32)
    q, k, v = random_step(torch.Generator().manual_seed(0), 1, 2, 1, 16, torch.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("entmaxkv.kernels.sparse_decode.EXACT_ITERS", 0)
        ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, ekv.Dense(), backend="triton"))


def record_tau_without_support_first() -> None:
    """sparse_decode's τ kernel without the move of the support to the front before its V pass
    (``V_SUPPORT_FIRST`` off; on by default), every cache dtype."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        cache, _, _ = make_cache(0, 1, 1, 16, 16, [40], dtype=dtype)
        q, k, v = random_step(torch.Generator().manual_seed(0), 1, 2, 1, 16, dtype)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("entmaxkv.kernels.sparse_decode.V_SUPPORT_FIRST", False)
            ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, ekv.Dense(), backend="triton"))


def record_page_box_upper() -> None:
    """page_box_upper (8-bit page boxes on int8 tensor cores) and box_bounds, fp16 and bf16."""
    from entmaxkv.kernels.box_bounds import box_bounds
    from entmaxkv.kernels.page_box_upper import page_box_upper
    from entmaxkv.page_box import box_codes

    for dtype in (torch.float16, torch.bfloat16):
        cache, _, _ = make_cache(0, 1, 1, 32, 16, [40], dtype=dtype)
        q = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
        page_box_upper(q, *box_codes(cache.k_min, cache.k_max), cache.seq_lens, 16, 0.3)
        box_bounds(q, *box_codes(cache.k_min, cache.k_max), cache.seq_lens, cache.k_pages, 0.3)


def test_kernel_launches_records_and_restores_the_interpreter():
    """``helpers.kernel_launches`` sees each launch with its arguments by name and puts the
    interpreter's launch back on leaving the block, also when the block raises."""
    from triton.runtime.interpreter import InterpretedFunction

    run, seen = InterpretedFunction.run, []
    cache, _, _ = make_cache(0, 1, 1, 16, 16, [40], dtype=torch.float32)
    q = torch.randn(1, 2, 16, generator=torch.Generator().manual_seed(0))
    args = (q, cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens, None, 16, 0.3, False)
    with pytest.raises(RuntimeError, match="inside"):
        with kernel_launches(lambda kernel, bound: seen.append((kernel.fn.__name__, bound["G"]))):
            page_scores.page_scores(*args)
            raise RuntimeError("inside")
    assert seen == [("_page_scores_kernel", 2)]
    assert InterpretedFunction.run is run
    page_scores.page_scores(*args)
    assert len(seen) == 1


def record_every_form(monkeypatch) -> None:
    """Every selector's step at every α, dtype and ALiBi choice, then each form no step takes by default."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        cache, _, _ = make_cache(0, 1, 1, 16, 16, [40], dtype=dtype)
        q, k, v = random_step(torch.Generator().manual_seed(0), 1, 2, 1, 16, dtype)
        for alpha in (1.0, 1.25, 1.5, 2.0):
            for i, sel in enumerate(SELECTORS):
                if alpha == 1.0 and i > 1:
                    continue
                slopes = torch.full((2,), 0.1) if i % 2 else None
                config = ekv.DecodeConfig(alpha, sel, backend="triton")
                ekv.decode_step(cache.fork(), q, k, v, config, alibi_slopes=slopes, with_info=True)
    record_code_scan(monkeypatch)
    record_fused_topk()
    record_gaussian_select()
    record_sigma_forms()
    record_gaussian_tau_forms()
    record_tau_without_search_rounds()
    record_tau_without_support_first()
    record_page_box_upper()


def test_every_specialisation_compiles_for_sm90(monkeypatch, tmp_path):
    specs: dict[str, list] = {}
    pdl_kernels: set[str] = set()

    def record_spec(kernel, bound):
        args_ = {k: _encode(v) for k, v in bound.items()}
        if "PDL" in kernel.arg_names and kernel.fn.__name__ not in pdl_kernels:  # a GPU launch form (kernels.pdl)
            pdl_kernels.add(kernel.fn.__name__)
            pdl_spec = dict(args_, PDL=["bool", True])
            specs[json.dumps([kernel.fn.__name__, "PDL"])] = [kernel.fn.__module__, kernel.fn.__name__, pdl_spec]
        for native in ((False, True) if "NATIVE" in args_ else (None,)):
            spec = dict(args_)
            if native is not None:  # the GPU takes the native-dot branch for fp16/bf16 caches
                spec["NATIVE"] = ["bool", native]
            # page_scores' tensor-core form multiplies bf16 natively on the GPU (float32 operands
            # only under the interpreter), and takes DOT_ITERS blocks a program (with σ
            # DOT_ITERS_WITH_SIGMA) in a pipelined loop where the grid is large (its stages as the
            # launcher picks them): compile those forms too
            forms = [spec] + ([dict(spec, DOT_F32=["bool", False])] if spec.get("DOT_F32") == ["bool", True] else [])
            if spec.get("DOT") == ["bool", True]:
                looped = {page_scores.DOT_ITERS} | ({page_scores.DOT_ITERS_WITH_SIGMA}
                                                    if spec.get("WITH_SIGMA") == ["bool", True] else set())
                forms += [dict(f, ITERS=["int", n], STAGES=["int", _dot_stages(f)]) for f in forms for n in looped]
            if kernel.fn.__name__ in ("_page_box_upper_kernel", "_box_bounds_kernel"):  # the GPU's loop at long rows
                forms += [dict(spec, ITERS=["int", page_scores.DOT_ITERS])]
            for form in forms:
                key = json.dumps([kernel.fn.__name__] + [v if k.isupper() or v[0] == "tensor" else v[0]
                                                         for k, v in sorted(form.items())])
                specs.setdefault(key, [kernel.fn.__module__, kernel.fn.__name__, form])

    with kernel_launches(record_spec):
        record_every_form(monkeypatch)
    monkeypatch.undo()

    native = [s for s in specs.values() if s[2].get("NATIVE", ["bool", False])[1]]
    native = [s for s in native if s[2].get("USE_DOT") == ["bool", True] or  # the code scans' inline PTX
              s[2].get("WORK", [0, "fp32"])[1] == "fp32" and
              any(v == ["tensor", d] for v in s[2].values() for d in ("float16", "bfloat16"))]
    chosen = [s for s in specs.values() if s[2].get("NATIVE", ["bool", False])[1] is False] + native
    assert any(s[1] == "_page_scores_kernel" and s[2].get("DOT") == ["bool", True]
               and s[2]["DOT_F32"] == ["bool", False] and s[2]["ITERS"] == ["int", page_scores.DOT_ITERS]
               and ["tensor", "bfloat16"] in s[2].values() for s in chosen), \
        "the GPU's bf16 tensor-core page scores, looped"
    assert any(s[1] == "_page_scores_kernel" and s[2].get("DOT") == ["bool", True]
               and s[2]["WITH_SIGMA"] == ["bool", True] for s in chosen), "σ on the tensor-core form"
    assert any(s[1] == "_page_box_upper_kernel" and ["tensor", "bfloat16"] in s[2].values() for s in chosen), \
        "page upper bounds from 8-bit boxes"
    assert any(s[1] == "_box_bounds_kernel" and ["tensor", "bfloat16"] in s[2].values() for s in chosen), \
        "box bounds and the newest page, one launch"
    assert any(s[1] == "_tau_kernel" and s[2].get("SUPPORT_FIRST") == ["bool", False]
               and ["tensor", "bfloat16"] in s[2].values() for s in chosen), "the τ kernel's V pass over every survivor"
    assert any(s[1] == "_tau_kernel" and s[2].get("SUPPORT_FIRST") == ["bool", True]
               and ["tensor", "bfloat16"] in s[2].values() for s in chosen), "the τ kernel's support-first V pass"
    for name in ("_gaussian_tau_kernel", "_gaussian_keep_kernel", "_gaussian_solve_kernel",  # the three τ̂ forms
                 "_gaussian_chunk_top_kernel", "_gaussian_chunk_keep_kernel", "_gaussian_gather_solve_kernel"):
        assert any(s[1] == name for s in chosen), name
    for bits in (4, 8):  # the code scans' inline PTX as the GPU compiles it, bfloat16 caches included
        assert any(s[1] == "_code_bounds_kernel" and s[2].get("NATIVE") == ["bool", True]
                   and s[2].get("BITS") == ["int", bits] and ["tensor", "bfloat16"] in s[2].values()
                   for s in chosen), f"the tensor-core code scan's native form, {bits} bits"
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(chosen))
    env = dict(os.environ, TRITON_INTERPRET="0")
    script = Path(__file__).with_name("compile_specs.py")
    result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, env=env,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "compiled for sm_90" in result.stdout
