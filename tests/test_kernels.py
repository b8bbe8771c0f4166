"""The Triton ops (under Triton's interpreter on the CPU) against the pure-torch reference.

Every test draws fresh inputs (the seed is in the failure message), covers ragged lengths and
page edges, and poisons the buffers the ops allocate (NaN / −7) so that an element a kernel
forgot to write cannot pass.
"""

import dataclasses
import random

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.backend import page_sigma
from entmaxkv.conventions import pages_to_mask
from entmaxkv.bounds import mean_scores, quest_bounds
from entmaxkv.reference import attend, token_scores
from entmaxkv.state import append_token
from helpers import fresh_seed, kernel_launches, make_cache, on_both_backends, random_step, use_search

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels.page_scores import page_scores, rounding_gamma, uses_dot  # noqa: E402
from entmaxkv.kernels.sparse_decode import TAU_EXACT, TAU_GIVEN, TAU_REFINED, sparse_decode  # noqa: E402
from entmaxkv.kernels.sparse_decode import _support_to_front  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# float32 accumulation on the same inputs; bf16/fp16 outputs are rounded once (1 ulp)
OUT_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def lengths(seed: int, batch: int, page_size: int = 16) -> list[int]:
    """Ragged lengths landing 0/1/15/16/17 tokens into a page."""
    g = random.Random(seed)
    return [page_size * g.randrange(1, 5) + g.choice([0, 1, 15, 16, 17]) for _ in range(batch)]


# ---- append_token and page_statistics ---------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_append_op_equals_the_reference(dtype):
    seed = fresh_seed()
    lens = lengths(seed, 4)
    capacity = max(lens) + 3
    lens[1] = capacity  # a full row: nothing may change there
    cache, _, _ = make_cache(seed, 4, 2, 24, 16, lens, capacity=capacity, dtype=dtype)
    for f in ("k_min", "k_max", "k_mean", "k_std"):  # stale slots past the full pages
        stat = getattr(cache, f)
        stat.masked_fill_(~cache.full_page_mask()[:, None, :, None], float("nan"))
    _, k_new, v_new = random_step(torch.Generator().manual_seed(seed), 4, 2, 2, 24, dtype)
    want, want_fits = append_token(cache.fork(), k_new, v_new)
    got = cache.fork()
    new_lens, fits = torch.ops.entmaxkv.append_token(got.k_pages, got.v_pages, got.k_min, got.k_max, got.k_mean,
                                                     got.k_std, got.seq_lens, k_new, v_new, got.capacity, None, 0,
                                                     None, None, None, None)
    assert torch.equal(new_lens, want.seq_lens) and torch.equal(fits, want_fits), seed
    assert torch.equal(got.seq_lens, cache.seq_lens), "the lengths given are not changed"
    assert torch.equal(got.k_pages, want.k_pages) and torch.equal(got.v_pages, want.v_pages), seed
    full = want.full_page_mask()[:, None, :, None].expand_as(want.k_min)
    for f in ("k_min", "k_max"):  # exact
        assert torch.equal(getattr(got, f)[full], getattr(want, f)[full]), (f, seed)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for f in ("k_mean", "k_std"):
        torch.testing.assert_close(getattr(got, f)[full], getattr(want, f)[full], rtol=rtol, atol=rtol, msg=f"{f} {seed}")
    assert bool(getattr(got, "k_min")[~full].isnan().all()), "pages that are not full must stay untouched"
    assert want_fits.tolist() == [True, False, True, True]


def test_decode_step_takes_strided_new_keys_and_values():
    """k_new / v_new as views of a longer tensor (k[:, :, -1:]: not contiguous) are appended as
    the reference appends them (the op read them as dense rows before session 33: wrong rows)."""
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 3, 2, 32, 16, [31, 16, 40], dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 4, 1, 32, generator=g)
    kv = torch.randn(2, 3, 2, 5, 32, generator=g)
    k_new, v_new = kv[0, :, :, -1:], kv[1, :, :, 2:3]
    assert not k_new.is_contiguous() and not v_new.is_contiguous()
    (c1, o1), (c2, o2) = [ekv.decode_step(cache.fork(), q, k_new, v_new,
                                          ekv.DecodeConfig(1.5, ekv.TopK(token_budget=16), backend=backend))
                          for backend in ("torch", "triton")]
    assert torch.equal(c1.k_pages[0, :, 1, 15], kv[0, 0, :, -1]), seed
    for f in ("k_pages", "v_pages", "k_min", "k_max"):
        assert torch.equal(getattr(c2, f), getattr(c1, f)), (f, seed)
    torch.testing.assert_close(o2, o1, rtol=2e-5, atol=2e-5, msg=f"seed {seed}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_page_statistics_op_equals_prefill(dtype):
    seed = fresh_seed()
    lens = lengths(seed, 3)
    cache, _, _ = make_cache(seed, 3, 2, 20, 16, lens, dtype=dtype)
    got = cache.fork()
    for f in ("k_min", "k_max", "k_mean", "k_std"):
        getattr(got, f).fill_(float("nan"))
    torch.ops.entmaxkv.page_statistics(got.k_pages, got.seq_lens, got.k_min, got.k_max, got.k_mean, got.k_std,
                                       None, None, None, None)
    full = cache.full_page_mask()[:, None, :, None].expand_as(cache.k_min)
    for f in ("k_min", "k_max"):
        assert torch.equal(getattr(got, f)[full], getattr(cache, f)[full]), (f, seed)
    for f in ("k_mean", "k_std"):
        torch.testing.assert_close(getattr(got, f)[full], getattr(cache, f)[full], rtol=1e-5, atol=1e-6)
        assert bool(getattr(got, f)[~full].isnan().all())


# ---- page_scores ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_page_scores_are_safe_and_match_the_reference(dtype, group, poison):
    seed = fresh_seed()
    hkv, d, s = 2, 32, 16
    lens = lengths(seed, 2)
    cache, _, _ = make_cache(seed, 2, hkv, d, s, lens, dtype=dtype, spread=3.0)
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(2, hkv * group, 1, d, generator=g, dtype=torch.float64) * 2).to(dtype)
    slopes = torch.rand(hkv * group, generator=g) * 0.2 if group % 2 == 0 else None
    upper, absmax, means, sigma = page_scores(q[:, :, 0].contiguous(), cache.k_min, cache.k_max, cache.k_mean,
                                              cache.k_std, cache.seq_lens, slopes, s, 0.3, True)
    full = cache.full_page_mask()[:, None, None, :].expand_as(upper)
    # safe: above every exactly computed score of the page's tokens
    exact = token_scores(cache.to(torch.float64), q.double(), 0.3, None if slopes is None else slopes.double())
    page_max = exact.reshape(*exact.shape[:3], cache.num_pages, s).amax(-1)
    assert bool((upper.double()[full] >= page_max[full]).all()), seed
    no_bias = token_scores(cache.to(torch.float64), q.double(), 0.3).abs()
    assert bool((absmax.double()[full] >= no_bias.reshape(page_max.shape + (s,)).amax(-1)[full]).all())
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    want = quest_bounds(cache, q, 0.3, slopes)
    if uses_dot(q[:, :, 0], cache.k_min, True):  # fp16/bf16 with σ: the tensor-core form adds 2γ·|q|·|k|
        qg = q.double().reshape(2, hkv, group, d)  # for its dots' accumulation (``_page_block_dot``)
        kabs = torch.maximum(cache.k_min.abs(), cache.k_max.abs()).double()
        mag = torch.einsum("bhgd,bhpd->bhgp", qg.abs(), kabs) * 0.3
        want = want + (2 * rounding_gamma(torch.float32, d) * mag).to(want.dtype)
    torch.testing.assert_close(upper[full], want[full], **tol)
    torch.testing.assert_close(means[full], mean_scores(cache, q, 0.3, slopes)[full].to(means.dtype), **tol)
    torch.testing.assert_close(sigma[full], page_sigma(cache, q, 0.3, slopes)[full].to(sigma.dtype), **tol)
    assert not upper[full].isnan().any() and not sigma[full].isnan().any()


# ---- select_pages -----------------------------------------------------------------------------


@pytest.mark.parametrize("search", ["interpolate", "radix1", "radix2"])
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("streamed", [False, True])
def test_select_pages_equals_a_stable_sort(wide, streamed, search, poison, monkeypatch):
    use_search(monkeypatch, search)  # helpers.SEARCHES: the threshold search
    monkeypatch.setattr("entmaxkv.kernels.select_pages.COMPACT_BLOCK", 16)  # the list in 16-key passes
    if streamed:  # rows longer than a register block: the streamed bitwise search
        monkeypatch.setattr("entmaxkv.kernels.select_pages.MAX_BLOCK", 16)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    for _ in range(6):
        b, h, p = 2, 3, int(torch.randint(1, 70, (1,), generator=g))
        keys = torch.randn(b, h, p, generator=g, dtype=dtype).mul(2).round()  # many ties, ±0.0
        keys[keys.abs() > 2.5] = float("-inf")
        keys[0, 0, : p // 3] = float("inf")  # forced pages
        keys[1, 2] = float("-inf")  # nothing eligible
        counts = torch.randint(0, p + 3, (b, h), generator=g, dtype=torch.int32)
        capacity = int(torch.randint(1, p + 5, (1,), generator=g))
        pages, kept = torch.ops.entmaxkv.select_pages(keys.contiguous(), counts, capacity)
        order = torch.argsort(keys, dim=-1, descending=True, stable=True)  # ties: lower page first
        for i in range(b):
            for j in range(h):
                eligible = [int(x) for x in order[i, j] if keys[i, j, x] > float("-inf")]
                expect = sorted(eligible[: min(int(counts[i, j]), capacity)])
                n = int(kept[i, j])
                assert pages[i, j, :n].long().tolist() == expect, (seed, i, j)
                assert (pages[i, j, n:] == -1).all(), (seed, i, j)


# ---- sparse_decode ----------------------------------------------------------------------------


def random_lists(cache, seed, m):
    """[B, Hkv, m] random page lists of full pages other than the newest, and their counts."""
    g = torch.Generator().manual_seed(seed)
    newest = (cache.seq_lens - 1) // cache.page_size
    pages = torch.full((cache.batch, cache.num_kv_heads, m), -1, dtype=torch.int32)
    count = torch.zeros(cache.batch, cache.num_kv_heads, dtype=torch.int32)
    for i in range(cache.batch):
        for j in range(cache.num_kv_heads):
            n = min(int(newest[i]), int(torch.randint(0, m + 1, (1,), generator=g)))
            chosen = torch.randperm(int(newest[i]), generator=g)[:n].sort().values
            pages[i, j, :n], count[i, j] = chosen.int(), n
    return pages, count


CASES = [  # (alpha, dtype, group, alibi)
    (1.0, torch.float32, 4, False), (1.0, torch.float16, 1, True), (1.25, torch.float32, 2, True),
    (1.25, torch.bfloat16, 8, False), (1.5, torch.float16, 4, False), (1.5, torch.float32, 8, True),
    (1.5, torch.float64, 2, True), (2.0, torch.bfloat16, 2, True), (2.0, torch.float32, 1, False),
    (1.5, torch.float32, 3, True),  # G = 3: query heads' rows padded to 4 (and the dot's to 16)
]


@pytest.mark.parametrize("alpha,dtype,group,alibi", CASES)
def test_sparse_decode_equals_the_reference(alpha, dtype, group, alibi, poison):
    seed = fresh_seed()
    hkv, d, s = 2, 32, 16
    lens = lengths(seed, 3)
    cache, _, _ = make_cache(seed, 3, hkv, d, s, lens, dtype=dtype, spread=2.5)
    g = torch.Generator().manual_seed(seed + 1)
    q = (torch.randn(3, hkv * group, 1, d, generator=g, dtype=torch.float64) * 2).to(dtype)
    slopes = torch.rand(hkv * group, generator=g) * 0.1 if alibi else None
    table = torch.arange(cache.num_pages, dtype=torch.int32).expand(3, -1).contiguous()
    pages, count = random_lists(cache, seed, 4)
    newest = ((cache.seq_lens - 1) // s).int()[:, None, None].expand(3, hkv, 1)
    for dense in (False, True):
        out, tau = sparse_decode(q[:, :, 0].contiguous(), cache.k_pages, cache.v_pages, table, pages, count,
                                 cache.seq_lens, slopes, None, None, None, alpha, 0.3, dense, TAU_EXACT, 0)
        if dense:
            want, want_tau = ekv.dense_decode(cache, q, alpha, 0.3, slopes)
        else:
            want, want_tau = ekv.paged_decode(cache, q, torch.cat([pages, newest], -1), alpha, 0.3, slopes)
        err = float((out.double() - want[:, :, 0].double()).abs().max() / want.double().abs().max())
        assert err < OUT_TOL[dtype], (seed, dense, err)
        torch.testing.assert_close(tau, want_tau, rtol=1e-5 if dtype != torch.float64 else 1e-12, atol=1e-5,
                                   msg=f"seed {seed}")
        # τ alone (the τ bounds' calls): no output, no V read, the same τ bit for bit
        none, tau_only = sparse_decode(q[:, :, 0].contiguous(), cache.k_pages, cache.v_pages, table, pages, count,
                                       cache.seq_lens, slopes, None, None, None, alpha, 0.3, dense, TAU_EXACT, 0,
                                       False)
        assert none.shape == (3, hkv * group, 0)
        torch.testing.assert_close(tau_only, tau, rtol=0, atol=0, equal_nan=True, msg=f"seed {seed}")


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_sparse_decode_with_many_survivors(alpha, poison):
    """Near-ties: every token can be in the support, so splits keep more survivors than the τ
    kernel gathers in one load, and one row has more than it solves in registers."""
    seed = fresh_seed()
    lens = [300 + random.Random(seed).randrange(17), 40 + random.Random(seed + 1).randrange(17)]
    cache, _, _ = make_cache(seed, 2, 1, 16, 16, lens, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, 1, 16, generator=g) * 1e-2
    newest = (cache.seq_lens - 1) // 16
    pages = torch.full((2, 1, cache.num_pages), -1, dtype=torch.int32)
    count = newest.int()[:, None].contiguous()
    for i in range(2):
        pages[i, 0, : int(newest[i])] = torch.arange(int(newest[i]), dtype=torch.int32)
    want, want_tau = ekv.dense_decode(cache, q.double(), alpha, 0.3)
    for dense in (False, True):
        # no page table: the identity without lookups (the paged path is tested above)
        out, tau = sparse_decode(q[:, :, 0].contiguous(), cache.k_pages, cache.v_pages, None, pages, count,
                                 cache.seq_lens, None, None, None, None, alpha, 0.3, dense, TAU_EXACT, 0)
        err = float((out.double() - want[:, :, 0]).abs().max() / want.abs().max())
        assert err < OUT_TOL[torch.float32], (seed, dense, err)
        torch.testing.assert_close(tau, want_tau.reshape(2, 2), rtol=1e-5, atol=1e-5, msg=f"seed {seed}")


@triton.jit
def _support_to_front_kernel(comp_s, comp_i, kept_out, base, total, lin, tau, BLOCK: tl.constexpr):
    tl.store(kept_out, _support_to_front(comp_s, comp_i, base, total, lin, tau, BLOCK))


@pytest.mark.parametrize("block", [16, 128])
def test_support_to_front_moves_the_support_in_order(block):
    """``_support_to_front`` (the τ kernel's ``V_SUPPORT_FIRST``): the survivors with lin·s > τ
    end up first in the row's scratch, in their order, with their positions, and their count is
    returned — over several blocks a row, from a row offset, with the support scattered."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    base, total, lin = 7, 3 * block + 5, 0.5
    scores = torch.randn(base + total + 3, generator=g)
    positions = torch.randperm(base + total + 3, generator=g).int()
    tau = float(torch.quantile(scores[base:base + total].double() * lin, 0.8))
    comp_s, comp_i, kept = scores.clone(), positions.clone(), torch.full((1,), -1, dtype=torch.int32)
    _support_to_front_kernel[(1,)](comp_s, comp_i, kept, base, total, lin, tau, BLOCK=block)
    live = scores[base:base + total].double() * lin > tau
    n = int(live.sum())
    assert 0 < n < total and int(kept) == n, (seed, int(kept), n)
    assert torch.equal(comp_s[base:base + n], scores[base:base + total][live]), seed
    assert torch.equal(comp_i[base:base + n], positions[base:base + total][live]), seed
    assert torch.equal(comp_s[:base], scores[:base]) and torch.equal(comp_i[:base], positions[:base]), seed


_ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("device,block", [("cpu", 16), pytest.param("cuda", 16, marks=_ON_GPU),
                                          pytest.param("cuda", 128, marks=_ON_GPU)])
@pytest.mark.parametrize("support_first", [False, True], ids=["V pass over survivors", "support first"])
@pytest.mark.parametrize("alpha,dtype", [(1.5, torch.float32), (2.0, torch.float64), (1.25, torch.bfloat16)])
def test_sparse_decode_with_flat_scores(alpha, dtype, support_first, device, block, poison, monkeypatch):
    """Flat scores (iid normal, as a random-weight model's): many tokens within
    1/(α − 1) of the best score survive the scoring kernel's filter, few of them have weight,
    and the support is scattered among the survivors. ``support_first``: the τ kernel moves the
    support to the front of its scratch before its V pass (``V_SUPPORT_FIRST``, the default), in
    blocks of ``block`` survivors (16: several blocks a row, moved in place; on the GPU also the
    default 128, where its barriers run for real), and reads V for those only."""
    from entmaxkv.kernels import sparse_decode as module

    monkeypatch.setattr(module, "V_SUPPORT_FIRST", support_first)
    monkeypatch.setattr(module, "SUPPORT_BLOCK", block)
    seed = fresh_seed()
    r = random.Random(seed)
    lens = [600 + r.randrange(60), 200 + r.randrange(40)]
    cache, _, _ = make_cache(seed, 2, 2, 32, 16, lens, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    k = torch.randn(cache.k_pages.shape, generator=g, dtype=torch.float64)
    cache = dataclasses.replace(cache, k_pages=k.to(dtype))
    spread = 0.5 / (alpha - 1)  # scores' std: (α − 1)·s has std 0.5, so ~16% of tokens survive
    q = (torch.randn(2, 4, 1, 32, generator=g, dtype=torch.float64) * spread / (0.3 * 32 ** 0.5)).to(dtype)
    newest = (cache.seq_lens - 1) // 16
    pages = torch.full((2, 2, cache.num_pages), -1, dtype=torch.int32)
    for i in range(2):
        pages[i, :, : int(newest[i])] = torch.arange(int(newest[i]), dtype=torch.int32)
    count = newest.int()[:, None].expand(2, 2).contiguous()
    want, want_tau = ekv.dense_decode(cache.to(torch.float64), q.double(), alpha, 0.3)
    scores = token_scores(cache.to(torch.float64), q.double(), 0.3, None)  # [B, Hkv, G, T]
    z = (alpha - 1) * scores
    survivors = (z > z.amax(-1, keepdim=True) - 1).sum(-1)
    support = (z > want_tau.reshape(2, 2, 2, 1)).sum(-1)
    # several V tiles and move blocks in a row, and heads whose support is a strict subset of
    # their survivors (a head with few survivors may keep them all)
    assert int(survivors.max()) > 3 * 16 and int((support < survivors).sum()) >= 4, (seed, survivors, support)
    q1, kp, vp, lens_d = (x.to(device) for x in (q[:, :, 0].contiguous(), cache.k_pages, cache.v_pages,
                                                 cache.seq_lens))
    pages, count = pages.to(device), count.to(device)
    for dense in (False, True):
        out, tau = sparse_decode(q1, kp, vp, None, pages, count, lens_d, None, None, None, None, alpha, 0.3, dense,
                                 TAU_EXACT, 0)
        out, tau = out.cpu(), tau.cpu()
        err = float((out.double() - want[:, :, 0]).abs().max() / want.abs().max())
        assert err < OUT_TOL[dtype], (seed, dense, err)
        torch.testing.assert_close(tau, want_tau.reshape(2, 4), rtol=1e-5 if dtype != torch.float64 else 1e-10,
                                   atol=1e-5 if dtype != torch.float64 else 1e-10, msg=f"seed {seed}")
    # τ given (the exact one): the same support, weights and output
    given_out, _ = sparse_decode(q1, kp, vp, None, pages, count, lens_d, None,
                                 want_tau.reshape(2, 4).contiguous().to(device), None, None, alpha, 0.3, False,
                                 TAU_GIVEN, 0)
    err = float((given_out.double().cpu() - want[:, :, 0]).abs().max() / want.abs().max())
    assert err < OUT_TOL[dtype], (seed, "given", err)


@pytest.mark.parametrize("alpha,dtype,many_rows", [(1.25, torch.float32, False), (1.5, torch.float32, False),
                                                    (2.0, torch.float64, False), (1.5, torch.float32, True),
                                                    (2.0, torch.float64, True)])
def test_sparse_decode_shares_maxima_between_splits_and_keeps_heads_apart(alpha, dtype, many_rows, poison,
                                                                          monkeypatch):
    """Long lists (several iterations per split, so the shared running maximum is read while
    scoring) and query heads of one group on very different score scales: a maximum shared
    with the wrong row, or a floor above the true one, drops support tokens. With and
    without a score floor (published before the first chunk). ``many_rows``: the launch shape
    of many rows over a long list (``scoring_shape``: twice the splits, and a first wave of
    twice the programs, which decides which programs exchange their maximum first)."""
    from entmaxkv.kernels import sparse_decode as module

    if many_rows:  # every launch, the dense pass's too (the rule itself is tested below)
        monkeypatch.setattr(module, "scoring_shape", lambda rows, capacity, num_pages: (
            module.PROGRAMS_PER_SM_MANY_ROWS, module.SCORES_WARPS_MANY_ROWS, module.SCORES_STAGES_MANY_ROWS))
    seed = fresh_seed()
    r = random.Random(seed)
    lens = [700 + r.randrange(40)]
    cache, _, _ = make_cache(seed, 1, 2, 16, 16, lens, dtype=dtype, spread=2.0)
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(1, 8, 1, 16, generator=g, dtype=torch.float64)
    q = q * torch.tensor([0.3, 3.0, 1.0, 0.1, 2.0, 0.5, 4.0, 0.05], dtype=torch.float64).reshape(1, 8, 1, 1)
    q = q.to(dtype)
    want, want_tau = ekv.dense_decode(cache, q, alpha, 0.3)
    newest = int((cache.seq_lens[0] - 1) // 16)
    # the list in a shuffled order (splits then meet the best tokens at different times)
    order = torch.randperm(newest, generator=g).int()
    pages = torch.full((1, 2, cache.num_pages), -1, dtype=torch.int32)
    pages[0, :, :newest] = order
    count = torch.full((1, 2), newest, dtype=torch.int32)
    scores = token_scores(cache.to(torch.float64), q.double(), 0.3, None)  # [1, Hkv, G, T]
    first_token = scores[..., 0].reshape(1, 8)  # an attended score: a valid floor
    work = torch.float64 if dtype == torch.float64 else torch.float32
    floor = (first_token - 1e-4 * (1 + first_token.abs())).to(work).contiguous()
    for dense, score_floor in ((False, None), (True, None), (False, floor)):
        out, tau = sparse_decode(q[:, :, 0].contiguous(), cache.k_pages, cache.v_pages, None, pages, count,
                                 cache.seq_lens, None, None, score_floor, None, alpha, 0.3, dense, TAU_EXACT, 0)
        err = float((out.double() - want[:, :, 0].double()).abs().max() / want.double().abs().max())
        assert err < OUT_TOL[dtype], (seed, dense, score_floor is not None, err)
        torch.testing.assert_close(tau, want_tau.reshape(1, 8), rtol=1e-5 if dtype != torch.float64 else 1e-10,
                                   atol=1e-5 if dtype != torch.float64 else 1e-10,
                                   msg=f"seed {seed} dense {dense} floor {score_floor is not None}")


@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_sparse_decode_follows_the_page_table(alpha, poison):
    """Physical pages in a shuffled order, found through ``page_table``: the same output as
    the identity layout (every other test uses an identity table or None, which a kernel
    ignoring the table would also pass)."""
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 16, 16, [150 + random.Random(seed).randrange(17), 57], dtype=torch.float32,
                             spread=2.0)
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(2, 4, 16, generator=g)
    b, hkv, p = cache.batch, cache.num_kv_heads, cache.num_pages
    perm = torch.stack([torch.randperm(p, generator=g) for _ in range(b)])  # [B, P] logical -> physical
    k_phys, v_phys = torch.empty_like(cache.k_pages), torch.empty_like(cache.v_pages)
    for i in range(b):
        k_phys[i][:, perm[i]] = cache.k_pages[i]
        v_phys[i][:, perm[i]] = cache.v_pages[i]
    table = perm.int().contiguous()
    pages, count = random_lists(cache, seed, p)
    for dense in (False, True):
        want = sparse_decode(q, cache.k_pages, cache.v_pages, None, pages, count, cache.seq_lens, None, None, None,
                             None, alpha, 0.3, dense, TAU_EXACT, 0)
        got = sparse_decode(q, k_phys, v_phys, table, pages, count, cache.seq_lens, None, None, None,
                            None, alpha, 0.3, dense, TAU_EXACT, 0)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"seed {seed} dense {dense}")


@pytest.mark.parametrize("alpha,dtype,group,alibi", [case for case in CASES if case[0] > 1]
                         + [(1.5, torch.float32, 3, True), (2.0, torch.float16, 16, False)])
def test_sparse_decode_on_the_heads_rows_equals_the_dots_rows(alpha, dtype, group, alibi, poison, monkeypatch):
    """α > 1 scoring on the query heads' rows of each tile (``FIRST_ROWS``: 2, 4 or 8 of the
    dot's 16; 4 for G = 3; none cut at G = 16) against the scoring on all 16: bit for bit the
    same output and τ, page lists and dense, with and without a score floor."""
    seed = fresh_seed()
    hkv, d, s = 2, 32, 16
    lens = lengths(seed, 3)
    cache, _, _ = make_cache(seed, 3, hkv, d, s, lens, dtype=dtype, spread=2.5)
    g = torch.Generator().manual_seed(seed + 1)
    q = (torch.randn(3, hkv * group, d, generator=g, dtype=torch.float64) * 2).to(dtype)
    slopes = torch.rand(hkv * group, generator=g) * 0.1 if alibi else None
    pages, count = random_lists(cache, seed, 4)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    floor = torch.full((3, hkv * group), -3.0, dtype=work)
    for dense in (False, True):
        for score_floor in (None, floor):
            args = (q, cache.k_pages, cache.v_pages, None, pages, count, cache.seq_lens, slopes, None, score_floor,
                    None, alpha, 0.3, dense, TAU_EXACT, 0)
            got = sparse_decode(*args)
            with monkeypatch.context() as all_rows:  # (the poison fixture's patches stay)
                all_rows.setattr("entmaxkv.kernels.sparse_decode.FIRST_ROWS", False)
                want = sparse_decode(*args)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                           msg=f"seed {seed} dense {dense} floor {score_floor is not None}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_sparse_decode_exchange_forms_equal_the_float_atomic_every_iteration(dtype, poison, monkeypatch):
    """The running maxima exchanged as integer keys (``KEYED_MAX``: int32 keys for float32 work,
    int64 for float64) and only at iterations 1, 2, 4, ... (``SPARSE_EXCHANGE``; and 0 with
    ``EXCHANGE_AT_START``) against
    Triton's float atomic max at every iteration, and a tile's survivors decided from its
    rows' maxima (``SKIP_BY_ROW_MAX``) against the sum of its keep flags: bit for bit the same
    output and τ (the interpreter runs one program at a time, so each program reads the same
    shared maxima in every form), on scores of both signs (negative maxima take the keys' flipped branch), with a
    score floor, with ALiBi and with a given τ, on lists long enough for about ten iterations a
    split (iterations 3, 5, 6, 7, 9 exchange nothing); and the keys' −inf start decodes to −inf."""
    from entmaxkv.kernels.sparse_decode import run_max_init

    for work, ints, nbits in ((torch.float32, torch.int32, 32), (torch.float64, torch.int64, 64)):
        key = run_max_init(1, work, True, torch.device("cpu"))
        bits = key ^ ((key >> (nbits - 1)) & ((1 << (nbits - 1)) - 1))
        assert key.dtype == ints and bits.view(work).item() == float("-inf")
    seed = fresh_seed()
    r = random.Random(seed)
    lens = [1200 + r.randrange(40), 200 + r.randrange(40)]
    cache, _, _ = make_cache(seed, 2, 2, 16, 16, lens, dtype=dtype, spread=2.0)
    k_pages = cache.k_pages + 5.0  # keys around +5 in every channel: the op reads no statistics
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(2, 8, 16, generator=g, dtype=torch.float64)
    q[:, :4] = -(1 + 0.2 * q[:, :4].abs())  # the first KV head's group: every score far below 0
    q = q.to(dtype)
    scores = token_scores(cache.to(torch.float64), q[:, :, None].double(), 0.3, None)  # the keys before the shift
    shifted = scores + 0.3 * 5.0 * q.double().sum(-1).reshape(2, 2, 4, 1)
    assert (shifted[:, 0].amax(-1) < -5).all() and (shifted.amax(-1) > -50).all(), seed  # the floor is one
    work = torch.float64 if dtype == torch.float64 else torch.float32
    pages, count = random_lists(cache, seed, cache.num_pages)
    floor = torch.full((2, 8), -50.0, dtype=work)
    slopes = torch.rand(8, generator=g) * 0.01
    given = None
    for dense, score_floor, alibi, mode in ((False, None, None, TAU_EXACT), (True, None, None, TAU_EXACT),
                                            (False, floor, None, TAU_EXACT), (False, None, slopes, TAU_EXACT),
                                            (True, None, slopes, TAU_GIVEN)):
        args = (q, k_pages, cache.v_pages, None, pages, count, cache.seq_lens, alibi,
                given if mode == TAU_GIVEN else None, score_floor, None, 1.5, 0.3, dense, mode, 0)
        with monkeypatch.context() as every:  # (the poison fixture's patches stay)
            every.setattr("entmaxkv.kernels.sparse_decode.SPARSE_EXCHANGE", False)
            every.setattr("entmaxkv.kernels.sparse_decode.KEYED_MAX", False)
            every.setattr("entmaxkv.kernels.sparse_decode.SKIP_BY_ROW_MAX", False)
            want = sparse_decode(*args)
        if alibi is not None and mode == TAU_EXACT and not dense:
            given = torch.where(torch.arange(8) % 2 == 0, want[1] - 0.25, want[1])  # a τ at or below the exact one
        for sparse, keyed, skip, start in ((True, True, True, False), (True, True, True, True),
                                           (True, False, False, False), (False, True, False, False),
                                           (False, False, True, False)):
            with monkeypatch.context() as form:
                form.setattr("entmaxkv.kernels.sparse_decode.SPARSE_EXCHANGE", sparse)
                form.setattr("entmaxkv.kernels.sparse_decode.KEYED_MAX", keyed)
                form.setattr("entmaxkv.kernels.sparse_decode.SKIP_BY_ROW_MAX", skip)
                form.setattr("entmaxkv.kernels.sparse_decode.EXCHANGE_AT_START", start)
                got = sparse_decode(*args)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"seed {seed} dense {dense} sparse {sparse} "
                                           f"keyed {keyed} skip {skip} start {start} floor {score_floor is not None} "
                                           f"alibi {alibi is not None} mode {mode}")


@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_sparse_decode_64_bit_row_offsets_equal_the_32_bit_ones(alpha, poison, monkeypatch):
    """The scoring kernel's 64-bit row offsets (``WIDE``, taken from 2^31 elements of a KV
    head's pages: never reached by a CPU test's cache) on shuffled physical pages, with ALiBi:
    bit for bit the 32-bit form's output and τ."""
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 16, 16, [150 + random.Random(seed).randrange(17), 57], dtype=torch.float32,
                             spread=2.0)
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(2, 4, 16, generator=g)
    slopes = torch.rand(4, generator=g) * 0.1
    table = torch.stack([torch.randperm(cache.num_pages, generator=g) for _ in range(2)]).int().contiguous()
    pages, count = random_lists(cache, seed, cache.num_pages)
    for dense in (False, True):
        args = (q, cache.k_pages, cache.v_pages, table, pages, count, cache.seq_lens, slopes, None, None, None, alpha,
                0.3, dense, TAU_EXACT, 0)
        want = sparse_decode(*args)
        with monkeypatch.context() as wide:  # (the poison fixture's patches stay)
            wide.setattr("entmaxkv.kernels.sparse_decode.WIDE_OFFSETS", 0)
            got = sparse_decode(*args)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"seed {seed} dense {dense}")


def test_sparse_decode_takes_64_bit_offsets_from_2_31_elements_a_head():
    """A 32-bit row offset reaches P·S·D − 1: the last size without 64-bit offsets is 2^31
    elements less one (the kernel's ``WIDE`` switch, which no CPU cache reaches)."""
    from entmaxkv.kernels.sparse_decode import needs_wide_offsets

    assert not needs_wide_offsets(2**20 - 1, 16, 128) and needs_wide_offsets(2**20, 16, 128)
    assert not needs_wide_offsets(1, 1, 2**31 - 1) and needs_wide_offsets(1, 1, 2**31)


def test_sparse_decode_refuses_a_page_size_that_is_not_a_power_of_two():
    q, k = torch.zeros(1, 2, 16), torch.zeros(1, 1, 4, 12, 16)
    with pytest.raises(ValueError, match="power of two"):
        sparse_decode(q, k, k, None, torch.zeros(1, 1, 4, dtype=torch.int32), torch.zeros(1, 1, dtype=torch.int32),
                      torch.tensor([40]), None, None, None, None, 1.5, 0.3, False, TAU_EXACT, 0)


def test_sparse_decode_takes_the_many_rows_shape_only_for_many_rows_over_long_lists(monkeypatch):
    """``scoring_shape``: smaller, more programs for at least MANY_ROWS rows over a budgeted
    list of at least MANY_ROWS_LIST_PAGES pages; not for fewer rows, shorter lists, a list of
    more than half the cache's pages (a mask's, of any page) or a dense pass (where it measured
    slower), and ``num_splits`` and ``first_wave`` follow it."""
    from entmaxkv.kernels import sparse_decode as module

    rows, long = module.MANY_ROWS, module.MANY_ROWS_LIST_PAGES
    many = (module.PROGRAMS_PER_SM_MANY_ROWS, module.SCORES_WARPS_MANY_ROWS, module.SCORES_STAGES_MANY_ROWS)
    few = (module.PROGRAMS_PER_SM, module.SCORES_WARPS, module.SCORES_STAGES)
    assert many != few
    pages = 8 * long  # TopK 12.5%'s list of a cache of 8·long pages
    assert module.scoring_shape(rows, long, pages) == many
    assert module.scoring_shape(rows, long, 2 * long) == many
    assert module.scoring_shape(rows - 1, long, pages) == few
    assert module.scoring_shape(rows, long - 1, pages) == few
    assert module.scoring_shape(rows, long, 2 * long - 1) == few  # more than half the pages
    assert module.scoring_shape(rows, pages, pages) == few  # a dense pass
    cpu = torch.device("cpu")
    assert module.first_wave(cpu, rows, long, pages) == many[0] * 4  # the interpreter's 4 SMs
    assert module.first_wave(cpu, rows, pages, pages) == few[0] * 4
    # the split count is a row's share of the programs (4 SMs' worth): with "many" at 2 rows,
    # 2 rows of a long list take per_sm·4/2 splits of the many-rows shape (5·4/2 = 10), of the
    # default (2·4/2 = 4) when the list may hold every page
    monkeypatch.setattr(module, "MANY_ROWS", 2)
    for num_pages, per_sm in ((pages, many[0]), (long, few[0])):
        assert module.num_splits(2, 1, long, num_pages, 16, cpu, True) == per_sm * 4 // 2


def test_sparse_decode_launches_the_shape_its_rule_picks(monkeypatch):
    """The op itself hands the scoring launch what ``scoring_shape`` picks for its list: the
    warps and stages, the split count (and the grid it sets) and the first wave, for a budgeted list, a
    list of any page (capacity P) and a dense pass (the rule's arguments at the call site)."""
    from entmaxkv.kernels import sparse_decode as module

    monkeypatch.setattr(module, "MANY_ROWS", 2)
    monkeypatch.setattr(module, "MANY_ROWS_LIST_PAGES", 4)
    monkeypatch.setattr(module, "PROGRAMS_PER_SM_MANY_ROWS", 3)  # 3·4/2 splits: below a 32-page list's cap of 8
    monkeypatch.setattr(module, "EXCHANGE_AT_START", False)
    seen = []
    real = module.wrap_triton
    wave_at = module._scores_kernel.arg_names.index("wave")

    def spy(kernel):
        launcher = real(kernel)

        class Launch:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    if kernel is module._scores_kernel:
                        seen.append((grid, kwargs["num_warps"], kwargs.get("num_stages"), kwargs["NSPLIT"],
                                     args[wave_at]))
                    return launcher[grid](*args, **kwargs)
                return run
        return Launch()

    monkeypatch.setattr(module, "wrap_triton", spy)
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 1, 2, 16, 16, [1100], dtype=torch.float32)
    p = cache.num_pages  # 69 full pages and the newest: a 32-page list is at most half of them
    q = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(seed))
    many = (module.PROGRAMS_PER_SM_MANY_ROWS, module.SCORES_WARPS_MANY_ROWS, module.SCORES_STAGES_MANY_ROWS)
    few = (module.PROGRAMS_PER_SM, module.SCORES_WARPS, module.SCORES_STAGES)
    assert many[2] is not None and few[2] is None  # Triton's default: the launch passes no num_stages
    for capacity, dense, (per_sm, warps, stages) in ((32, False, many), (p, False, few), (32, True, few)):
        pages = torch.full((1, 2, capacity), -1, dtype=torch.int32)
        pages[..., :32] = torch.arange(32, dtype=torch.int32)
        count = torch.full((1, 2), 32, dtype=torch.int32)
        seen.clear()
        module.sparse_decode(q, cache.k_pages, cache.v_pages, None, pages, count, cache.seq_lens, None, None, None,
                             None, 1.5, 0.3, dense, module.TAU_EXACT, 0)
        (grid, got_warps, got_stages, nsplit, wave), = seen
        assert (got_warps, got_stages) == (warps, stages), (capacity, dense)
        assert nsplit == per_sm * 4 // 2 and tuple(grid) == (2, nsplit + 1), (capacity, dense)  # 4 SMs, 2 rows
        assert wave == per_sm * 4, (capacity, dense)


def test_sparse_decode_splits_keep_few_survivors(monkeypatch):
    """Each split filters its survivors again against its final maximum, which is at least the
    best score of its own tokens: a split hands the τ kernel no more tokens than lie within
    1/(α−1) of its own best score, even when its first chunk only held near-ties far below it.
    (Not an output property: without the refilter every output stays right, only the τ
    kernel's work grows.)"""
    from entmaxkv.kernels.sparse_decode import num_splits

    seed = fresh_seed()
    alpha, hq, s, d = 1.5, 2, 16, 16
    cache, _, _ = make_cache(seed, 1, 1, d, s, [700 + random.Random(seed).randrange(40)], dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    newest = int((cache.seq_lens[0] - 1) // s)
    nsplit = num_splits(1, 1, cache.num_pages, cache.num_pages, s, torch.device("cpu"), entmax=True)
    per_split = -(-newest // nsplit)
    q = torch.ones(1, hq, 1, d) + 0.1 * torch.randn(1, hq, 1, d, generator=g)
    k = cache.k_pages.clone()
    k[0, 0, :newest] *= 1e-3  # near-ties around 0 ...
    for j in range(nsplit):  # ... and one token far above them in the last page of every split
        last = min((j + 1) * per_split, newest) - 1
        if last >= j * per_split:
            k[0, 0, last, int(torch.randint(0, s, (1,), generator=g))] = 5.0
    pages = torch.full((1, 1, cache.num_pages), -1, dtype=torch.int32)
    pages[0, 0, :newest] = torch.arange(newest, dtype=torch.int32)
    count = torch.full((1, 1), newest, dtype=torch.int32)
    rows = hq * (nsplit + 1)
    seen = []
    empty = torch.empty

    def record(*a, **kw):
        t = empty(*a, **kw)
        if t.dtype == torch.int32 and tuple(t.shape) == (rows,):
            seen.append(t)
        return t

    monkeypatch.setattr(torch, "empty", record)
    sparse_decode(q[:, :, 0].contiguous(), k, cache.v_pages, None, pages, count, cache.seq_lens, None,
                  None, None, None, alpha, 0.3, False, TAU_EXACT, 0)
    monkeypatch.setattr(torch, "empty", empty)
    assert len(seen) == 1, len(seen)
    cand_n = seen[0].reshape(hq, nsplit + 1)
    z = (alpha - 1) * 0.3 * torch.einsum("hd,ptd->hpt", q[0, :, 0].double(), k[0, 0].double())  # [hq, P, S]
    length = int(cache.seq_lens[0])
    for j in range(nsplit + 1):
        listed = [newest] if j == nsplit else list(range(j * per_split, min((j + 1) * per_split, newest)))
        for h in range(hq):
            zs = torch.cat([z[h, p, : min(s, length - p * s)] for p in listed]) if listed else torch.zeros(0)
            near = int((zs > zs.max() - 1 - 1e-4).sum()) if len(zs) else 0
            assert int(cand_n[h, j]) <= near, (seed, h, j, int(cand_n[h, j]), near)


@pytest.mark.parametrize("mode", [TAU_GIVEN, TAU_REFINED])
@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_sparse_decode_with_an_estimated_tau(mode, alpha, poison):
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 32, 16, lengths(seed, 2), dtype=torch.float64, spread=2.5)
    q = torch.randn(2, 4, 1, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2
    pages, count = random_lists(cache, seed, 3)
    scores = token_scores(cache, q, 0.3)
    mask = pages_to_mask(pages, cache.num_pages) | ((torch.arange(cache.num_pages)[None, :] ==
                                                  ((cache.seq_lens - 1) // 16)[:, None])[:, None, :])
    tokens = cache.tokens_of(mask)
    exact = attend(scores, cache.values(), tokens, alpha)[1]
    # estimates on both sides of the root, one far below (the refinement's hard case)
    tau_hat = exact + torch.tensor([-0.5, 0.05, -3.0, 0.2], dtype=torch.float64).reshape(1, 2, 2)
    iters = 2 if mode == TAU_REFINED else 0
    want, want_tau = attend(scores, cache.values(), tokens, alpha, tau_hat, iters)
    table = torch.arange(cache.num_pages, dtype=torch.int32).expand(2, -1).contiguous()
    out, tau = sparse_decode(q[:, :, 0].contiguous(), cache.k_pages, cache.v_pages, table, pages, count,
                             cache.seq_lens, None, tau_hat.reshape(2, 4).contiguous(), None, None, alpha, 0.3, False, mode,
                             iters)
    torch.testing.assert_close(tau, want_tau.reshape(2, 4), rtol=1e-10, atol=1e-10, msg=f"seed {seed}")
    torch.testing.assert_close(out, want.reshape(2, 4, 32), rtol=1e-9, atol=1e-9, msg=f"seed {seed}")


# ---- the decode step through the ops ----------------------------------------------------------

SELECTORS = [ekv.Dense(), ekv.TopK(token_budget=32), ekv.TopK(coverage=0.3, recent_pages=1), ekv.Gaussian(),
             ekv.Gaussian(tau_mode="fixed"), ekv.Gaussian(tau_mode="corrected"), ekv.Exact(initial_pages=2),
             ekv.Exact(initial_pages=1, max_pages=2)]


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
def test_decode_step_through_the_ops_equals_the_reference(alpha):
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 32, 16, lengths(seed, 2), dtype=torch.float64, spread=2.0)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 32)
    slopes = torch.tensor([0.0, 0.05, 0.1, 0.2], dtype=torch.float64)
    for sel in SELECTORS:
        if alpha == 1.0 and not isinstance(sel, (ekv.Dense, ekv.TopK)):
            continue
        (c1, o1, i1), (c2, o2, i2) = on_both_backends(cache, q, k, v, alpha, sel, slopes)
        msg = f"{sel} seed {seed}"
        assert torch.equal(i1.page_mask, i2.page_mask), msg
        torch.testing.assert_close(o2, o1, rtol=1e-9, atol=1e-9, msg=msg)
        torch.testing.assert_close(i2.tau, i1.tau, rtol=1e-9, atol=1e-9, msg=msg)
        assert torch.equal(i1.certified, i2.certified), msg
        assert torch.equal(i1.num_tokens, i2.num_tokens) and torch.equal(c1.seq_lens, c2.seq_lens), msg
        for f in ("k_pages", "v_pages", "k_min", "k_max"):
            assert torch.equal(getattr(c1, f), getattr(c2, f)), (f, msg)
        # both bounds are safe; the kernels' rounding margins are per page, so theirs is not smaller
        assert bool((i2.dropped_mass_bound >= i1.dropped_mass_bound - 1e-12).all()), msg


@pytest.mark.parametrize("selector", [ekv.TopK(coverage=0.3), ekv.Gaussian()], ids=["TopK", "Gaussian"])
def test_topk_and_gaussian_steps_on_the_kernels_build_no_page_mask(selector, monkeypatch):
    """The kernels find the candidate pages and the newest page from the lengths: a TopK or
    Gaussian step on them (without info) never builds ``PageSets``' [B, 1, P] masks (two torch
    launches each on a GPU)."""
    import entmaxkv.backend as backend

    def forbidden(cache):
        raise AssertionError("the step built a page mask")

    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 16, 8, [70, 41], capacity=96, dtype=torch.float32, spread=2.0)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 16, torch.float32)
    config = ekv.DecodeConfig(1.5, selector, backend="triton")
    want = ekv.decode_step(cache.fork(), q, k, v, config)[1]
    monkeypatch.setattr(backend, "candidate_page_mask", forbidden)
    monkeypatch.setattr(backend, "newest_page_mask", forbidden)
    assert torch.equal(ekv.decode_step(cache.fork(), q, k, v, config)[1], want), f"seed {seed}"


def test_a_selector_may_rank_every_page():
    """``StepOps.top_pages`` lets keys be finite on any page (only −inf pages are never
    chosen); a mask holding the newest or non-live pages must attend the same tokens as one
    without them, on both backends."""
    from dataclasses import dataclass

    from entmaxkv.selection import Selection, Selector

    @dataclass(frozen=True)
    class EveryPage(Selector):
        def select(self, step):
            c = step.cache
            key = torch.zeros(c.batch, c.num_kv_heads, c.num_pages, dtype=torch.float64)
            return Selection(step.ops.top_pages(key, c.num_pages))

    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 32, 16, [40, 57], dtype=torch.float64, spread=2.0)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 32)
    _, want = ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, ekv.Dense(), backend="torch"))
    for backend in ("torch", "triton"):
        _, got = ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, EveryPage(), backend=backend))
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"{backend} seed {seed}")


def test_editing_the_top_pages_mask_in_place_is_refused():
    """The kernel ops keep the page list behind top_pages' mask: an in-place edit of that
    mask (``mask |= ...``) would attend the stale list, so eager steps refuse it; a new mask
    (``mask | ...``) attends the same pages on both backends."""
    from dataclasses import dataclass

    from entmaxkv.selection import Selection, Selector

    @dataclass(frozen=True)
    class BestPlusFirstTwo(Selector):
        def select(self, step):
            page = torch.arange(step.cache.num_pages, dtype=torch.float64)
            key = torch.where(step.candidates, page, float("-inf")).expand(*step.candidates.shape[:1],
                                                                           step.cache.num_kv_heads, -1)
            mask = step.ops.top_pages(key.contiguous(), 1)  # the last full page
            extra = step.candidates & (torch.arange(step.cache.num_pages) < 2)
            if self.in_place:
                mask |= extra  # the same tensor object
            else:
                mask = mask | extra
            return Selection(mask)

        in_place: bool = False

    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 32, 16, [80, 97], dtype=torch.float64, spread=2.0)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 32)
    with pytest.raises(ValueError, match="in place"):
        ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(1.5, BestPlusFirstTwo(in_place=True), backend="triton"))
    (_, o1, i1), (_, o2, i2) = on_both_backends(cache, q, k, v, 1.5, BestPlusFirstTwo())
    assert torch.equal(i1.page_mask, i2.page_mask), f"page masks, seed {seed}"
    torch.testing.assert_close(o2, o1, rtol=1e-9, atol=1e-9, msg=f"outputs, seed {seed}")


def test_opcheck_every_op():
    # lengths fill whole pages: page_scores leaves entries of pages that are not full unwritten
    cache, _, _ = make_cache(1, 2, 2, 16, 16, [48, 48], capacity=48, dtype=torch.float32)
    q, k, v = random_step(torch.Generator().manual_seed(1), 2, 4, 2, 16, torch.float32)
    q3 = q[:, :, 0].contiguous()
    c = cache.fork()
    table = torch.arange(c.num_pages, dtype=torch.int32).expand(2, -1).contiguous()
    pages = torch.tensor([[[0, -1], [1, 0]], [[-1, -1], [0, -1]]], dtype=torch.int32)
    count = torch.tensor([[1, 2], [0, 1]], dtype=torch.int32)
    keys = torch.randn(2, 2, c.num_pages)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        torch.library.opcheck(torch.ops.entmaxkv.append_token.default,
                              (c.k_pages, c.v_pages, c.k_min, c.k_max, c.k_mean, c.k_std, c.seq_lens - 1, k, v,
                               c.capacity, None, 0, None, None, None, None))
        torch.library.opcheck(torch.ops.entmaxkv.page_statistics.default,
                              (c.k_pages, c.seq_lens, c.k_min, c.k_max, c.k_mean, c.k_std, None, None, None, None))
        torch.library.opcheck(torch.ops.entmaxkv.page_scores.default,
                              (q3, c.k_min, c.k_max, c.k_mean, c.k_std, c.seq_lens, None, 16, 0.25, True))
        torch.library.opcheck(torch.ops.entmaxkv.select_pages.default,
                              (keys, torch.tensor([[1, 2], [3, 0]], dtype=torch.int32), 3))
        for candidates in (torch.tensor([[True, False, True], [True, True, False]]), c.seq_lens):  # mask, lengths
            torch.library.opcheck(torch.ops.entmaxkv.gaussian_tau.default,
                                  (torch.randn(2, 2, 2, c.num_pages, dtype=torch.float64),
                                   torch.rand(2, 2, 2, c.num_pages, dtype=torch.float64), candidates,
                                   torch.randn(2, 2, 2, 16, dtype=torch.float64), 1.5, 20, 5))
        for with_output in (True, False):  # τ alone: an empty output, which the fake must give too
            torch.library.opcheck(torch.ops.entmaxkv.sparse_decode.default,
                                  (q3, c.k_pages, c.v_pages, table, pages, count, c.seq_lens, None, None, None, None,
                                   1.5, 0.25, False, TAU_EXACT, 0, with_output))


def test_compiled_step_through_the_ops_equals_eager():
    cache, _, _ = make_cache(2, 2, 2, 16, 16, [40, 17], dtype=torch.float32)
    q, k, v = random_step(torch.Generator().manual_seed(2), 2, 4, 2, 16, torch.float32)
    config = ekv.DecodeConfig(1.5, ekv.TopK(token_budget=16), backend="triton")
    _, want = ekv.decode_step(cache.fork(), q, k, v, config)
    step = torch.compile(ekv.decode_step, fullgraph=True, backend="aot_eager")
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        _, got = step(cache.fork().without_host_len(), q, k, v, config)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_gaussian_tau_reads_a_strided_or_integer_candidate_mask():
    """The op reads the candidate mask as bool; a strided view or an int8 mask gives the τ̂ of
    the same mask dense (from an independent review: a view was read as if contiguous)."""
    g = torch.Generator().manual_seed(fresh_seed())
    mu = torch.randn(1, 2, 2, 21, generator=g, dtype=torch.float64)
    sigma = torch.rand(1, 2, 2, 21, generator=g, dtype=torch.float64) + 0.05
    exact = torch.randn(1, 2, 2, 16, generator=g, dtype=torch.float64)
    wide = torch.rand(1, 42, generator=g) < 0.6
    dense = wide[:, ::2].contiguous()
    want = torch.ops.entmaxkv.gaussian_tau(mu, sigma, dense, exact, 1.5, 50, 30)
    assert torch.equal(torch.ops.entmaxkv.gaussian_tau(mu, sigma, wide[:, ::2], exact, 1.5, 50, 30), want)
    assert torch.equal(torch.ops.entmaxkv.gaussian_tau(mu, sigma, dense.to(torch.int8), exact, 1.5, 50, 30), want)


def test_gaussian_tau_form_rule(monkeypatch):
    """Which form a launch takes: split where the rows fill the SMs; else spread from
    ``SPREAD_MIN_PAGES`` pages a row (and more than one ``SPREAD_P`` chunk), else the one kernel."""
    from entmaxkv.kernels import gaussian_tau as module

    monkeypatch.setattr(module, "multiprocessors", lambda device: 132)
    cpu = torch.device("cpu")
    assert module.splits(132, cpu) and not module.spreads(132, 8192, cpu)
    assert not module.splits(32, cpu)
    assert module.spreads(32, 8192, cpu) and module.spreads(32, 65536, cpu)
    assert not module.spreads(32, 8191, cpu) and not module.spreads(32, 4096, cpu)
    monkeypatch.setattr(module, "SPREAD", False)
    assert not module.spreads(32, 8192, cpu)


@pytest.mark.parametrize("form", ["fused", "fused_long", "split", "split_long", "spread", "spread_long"])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3, 1.25])
def test_gaussian_tau_op_equals_the_reference_solver(alpha, form, monkeypatch):
    """The three launch forms (one kernel; the kept pages and the solve apart, ``splits``;
    the kept pages in (row, chunk) programs, ``spreads``: 37 pages in chunks of 16, the last
    partial), the split solve's blocks of ``SPLIT_SOLVE_P`` pages where a row keeps more than
    ``SHORT_P``, and the one kernel's kept-pages blocks (``BLOCK_P``) larger than its solve's
    (``TAU_SOLVE_P``). The spread form equals the one kernel bit for bit."""
    from entmaxkv.gaussian import solve_gaussian_tau
    from entmaxkv.kernels import gaussian_tau as module

    monkeypatch.setattr(module, "SPLIT", form.startswith("split"))
    monkeypatch.setattr(module, "SPREAD", form.startswith("spread"))
    monkeypatch.setattr(module, "SPREAD_P", 16)
    monkeypatch.setattr(module, "SPREAD_MIN_PAGES", 0)  # the spread form at any length
    monkeypatch.setattr(module, "GATHER_TILE", 1)  # the join in steps of 16 entries
    if form.endswith("_long"):  # rows keep 11-27 of the 37 pages: past SHORT_P, in 16-page solve blocks
        monkeypatch.setattr(module, "SHORT_P", 4)
        monkeypatch.setattr(module, "SPLIT_SOLVE_P", 16)
        monkeypatch.setattr(module, "BLOCK_P", 32)  # the one kernel: 37 pages in two kept-pages blocks
        monkeypatch.setattr(module, "TAU_SOLVE_P", 16)  # ... and its solve in blocks of 16
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, h, grp, p, s = 2, 2, 2, 37, 16
    mu = torch.randn(b, h, grp, p, generator=g, dtype=torch.float64) * 2
    sigma = torch.rand(b, h, grp, p, generator=g, dtype=torch.float64) + 0.02
    sigma[0, 0, 0, :3] = 0.0  # degenerate pages: constant scores
    candidates = torch.rand(b, p, generator=g) < 0.7
    exact = torch.randn(b, h, grp, s, generator=g, dtype=torch.float64) * 2
    exact[..., 9:] = float("-inf")  # a partial newest page
    count = torch.where(candidates[:, None, None, :], 16.0, 0.0).to(torch.float64).expand_as(mu)
    want = solve_gaussian_tau(mu, sigma, count, exact, alpha, iters=50)
    got = torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, alpha, 50, 30)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")
    if form.startswith("spread"):
        monkeypatch.setattr(module, "SPREAD", False)
        one = torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, alpha, 50, 30)
        assert torch.equal(got, one), f"seed {seed}: {(got - one).abs().max()}"


@pytest.mark.parametrize("chunks", [32, 2], ids=["a block a chunk", "blocks in turn"])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25])
def test_gaussian_tau_spread_form_joins_chunks_as_the_one_kernel_keeps_pages(alpha, chunks, monkeypatch):
    """The spread form (``spreads``: 70 pages in blocks of 16; one block a chunk — five chunks,
    the last of 6 pages — or at most ``SPREAD_CHUNKS`` = 2 chunks of three blocks each; the
    join in steps of 16 entries) runs its three kernels, with the one kernel's solve shape,
    and equals the one kernel bit for bit where rows keep pages in chunks with empty chunks
    between, before and after them, chunk 0 empty, the last partial chunk kept, and every page
    kept (70 entries: five join steps). From an independent review."""
    from entmaxkv.gaussian import solve_gaussian_tau
    from entmaxkv.kernels import gaussian_tau as module

    monkeypatch.setattr(module, "splits", lambda rows, device: False)
    monkeypatch.setattr(module, "SPREAD_P", 16)
    monkeypatch.setattr(module, "SPREAD_MIN_PAGES", 0)  # the spread form at any length
    monkeypatch.setattr(module, "SPREAD_CHUNKS", chunks)
    monkeypatch.setattr(module, "GATHER_TILE", 1)  # 16 entries a join step
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    c, p, s = alpha - 1, 70, 16
    mu = (torch.randn(1, 1, 4, p, generator=g, dtype=torch.float64) * 0.05 - 30) / c  # noise far below
    sigma = torch.full_like(mu, 0.1 / c)
    for r, pages in enumerate([[3, 40, 41, 66, 69], [20, 21, 50], [5, 9, 14]]):  # rows 0-2: needles
        mu[0, 0, r, pages] = (1 + 0.01 * torch.rand(len(pages), generator=g, dtype=torch.float64)) / c
    mu[0, 0, 3] = torch.randn(p, generator=g, dtype=torch.float64) * 0.1 / c  # row 3: every page kept
    sigma[0, 0, 3] = 1.0 / c
    candidates = torch.ones(1, p, dtype=torch.bool)
    exact = torch.full((1, 1, 4, s), float("-inf"), dtype=torch.float64)
    exact[..., :3] = -40.0 / c
    seen = {}
    with kernel_launches(lambda kernel, bound: seen.setdefault(kernel.fn.__name__, bound)):
        monkeypatch.setattr(module, "SPREAD", True)
        got = torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, alpha, 50, 30)
        monkeypatch.setattr(module, "SPREAD", False)
        one = torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, alpha, 50, 30)
    assert list(seen) == ["_gaussian_chunk_top_kernel", "_gaussian_chunk_keep_kernel",
                          "_gaussian_gather_solve_kernel", "_gaussian_tau_kernel"]
    assert seen["_gaussian_chunk_keep_kernel"]["CHUNKS"] == (5 if chunks == 32 else 2)
    solve, fused = seen["_gaussian_gather_solve_kernel"], seen["_gaussian_tau_kernel"]
    assert [solve[k] for k in ("SOLVE_P", "SHORT_P", "num_warps")] == [fused[k] for k in ("SOLVE_P", "SHORT_P",
                                                                                           "num_warps")]
    assert torch.equal(got, one), f"seed {seed}: {(got - one).abs().max()}"
    want = solve_gaussian_tau(mu, sigma, torch.full_like(mu, float(s)), exact, alpha, iters=50)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")


@pytest.mark.parametrize("form", ["fused", "split", "spread"])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3, 1.25, 1.05, 1.01])
def test_gaussian_tau_low_end_from_a_page_is_a_root_bound(alpha, form, monkeypatch):
    """The solve's low end from the top page, (α−1)·μ − S^−(α−1) (Jensen's inequality), is
    where F >= 0 — tightly: a lone page of constant scores (σ = 0) has its root exactly
    there, and one with a small σ just above it; the other pages and the newest page's scores
    lie 2–3 units below in (α−1)-scaled scores, further than S^−(α−1) (< 1) at every α, so the
    low end is tight at α near 1 too. A low end set higher (a root bound that is not one)
    returns the low end itself, not the root."""
    from entmaxkv.gaussian import solve_gaussian_tau
    from entmaxkv.kernels import gaussian_tau as module

    monkeypatch.setattr(module, "SPLIT", form == "split")
    monkeypatch.setattr(module, "SPREAD", form == "spread")
    monkeypatch.setattr(module, "SPREAD_P", 16)
    monkeypatch.setattr(module, "SPREAD_MIN_PAGES", 0)  # the spread form at any length
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, h, grp, p, s = 1, 1, 4, 40, 16
    c = alpha - 1  # placed in (α−1)-scaled units, then unscaled
    mu = (torch.randn(b, h, grp, p, generator=g, dtype=torch.float64) * 0.1 - 3.0) / c
    sigma = (torch.rand(b, h, grp, p, generator=g, dtype=torch.float64) * 0.1 + 0.05) / c
    at = int(torch.randint(p, (1,), generator=g))
    mu[..., at] = (6.0 + torch.rand(grp, generator=g, dtype=torch.float64)) / c
    sigma[..., at] = torch.tensor([0.0, 1e-6, 1e-3, 0.05], dtype=torch.float64) / c
    candidates = torch.ones(b, p, dtype=torch.bool)
    exact = torch.full((b, h, grp, s), float("-inf"), dtype=torch.float64)
    exact[..., :3] = -2.0 / c
    count = torch.full_like(mu, 16.0)
    want = solve_gaussian_tau(mu, sigma, count, exact, alpha, iters=60)
    got = torch.ops.entmaxkv.gaussian_tau(mu, sigma, candidates, exact, alpha, 50, 30)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")
    low = c * mu[..., at] - 16.0 ** -c
    assert abs(float(got[0, 0, 0] - low[0, 0, 0])) <= 1e-12, f"seed {seed}: σ = 0 puts the root at the low end"
    assert bool((got[0, 0] >= low[0, 0] - 1e-12).all()) and bool(got[0, 0, 3] > low[0, 0, 3]), f"seed {seed}"


def _gaussian_tau_rows(seed: int, alpha: float):
    """Moments of 8 rows (B = 2, Hkv = 2, G = 2, 37 pages) for ``gaussian_tau``, and the
    reference's τ̂: means ~N(0, 2²), stds in [0.02, 1.02] (constant pages in row 0), 70%
    candidates, a partial newest page. Every row keeps fewer than ``SHORT_P`` pages."""
    from entmaxkv.gaussian import solve_gaussian_tau

    g = torch.Generator().manual_seed(seed)
    b, h, grp, p, s = 2, 2, 2, 37, 16
    mu = torch.randn(b, h, grp, p, generator=g, dtype=torch.float64) * 2
    sigma = torch.rand(b, h, grp, p, generator=g, dtype=torch.float64) + 0.02
    sigma[0, 0, 0, :3] = 0.0
    candidates = torch.rand(b, p, generator=g) < 0.7
    exact = torch.randn(b, h, grp, s, generator=g, dtype=torch.float64) * 2
    exact[..., 9:] = float("-inf")
    count = torch.where(candidates[:, None, None, :], 16.0, 0.0).to(torch.float64).expand_as(mu)
    return (mu, sigma, candidates, exact), solve_gaussian_tau(mu, sigma, count, exact, alpha, iters=50)


def _count_float64_passes(module, monkeypatch):
    """Per row, the solve's float64 passes in the interpreter: {"pair": ..., "single": ...}
    (``_excess_pair`` and ``_kept_excess`` calls), counted through wrappers of the two."""
    counts = {"pair": {}, "single": {}}

    def counting(name, original):
        def wrapper(*args):
            row = int(args[4].handle.data.reshape(-1)[0])  # the row argument, an interpreted scalar
            counts[name][row] = counts[name].get(row, 0) + 1
            return original.fn(*args)
        return wrapper

    monkeypatch.setattr(module, "_excess_pair", counting("pair", module._excess_pair))
    monkeypatch.setattr(module, "_kept_excess", counting("single", module._kept_excess))
    return counts


@pytest.mark.parametrize("rows", ["short", "long"])
@pytest.mark.parametrize("form", ["fused", "split", "spread"])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3, 1.25, 1.01])
def test_gaussian_tau_presolve_brackets_the_root_in_one_float64_pass(alpha, form, rows, monkeypatch):
    """``PRESOLVE``: a row whose kept pages fit one block takes one float64 pass at the two
    points around the float32 guess, which bracket the root, then two Newton passes (not the
    bracket's and the steps' 6–9 from the low end); a row of more pages (``PRESOLVE_LONG``;
    here ``SHORT_P`` = 4, solve blocks of 8) one float64 pass at the guess's left point, then
    two. τ̂ equals the reference to 1e-12 in every launch form, as without the pre-solve."""
    from entmaxkv.kernels import gaussian_tau as module

    monkeypatch.setattr(module, "SPLIT", form == "split")
    monkeypatch.setattr(module, "SPREAD", form == "spread")
    monkeypatch.setattr(module, "SPREAD_P", 16)
    monkeypatch.setattr(module, "SPREAD_MIN_PAGES", 0)
    if rows == "long":  # rows keep 10-26 pages: past SHORT_P, in solve blocks of 8 (several a pass)
        monkeypatch.setattr(module, "SHORT_P", 4)
        monkeypatch.setattr(module, "SPLIT_SOLVE_P", 8)
        monkeypatch.setattr(module, "TAU_SOLVE_P", 8)
    seed = fresh_seed()
    args, want = _gaussian_tau_rows(seed, alpha)
    counts = _count_float64_passes(module, monkeypatch)
    got = torch.ops.entmaxkv.gaussian_tau(*args, alpha, 50, 30)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")
    if rows == "short":
        assert counts["pair"] == {r: 1 for r in range(8)}, f"seed {seed}: {counts}"
        assert max(counts["single"].values()) <= 2, f"seed {seed}: {counts}"
    else:
        assert not counts["pair"], f"seed {seed}: {counts}"
        assert max(counts["single"].values()) <= 3, f"seed {seed}: {counts}"
    passes = sum(counts["single"].values()) + sum(counts["pair"].values())
    monkeypatch.setattr(module, "PRESOLVE", False)
    counts["single"].clear()
    without = torch.ops.entmaxkv.gaussian_tau(*args, alpha, 50, 30)
    torch.testing.assert_close(without, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")
    # what the pre-solve saves, over the 8 rows (a row alone can take 3 without it: seed 1011484263)
    assert sum(counts["single"].values()) > passes, f"seed {seed}: {counts} against {passes}"


@pytest.mark.parametrize("offset", [-1e-3, 1e-3, 0.0], ids=["guess left", "guess right", "no margin"])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25])
def test_gaussian_tau_presolve_falls_back_where_its_points_miss_the_root(alpha, offset, monkeypatch):
    """A guess off by more than the margin (moved left or right of the float32 one), or no
    margin at all: the two points do not bracket the root, the row takes the bracket and the
    steps from the low end instead — τ̂ bit for bit what it is without the pre-solve, equal to
    the reference. Catches a bracket accepted on one side's sign alone."""
    from entmaxkv.kernels import gaussian_tau as module

    seed = fresh_seed()
    args, want = _gaussian_tau_rows(seed, alpha)
    monkeypatch.setattr(module, "PRESOLVE", False)
    without = torch.ops.entmaxkv.gaussian_tau(*args, alpha, 50, 30)
    monkeypatch.setattr(module, "PRESOLVE", True)
    if offset:
        presolve = module._presolve
        monkeypatch.setattr(module, "_presolve", lambda *a: presolve.fn(*a) + offset)
    else:
        monkeypatch.setattr(module, "PRESOLVE_MARGIN", 0.0)
    counts = _count_float64_passes(module, monkeypatch)
    got = torch.ops.entmaxkv.gaussian_tau(*args, alpha, 50, 30)
    assert counts["pair"] == {r: 1 for r in range(8)}, f"seed {seed}: {counts}"
    assert min(counts["single"].values()) >= 3, f"seed {seed}: {counts}"  # the bracket, lo, a step
    assert torch.equal(got, without), f"seed {seed}: {(got - without).abs().max()}"
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")


@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25])
def test_gaussian_tau_long_presolve_falls_back_where_its_start_is_past_the_root(alpha, monkeypatch):
    """``PRESOLVE_LONG`` (rows of more than ``SHORT_P`` pages) with the guess moved right of
    the root: its float64 pass finds F < 0 at the start, and the row takes the bracket and the
    steps from the low end — τ̂ bit for bit what it is without the pre-solve; moved left, the
    start is a valid left end: τ̂ equal to the reference."""
    from entmaxkv.kernels import gaussian_tau as module

    monkeypatch.setattr(module, "SHORT_P", 4)
    monkeypatch.setattr(module, "SPLIT_SOLVE_P", 8)
    seed = fresh_seed()
    args, want = _gaussian_tau_rows(seed, alpha)
    monkeypatch.setattr(module, "PRESOLVE_LONG", False)
    without = torch.ops.entmaxkv.gaussian_tau(*args, alpha, 50, 30)
    monkeypatch.setattr(module, "PRESOLVE_LONG", True)
    presolve = module._presolve
    for offset in (1e-3, -1e-3):
        monkeypatch.setattr(module, "_presolve", lambda *a: presolve.fn(*a) + offset)
        got = torch.ops.entmaxkv.gaussian_tau(*args, alpha, 50, 30)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"seed {seed} offset {offset}")
        if offset > 0:
            assert torch.equal(got, without), f"seed {seed}: {(got - without).abs().max()}"


@pytest.mark.parametrize("selector", [ekv.Dense(), ekv.TopK(token_budget=32), ekv.Gaussian(tau_mode="corrected"),
                                      ekv.Exact(initial_pages=1, max_pages=2)], ids=lambda s: type(s).__name__)
def test_vmap_through_the_ops_is_batched_and_equals_a_loop(selector):
    """vmap over a leading batch of caches runs the ops' batch rules (with vmap's per-example
    fallback switched off, a missing rule would raise) and equals a Python loop."""
    seed = fresh_seed()
    caches = [make_cache(seed + i, 2, 2, 16, 16, lengths(seed + i, 2), capacity=90, dtype=torch.float32)[0]
              .without_host_len() for i in range(2)]
    steps = [random_step(torch.Generator().manual_seed(seed + i), 2, 4, 2, 16, torch.float32) for i in range(2)]
    config = ekv.DecodeConfig(1.5, selector, backend="triton")
    want = [ekv.decode_step(c.fork(), *s, config)[1] for c, s in zip(caches, steps)]
    stacked = torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *[c.fork() for c in caches])
    q, k, v = (torch.stack(x) for x in zip(*steps))
    torch._C._functorch._set_vmap_fallback_enabled(False)  # an op without a batch rule now raises
    try:
        new, got = torch.func.vmap(lambda c, q, k, v: ekv.decode_step(c, q, k, v, config))(stacked, q, k, v)
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(True)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-6, atol=1e-6, msg=f"seed {seed}")
    assert torch.equal(new.seq_lens, torch.stack([c.seq_lens + 1 for c in caches]))


def test_kernel_tau_lower_bound_is_below_the_root_at_general_alpha():
    """Tiny scores make the rounding margins vanish; the bound must still cover the bisection
    error of α ∉ {1, 1.5, 2} (found by review: 2.4e-13 above the root without it)."""
    from entmaxkv.backend import build_step

    seed, alpha, scale = 148, 1.25, 1e-9
    cache, _, _ = make_cache(seed, 1, 1, 24, 8, [9], dtype=torch.float32, spread=2.0)
    q = torch.randn(1, 8, 1, 24, generator=torch.Generator().manual_seed(seed)).float()
    step = build_step(cache, q, alpha, scale, None, kernels=True, needs_sigma=False)
    low = step.ops.tau_lower_bound(cache.live_page_mask()[:, None, :])
    s = token_scores(cache.to(torch.float64), q.double(), scale, None)
    z = (alpha - 1) * s
    f = ((z - low[..., None]).clamp_min(0) ** (1 / (alpha - 1))).sum(-1) - 1  # >= 0 iff low <= τ
    assert bool((f >= 0).all()), f


def test_vmap_of_an_op_takes_keyword_arguments():
    """The ops' batch rule forwards keyword arguments, folded path and per-example loop alike:
    ``sparse_decode(..., with_output=False)`` under vmap gives the loop's τ and an empty output
    (``KernelOps`` passes it positionally; a caller may not)."""
    seed = fresh_seed()
    caches = [make_cache(seed + i, 2, 2, 16, 16, [70 + i, 41], capacity=96, dtype=torch.float32)[0] for i in range(2)]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, 4, 16, generator=g)
    pages, count = random_lists(caches[0], seed, 3)
    slopes = torch.rand(2, 4, generator=g) * 0.1  # batched: the per-example loop

    def tau_only(q, k, v, lens, slopes=None):
        return sparse_decode(q, k, v, None, pages, count, lens, slopes, None, None, None, 1.5, 0.3, False,
                             TAU_EXACT, 0, with_output=False)

    stack = [torch.stack([getattr(c, name) for c in caches]) for name in ("k_pages", "v_pages", "seq_lens")]
    for use_slopes in (False, True):
        extra = (slopes,) if use_slopes else ()
        out, tau = torch.func.vmap(tau_only)(q, *stack, *extra)
        assert out.shape == (2, 2, 4, 0), out.shape
        for i, c in enumerate(caches):
            _, want = tau_only(q[i], c.k_pages, c.v_pages, c.seq_lens, *(slopes[i],) if use_slopes else ())
            torch.testing.assert_close(tau[i], want, rtol=0, atol=0, msg=f"seed {seed} slopes {use_slopes}")


@pytest.mark.parametrize("selector", [ekv.Dense(), ekv.Exact(initial_pages=2)], ids=lambda s: type(s).__name__)
def test_strided_alibi_slopes_on_the_ops_equal_contiguous_ones(selector):
    """A strided view of slopes (every other entry of a longer vector) gives the step the
    contiguous copy gives: the ops index slopes densely, so the step makes them contiguous
    (from an independent review: the ops read the wrong slopes before)."""
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 16, 16, [70, 41], capacity=96, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, n, 1, 16, generator=g) for n in (4, 2, 2))
    wide = torch.rand(8, generator=g) * 0.5
    config = ekv.DecodeConfig(1.5, selector, backend="triton")
    _, got = ekv.decode_step(cache.fork(), q, k, v, config, alibi_slopes=wide[::2])
    _, want = ekv.decode_step(cache.fork(), q, k, v, config, alibi_slopes=wide[::2].contiguous())
    torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"seed {seed}")

