"""8-bit page boxes (``entmaxkv.page_box``) and ``entmaxkv::page_box_upper``: the codes round
every page's key range outward, the query codes round to within half a step, the float64
bound is above every score of its page and above the exact range's Quest bound, and the
kernel (int8 tensor cores) equals it within the 4·eps·mag its float32 scaling allows.
"""

import pytest
import torch

from entmaxkv.conventions import group_queries
from entmaxkv.page_box import CODE_MAX, box_codes, box_upper, query_codes
from helpers import fresh_seed, make_cache

S = 16
SCALE = 0.3
ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICES = ["cpu", pytest.param("cuda", marks=ON_GPU)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_box_codes_round_outward_on_the_smallest_scale(dtype):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(3, 7, S, 24, generator=g, dtype=torch.float64)
    keys = keys * torch.logspace(-4, 3, 7, dtype=torch.float64)[None, :, None, None]  # pages of every scale
    keys[0, 0] = 0.0  # an all-zero page
    keys[0, 1, :, 0] = 127 * 0.25  # a = 127·scale exactly (in every dtype): codes of 127
    keys[0, 1, :, 1:] = keys[0, 1, :, 1:].clamp(-1, 1)
    if dtype == torch.float64:  # ±5e-324 next to 1000 (scale ~7.9): the quotients underflow to ∓0, whose
        keys[1, 2, :, 0] = 1000.0  # floor and ceil (0) must be corrected outward to ∓1
        keys[1, 2, :, 1], keys[1, 2, :, 2] = -5e-324, 5e-324
    keys = keys.to(dtype)
    k_min, k_max = keys.amin(-2), keys.amax(-2)
    code_min, code_max, scale, l1 = box_codes(k_min, k_max)
    assert code_min.dtype == code_max.dtype == torch.int8 and scale.dtype == l1.dtype == torch.float32
    assert scale.shape == l1.shape == k_min.shape[:-1]
    s = scale.double()[..., None]
    lo, hi = code_min.double() * s, code_max.double() * s
    msg = f"seed {seed}"
    assert bool((lo <= k_min.double()).all()) and bool((hi >= k_max.double()).all()), msg
    # the tightest codes (products of a code and a float32 scale: exact in float64)
    assert bool((lo + s > k_min.double()).all()) and bool((hi - s < k_max.double()).all()), msg
    assert int(code_min.min()) >= -CODE_MAX and int(code_max.max()) <= CODE_MAX, msg
    a = torch.maximum(k_min.double().abs(), k_max.double().abs()).amax(-1)
    below = torch.nextafter(scale, torch.zeros_like(scale)).double()
    live = a > 0
    assert bool((CODE_MAX * scale.double() >= a).all()) and bool((CODE_MAX * below[live] < a[live]).all()), msg
    assert torch.equal(l1.double(), torch.maximum(code_min.double().abs(), code_max.double().abs()).sum(-1))
    assert float(scale[0, 0]) == 1.0 and float(l1[0, 0]) == 0.0
    assert int(code_max[0, 1, 0]) == CODE_MAX == int(code_min[0, 1, 0])
    if dtype == torch.float64:
        assert code_min[1, 2, 1:3].tolist() == [-1, 0] and code_max[1, 2, 1:3].tolist() == [0, 1], msg


def test_box_codes_reject_bad_ranges():
    lo = torch.zeros(2, 3, 8)
    with pytest.raises(ValueError, match="share a shape"):
        box_codes(lo, torch.zeros(2, 3, 9))
    with pytest.raises(ValueError, match="k_min <= k_max"):
        box_codes(lo + 1, lo)
    with pytest.raises(ValueError, match="finite"):
        box_codes(lo, lo + float("inf"))


def test_query_codes_are_within_half_a_step_on_the_smallest_power_of_two():
    seed = fresh_seed()
    q = torch.randn(4, 6, 40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q = (q * torch.logspace(-3, 3, 6, dtype=torch.float64)[None, :, None]).half()
    q[0, 0] = 0.0
    codes, t = query_codes(q)
    x = q.double()
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= CODE_MAX
    assert bool(((x - codes.double() * t[..., None]).abs() <= t[..., None] / 2).all()), seed
    m = x.abs().amax(-1)
    assert bool((torch.frexp(t)[0] == 0.5).all()) and bool((CODE_MAX * t >= m).all())
    assert bool((CODE_MAX * t[m > 0] / 2 < m[m > 0]).all()) and float(t[0, 0]) == 1.0


def _inputs(seed, dtype, d, group, lens, spread=3.0, capacity=None):
    cache, _, _ = make_cache(seed, 2, 2, d, S, lens, capacity=capacity, dtype=dtype, spread=spread)
    q = (torch.randn(2, 2 * group, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) * 2
         ).to(dtype)
    return cache, q, box_codes(cache.k_min, cache.k_max)


def _page_best_scores(cache, q, group):
    """[B, Hkv, G, P] float64: each page's best score scale·q·k over its S slots."""
    qg = group_queries(q.double()[:, :, None], cache.num_kv_heads)
    return torch.einsum("bhgd,bhpsd->bhgps", qg, cache.k_pages.double()).amax(-1) * SCALE


@pytest.mark.parametrize("dtype, d, group", [(torch.float16, 128, 4), (torch.bfloat16, 64, 3),
                                             (torch.float32, 32, 1)])
def test_box_upper_is_above_every_score_and_the_exact_quest_bound(dtype, d, group):
    from entmaxkv.kernels.page_scores import rounding_gamma

    seed = fresh_seed()
    cache, q, box = _inputs(seed, dtype, d, group, [S * 9 + 5, S * 4])
    upper, mag = box_upper(q, *box, SCALE, rounding_gamma(torch.float32, d))
    full = cache.full_page_mask()[:, None, None, :].expand_as(upper)
    gamma = rounding_gamma(torch.float32, d)
    best = _page_best_scores(cache, q, group)
    assert bool((upper >= best + gamma * mag)[full].all()), seed
    qg = group_queries(q.double()[:, :, None], 2)
    exact = (torch.einsum("bhgd,bhpd->bhgp", qg.clamp_min(0), cache.k_max.double())
             + torch.einsum("bhgd,bhpd->bhgp", qg.clamp_max(0), cache.k_min.double())) * SCALE
    assert bool((upper >= exact)[full].all()), seed
    # |score| <= mag for every token of the page
    kabs = cache.k_pages.double().abs().amax(-2)  # [B, Hkv, P, D]
    assert bool((torch.einsum("bhgd,bhpd->bhgp", qg.abs(), kabs) * SCALE <= mag)[full].all()), seed


@pytest.mark.interpreter
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("iters", [1, 2])
@pytest.mark.parametrize("dtype, d, group", [(torch.float16, 128, 4), (torch.bfloat16, 64, 3),
                                             (torch.float32, 48, 1), (torch.float64, 64, 2)])
def test_page_box_upper_equals_the_float64_bound(dtype, d, group, iters, device, poison, monkeypatch):
    """Ragged rows over several programs (16-page blocks, one or two a program, the last past
    the row), a partial last page, an all-zero head of q; within 4·eps·mag of the float64
    bound, so above every score of the page. γ is the work dtype's: float64's for float64 q
    (whose values are float32's here: the kernel quantizes q in float32, and a float64 q a
    rounding from a half-step could take another code; ``test_page_box_upper_is_vacuous_...``
    checks unrounded float64 q for safety)."""
    pytest.importorskip("triton")
    from entmaxkv.kernels import page_box_upper as module
    from entmaxkv.kernels.page_box_upper import page_box_upper
    from entmaxkv.kernels.page_scores import rounding_gamma

    monkeypatch.setattr(module, "DOT_BLOCK_P", 16)
    monkeypatch.setattr(module, "dot_iters", lambda blocks, device: iters)
    seed = fresh_seed()
    cache, q, box = _inputs(seed, dtype, d, group, [S * 37 + 5, S * 20])
    q[1, 0] = 0.0
    q = q.float().to(dtype)
    gamma = rounding_gamma(torch.float64 if dtype == torch.float64 else torch.float32, d)
    got = page_box_upper(q.to(device), *(x.to(device) for x in box), cache.seq_lens.to(device), S, SCALE)
    assert got.dtype == torch.float32 and got.shape == (2, 2, group, cache.num_pages)
    got = got.double().cpu()
    want, mag = box_upper(q, *box, SCALE, gamma)
    full = cache.full_page_mask()[:, None, None, :].expand_as(want)
    msg = f"seed {seed}"
    assert bool(((got - want).abs() <= 4 * 2.0 ** -23 * mag)[full].all()), msg
    assert bool((got >= _page_best_scores(cache, q, group) + gamma * mag)[full].all()), msg
    if device == "cpu":  # pages that are not full are not written (poison: NaN)
        assert bool(got[~full].isnan().all()), msg


@pytest.mark.interpreter
@pytest.mark.parametrize("device", DEVICES)
def test_page_box_upper_query_steps_and_codes_at_their_edges(device):
    """Constructed float32 query heads where the kernel's step and codes could part from the
    reference's: max |q| just above, at and just below 127·2^-3 (steps 2^-2, 2^-3, 2^-3; the
    kernel's log2 guess is corrected either way), a head of 1e-33 (a normal float32 with a tiny
    step), one of 1e-37 (below 127·2^-126: the step stays 2^-126), an fp16 subnormal, and a
    channel at 0.5 − 2^-25 steps (half up must not round it up). A different step or code shows
    as a gap far beyond 4·eps·mag."""
    pytest.importorskip("triton")
    from entmaxkv.kernels.page_box_upper import page_box_upper
    from entmaxkv.kernels.page_scores import rounding_gamma

    d = 32
    cache, _, box = _inputs(fresh_seed(), torch.float32, d, 4, [S * 3, S * 2])
    eps32 = 2.0 ** -23
    tops = [127 * 2.0 ** -3 * (1 + 2 * eps32), 127 * 2.0 ** -3, 127 * 2.0 ** -3 * (1 - eps32), 1e-33, 1e-37,
            float(torch.tensor(2.0 ** -20, dtype=torch.float16)), 1.0, 3.0]
    g = torch.Generator().manual_seed(0)
    q = torch.rand(2, 8, d, generator=g, dtype=torch.float64) * 2 - 1
    q = q / q.abs().amax(-1, keepdim=True) * 0.9 * torch.tensor(tops, dtype=torch.float64)[None, :, None]
    q[:, :, 0] = torch.tensor(tops, dtype=torch.float64)
    q[:, 6, 1] = (0.5 - 2.0 ** -25) * 2.0 ** -6  # head 6: max 1.0, step 2^-6
    q = q.float()
    codes, t = query_codes(q)
    assert t[0, :3].tolist() == [2.0 ** -2, 2.0 ** -3, 2.0 ** -3] and float(t[0, 4]) == 2.0 ** -126
    assert int(codes[0, 6, 1]) == 0
    got = page_box_upper(q.to(device), *(x.to(device) for x in box), cache.seq_lens.to(device), S, SCALE).double().cpu()
    want, mag = box_upper(q, *box, SCALE, rounding_gamma(torch.float32, d))
    full = cache.full_page_mask()[:, None, None, :].expand_as(want)
    assert bool(((got - want).abs() <= 4 * 2.0 ** -23 * mag)[full].all())


@pytest.mark.interpreter
@pytest.mark.parametrize("device", DEVICES)
def test_page_box_upper_is_vacuous_past_float32_and_safe_for_float64_queries(device):
    """The kernel works in float32. Query heads with an entry that is not finite there (a
    float64 1e39 or −1e39, inf, NaN) and pages whose step scale·t·attn_scale overflows it (keys
    at −1e30 against queries at 1e30 or 3e38, where the float32 product would be −inf) get +inf,
    never −inf or NaN, as in the float64 bound; unrounded float64 heads get a bound above the
    exact Quest bound; other entries within 4·eps·mag of the float64 bound, or +inf / float32's
    lowest where that bound is past float32's range (a finite step: queries at 3e38)."""
    pytest.importorskip("triton")
    from entmaxkv.kernels.page_box_upper import page_box_upper
    from entmaxkv.kernels.page_scores import rounding_gamma

    seed, d = fresh_seed(), 32
    g = torch.Generator().manual_seed(seed)
    k_min = -torch.rand(1, 2, 3, d, generator=g, dtype=torch.float64) * 3
    k_max = k_min + torch.rand(1, 2, 3, d, generator=g, dtype=torch.float64)
    k_min[:, :, 1] = k_max[:, :, 1] = -1e30  # page 1: one key at -1e30 (its box scale ~2^93)
    k_min[:, :, 2] *= 1e-3
    k_max[:, :, 2] *= 1e-3
    k_min[0, 1, 0], k_max[0, 1, 0] = -4, -3  # KV head 1 (query heads 4-7): negative keys on page 0,
    k_min[0, 1, 2], k_max[0, 1, 2] = 3, 4  # positive on page 2
    box = box_codes(k_min, k_max)
    lens = torch.tensor([3 * S])
    q = torch.randn(1, 8, d, generator=g, dtype=torch.float64)  # heads 0 and 4: unrounded float64
    q[0, 1, 3] = 1e39
    q[0, 2, 5] = float("inf")
    q[0, 3, 7] = float("nan")
    q[0, 5] = 1e30
    q[0, 6] = (q[0, 6].abs() / q[0, 6].abs().max() + 1) * 1.5e38  # step 2^121; bound ±4e39 on pages 0, 2
    q[0, 7, 0] = -1e39
    gamma = rounding_gamma(torch.float64, d)
    want, mag = box_upper(q, *box, SCALE, gamma)  # [1, 2, 4, 3]
    vacuous = torch.zeros(1, 2, 4, 3, dtype=torch.bool)
    vacuous[0, 0, 1:4] = True  # heads 1-3: not finite in float32
    vacuous[0, 1, 3] = True  # head 7
    vacuous[0, 1, 1:3, 1] = True  # heads 5, 6 against page 1: the step overflows
    assert torch.equal(want.isinf(), vacuous) and bool((want[vacuous] > 0).all()), seed
    got = page_box_upper(q.to(device), *(x.to(device) for x in box), lens.to(device), S, SCALE).double().cpu()
    # The bound of head 6 is past float32's range on pages 0 (below) and 2 (above): the kernel
    # gives float32's lowest below it (never −inf) and +inf above it.
    edge = torch.finfo(torch.float32).max
    assert want[0, 1, 2, 0] < -edge and edge < want[0, 1, 2, 2] < float("inf"), seed
    assert torch.equal(got.isinf(), vacuous | (want > edge)) and bool((got[got.isinf()] > 0).all()), seed
    assert got[0, 1, 2, 0] == -edge and not got.isnan().any(), seed
    qg = group_queries(q[:, :, None], 2)
    exact = (torch.einsum("bhgd,bhpd->bhgp", qg.clamp_min(0), k_max)
             + torch.einsum("bhgd,bhpd->bhgp", qg.clamp_max(0), k_min)) * SCALE
    unrounded = torch.zeros_like(vacuous)
    unrounded[0, :, 0] = True  # heads 0 and 4
    assert bool((got[unrounded] >= exact[unrounded]).all()), seed
    rest = ~vacuous & ~unrounded & (want.abs() < edge)
    assert bool(((got - want).abs() <= 4 * 2.0 ** -23 * mag)[rest].all()), seed


@pytest.mark.interpreter
def test_page_box_upper_checks_its_arguments():
    pytest.importorskip("triton")
    from entmaxkv.kernels.page_box_upper import page_box_upper

    cache, q, (cmin, cmax, scale, l1) = _inputs(fresh_seed(), torch.float16, 32, 2, [S * 3, S * 2])
    lens = cache.seq_lens
    with pytest.raises(TypeError, match="int8"):
        page_box_upper(q, cache.k_min, cache.k_max, scale, l1, lens, S, SCALE)
    with pytest.raises(ValueError, match="box_scale must be float32"):
        page_box_upper(q, cmin, cmax, scale[:, :1], l1, lens, S, SCALE)
    with pytest.raises(ValueError, match="box_l1 must be float32"):
        page_box_upper(q, cmin, cmax, scale, l1.double(), lens, S, SCALE)
    with pytest.raises(ValueError, match="q must be"):
        page_box_upper(q[:, :, :16], cmin, cmax, scale, l1, lens, S, SCALE)
    with pytest.raises(ValueError, match="seq_lens"):
        page_box_upper(q, cmin, cmax, scale, l1, lens[:1], S, SCALE)
    c16, _, s16, l16 = box_codes(cache.k_min[..., :16], cache.k_max[..., :16])
    with pytest.raises(ValueError, match=r"in \[32, 512\]"):
        page_box_upper(q[..., :16].contiguous(), c16, c16, s16, l16, lens, S, SCALE)


@pytest.mark.interpreter
@pytest.mark.parametrize("device", DEVICES)
def test_the_query_rounding_term_is_needed(device):
    """Constructed, not random: one page whose tokens are one key, exactly on its box's codes
    (the box adds nothing), and a query whose every channel lies 0.46 of a step above its code
    on the side that raises the score. Without the l1/2 term the bound falls below the page's
    score; with it, the float64 bound and the kernel's are above it."""
    pytest.importorskip("triton")
    from entmaxkv.kernels.page_box_upper import page_box_upper
    from entmaxkv.kernels.page_scores import rounding_gamma
    from entmaxkv.state import PagedKVCache, prefill

    d = 32
    sign = torch.tensor([1.0, -1.0] * (d // 2), dtype=torch.float64)
    key = sign * (CODE_MAX - 3 * torch.arange(d, dtype=torch.float64)) * 2.0 ** -5  # scale 2^-5, codes exact
    k = key.expand(1, 1, S + 1, d).to(torch.float32)  # one full page, one token on the next
    cache = prefill(PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=2 * S, dtype=torch.float32),
                    k, k, [S + 1])
    box = box_codes(cache.k_min, cache.k_max)
    s = box[2].double()[0, 0, 0]
    assert torch.equal(box[1].double()[0, 0, 0] * s, key)  # the box is the key itself
    t = 2.0 ** -4
    q = (sign * (torch.arange(40, 40 + d, dtype=torch.float64) + 0.46) * t).to(torch.float32)[None, None]  # [1, 1, D]
    codes, step = query_codes(q)
    assert float(step) == t
    score = float((q.double()[0, 0] * key).sum()) * SCALE
    gamma = rounding_gamma(torch.float32, d)
    upper, mag = box_upper(q, *box, SCALE, gamma)
    without = float(upper[0, 0, 0, 0]) - SCALE * float(s) * t * float(box[3][0, 0, 0]) / 2
    assert without < score < float(upper[0, 0, 0, 0]) - gamma * float(mag[0, 0, 0, 0])
    got = page_box_upper(q.to(device), *(x.to(device) for x in box), cache.seq_lens.to(device), S, SCALE)
    assert float(got[0, 0, 0, 0]) >= score + gamma * float(mag[0, 0, 0, 0])


@pytest.mark.interpreter
def test_page_box_upper_opcheck_and_vmap():
    """The op's fake, schema and autograd registration (opcheck; lengths fill whole pages: other
    pages' entries are not written), and vmap folded into its batch: equal to a loop."""
    pytest.importorskip("triton")
    from entmaxkv.kernels.page_box_upper import page_box_upper  # noqa: F401 (registers the op)

    seed = fresh_seed()
    cache, q, box = _inputs(seed, torch.float16, 32, 2, [S * 3, S * 3], capacity=S * 3)
    args = (q, *box, cache.seq_lens, S, SCALE)
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        torch.library.opcheck(torch.ops.entmaxkv.page_box_upper.default, args)
    stacked = [torch.stack([x, x.flip(0)]) for x in (q, *box, cache.seq_lens)]  # V = 2 batches
    got = torch.func.vmap(lambda *t: torch.ops.entmaxkv.page_box_upper(*t, S, SCALE))(*stacked)
    for i in range(2):
        want = torch.ops.entmaxkv.page_box_upper(*(x[i] for x in stacked), S, SCALE)
        assert torch.equal(got[i], want), f"seed {seed}"


@pytest.mark.interpreter
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_box_bounds_equal_page_box_upper_and_page_bounds_newest_outputs(dtype, device, poison):
    """One launch: the box bounds of ``page_box_upper`` and the newest page's best score,
    |score| scale, slot scores and floor of ``page_bounds``, bit for bit (the same code);
    lengths on and past a page edge."""
    pytest.importorskip("triton")
    from entmaxkv.kernels.box_bounds import box_bounds
    from entmaxkv.kernels.page_box_upper import page_box_upper
    from entmaxkv.kernels.page_scores import page_bounds

    seed = fresh_seed()
    cache, q, box = _inputs(seed, dtype, 32, 3, [S * 5, S * 2 + 7])
    ran = cache.to(device=device)
    qd, box = q.to(device), tuple(x.to(device) for x in box)
    want = page_bounds(qd, ran.k_min, ran.k_max, ran.k_mean, ran.k_std, ran.seq_lens, None, ran.k_pages, S, SCALE,
                       False, False)[4:]
    got = box_bounds(qd, *box, ran.seq_lens, ran.k_pages, SCALE)
    full = cache.full_page_mask()[:, None, None, :].expand_as(got[0]).to(device)
    assert torch.equal(got[0][full], page_box_upper(qd, *box, ran.seq_lens, S, SCALE)[full]), f"seed {seed}"
    for x, y in zip(got[1:], want):
        assert x.shape == y.shape and torch.equal(x, y), f"seed {seed}"
    whole, _, whole_box = _inputs(seed, dtype, 32, 3, [S * 3, S * 3], capacity=S * 3)  # every entry written
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        torch.library.opcheck(torch.ops.entmaxkv.box_bounds.default,
                              tuple(x.to(device) for x in (q, *whole_box, whole.seq_lens, whole.k_pages)) + (SCALE,))
    with pytest.raises(ValueError, match="q must be"):
        box_bounds(qd[:, :5], *box, ran.seq_lens, ran.k_pages, SCALE)
    with pytest.raises(ValueError, match="seq_lens"):
        box_bounds(qd, *box, ran.seq_lens[:1], ran.k_pages, SCALE)
    with pytest.raises(ValueError, match="k_pages must be"):
        box_bounds(qd, *box, ran.seq_lens, ran.k_pages[:, :1].contiguous(), SCALE)
    with pytest.raises(ValueError, match="q's dtype"):
        box_bounds(qd.double() if dtype != torch.float64 else qd.float(), *box, ran.seq_lens, ran.k_pages, SCALE)
