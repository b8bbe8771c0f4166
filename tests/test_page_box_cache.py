"""The cache's 8-bit page boxes (``PagedKVCache.empty(..., page_boxes=True)``): prefill, the
reference append and the ``append_token`` / ``page_statistics`` ops write every full page's
box, ``page_box.encode_boxes``' bits, and nothing else; a ``TopK`` step on a boxed cache ranks
by the box's bound on both backends (the kernels without reading the min/max) and the two
backends agree.
"""

import dataclasses
import random

import pytest
import torch
from torch.utils import _pytree as pytree

import entmaxkv as ekv
from entmaxkv.backend import build_step
from entmaxkv.bounds import quest_bounds
from entmaxkv.conventions import group_queries
from entmaxkv.page_box import CODE_MAX, box_upper, encode_boxes
from entmaxkv.state import BOX_FIELDS, append_token, boxes_of
from helpers import fresh_seed, make_cache, on_both_backends, random_step

S = 16
ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICES = ["cpu", pytest.param("cuda", marks=ON_GPU)]


def _lengths(seed: int, batch: int) -> list[int]:
    """Ragged lengths landing 0/1/15/16/17 tokens into a page (at least one page each)."""
    g = random.Random(seed)
    return [S * g.randrange(1, 5) + g.choice([0, 1, 15, 16, 17]) for _ in range(batch)]


def _assert_boxes_of_full_pages(cache, msg):
    """Every full page's box is encode_boxes of its stored min/max, bit for bit (by name: a
    reordered ``BOX_FIELDS`` is seen)."""
    full = cache.full_page_mask()[:, None, :].expand(cache.batch, cache.num_kv_heads, -1)
    for f, want in zip(("box_min", "box_max", "box_scale", "box_l1"), encode_boxes(cache.k_min, cache.k_max)):
        got = getattr(cache, f)
        assert torch.equal(got[full], want[full]), (f, msg)


def _poison_boxes(cache, every_page=False):
    """Sentinels in every box slot that is not a full page (or in every slot): a write there is
    seen."""
    empty = ~cache.full_page_mask()[:, None, :] | every_page
    for f in BOX_FIELDS:
        x = getattr(cache, f)
        fill = empty[..., None] if x.dim() == 4 else empty
        x.masked_fill_(fill, -99 if x.dtype == torch.int8 else float("nan"))


def _untouched(cache, before, pages, msg):
    """Box slots outside ``pages`` [B, P] bool still hold the sentinels of ``before``."""
    for f in BOX_FIELDS:
        got, old = getattr(cache, f), getattr(before, f)
        keep = ~pages[:, None, :].expand(cache.batch, cache.num_kv_heads, -1)
        assert torch.equal(got[keep].isnan() if got.is_floating_point() else got[keep],
                           old[keep].isnan() if old.is_floating_point() else old[keep]), (f, msg)


def test_empty_checks_page_boxes():
    with pytest.raises(TypeError, match="page_boxes must be a bool"):
        ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=32, capacity=16, page_boxes=1)
    with pytest.raises(ValueError, match="32 <= head_dim <= 512"):
        ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=16, capacity=16, page_boxes=True)
    plain = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=32, capacity=16)
    assert not plain.page_boxes and boxes_of(plain) == (None,) * 4 and plain.box_min is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_prefill_writes_the_box_of_every_full_page(dtype):
    seed = fresh_seed()
    lens = _lengths(seed, 3)
    cache, _, _ = make_cache(seed, 3, 2, 32, S, lens, dtype=dtype, spread=3.0, page_boxes=True)
    _assert_boxes_of_full_pages(cache, f"seed {seed}")
    empty = ~cache.full_page_mask()[:, None, :]
    assert not bool(cache.box_min.masked_select(empty[..., None]).any()), "slots of pages not full stay zero"
    assert not bool(cache.box_scale.masked_select(empty).any())


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_page_statistics_op_writes_the_boxes_prefill_writes(dtype):
    pytest.importorskip("triton")
    import entmaxkv.kernels  # noqa: F401

    seed = fresh_seed()
    want, _, _ = make_cache(seed, 3, 2, 48, S, _lengths(seed, 3), dtype=dtype, spread=3.0, page_boxes=True)
    got = want.fork()
    _poison_boxes(got, every_page=True)
    before = got.fork()
    torch.ops.entmaxkv.page_statistics(got.k_pages, got.seq_lens, got.k_min, got.k_max, got.k_mean, got.k_std,
                                       *boxes_of(got))
    _assert_boxes_of_full_pages(got, f"seed {seed}")
    _untouched(got, before, want.full_page_mask(), f"seed {seed}")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_append_writes_the_box_of_the_page_it_completes(backend, dtype):
    """Rows 15 tokens into a page (the append completes it), 16 (a new page starts), a full row
    (nothing written) and a random one; other box slots keep their sentinels."""
    from entmaxkv.backend import append

    seed = fresh_seed()
    capacity = 5 * S
    lens = [S * 2 + 15, S * 3, capacity, S * random.Random(seed).randrange(1, 4) + 15]
    cache, _, _ = make_cache(seed, 4, 2, 32, S, lens, capacity=capacity, dtype=dtype, spread=3.0, page_boxes=True)
    _poison_boxes(cache)
    _, k_new, v_new = random_step(torch.Generator().manual_seed(seed), 4, 2, 2, 32, dtype)
    new, fits = append(cache.fork(), k_new, v_new, backend == "triton")
    assert fits.tolist() == [True, True, False, True]
    _assert_boxes_of_full_pages(new, f"seed {seed}")
    completed = new.full_page_mask() & ~cache.full_page_mask()
    assert completed.sum(-1).tolist() == [1, 0, 0, 1]
    _untouched(new, cache, completed, f"seed {seed}")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_non_finite_and_huge_pages_get_the_vacuous_box(backend):
    """A page with an inf key, one with a NaN key, one of float64 keys past 127 × float32's
    largest value: codes ∓127, scale +inf, a bound of +inf; beside them an ordinary page, one
    whose keys are 1000 in channel 0 and ±5e-324 (float64 subnormals) elsewhere (codes −1/0 and
    0/1 there), and an all-zero one (scale 1, codes and l1 0). D = 48: not a power of two."""
    from entmaxkv.backend import append

    d, b = 48, 6
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=1, head_dim=d, capacity=2 * S, dtype=torch.float64,
                                   page_boxes=True)
    k = torch.randn(b, 1, S, d, dtype=torch.float64)
    k[0, 0, S - 1, 5] = float("inf")  # in the appended token: prefill refuses non-finite keys
    k[1, 0, S - 1, 0] = float("nan")
    k[2, 0, 2, 9] = -1e300
    tiny = torch.tensor(5e-324, dtype=torch.float64)
    k[4] = torch.where(torch.arange(S)[:, None] % 2 == 0, tiny, -tiny)
    k[4, 0, :, 0] = 1000.0
    k[5] = 0.0
    cache = ekv.prefill(cache, k[:, :, :S - 1], k[:, :, :S - 1], [S - 1] * b)
    last = k[:, :, S - 1:]  # a strided view: the op copies it (tests/test_kernels.py)
    new, _ = append(cache, last, last, backend == "triton")
    code_min, code_max, scale, l1 = (getattr(new, f)[:, 0, 0] for f in BOX_FIELDS)
    assert torch.isinf(scale[:3]).all() and bool(torch.isfinite(scale[3:]).all())
    assert bool((code_min[:3] == -CODE_MAX).all()) and bool((code_max[:3] == CODE_MAX).all())
    assert torch.equal(l1[:3], torch.full((3,), float(CODE_MAX * d)))
    assert code_min[4, 1:].tolist() == [-1] * (d - 1) and code_max[4, 1:].tolist() == [1] * (d - 1)
    assert code_max[4, 0] == CODE_MAX and l1[4] == CODE_MAX + d - 1  # code_min 126 or 127: a floor
    assert scale[5] == 1 and not code_min[5].any() and not code_max[5].any() and l1[5] == 0
    q = torch.randn(b, 1, d, dtype=torch.float64)
    upper, _ = box_upper(q, *boxes_of(new), 0.2, 1e-12)
    assert bool(torch.isposinf(upper[:3, 0, 0, 0]).all()) and bool(torch.isfinite(upper[3:, 0, 0, 0]).all())
    assert upper[5, 0, 0, 0] == 0, "an all-zero page's scores are all 0"
    _assert_boxes_of_full_pages(new, backend)


@pytest.mark.interpreter
def test_opcheck_of_the_ops_that_write_boxes():
    pytest.importorskip("triton")
    import entmaxkv.kernels  # noqa: F401

    cache, _, _ = make_cache(1, 2, 2, 32, S, [S * 3, S * 2 + 15], capacity=S * 3, dtype=torch.float32,
                             page_boxes=True)
    _, k, v = random_step(torch.Generator().manual_seed(1), 2, 2, 2, 32, torch.float32)
    c = cache.fork()
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        torch.library.opcheck(torch.ops.entmaxkv.append_token.default,
                              (c.k_pages, c.v_pages, c.k_min, c.k_max, c.k_mean, c.k_std, c.seq_lens - 1, k, v,
                               c.capacity, None, 0, *boxes_of(c)))
        torch.library.opcheck(torch.ops.entmaxkv.page_statistics.default,
                              (c.k_pages, c.seq_lens, c.k_min, c.k_max, c.k_mean, c.k_std, *boxes_of(c)))
    with pytest.raises(ValueError, match="box_scale must be a contiguous torch.float32"):
        torch.ops.entmaxkv.page_statistics(c.k_pages, c.seq_lens, c.k_min, c.k_max, c.k_mean, c.k_std, c.box_min,
                                           c.box_max, c.box_l1[..., :-1], c.box_l1)


def test_fork_to_capacity_and_pytree_keep_the_boxes():
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 32, S, [S * 3 + 4, S * 2], dtype=torch.float16, spread=3.0,
                             page_boxes=True)
    leaves, spec = pytree.tree_flatten(cache)
    assert len(leaves) == 11
    again = pytree.tree_unflatten(leaves, spec)
    assert again.page_boxes and all(getattr(again, f) is getattr(cache, f) for f in BOX_FIELDS)
    forked = cache.fork()
    assert all(torch.equal(getattr(forked, f), getattr(cache, f)) for f in BOX_FIELDS)
    assert forked.box_min.data_ptr() != cache.box_min.data_ptr()
    bigger = cache.with_capacity(cache.capacity + 5 * S)
    assert bigger.page_boxes and bigger.box_scale.shape[-1] == bigger.num_pages
    assert torch.equal(bigger.box_min[:, :, :cache.num_pages], cache.box_min)
    wide = cache.to(torch.float64)  # exact conversion: the same boxes
    assert all(torch.equal(getattr(wide, f), getattr(cache, f)) for f in BOX_FIELDS)
    lossy = wide.to(torch.float32)
    lossy = dataclasses.replace(lossy, k_pages=lossy.k_pages * 1.001).to(torch.float16)  # min/max change
    _assert_boxes_of_full_pages(lossy, f"lossy to(), seed {seed}")  # recomputed, not carried over
    assert not torch.equal(lossy.box_scale, cache.box_scale)


# ---- the TopK step on a boxed cache ----------------------------------------------------------

TOPKS = [ekv.TopK(token_budget=32), ekv.TopK(coverage=0.3, recent_pages=1)]


@pytest.mark.interpreter
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_topk_on_a_boxed_cache_equals_the_reference(alpha, dtype):
    """The same pages and outputs on both backends, with and without ``info`` (the box bound
    is ``Step.upper`` in both), and the dropped-mass bound safe on both."""
    pytest.importorskip("triton")
    seed = fresh_seed()
    lens = [S * random.Random(seed).randrange(5, 9) + 3, S * 6]
    cache, _, _ = make_cache(seed, 2, 2, 32, S, lens, dtype=dtype, spread=2.0, page_boxes=True)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 32, dtype)
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    for sel in TOPKS:
        (c1, o1, i1), (c2, o2, i2) = on_both_backends(cache, q, k, v, alpha, sel)
        msg = f"{sel} seed {seed}"
        assert torch.equal(i1.page_mask, i2.page_mask), msg
        torch.testing.assert_close(o2, o1, rtol=tol, atol=tol, msg=msg)
        for f in BOX_FIELDS:
            assert torch.equal(getattr(c1, f), getattr(c2, f)), (f, msg)
        for backend, out in (("torch", o1), ("triton", o2)):
            config = ekv.DecodeConfig(alpha, sel, backend=backend)
            _, plain = ekv.decode_step(cache.fork(), q, k, v, config)
            assert torch.equal(plain, out), (backend, msg)


def _magnitude(cache, q):
    """[B, Hkv, G, P] float64 Σ_d |q_d|·max(|k_min_d|, |k_max_d|): the scale of a Quest bound's
    rounding error."""
    qg = group_queries(q.double(), cache.num_kv_heads)
    big = torch.maximum(cache.k_min.double().abs(), cache.k_max.double().abs())
    return torch.einsum("bhgd,bhpd->bhgp", qg.abs(), big)


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_topk_ranks_by_the_box_and_the_kernels_read_no_min_max(backend, monkeypatch):
    """``Step.upper`` is the box bound (not the exact range's Quest bound) on a boxed cache,
    the exact range's without boxes and with ALiBi; the kernel step launches no ``page_bounds``."""
    pytest.importorskip("triton")
    from entmaxkv.kernels.page_scores import rounding_gamma

    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 32, S, [S * 6 + 3, S * 5], dtype=torch.float32, spread=2.0,
                             page_boxes=True)
    q, _, _ = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 32, torch.float32)
    kernels = backend == "triton"
    real = torch.ops.entmaxkv.page_bounds

    def refuse(*args):
        raise AssertionError("page_bounds launched on a TopK step of a boxed cache")

    monkeypatch.setattr(torch.ops.entmaxkv, "page_bounds", refuse)
    step = build_step(cache, q, 1.5, 0.2, None, kernels=kernels, needs_sigma=False, needs_newest_scores=False,
                      needs_means=False, box_bound=True)
    monkeypatch.setattr(torch.ops.entmaxkv, "page_bounds", real)
    want, _ = box_upper(q[:, :, 0], *boxes_of(cache), 0.2, rounding_gamma(torch.float32, 32))
    quest = quest_bounds(cache, q, 0.2)
    full = cache.full_page_mask()[:, None, None, :].expand_as(want)
    torch.testing.assert_close(step.upper.double()[full], want[full], rtol=1e-6, atol=0, msg=f"seed {seed}")
    assert bool((step.upper[full] > quest[full]).all()), "the box is looser than the exact range"
    assert not kernels or step.ops.newest_max is not None
    slopes = torch.tensor([0.0, 0.05, 0.1, 0.2])
    for c, alibi in ((dataclasses.replace(cache, page_boxes=False, box_min=None, box_max=None, box_scale=None,
                                          box_l1=None), None), (cache, slopes)):
        plain = build_step(c, q, 1.5, 0.2, alibi, kernels=kernels, needs_sigma=False, needs_newest_scores=False,
                           needs_means=False, box_bound=True)
        ref = quest_bounds(cache, q, 0.2, alibi)
        # Two float32 evaluations of one bound differ by the rounding of its sums, which scales
        # with Σ|q|·max(|k_min|, |k_max|), not with the bound (its terms cancel), plus ulps of the
        # ALiBi bias. Measured: ≤ 2.3 eps·that over 60 seeds; a quarter of γ (17 eps) still sees
        # a kernel that drops the γ slack (68 eps).
        tol = rounding_gamma(torch.float32, 32) / 4 * _magnitude(cache, q) * 0.2 + 1e-6 * ref.abs()
        err = (plain.upper.double() - ref.double()).abs()
        assert bool((err[full] <= tol[full]).all()), (seed, alibi is None, float((err - tol)[full].max()))


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("with_info", [False, True])
def test_decode_step_ranks_a_boxed_cache_by_the_box(backend, with_info, monkeypatch):
    """Through ``decode_step``: a ``TopK`` step on a boxed cache is built with the box bound
    (the kernels: one ``box_bounds`` launch without info; ``page_bounds`` for the means and
    ``page_box_upper`` for the bound with it), ``Exact`` with the exact range's bound."""
    pytest.importorskip("triton")
    import entmaxkv.decode
    from entmaxkv.kernels.page_scores import rounding_gamma

    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 32, S, [S * 6 + 3, S * 5], dtype=torch.float32, spread=2.0,
                             page_boxes=True)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 32, torch.float32)
    steps = []

    def recording(*args, **kwargs):
        steps.append(build_step(*args, **kwargs))
        return steps[-1]

    monkeypatch.setattr(entmaxkv.decode, "build_step", recording)
    for selector, boxed in ((ekv.TopK(token_budget=32), True), (ekv.Exact(), False)):
        config = ekv.DecodeConfig(1.5, selector, scale=0.2, backend=backend)
        new = ekv.decode_step(cache.fork(), q, k, v, config, with_info=with_info)[0]
        step = steps[-1]
        full = new.full_page_mask()[:, None, None, :].expand(2, 2, 2, -1)
        want = (box_upper(q[:, :, 0], *boxes_of(new), 0.2, rounding_gamma(torch.float32, 32))[0] if boxed
                else quest_bounds(new, q, 0.2))
        torch.testing.assert_close(step.upper.double()[full], want.double()[full], rtol=1e-6, atol=1e-6,
                                   msg=f"{selector} seed {seed}")


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_topk_ranks_pages_with_a_vacuous_box_first_within_the_budget(backend):
    """A page box of float64 keys at 1e300 is vacuous (bound +inf): TopK ranks such pages
    first (lowest index first), below the forced pages and within the budget, and ranks the
    others as if the vacuous pages were not there (each head's reference is its best finite
    bound: one +inf used to make every other key −inf, and the row selected nothing)."""
    pytest.importorskip("triton")
    from entmaxkv.kernels.page_scores import rounding_gamma
    from entmaxkv.kernels import quest_select
    from entmaxkv.topk import VACUOUS_KEY, rank_key

    assert quest_select.VACUOUS_KEY.value == VACUOUS_KEY  # the kernel's copy of the constant
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    n, d = S * 7 + 3, 32  # full pages 0-6, the newest page 7
    k, v = (torch.randn(1, 2, n, d, generator=g, dtype=torch.float64) for _ in range(2))
    q, k_new, v_new = (torch.randn(1, h, 1, d, generator=g, dtype=torch.float64) for h in (4, 2, 2))
    for vacuous, topk, want in (([1, 2, 3, 5], ekv.TopK(token_budget=3 * S, sink_pages=0, recent_pages=1), {1, 2, 6}),
                                ([2], ekv.TopK(token_budget=3 * S, sink_pages=0), None)):
        kv = k.clone()
        for p in vacuous:
            kv[:, :, p * S:(p + 1) * S] *= 1e300
        empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=2, head_dim=d, capacity=n + S, dtype=torch.float64,
                                       page_boxes=True)
        cache = ekv.prefill(empty, kv, v, [n])
        config = ekv.DecodeConfig(1.5, topk, scale=0.2, backend=backend)
        new, _, info = ekv.decode_step(cache, q, k_new, v_new, config, with_info=True)
        upper, _ = box_upper(q[:, :, 0], *boxes_of(new), 0.2, rounding_gamma(torch.float64, d))
        candidates = (torch.arange(new.num_pages) < 7)[None, None]
        assert bool(upper[..., vacuous].isposinf().all()) and bool(upper[..., :7].isfinite().sum() > 0)
        assert (rank_key(upper, candidates, 1.5)[..., vacuous] == VACUOUS_KEY).all()
        if want is None:  # the vacuous page, then the best two by the keys of the finite pages alone
            finite = candidates & ~torch.isin(torch.arange(new.num_pages), torch.tensor(vacuous))
            key = rank_key(upper, finite, 1.5)
            best = torch.argsort(key, dim=-1, descending=True, stable=True)[..., :2]  # [1, 2, 2]
            want = [set(vacuous) | set(best[0, h].tolist()) for h in range(2)]
        else:
            want = [want, want]
        for h in range(2):
            got = set(torch.nonzero(info.page_mask[0, h, :7]).flatten().tolist())
            assert got == want[h], (backend, vacuous, h, f"seed {seed}")
            assert bool(info.page_mask[0, h, 7]), "the newest page"


@pytest.mark.interpreter
def test_vmap_of_a_topk_step_on_a_boxed_cache_equals_a_loop():
    pytest.importorskip("triton")
    seed = fresh_seed()
    caches = [make_cache(seed + i, 2, 2, 32, S, [S * 4 + 15, S * 3 + 2], dtype=torch.float32, spread=2.0,
                         page_boxes=True)[0] for i in range(2)]
    g = torch.Generator().manual_seed(seed)
    steps = [random_step(g, 2, 4, 2, 32, torch.float32) for _ in range(2)]
    config = ekv.DecodeConfig(1.5, ekv.TopK(token_budget=32), backend="triton")
    want = [ekv.decode_step(c.fork(), *s, config) for c, s in zip(caches, steps)]
    stacked = pytree.tree_map(lambda *xs: torch.stack(xs), *[c.fork() for c in caches])
    q, k, v = (torch.stack(x) for x in zip(*steps))
    got_cache, got = torch.func.vmap(lambda c, q, k, v: ekv.decode_step(c, q, k, v, config))(stacked, q, k, v)
    for i, (c, out) in enumerate(want):
        torch.testing.assert_close(got[i], out, rtol=1e-6, atol=1e-6, msg=f"seed {seed}")
        for f in BOX_FIELDS:
            assert torch.equal(getattr(got_cache, f)[i], getattr(c, f)), (f, seed)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_topk_on_a_boxed_cache_on_the_gpu_equals_the_reference(dtype):
    """Prefill (the page_statistics op), appends that fill pages (the append op) and TopK steps
    on the H200 against the reference on the CPU: the same boxes, pages and output."""
    seed = fresh_seed()
    lens = [S * 40 + 14, S * 33 + 15]
    cache, _, _ = make_cache(seed, 2, 2, 128, S, lens, dtype=dtype, spread=2.0, page_boxes=True)
    gpu = ekv.prefill(ekv.PagedKVCache.empty(batch=2, num_kv_heads=2, head_dim=128, capacity=cache.capacity,
                                             dtype=dtype, device="cuda", page_boxes=True),
                      cache.keys().cuda(), cache.values().cuda(), lens)
    g = torch.Generator().manual_seed(seed)
    config = ekv.DecodeConfig(1.5, ekv.TopK(coverage=0.125))
    for _ in range(3):
        q, k, v = random_step(g, 2, 8, 2, 128, dtype)
        cache, want, want_info = ekv.decode_step(cache, q, k, v, config, with_info=True)
        gpu, got, info = ekv.decode_step(gpu, q.cuda(), k.cuda(), v.cuda(), config, with_info=True)
        for f in BOX_FIELDS:
            assert torch.equal(getattr(gpu, f).cpu(), getattr(cache, f)), (f, seed)
        assert torch.equal(info.page_mask.cpu(), want_info.page_mask), seed
        torch.testing.assert_close(got.cpu().double(), want.double(), rtol=2e-2, atol=2e-2, msg=f"seed {seed}")
