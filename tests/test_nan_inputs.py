"""NaN in, NaN out: a NaN score among the tokens a step attends makes that query head's output
NaN for every α, on the Triton ops and the torch reference alike — as dense entmax and torch
SDPA give. Until 2026-11-29 ``sparse_decode``'s α > 1 path returned a finite output there: a
NaN score fails every comparison, so the survivor test dropped it from the support.

What cannot be seen is left alone, and pinned here so that a change is noticed: a NaN key in a
page the list does not hold, and (α > 1) a NaN value of a token with zero weight — the kernel
reads V for the support only, while the reference's matmul gives NaN there (0·NaN).

``prefill`` rejects NaN (it validates on the host); a decode step cannot (no host sync), so a
NaN arrives through a step's new key or value. These tests write it straight into the cache's
storage (the page statistics stay those of the finite keys: ``Dense`` and the op never read
them) or pass it as the step's new key. Fresh inputs, ragged lengths, GQA, small shapes.
"""

import random

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.reference import token_scores
from entmaxkv.state import append_token
from helpers import cache_with_a_nan_key, fresh_seed, make_cache, on_both_backends, random_step

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels.sparse_decode import TAU_EXACT, TAU_GIVEN, TAU_REFINED, sparse_decode  # noqa: E402

ALPHAS = [1.0, 1.25, 1.5, 2.0]  # softmax, the bisection, the two exact fast paths
S, D, HKV, G = 16, 16, 2, 2
ON_THE_GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                            reason="needs CUDA")])


def ragged(seed: int, batch: int) -> list[int]:
    """Lengths with at least one full page before the newest, landing 0/1/15 tokens into a page."""
    g = random.Random(seed)
    return [S * g.randrange(2, 5) + g.choice([0, 1, 15]) for _ in range(batch)]


def group_rows(b: int, h: int) -> tuple[int, slice]:
    """The query heads of KV head h of sequence b: a NaN key is NaN for every q of the group."""
    return b, slice(h * G, (h + 1) * G)


def close_where_finite(got, want, finite, tol, msg):
    err = float((got[finite].double() - want[finite].double()).abs().max() / want[finite].double().abs().max())
    assert err < tol, (msg, err)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_a_nan_key_the_step_attends_makes_the_head_nan_on_both_backends(alpha):
    """``Dense``: a NaN key in a full page of one (sequence, KV head) (the split programs'
    lists) and in the step's own new key of another (the newest page's program) -> those two
    KV groups' outputs are NaN on both backends, the kernel's τ NaN too; every other row is
    finite and equal between the backends."""
    seed = fresh_seed()
    rng = random.Random(seed)
    lens = ragged(seed, 3)
    cache, _, _ = make_cache(seed, 3, HKV, D, S, lens, dtype=torch.float32)
    q, k_new, v_new = random_step(torch.Generator().manual_seed(seed + 1), 3, HKV * G, HKV, D, torch.float32)
    (b, h), (b2, h2) = rng.sample([(i, j) for i in range(3) for j in range(HKV)], 2)
    pos = rng.randrange(((lens[b] - 1) // S) * S)  # a token of a full page before the newest
    cache.k_pages[b, h, pos // S, pos % S, rng.randrange(D)] = float("nan")
    k_new[b2, h2, 0, rng.randrange(D)] = float("nan")
    (_, ref, _), (_, out, info) = on_both_backends(cache, q, k_new, v_new, alpha, ekv.Dense())
    nan_rows = torch.zeros(3, HKV * G, dtype=torch.bool)
    nan_rows[group_rows(b, h)] = True
    nan_rows[group_rows(b2, h2)] = True
    msg = f"seed {seed} α {alpha} token {pos} of row {b} head {h}, new key of row {b2} head {h2}"
    for name, o in (("torch", ref), ("triton", out)):
        assert torch.equal(o[:, :, 0].isnan().all(-1), nan_rows), (name, msg)
        assert not bool(o[~nan_rows].isnan().any()), (name, msg)
    assert torch.equal(info.tau.isnan(), nan_rows), msg  # the kernel's τ: NaN exactly there
    close_where_finite(out, ref, ~nan_rows, 2e-5, msg)


def listed_cache(seed):
    """A float32 cache (B = 2) with one NaN key in a page listed for (0, KV head 0) and one in a
    page not listed for (1, KV head 1); the lists [B, Hkv, 2] and counts."""
    lens = ragged(seed, 2)
    cache, _, _ = make_cache(seed, 2, HKV, D, S, lens, dtype=torch.float32)
    rng = random.Random(seed + 2)
    pages = torch.full((2, HKV, 2), -1, dtype=torch.int32)
    count = torch.zeros(2, HKV, dtype=torch.int32)
    for b in range(2):
        full = (lens[b] - 1) // S  # >= 1 full page before the newest
        for h in range(HKV):
            chosen = sorted(rng.sample(range(full), min(full, 2)))
            if (b, h) == (1, 1):  # at most one page listed, so that one full page is left out
                chosen = chosen[:1] if full > 1 else []
            pages[b, h, : len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
            count[b, h] = len(chosen)
    listed = int(pages[0, 0, rng.randrange(int(count[0, 0]))])
    left_out = next(p for p in range((lens[1] - 1) // S) if p not in pages[1, 1, : int(count[1, 1])].tolist())
    for (b, h, page) in ((0, 0, listed), (1, 1, left_out)):
        cache.k_pages[b, h, page, rng.randrange(S), rng.randrange(D)] = float("nan")
    newest = ((cache.seq_lens - 1) // S).int()[:, None, None].expand(2, HKV, 1)
    return cache, pages, count, torch.cat([pages, newest], -1)


@pytest.mark.parametrize("device", ["cpu", ON_THE_GPU])  # the GPU: maximum() drops NaN there
@pytest.mark.parametrize("alpha", ALPHAS)
def test_sparse_decode_is_nan_where_the_list_reads_a_nan_key(alpha, device, poison):
    """The op with explicit page lists, every τ mode: the row whose list holds the NaN page is
    NaN (output and τ), the row whose NaN page is not listed is finite and equals the
    reference over its list (the NaN cannot be seen); ``dense`` reads both NaN pages. A NaN
    in one query head's q makes that head NaN, not the rest of its group."""
    seed = fresh_seed()
    cache, pages, count, with_newest = listed_cache(seed)
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(2, HKV * G, 1, D, generator=g)
    nan_q = int(torch.randint(0, G, (1,), generator=g))  # a head of the clean group (1, KV head 0)
    q[1, nan_q, 0, int(torch.randint(0, D, (1,), generator=g))] = float("nan")
    for dense in (False, True):
        if dense:
            want, want_tau = ekv.dense_decode(cache, q, alpha, 0.3)
        else:
            want, want_tau = ekv.paged_decode(cache, q, with_newest, alpha, 0.3)
        nan_rows = torch.zeros(2, HKV * G, dtype=torch.bool)
        nan_rows[group_rows(0, 0)] = True
        nan_rows[1, nan_q] = True
        if dense:
            nan_rows[group_rows(1, 1)] = True
        msg = f"seed {seed} α {alpha} dense {dense}"
        assert torch.equal(want[:, :, 0].isnan().all(-1), nan_rows), f"the reference: {msg}"
        assert not bool(want[~nan_rows].isnan().any()), f"the reference: {msg}"
        modes = [(TAU_EXACT, None, 0)]
        if alpha > 1.0:  # an estimated τ (finite: the NaN must come from the scores)
            est = torch.where(want_tau.isnan(), 0.0, want_tau) - 0.1
            modes += [(TAU_GIVEN, est, 0), (TAU_REFINED, est, 2)]
        dev = torch.device(device)
        for mode, tau_in, iters in modes:
            out, tau = sparse_decode(q[:, :, 0].contiguous().to(dev), cache.k_pages.to(dev), cache.v_pages.to(dev),
                                     None, pages.to(dev), count.to(dev), cache.seq_lens.to(dev), None,
                                     None if tau_in is None else tau_in.to(dev), None, None, alpha, 0.3, dense,
                                     mode, iters)
            out, tau = out.cpu(), tau.cpu()
            assert torch.equal(out.isnan().all(-1), nan_rows), (mode, msg)
            assert not bool(out[~nan_rows].isnan().any()), (mode, msg)
            assert torch.equal(tau.isnan(), nan_rows), (mode, msg)
            if mode == TAU_EXACT:
                close_where_finite(out, want[:, :, 0], ~nan_rows, 2e-5, msg)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_a_nan_value_shows_where_its_token_has_weight(alpha):
    """``Dense`` on both backends, a NaN in one element (column c) of one token's value:
    - the top-scoring token of a query head (always weighted): both backends give NaN in
      column c for every head of the group that weights it (the reference's matmul: for every
      head of the group), and equal finite values elsewhere;
    - (α > 1) a token no head of its group weights: the kernel never reads its V and stays
      finite, equal to the reference with that value zeroed; the reference gives NaN in
      column c (0·NaN) — a difference by design, not something either backend hides."""
    seed = fresh_seed()
    rng = random.Random(seed)
    lens = ragged(seed, 2)
    cache, _, _ = make_cache(seed, 2, HKV, D, S, lens, dtype=torch.float32, spread=3.0)
    q, k_new, v_new = random_step(torch.Generator().manual_seed(seed + 1), 2, HKV * G, HKV, D, torch.float32)
    q = q * 3  # scores several units apart: entmax leaves most tokens at zero weight
    b, h, c = rng.randrange(2), rng.randrange(HKV), rng.randrange(D)
    after, _ = append_token(cache.fork(), k_new, v_new)  # the step's tokens, the new one included
    scores = token_scores(after, q, 1 / D ** 0.5)[b, h].double()  # [G, T], −inf past the length
    weights = ekv.entmax(scores, alpha)
    cases = {"weighted": int(scores[rng.randrange(G)].argmax())}
    if alpha > 1.0:
        unweighted = ((weights == 0).all(0) & (scores > float("-inf")).all(0)).nonzero().flatten()
        assert len(unweighted), f"seed {seed}: no token without weight"  # q·3 makes this certain in practice
        cases["unweighted"] = int(unweighted[rng.randrange(len(unweighted))])
    for case, pos in cases.items():
        poisoned = cache.fork()
        poisoned.v_pages[b, h, pos // S, pos % S, c] = float("nan") if pos < lens[b] else 0.0
        v_step = v_new.clone()
        if pos == lens[b]:  # the step's own token
            v_step[b, h, 0, c] = float("nan")
        (_, ref, _), (_, out, _) = on_both_backends(poisoned, q, k_new, v_step, alpha, ekv.Dense())
        msg = f"seed {seed} α {alpha} {case} token {pos} of row {b} head {h}"
        column = torch.zeros_like(out, dtype=torch.bool)
        column[b, h * G:(h + 1) * G, 0, c] = True
        if case == "weighted":
            expected = column.clone()
            expected[b, h * G:(h + 1) * G, 0, c] = weights[:, pos] > 0
            assert torch.equal(out.isnan(), expected), f"triton: {msg}"
            assert torch.equal(ref.isnan(), column), f"torch: {msg}"
            close_where_finite(out, ref, ~column, 2e-5, msg)
        else:
            assert torch.equal(ref.isnan(), column), f"torch: {msg}"
            assert not bool(out.isnan().any()), f"triton: {msg}"
            clean = cache.fork()
            clean.v_pages[b, h, pos // S, pos % S, c] = 0.0
            v_clean = v_new.clone()
            if pos == lens[b]:
                v_clean[b, h, 0, c] = 0.0
            want = ekv.decode_step(clean, q, k_new, v_clean, ekv.DecodeConfig(alpha, ekv.Dense(), backend="torch"))[1]
            close_where_finite(out, want, torch.ones_like(column), 2e-5, msg)


@pytest.mark.parametrize("device", ["cpu", ON_THE_GPU])  # the GPU: maximum() drops NaN there
@pytest.mark.parametrize("alpha", ALPHAS)
def test_a_nan_in_a_splits_first_chunk_is_not_forgotten_by_its_last(alpha, device, poison, monkeypatch):
    """``dense`` over 10–12 full pages of 16 tokens, B = 2, Hkv = 2, two splits (patched: on
    the GPU the occupancy rule gives about one 64-token chunk a split) of 5–6 pages, each
    scored in two 64-token chunks. A NaN key in the first chunk of split 0 of row (0, 0)
    and of split 1 of row (1, 1): the split's NaN flag must survive its later chunks, which
    hold no NaN (a flag kept for the last chunk only misses it). Those groups' outputs and τ
    are NaN; the other rows are finite and equal the reference."""
    monkeypatch.setattr("entmaxkv.kernels.sparse_decode.num_splits", lambda *args: 2)
    seed = fresh_seed()
    rng = random.Random(seed)
    lens = [S * rng.randrange(11, 13) + rng.choice([0, 1, 15]) for _ in range(2)]  # 10–12 full pages before the newest
    cache, _, _ = make_cache(seed, 2, HKV, D, S, lens, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(2, HKV * G, 1, D, generator=g)
    nan_rows = torch.zeros(2, HKV * G, dtype=torch.bool)
    for b, h, split in ((0, 0, 0), (1, 1, 1)):
        n = (lens[b] - 1) // S
        per_split = -(-n // 2)  # as the scores kernel balances the 2 splits
        assert per_split * S > 64, "the split must hold a second chunk"
        page = split * per_split + rng.randrange(64 // S)  # a page of the split's first chunk
        cache.k_pages[b, h, page, rng.randrange(S), rng.randrange(D)] = float("nan")
        nan_rows[group_rows(b, h)] = True
    want, _ = ekv.dense_decode(cache, q, alpha, 0.3)
    msg = f"seed {seed} α {alpha} lens {lens}"
    assert torch.equal(want[:, :, 0].isnan().all(-1), nan_rows), f"the reference: {msg}"
    dev = torch.device(device)
    empty = torch.full((2, HKV, 1), -1, dtype=torch.int32)
    out, tau = sparse_decode(q[:, :, 0].contiguous().to(dev), cache.k_pages.to(dev), cache.v_pages.to(dev), None,
                             empty.to(dev), torch.zeros(2, HKV, dtype=torch.int32, device=dev),
                             cache.seq_lens.to(dev), None, None, None, None, alpha, 0.3, True, TAU_EXACT, 0)
    out, tau = out.cpu(), tau.cpu()
    assert torch.equal(out.isnan().all(-1), nan_rows), msg
    assert not bool(out[~nan_rows].isnan().any()), msg
    if alpha > 1.0:
        assert torch.equal(tau.isnan(), nan_rows), msg
    close_where_finite(out, want[:, :, 0], ~nan_rows, 2e-5, msg)


@pytest.mark.parametrize("key_bits", [None, 4])
def test_a_nan_key_makes_its_pages_min_and_max_nan_on_both_backends(key_bits):
    """The page a NaN key fills gets NaN min and max in that channel on the Triton ops as in the
    torch reference (torch's amin/amax): a page's bounds must not hide a NaN key. Until session
    19 the ops' min/max reductions skipped it, and page-box ``Exact`` could exclude the page by
    its finite bounds and call the finite output certified."""
    seed = fresh_seed()
    (torch_cache, _, _), (ops_cache, _, _) = (cache_with_a_nan_key(b, seed, key_bits) for b in ("torch", "triton"))
    for stat in ("k_min", "k_max"):
        ref, got = getattr(torch_cache, stat)[0, 0, 8], getattr(ops_cache, stat)[0, 0, 8]
        assert bool(ref[2].isnan()) and bool(got[2].isnan()), (stat, ref, got)
        torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("unseeded", [False, True])
@pytest.mark.parametrize("rounds", [None, 2])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_exact_with_a_nan_key_gives_nan_as_dense_does(backend, rounds, unseeded):
    """A NaN key in a full page makes dense entmax NaN. Its page's bounds (NaN min and max), or
    the τ bound of a set holding it, are NaN, and a NaN comparison proves nothing: ``Exact``
    attends the page and its output is NaN too — never a finite output called certified (from
    an independent review: the exclusion dropped the page once the step stopped re-checking
    its set; ``unseeded``: a page no seed holds, which its finite bounds excluded on the ops
    while their min/max skipped NaN)."""
    cache, q, g = cache_with_a_nan_key(backend, fresh_seed(), unseeded=unseeded)
    d = q.shape[-1]
    config = ekv.DecodeConfig(1.5, ekv.Exact(initial_pages=1 if unseeded else 8, rounds=rounds), backend=backend)
    new, out, info = ekv.decode_step(cache, q, torch.zeros(1, 1, 1, d), torch.randn(1, 1, 1, d, generator=g), config,
                                     with_info=True)
    dense, _ = ekv.dense_decode(new.to(torch.float64), q.double(), 1.5)
    assert bool(dense.isnan().all())
    assert bool(out.isnan().all()), (info.page_mask, out)
