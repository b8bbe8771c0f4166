"""The ``listed_tau`` op (under Triton's interpreter, and on CUDA with the ``gpu`` marker)
against the four launches it replaces on ``Exact``'s first bound: ``sparse_decode``'s τ over
the listed pages and the newest page, then ``safe_tau``. The two compute the same scores in a
different summation order, so their τ differ by a few units of the scores' last place; the
margin is the same arithmetic. The op must therefore equal the composition within a quarter
of the margin (a margin dropped or halved fails), stay at or below the exact float64 τ of the
tokens it covers and of all tokens, and give NaN for a NaN key it reads. Fresh draws, ragged
lengths (a newest page of 1 token, a full one), GQA 1-4, ALiBi, fp32/fp16/bf16/fp64, α with
and without an exact τ formula."""

import random

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.kernels.page_scores import rounding_gamma
from entmaxkv.reference import token_scores
from helpers import fresh_seed, make_cache, output_rounding_scale

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import entmaxkv.kernels.listed_tau as listed_tau_module  # noqa: E402
from entmaxkv.kernels.listed_tau import listed_tau  # noqa: E402
from entmaxkv.kernels.safe_tau import safe_tau  # noqa: E402
from entmaxkv.kernels.sparse_decode import TAU_EXACT, bisection_steps, sparse_decode  # noqa: E402

S, D, HKV = 16, 32, 2
ON_THE_GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                            reason="needs CUDA")])


def work_of(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def listed_case(seed, dtype, group, alibi, max_pages, device="cpu"):
    """A cache of three sequences (newest page of 1 token, a full one, a random one), random
    distinct full-page lists of at most ``max_pages`` pages (0 included), the |score| scales of
    the listed pages and of the newest page, q, slopes -> a dict of the op's arguments."""
    r = random.Random(seed)
    lens = [S * r.randrange(3, 12) + 1, S * r.randrange(3, 12), S * r.randrange(3, 12) + r.randrange(1, S)]
    cache, _, _ = make_cache(seed, 3, HKV, D, S, lens, capacity=13 * S, dtype=dtype, spread=2.0)
    g = torch.Generator().manual_seed(seed + 1)
    hq = HKV * group
    q = (torch.randn(3, hq, D, generator=g, dtype=torch.float64) * 1.5).to(dtype)
    slopes = (torch.rand(hq, generator=g) * 0.1).to(work_of(dtype)) if alibi else None
    full = (cache.seq_lens - 1) // S
    pages = torch.full((3, HKV, cache.num_pages), -1, dtype=torch.int32)
    count = torch.zeros(3, HKV, dtype=torch.int32)
    for b in range(3):
        for h in range(HKV):
            n = r.randrange(0, min(max_pages, int(full[b])) + 1)
            pages[b, h, :n] = torch.randperm(int(full[b]), generator=g)[:n].int()
            count[b, h] = n
    # |score| scales: scale·Σ_d |q_d|·|k_d|, largest over each set's tokens (as page_scores' absmax bounds it)
    scale = 0.3
    k = cache.k_pages.double().abs()  # [B, Hkv, P, S, D]
    qa = q.double().abs().reshape(3, HKV, group, D)
    per_token = torch.einsum("bhgd,bhpsd->bhgps", qa, torch.nan_to_num(k)) * scale
    per_page = per_token.amax(-1)  # [B, Hkv, G, P]
    listed = torch.zeros(3, HKV, cache.num_pages, dtype=torch.bool)
    for b in range(3):
        for h in range(HKV):
            listed[b, h, pages[b, h, : int(count[b, h])].long()] = True
    magnitude = torch.where(listed[:, :, None, :], per_page, 0.0).amax(-1)
    newest_page = full[:, None, None, None].expand(3, HKV, group, 1)
    newest_mag = per_page.gather(-1, newest_page)[..., 0]
    args = dict(q=q, k_pages=cache.k_pages, pages=pages, n_pages=count, seq_lens=cache.seq_lens, alibi_slopes=slopes,
                magnitude=magnitude.to(work_of(dtype)), newest_magnitude=newest_mag.to(work_of(dtype)))
    args = {name: (t.to(device) if isinstance(t, torch.Tensor) else t) for name, t in args.items()}
    return cache, listed, scale, args


def composition(cache, alpha, scale, args):
    """sparse_decode's τ over the list and the newest page, then safe_tau: what the op replaces."""
    q, pages, count, slopes = args["q"], args["pages"], args["n_pages"], args["alibi_slopes"]
    b, hq, _ = q.shape
    _, tau = sparse_decode(q, args["k_pages"], args["k_pages"], None, pages, count, args["seq_lens"], slopes, None,
                           None, None, alpha, scale, False, TAU_EXACT, 0)
    work = work_of(cache.dtype)
    extra = 0.0 if alpha in (1.5, 2.0) else 2.0 ** -bisection_steps(work)
    return safe_tau(tau.reshape(b, HKV, hq // HKV), args["magnitude"], args["newest_magnitude"], count,
                    args["seq_lens"], slopes, S, cache.num_pages, alpha, rounding_gamma(work, D), torch.finfo(work).eps,
                    extra), tau.reshape(b, HKV, hq // HKV)


def exact_tau(cache, q, scale, slopes, alpha, tokens):
    """float64 τ over ``tokens`` [B, 1 or Hkv, 1, N] of the cache's (rounded) keys."""
    scores = token_scores(cache.to(torch.float64), q.double()[:, :, None, :], scale,
                          None if slopes is None else slopes.double())
    return ekv.entmax_threshold(torch.where(tokens, scores, float("-inf")), alpha)


@pytest.mark.parametrize("device", ["cpu", ON_THE_GPU])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
@pytest.mark.parametrize("dtype,group,alibi", [
    (torch.float32, 4, False), (torch.float16, 2, True), (torch.bfloat16, 1, False), (torch.float64, 3, True),
    (torch.float32, 3, True)])
def test_listed_tau_equals_the_composition_within_a_quarter_of_its_margin(dtype, group, alibi, alpha, device,
                                                                         poison):
    seed = fresh_seed()
    max_pages = 5
    cache, listed, scale, args = listed_case(seed, dtype, group, alibi, max_pages, device)
    gamma = rounding_gamma(work_of(dtype), D)
    got = listed_tau(**args, alpha=alpha, scale=scale, gamma=gamma, max_pages=max_pages)
    want, tau = composition(cache.to(device=device), alpha, scale, args)
    margin = tau - want  # > 0: what safe_tau took off
    msg = f"seed {seed}"
    assert got.shape == want.shape and got.dtype == torch.float64, msg
    assert bool((margin > 0).all()), msg
    assert bool(((got - want).abs() <= margin / 4).all()), (msg, ((got - want).abs() / margin).max())
    # safe: at or below the exact τ of the tokens it covers (float64), hence of all tokens
    got, args = got.cpu(), {n: (t.cpu() if isinstance(t, torch.Tensor) else t) for n, t in args.items()}
    covered = cache.tokens_of(listed | newest_pages(cache))[:, :, None, :]
    every = cache.tokens_of(newest_pages(cache) | full_pages(cache))[:, :, None, :]
    for tokens in (covered, every):
        true_tau = exact_tau(cache, args["q"], scale, args["alibi_slopes"], alpha, tokens)
        assert bool((got <= true_tau.reshape(got.shape)).all()), (msg, (got - true_tau.reshape(got.shape)).max())


def newest_pages(cache):
    full = (cache.seq_lens - 1) // cache.page_size
    return (torch.arange(cache.num_pages)[None, :] == full[:, None])[:, None, :]


def full_pages(cache):
    full = (cache.seq_lens - 1) // cache.page_size
    return (torch.arange(cache.num_pages)[None, :] < full[:, None])[:, None, :]


def test_a_list_past_max_pages_uses_its_first_pages_and_stays_safe(poison):
    """A count above ``max_pages`` (``KernelOps`` never passes one): τ over the first max_pages
    pages, as the composition gives over those pages alone — a weaker bound, still safe."""
    seed = fresh_seed()
    cache, listed, scale, args = listed_case(seed, torch.float32, 2, False, 6)
    got = listed_tau(**args, alpha=1.5, scale=scale, gamma=rounding_gamma(torch.float32, D), max_pages=2)
    short = dict(args, n_pages=args["n_pages"].clamp(max=2))
    want, tau = composition(cache, 1.5, scale, short)
    assert bool(((got - want).abs() <= (tau - want) / 4).all()), f"seed {seed}"


@pytest.mark.parametrize("device", ["cpu", ON_THE_GPU])
def test_a_nan_key_it_reads_makes_that_heads_bound_nan(device, poison):
    """NaN in, NaN out: a NaN in a listed page's key (or the newest page's) makes every head of
    its KV head NaN; other rows stay finite. A NaN bound then excludes nothing (pages_above)."""
    seed = fresh_seed()
    cache, listed, scale, args = listed_case(seed, torch.float32, 2, False, 4)
    k = args["k_pages"].clone()
    b0 = 0
    newest = int((cache.seq_lens[b0] - 1) // S)
    k[b0, 1, newest, 0, 3] = float("nan")  # the newest page's first token, KV head 1
    args = {n: (t.to(device) if isinstance(t, torch.Tensor) else t) for n, t in dict(args, k_pages=k).items()}
    got = listed_tau(**args, alpha=1.5, scale=scale, gamma=rounding_gamma(torch.float32, D), max_pages=4).cpu()
    assert bool(got[b0, 1].isnan().all()), f"seed {seed}"
    assert bool(got[b0, 0].isfinite().all() and got[1:].isfinite().all()), f"seed {seed}"


def test_listed_tau_rejects_softmax_and_lists_past_its_registers():
    cache, _, scale, args = listed_case(fresh_seed(), torch.float32, 1, False, 2)
    with pytest.raises(ValueError, match="alpha"):
        listed_tau(**args, alpha=1.0, scale=scale, gamma=1e-5, max_pages=2)
    too_many = listed_tau_module.MAX_TOKENS // S
    with pytest.raises(ValueError, match="max_pages"):
        listed_tau(**args, alpha=1.5, scale=scale, gamma=1e-5, max_pages=too_many)


def test_listed_tau_opcheck_and_vmap():
    _, _, scale, args = listed_case(fresh_seed(), torch.float32, 2, True, 3)
    values = tuple(args.values())
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        torch.library.opcheck(torch.ops.entmaxkv.listed_tau.default, (*values, 1.5, scale, 1e-5, 3))
    # vmap over two stacked cases folds into the batch dimension: equal to a loop
    _, _, _, other = listed_case(fresh_seed(), torch.float32, 2, True, 3)
    stacked = [torch.stack([a, o]) if n != "alibi_slopes" else a for (n, a), o in zip(args.items(), other.values())]

    def bound(q, k, pages, count, lens, mag, newest):
        return torch.ops.entmaxkv.listed_tau(q, k, pages, count, lens, args["alibi_slopes"], mag, newest, 1.5, scale,
                                             1e-5, 3)

    idx = [0, 1, 2, 3, 4, 6, 7]
    got = torch.func.vmap(bound)(*(stacked[i] for i in idx))
    for j, case in enumerate((args, other)):
        want = bound(*(tuple(case.values())[i] for i in idx))
        torch.testing.assert_close(got[j], want, rtol=0, atol=0)


def test_exact_takes_it_for_its_initial_pages_and_equals_dense(poison):
    """Through decode_step on the kernel path: Exact's first bound comes from listed_tau (the
    four launches of the composition become one) and the output is dense entmax, certified;
    with the op switched off, the same certified output."""
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, HKV, D, S, [S * 9 + 1, S * 6], capacity=S * 12, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, n, 1, D, generator=g) for n in (2 * HKV, HKV, HKV))
    config = ekv.DecodeConfig(1.5, ekv.Exact(initial_pages=3), backend="triton")
    calls = []
    original = torch.ops.entmaxkv.listed_tau

    class Spy:
        def __call__(self, *a, **kw):
            calls.append(a[-1])
            return original(*a, **kw)

    outs = []
    try:
        for on in (True, False):
            listed_tau_module.LISTED_TAU = on
            torch.ops.entmaxkv.listed_tau = Spy()
            new, out, info = ekv.decode_step(cache.fork(), q, k, v, config, with_info=True)
            assert bool(info.certified.all()), f"seed {seed}"
            outs.append(out)
    finally:
        listed_tau_module.LISTED_TAU = True
        torch.ops.entmaxkv.listed_tau = original
    assert calls == [3], (calls, f"seed {seed}")  # once, with the initial pages' bound, and only when on
    dense, _ = ekv.dense_decode(new.to(torch.float64), q.double(), 1.5)
    # float32 scores round by a few eps of Σ|q·k|, not of the output (a fixed 2e-6 reached 0.75
    # of itself in 40 seeds): eps times helpers.output_rounding_scale, of which the kernel's error
    # measured <= 0.17 (40 seeds) and torch float32's <= 0.09 (300); a support token of weight
    # w left out moves the output by ~w·|v − out|, seen from w ~ 1e-5 (the scale is 1e-5–2e-5)
    tol = torch.finfo(torch.float32).eps * output_rounding_scale(new, q, 1.5, D ** -0.5)
    for out in outs:
        err = (out.double() - dense).abs().amax(-1)[:, :, 0]  # [B, Hq]
        assert bool((err <= tol).all()), (f"seed {seed}", float((err / tol).max()))
