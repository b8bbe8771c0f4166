"""Programmatic dependent launch (``entmaxkv.kernels.pdl``): off the GPU it never applies; on
an H200 a graph-replayed step whose kernels overlap their launches gives the same bits as the
eager step launched without it, over steps that cross page edges, for every selector."""

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.kernels import pdl


def test_pdl_never_applies_off_cuda_or_under_a_tracer(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(pdl, "PDL", True)
    assert pdl.pdl_kwargs(torch.zeros(2), "append") == {"PDL": False}
    with FakeTensorMode():  # what torch.compile's passes call an op with: a CUDA tensor without data
        fake = torch.empty(2, device="cuda")
    assert fake.device.type == "cuda" and pdl.pdl_kwargs(fake, "append") == {"PDL": False}
    monkeypatch.setattr(pdl, "PDL", False)
    assert pdl.pdl_kwargs(torch.zeros(2), "append") == {"PDL": False}


@pytest.mark.parametrize("batch,kv_heads,dense,takes", [(1, 8, False, True), (1, 8, True, False),
                                                        (4, 8, False, False), (3, 10, False, True)])
def test_sparse_decode_asks_for_pdl_on_lists_of_few_rows(batch, kv_heads, dense, takes, monkeypatch):
    """``sparse_decode``'s two launches ask ``pdl_kwargs`` for one module: ``sparse_decode`` (in
    ``PDL_MODULES``) for a page list of fewer than ``PDL_ROWS_BELOW`` rows B·Hkv, else
    ``sparse_decode_dense`` (not in it) — the dense pass and lists of many rows, which measured
    slower with it (perf-log row 166). Off the GPU nothing launches with PDL; the choice is what
    a CUDA launch would take."""
    from entmaxkv.kernels import sparse_decode as module

    asked = []
    real = module.pdl_kwargs
    monkeypatch.setattr(module, "pdl_kwargs", lambda t, name: asked.append(name) or real(t, name))
    d, s, p, g = 16, 16, 3, 2
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(batch, kv_heads, p, s, d, generator=gen)
    lens = torch.full((batch,), 2 * s + 3, dtype=torch.int64)
    pages = torch.tensor([0, 1, -1], dtype=torch.int32).expand(batch, kv_heads, p).contiguous()
    count = torch.full((batch, kv_heads), 2, dtype=torch.int32)
    q = torch.randn(batch, kv_heads * g, d, generator=gen)
    module.sparse_decode(q, k, k.clone(), None, pages, count, lens, None, None, None, None, 1.5, 0.25, dense,
                         module.TAU_EXACT, 0)
    want = "sparse_decode" if takes else "sparse_decode_dense"
    assert asked == [want, want], asked
    assert ("sparse_decode" in pdl.PDL_MODULES.split(), "sparse_decode_dense" in pdl.PDL_MODULES.split()) == (
        True, False)
    assert dense or (batch * kv_heads < module.PDL_ROWS_BELOW) == takes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pdl_kwargs_on_cuda(monkeypatch):
    t = torch.zeros(2, device="cuda")
    monkeypatch.setattr(pdl, "PDL", False)
    assert pdl.pdl_kwargs(t, "append") == {"PDL": False}
    monkeypatch.setattr(pdl, "PDL", True)
    hopper = torch.cuda.get_device_capability()[0] >= 9
    assert pdl.pdl_kwargs(t, "append") == ({"PDL": True, "launch_pdl": True} if hopper else {"PDL": False})
    assert pdl.pdl_kwargs(t, "no_such_module") == {"PDL": False}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("alpha,selector,bits", [(1.0, ekv.TopK(coverage=0.125), None),
                                                 (1.5, ekv.TopK(coverage=0.125), None), (1.5, ekv.Dense(), None),
                                                 (2.0, ekv.TopK(token_budget=256), None), (1.5, ekv.Exact(), 4),
                                                 (2.0, ekv.Exact(), 8), (1.5, ekv.Gaussian(), None)],
                         ids=["topk-a1", "topk-a1.5", "dense-a1.5", "topk-budget-a2", "exact-codes4-a1.5",
                              "exact-codes8-a2", "gaussian-a1.5"])
def test_graph_replay_with_pdl_equals_eager_without(monkeypatch, alpha, selector, bits):
    _graph_replay_with_pdl_equals_eager_without(monkeypatch, alpha, selector, bits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("form", ["split", "spread"])
def test_graph_replay_with_pdl_equals_eager_without_gaussian_tau_forms(monkeypatch, form):
    """The τ̂ op's other launch forms (the case above takes the one kernel: 32 rows, ~1,250
    pages): the split form's two kernels and the spread form's three, the last of which reads
    what the kernel two launches before it wrote."""
    from entmaxkv.kernels import gaussian_tau

    if form == "split":
        monkeypatch.setattr(gaussian_tau, "splits", lambda rows, device: True)
    else:
        monkeypatch.setattr(gaussian_tau, "SPREAD_MIN_PAGES", 0)
    _graph_replay_with_pdl_equals_eager_without(monkeypatch, 1.5, ekv.Gaussian(), None)


def _graph_replay_with_pdl_equals_eager_without(monkeypatch, alpha, selector, bits):
    """A graph captured with PDL on (``PDL_MODULES``, the Gaussian step's modules among them)
    replays 40 steps to the bits of eager steps without it."""
    from entmaxkv.compiled import GraphedDecodeStep
    from entmaxkv.synthetic import SyntheticStream

    b, hq, hkv, d, n = 2, 16, 4, 128, 20000
    stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, seed=int(alpha * 10),
                             dtype=torch.float16, device="cuda")
    k, v = stream.prompt(n)
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=n + 64, dtype=torch.float16,
                                   device="cuda", key_bits=bits)
    cache = ekv.prefill(empty, k, v, [n, n - 37])  # ragged: the rows cross page edges at different steps
    config = ekv.DecodeConfig(alpha, selector)
    monkeypatch.setattr(pdl, "PDL", True)
    decoder = GraphedDecodeStep(cache.fork(), config, num_q_heads=hq, compile=False)
    monkeypatch.setattr(pdl, "PDL", False)
    eager = cache.fork()
    for _ in range(40):
        q, kn, vn = stream.step()
        got = decoder(q, kn, vn).clone()
        eager, want = ekv.decode_step(eager, q, kn, vn, config)
        assert torch.equal(got, want)
    assert torch.equal(decoder.cache.seq_lens, eager.seq_lens)


def test_every_kernel_launched_with_pdl_waits_first():
    """Every kernel a launch gives ``pdl_kwargs`` starts with ``pdl_enter(PDL)`` (before any
    memory access): a PDL kernel that read or wrote before waiting would race with the kernel
    before it, which a GPU test sees only if the race happens to bite. Read from the source:
    each ``wrap_triton(kernel)[grid](..., **pdl_kwargs(...))`` in ``kernels/``."""
    import ast
    from pathlib import Path

    import entmaxkv.kernels as kernels

    trees = {path.name: ast.parse(path.read_text()) for path in sorted(Path(kernels.__file__).parent.glob("*.py"))}
    defs = {(file, f.name): f for file, tree in trees.items() for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}

    def kernel(file, name):
        """The launched kernel's def: in the launching file (``_list_kernel`` is a helper of
        gaussian_select and a launched kernel of quest_select), else the one def of that name
        (a kernel imported from another file)."""
        if (file, name) in defs:
            return defs[file, name]
        (found,) = [f for (_, n), f in defs.items() if n == name]
        return found
    launched = []
    for name_of_file, tree in trees.items():
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            pdl_launch = any(k.arg is None and isinstance(k.value, ast.Call) and getattr(k.value.func, "id", "")
                             == "pdl_kwargs" for k in call.keywords)
            if not pdl_launch:
                continue
            target = call.func  # wrap_triton(kernel)[grid]
            assert isinstance(target, ast.Subscript) and getattr(target.value.func, "id", "") == "wrap_triton", (
                name_of_file, call.lineno)
            name = target.value.args[0].id
            body = [s for s in kernel(name_of_file, name).body
                    if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            first = body[0]
            assert (isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
                    and getattr(first.value.func, "id", "") == "pdl_enter"
                    and [getattr(a, "id", None) for a in first.value.args] == ["PDL"]), (name_of_file, name)
            launched.append(name)
    # the modules of PDL_MODULES (and listed_tau and sparse_decode's dense pass: switchable, not in it by
    # default) all launch this way
    gaussian = {"_gaussian_tau_kernel", "_gaussian_keep_kernel", "_gaussian_solve_kernel", "_gaussian_chunk_top_kernel",
                "_gaussian_chunk_keep_kernel", "_gaussian_gather_solve_kernel", "_moments_kernel", "_keep_kernel",
                "_list_floor_kernel"}
    assert {"_code_bounds_kernel", "_code_candidates_kernel", "_seed_merge_kernel", "_append_kernel", "_scores_kernel",
            "_tau_kernel"} | gaussian <= set(launched)
