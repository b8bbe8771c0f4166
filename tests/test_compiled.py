"""CUDA-graph capture of a decode step. The replay test needs a GPU: CPU CI skips it, and
benchmarks/gpu_check.py (part C) runs the same comparison on the H200."""

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.compiled import GraphedDecodeStep, compile_decode_step
from helpers import make_cache, random_step


def test_compiled_step_refuses_a_cache_with_a_host_length():
    cache, _, _ = make_cache(50, 1, 1, 8, 4, [5], dtype=torch.float32)
    q, kn, vn = random_step(torch.Generator().manual_seed(0), 1, 1, 1, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="without_host_len"):
        compile_decode_step(ekv.DecodeConfig(), backend="aot_eager")(cache, q, kn, vn)


def test_graphs_need_a_cuda_cache():
    cache, _, _ = make_cache(51, 1, 1, 8, 4, [5], dtype=torch.float32)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA cache"):
        GraphedDecodeStep(cache, ekv.DecodeConfig(), num_q_heads=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("selector", [ekv.Dense(), ekv.TopK(coverage=0.25), ekv.Exact(max_pages=3)], ids=repr)
def test_graph_replays_equal_eager_steps(selector):
    cache, _, _ = make_cache(52, 2, 2, 16, 4, [37, 20], dtype=torch.float32)
    cache = cache.to(device="cuda")
    config = ekv.DecodeConfig(alpha=1.5, selector=selector)
    decoder = GraphedDecodeStep(cache.fork(), config, num_q_heads=4, compile=False)
    eager = cache.fork()
    g = torch.Generator().manual_seed(53)
    for _ in range(12):  # crosses page boundaries
        q, kn, vn = (x.cuda() for x in random_step(g, 2, 4, 2, 16, dtype=torch.float32))
        out = decoder(q, kn, vn).clone()
        eager, expected = ekv.decode_step(eager, q, kn, vn, config)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(decoder.cache.seq_lens, eager.seq_lens)


def test_many_compiled_configs_live_in_one_process():
    """Each compiled step owns its dynamo cache: before, the 9th config failed (recompile limit)."""
    selectors = [ekv.Dense(), ekv.TopK(token_budget=8), ekv.TopK(coverage=0.5), ekv.TopK(coverage=0.25, recent_pages=1),
                 *(ekv.Gaussian(tau_mode=m, solver_iters=4) for m in ("exact", "fixed", "corrected")),
                 ekv.Exact(), ekv.Exact(max_pages=2), ekv.Gaussian(sink_pages=0, solver_iters=4)]
    cache, _, _ = make_cache(54, 1, 1, 8, 4, [13], dtype=torch.float32)
    q, kn, vn = random_step(torch.Generator().manual_seed(55), 1, 2, 1, 8, dtype=torch.float32)
    steps = [compile_decode_step(ekv.DecodeConfig(1.5, s), backend="eager") for s in selectors]
    for selector, step in zip(selectors, steps):
        _, out = step(cache.fork().without_host_len(), q, kn, vn)
        _, expected = ekv.decode_step(cache.fork(), q, kn, vn, ekv.DecodeConfig(1.5, selector))
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    _, again = steps[0](cache.fork().without_host_len(), q, kn, vn)  # the first one still works
    torch.testing.assert_close(again, ekv.decode_step(cache.fork(), q, kn, vn)[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config,error,match", [
    ("1.5", TypeError, "config must be an entmaxkv.DecodeConfig"),
    (1.5, TypeError, "config must be an entmaxkv.DecodeConfig"),
])
def test_compile_checks_the_config_before_tracing(config, error, match):
    with pytest.raises(error, match=match):
        compile_decode_step(config, backend="eager")


def test_general_alpha_gaussian_step_copies_nothing_from_the_host(monkeypatch):
    """α = 1.25 integrates the Gaussian moments numerically; the quadrature nodes used to be
    copied from a Python list at every call (a host sync, and a CUDA-graph capture failure).
    No tensor may be built from host data inside a step. (That the step also compiles with
    fullgraph=True is tested at α = 1.5 in test_decode; on the GPU, benchmarks/gpu_check.py
    part E runs α = 1.25 under set_sync_debug_mode("error") and a CUDA-graph capture.)"""
    cache, _, _ = make_cache(56, 2, 2, 8, 4, [37, 20], dtype=torch.float32)
    q, kn, vn = random_step(torch.Generator().manual_seed(57), 2, 4, 2, 8, dtype=torch.float32)
    config = ekv.DecodeConfig(alpha=1.25, selector=ekv.Gaussian(tau_mode="corrected"))

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was built from host data inside a decode step")

    with monkeypatch.context() as m:
        m.setattr(torch, "tensor", refuse)
        m.setattr(torch, "as_tensor", refuse)
        _, out, _ = ekv.decode_step(cache.fork(), q, kn, vn, config, with_info=True)
    assert torch.isfinite(out).all()


class _FakeGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


def _graphed_without_cuda():
    """A GraphedDecodeStep's input side, without capturing (CPU CI has no CUDA)."""
    decoder = object.__new__(GraphedDecodeStep)
    decoder.q, decoder.k_new, decoder.v_new = torch.zeros(2, 4, 1, 8), torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8)
    decoder.graph, decoder.out = _FakeGraph(), torch.zeros(2, 4, 1, 8)
    return decoder


@pytest.mark.parametrize("make,error,match", [
    (lambda q, k, v: (q[:, :1], k, v), ValueError, r"q must have the captured shape \(2, 4, 1, 8\), got \(2, 1, 1, 8\)"),
    (lambda q, k, v: (q, k[:1], v), ValueError, r"k_new must have the captured shape"),
    (lambda q, k, v: (q, k, v.double()), TypeError, r"v_new must have the captured dtype torch.float32"),
    (lambda q, k, v: (q.to("meta"), k, v), ValueError, r"q must be on the captured device cpu, got meta"),
    (lambda q, k, v: (q, k.numpy(), v), TypeError, r"k_new must be a torch.Tensor"),
])
def test_graphed_step_checks_its_inputs_before_copying(make, error, match):
    decoder = _graphed_without_cuda()
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8)
    with pytest.raises(error, match=match):
        decoder(*make(q, k, v))
    assert decoder.graph.replays == 0 and not decoder.q.any()  # nothing copied, nothing replayed
    decoder(q, k, v)
    assert decoder.graph.replays == 1 and torch.equal(decoder.q, q)


# ---- Triton compile-cache sizes (the GPU test in test_ops_gpu.py uses this helper) ----------------


def test_kernel_discovery_finds_every_jit_function_of_the_kernels_package():
    """Independent of the helper: every ``@triton.jit`` def in kernels/*.py, by a source scan."""
    import re
    from pathlib import Path

    from entmaxkv.compiled.kernel_cache import triton_kernels

    root = Path(__file__).resolve().parent.parent / "kernels"
    expected = {f"entmaxkv.kernels.{path.stem}.{name}" for path in root.glob("*.py")
                for name in re.findall(r"^@triton\.jit[^\n]*\n(?:@[^\n]*\n)*def (\w+)", path.read_text(), re.M)}
    assert len(expected) > 5
    assert set(triton_kernels()) == expected


def test_cache_entries_reads_each_triton_layout():
    """The counting on real ``JITFunction`` objects, with entries placed as each Triton version
    stores them (compiling needs a GPU; the GPU test checks that launches do land there)."""
    import types

    from triton.runtime.jit import JITFunction

    from entmaxkv.compiled.kernel_cache import cache_entries

    def body(x):
        pass

    fn = JITFunction(body)
    assert cache_entries(fn) == 0 and len(fn.device_caches) == 0  # reading created no entry
    fn.device_caches[0] = ({"a": 1, "b": 2}, {}, "target", "backend", "binder")  # Triton 3.5-3.7
    fn.device_caches[1] = ({"c": 3}, "target", "backend", "binder")  # early 3.x
    assert cache_entries(fn) == 3
    fn.device_caches[2] = ({"d": 4}, {}, "target", "backend", "binder", "lock")  # a lock appended
    assert cache_entries(fn) == 4
    old = types.SimpleNamespace(cache={0: {"a": 1}, 1: {"b": 2, "c": 3}})  # Triton 2.x
    assert cache_entries(old) == 3
    assert cache_entries(types.SimpleNamespace(fn=body)) is None  # no compile cache (interpreter)
    fn.device_caches[3] = ("unknown",)
    with pytest.raises(TypeError, match="unknown Triton compile-cache layout"):
        cache_entries(fn)


def test_compiled_kernels_start_with_empty_caches_on_the_installed_triton():
    """Without the interpreter the kernels are real ``JITFunction``s: the installed Triton
    must expose the cache where the helper reads it (0 entries before any launch, not None)."""
    import os
    import subprocess
    import sys

    code = ("from entmaxkv.compiled.kernel_cache import kernel_cache_sizes as k; s = k(); "
            "assert s and all(v == 0 for v in s.values()), s; print(len(s))")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip()) > 5


# ---- compile cost of the Gaussian τ̂ solver ------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.5, 1.25])  # a closed form; Fejér quadrature
def test_gaussian_solver_steps_do_not_grow_the_compiled_graph(alpha):
    """Each bisection step of solve_gaussian_tau is one nested compile region: 45 more steps add
    a few call nodes each, not the ~40-60 nodes of F(τ) they used to (3,110 nodes at 30 + 50
    steps before, Inductor ~15× slower than a Dense step on a CPU). Compiled equals eager
    bitwise: the regions run the same ops."""
    from entmaxkv.gaussian import solve_gaussian_tau

    g = torch.Generator().manual_seed(7)
    mu = torch.randn(2, 2, 3, 9, generator=g, dtype=torch.float64)
    sigma = torch.rand(2, 2, 3, 9, generator=g, dtype=torch.float64)
    count = torch.where(torch.arange(9) < 7, 16.0, 0.0).double().expand_as(mu)  # two pages not modelled
    exact = torch.randn(2, 2, 3, 16, generator=g, dtype=torch.float64).masked_fill(torch.arange(16) >= 5, float("-inf"))

    def nodes(iters: int) -> int:
        torch._dynamo.reset()
        sizes: list[int] = []

        def count_nodes(gm, example_inputs):
            sizes.append(len(gm.graph.nodes))
            return gm.forward

        solve = torch.compile(lambda *a: solve_gaussian_tau(*a, alpha, iters=iters), fullgraph=True,
                              backend=count_nodes)
        assert torch.equal(solve(mu, sigma, count, exact), solve_gaussian_tau(mu, sigma, count, exact, alpha, iters))
        return sizes[0]

    per_step = (nodes(50) - nodes(5)) / 45
    assert 0 < per_step <= 6, per_step  # unrolled (before): 38 (α = 1.5) and 54 (α = 1.25) per step
