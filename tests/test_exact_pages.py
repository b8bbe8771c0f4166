"""The ``pages_above`` op (under Triton's interpreter) against ``certificate.pages_above``, the
torch composition it replaces in ``Exact``'s exclusion rounds on the kernel path, and the
|score| scale the next round's τ bound takes from it. Page bounds are drawn directly, with
bounds exactly at a head's τ lower bound (not above it: kept only by another head) and NaN in
the entries of pages that are not candidates (the op must not read them); rows hold no
candidate, one, or many, over one chunk or several."""

import random

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.certificate import pages_above as torch_pages_above
from entmaxkv.newest_page import candidate_page_mask
from helpers import fresh_seed, kept_pages_floor, kernel_step_after_append, lengths_only_cache

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels.exact_pages import pages_above  # noqa: E402
from entmaxkv.kernels.page_scores import mean_slack  # noqa: E402

S = 8


def _case(seed: int, group: int, dtype: torch.dtype, alpha: float):
    g = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    b, hkv, p = 4, 2, 37
    cache = lengths_only_cache(rnd, p, S, dtype, hkv)
    shape = (b, hkv, group, p)
    upper = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    absmax = (upper.abs() + torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)).to(dtype)
    means = (upper - absmax * torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)).to(dtype)
    newest = (torch.randn(b, hkv, group, generator=g, dtype=torch.float64) * 2).to(dtype)
    newest[1, 0] = float("-inf")  # no token in the newest page yet
    slopes = torch.rand(hkv * group, generator=g, dtype=torch.float64).to(dtype) * 0.1 - 0.05
    # τ lower bounds at the (α−1)-scaled bound of a random page of the head: that page sits
    # exactly at τ (not above), the rest on either side
    pick = torch.randint(0, p, (b, hkv, group, 1), generator=g)
    tau_low = ((alpha - 1) * upper.double()).gather(-1, pick)[..., 0]
    return cache, upper, absmax, means, newest, slopes, tau_low


@pytest.mark.parametrize("chunk", [1024, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group", [1, 3, 4])
def test_pages_above_equals_the_torch_composition(group, dtype, chunk, poison, monkeypatch):
    monkeypatch.setattr("entmaxkv.kernels.exact_pages.CHUNK", chunk)  # 4: ten chunks a row
    seed = fresh_seed()
    slack = mean_slack(dtype, S, 16)
    for alpha, alibi in ((1.5, False), (2.0, True), (1.25, False)):
        cache, upper, absmax, means, newest, slopes, tau_low = _case(seed, group, dtype, alpha)
        slopes = slopes if alibi else None
        candidates = candidate_page_mask(cache)
        off = ~candidates[:, :, None, :].expand_as(upper)
        upper, absmax, means = (x.masked_fill(off, float("nan")) for x in (upper, absmax, means))
        msg = f"seed {seed} α {alpha} ALiBi {alibi}"
        want = torch_pages_above(upper, tau_low, candidates, alpha)
        pages, count, mask, magnitude, floor = pages_above(upper, absmax, means, tau_low, newest, cache.seq_lens,
                                                           slopes, S, alpha, slack)
        assert torch.equal(mask, want), msg
        assert torch.equal(count, mask.sum(-1).to(torch.int32)), msg
        for row, n, m in zip(pages.flatten(0, 1), count.flatten(), mask.flatten(0, 1)):
            assert row[: int(n)].tolist() == m.nonzero().flatten().tolist(), msg
            assert bool((row[int(n):] == -1).all()), msg
        kept = mask[:, :, None, :].expand_as(absmax)
        want_mag = torch.where(kept, absmax, torch.zeros_like(absmax)).amax(-1)
        assert torch.equal(magnitude, want_mag), msg
        assert torch.equal(floor, kept_pages_floor(mask, means, absmax, newest, slopes, slack, S)), msg
        assert not bool(mask[0].any()), "a row without candidates keeps nothing"
        assert bool(mask.any()) and not bool(mask[2:].all()), f"{msg}: pages on both sides"


def test_pages_above_keeps_everything_or_nothing_at_the_extremes(poison):
    cache, upper, absmax, means, newest, _, tau_low = _case(fresh_seed(), 2, torch.float32, 1.5)
    candidates = candidate_page_mask(cache)
    args = (cache.seq_lens, None, S, 1.5, mean_slack(torch.float32, S, 16))
    _, count, mask, magnitude, floor = pages_above(upper, absmax, means, torch.full_like(tau_low, -1e30), newest,
                                                   *args)
    assert torch.equal(mask, candidates.expand_as(mask))
    _, count, mask, magnitude, floor = pages_above(upper, absmax, means, torch.full_like(tau_low, 1e30), newest,
                                                   *args)
    assert not bool(mask.any()) and not bool(count.any()) and not bool(magnitude.any())
    assert torch.equal(floor, newest), "no page kept: the newest page's floor"
    nan = torch.full_like(tau_low, float("nan"))  # a NaN bound proves nothing: every page kept
    _, _, mask, _, _ = pages_above(upper, absmax, means, nan, newest, *args)
    assert torch.equal(mask, torch_pages_above(upper, nan, candidates, 1.5))
    assert torch.equal(mask, candidates.expand_as(mask))
    nan_upper = upper.clone()
    nan_upper[:, :, 0, 1] = float("nan")  # one head's bound of page 1: that page kept, whatever τ_low
    _, _, mask, _, _ = pages_above(nan_upper, absmax, means, torch.full_like(tau_low, 1e30), newest, *args)
    assert torch.equal(mask, torch_pages_above(nan_upper, torch.full_like(tau_low, 1e30), candidates, 1.5))
    assert torch.equal(mask, candidates.expand_as(mask) & (torch.arange(mask.shape[-1]) == 1))


def test_pages_above_opcheck():
    """Fake tensor, schema and dispatch checks of the op's registration."""
    cache, upper, absmax, means, newest, slopes, tau_low = _case(fresh_seed(), 2, torch.float32, 1.5)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        for alibi in (None, slopes):
            torch.library.opcheck(torch.ops.entmaxkv.pages_above.default,
                                  (upper, absmax, means, tau_low, newest, cache.seq_lens, alibi, S, 1.5, 2.0 ** -8))


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("max_pages", [None, 3])
@pytest.mark.parametrize("rounds", [1, 2])
def test_exact_on_the_ops_uses_the_rounds_op_and_equals_the_reference(rounds, max_pages, alibi):
    """A page-box ``Exact`` step on the kernel path (its rounds through ``pages_above``, whose
    score floor the attention then takes) selects the reference backend's pages and gives its
    output and certificate."""
    from helpers import make_cache, random_step

    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 16, 16, [70, 33], capacity=96, dtype=torch.float32)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 16, torch.float32)
    selector = ekv.Exact(initial_pages=1, rounds=rounds, max_pages=max_pages)
    slopes = torch.tensor([0.02, -0.01, 0.005, 0.03]) if alibi else None
    outs = {}
    for backend in ("torch", "triton"):
        config = ekv.DecodeConfig(1.5, selector, backend=backend)
        _, outs[backend], info = ekv.decode_step(cache.fork(), q, k, v, config, alibi_slopes=slopes, with_info=True)
        outs[backend + " pages"], outs[backend + " certified"] = info.page_mask, info.certified
    msg = f"seed {seed}"
    assert torch.equal(outs["torch pages"], outs["triton pages"]), msg
    assert torch.equal(outs["torch certified"], outs["triton certified"]), msg
    torch.testing.assert_close(outs["triton"], outs["torch"], rtol=1e-5, atol=1e-5, msg=msg)


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("alpha", [1.5, 1.25])
def test_what_pages_above_remembers_equals_a_fresh_step(alpha, alibi):
    """What ``KernelOps.pages_above`` remembers (|score| scale and count for
    ``tau_lower_bound``; list and score floor for ``attend``) gives the bits a step that never
    ran it computes for the same mask; another mask does not take it; a mask modified in place
    after it raises."""
    cache, fresh = kernel_step_after_append(fresh_seed(), alibi, alpha)
    step = fresh()
    ops = step.ops
    tau0 = ops.tau_lower_bound(ops.quest_top_pages(step.upper, step.means, 1, None, 0, 0))
    mask = ops.pages_above(step.upper, tau0 - 0.5)
    assert bool(mask.any()) and not bool(mask.all())
    floor = ops._listed.floor
    got = ops.tau_lower_bound(mask)
    assert torch.equal(got, fresh().ops.tau_lower_bound(mask.clone()))
    assert torch.equal(floor, fresh().ops.score_floor(mask.clone()))
    other = mask & (torch.arange(cache.num_pages) % 2 == 0)
    assert torch.equal(ops.tau_lower_bound(other), fresh().ops.tau_lower_bound(other.clone()))
    mask[..., 0] = ~mask[..., 0]
    with pytest.raises(ValueError, match="in place"):
        ops.tau_lower_bound(mask)


@pytest.mark.parametrize("alpha", [1.5, 1.25])
@pytest.mark.parametrize("op", ["pages_above", "quest_top_pages"])
def test_tau_lower_bound_of_an_ops_mask_reads_no_page_scores(op, alpha, monkeypatch):
    """``tau_lower_bound`` of the mask ``pages_above`` or ``quest_top_pages`` (``Exact``'s
    initial pages) returned takes the |score| scale the op remembered (no reduction over the
    page scores: poisoned here) and gives the bits of a reduction over the same list and score
    floor, and of another mask reduces (from an independent review: skipping the remembered
    scale otherwise went unnoticed). The reduction runs on a fresh step that built the same
    mask and forgot the scale: the score floor, and so the last bits of τ, are the op's own
    (``quest_select``'s floor is not ``score_floor``'s). The bits compared are the attention's
    and ``safe_tau``'s: ``listed_tau``, which bounds ``quest_top_pages``' short list in one
    launch (its own summation order: ``test_listed_tau`` compares the two), is off for them, and
    checked after to take the remembered scale too."""
    import entmaxkv.kernels.listed_tau as listed_tau_module

    monkeypatch.setattr(listed_tau_module, "LISTED_TAU", False)
    cache, fresh = kernel_step_after_append(fresh_seed(), False, alpha)

    def build(ops, step):
        mask = ops.quest_top_pages(step.upper, step.means, 3, None, 0, 0)
        if op == "pages_above":
            mask = ops.pages_above(step.upper, ops.tau_lower_bound(mask) - 0.5)
        return mask

    step = fresh()
    ops = step.ops
    mask = build(ops, step)
    assert bool(mask.any()) and not bool(mask.all())
    forgetful = fresh()
    same = build(forgetful.ops, forgetful)
    assert torch.equal(same, mask)
    forgetful.ops._listed = forgetful.ops._listed._replace(magnitude=None)
    want = forgetful.ops.tau_lower_bound(same)
    ops.absmax = torch.full_like(ops.absmax, float("nan"))  # a reduction over the pages would read NaN
    assert torch.equal(ops.tau_lower_bound(mask), want)
    assert bool(ops.tau_lower_bound(mask.clone()).isnan().any())  # another mask does reduce
    if op == "quest_top_pages":  # listed_tau's bound: the remembered scale, no page score read
        monkeypatch.setattr(listed_tau_module, "LISTED_TAU", True)
        torch.testing.assert_close(ops.tau_lower_bound(mask), want, rtol=1e-5, atol=1e-5)


def test_tau_lower_bound_without_page_means_raises():
    """A step without page means has no |score| scale: ``tau_lower_bound`` of any mask —
    ``quest_top_pages``' without means among them (its magnitude output is then 0, not a
    scale) — raises instead of returning a bound that is not safe."""
    from entmaxkv.backend import append, build_step
    from helpers import make_cache, random_step

    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 16, 8, [70, 41], capacity=96, dtype=torch.float32)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 4, 2, 16, torch.float32)
    cache, _ = append(cache, k, v, True)
    step = build_step(cache, q, 1.5, 0.25, None, kernels=True, needs_sigma=False, needs_means=False)
    assert step.means is None
    for mask in (step.ops.quest_top_pages(step.upper, None, 3, None, 0, 0), torch.ones_like(step.ops.candidates)):
        with pytest.raises(ValueError, match="absmax"):
            step.ops.tau_lower_bound(mask)


def test_reference_tau_lower_bound_includes_the_newest_page():
    from entmaxkv.backend import build_step
    from entmaxkv.newest_page import newest_page_mask
    from helpers import make_cache, random_step

    cache, _, _ = make_cache(3, 2, 2, 16, 8, [70, 41], capacity=96)
    q, _, _ = random_step(torch.Generator().manual_seed(3), 2, 4, 2, 16)
    step = build_step(cache, q, 1.5, 0.25, None, kernels=False, needs_sigma=False)
    mask = torch.zeros(2, 2, cache.num_pages, dtype=torch.bool)
    mask[..., 1] = True
    assert torch.equal(step.ops.tau_lower_bound(mask), step.ops.tau_lower_bound(mask | newest_page_mask(cache)))


@pytest.mark.parametrize("initial", [0, 1, 3, 50])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_exact_without_rounds_takes_the_group_ranking(initial, backend):
    """Exact's initial pages (rounds = 0: its selection) are TopK's group ranking's best."""
    from entmaxkv.backend import build_step
    from entmaxkv.topk import group_rank_key, top_pages
    from helpers import make_cache, random_step

    cache, _, _ = make_cache(5, 2, 2, 16, 8, [70, 41], capacity=96, dtype=torch.float32, spread=3.0)
    q, k, v = random_step(torch.Generator().manual_seed(5), 2, 4, 2, 16, torch.float32)
    config = ekv.DecodeConfig(1.5, ekv.Exact(initial_pages=initial, rounds=0), backend=backend)
    new, _, info = ekv.decode_step(cache.fork(), q, k, v, config, with_info=True)
    step = build_step(new, q, 1.5, 0.25, None, kernels=False, needs_sigma=False)
    want = top_pages(torch.where(step.candidates, group_rank_key(step), float("-inf")), initial)
    assert torch.equal(info.page_mask & step.candidates, want)


@pytest.mark.parametrize("alibi", [False, True])
def test_the_newest_page_floor_leaves_room_for_the_attentions_rounding(alibi):
    """``KernelOps._newest_floor`` (``page_bounds``' output: newest max − c·magnitude, c = 2γ
    rounded up to a power of two) is a score the
    attention provably computes for some newest-page token: at or below the exact float64 best
    score less γ·magnitude (the computed score's own rounding is within γ/2 of it). A floor
    with no slack or the slack added fails it."""
    from entmaxkv.newest_page import newest_page_scores

    cache, fresh = kernel_step_after_append(fresh_seed(), alibi, 1.5)
    step = fresh()
    ops = step.ops
    slopes = None if step.alibi_slopes is None else step.alibi_slopes.double()
    exact = newest_page_scores(cache.to(torch.float64), step.q.double(), step.scale, slopes).amax(-1)
    floor = ops._newest_floor().double()
    assert bool((floor <= exact - ops.gamma * ops.newest_magnitude.double()).all()), (floor, exact)
