"""Page means and stds stored in the cache dtype: what is stored, how it is rounded, and that a
score floor built from a rounded mean is still a score some attended token reaches.

The floor cases are constructed, not random: pages whose means round *up* in every channel, so
that q·(stored mean) lies above every score of the page (random pages almost never do that:
their best score is well above their mean score).
"""

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.backend import KernelOps
from entmaxkv.state import append_token
from helpers import fresh_seed, make_cache, random_step

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels.page_scores import page_bounds  # noqa: E402
from entmaxkv.kernels.quest_select import quest_select  # noqa: E402

S = 16
NARROW = [torch.float16, torch.bfloat16]
ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICES = ["cpu", pytest.param("cuda", marks=ON_GPU)]


def stored(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float64 statistic as the cache stores it: to float32, then to the cache dtype."""
    return x if dtype == torch.float64 else x.float().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_statistics_are_stored_in_the_cache_dtype(dtype):
    """empty, prefill, append (both paths), to, with_capacity and fork keep mean/std in the
    cache dtype (float64 for a float64 cache)."""
    seed = fresh_seed()
    cache, _, _ = make_cache(seed, 2, 2, 8, S, [S + 3, 2 * S - 1], dtype=dtype)
    _, kn, vn = random_step(torch.Generator().manual_seed(seed), 2, 2, 2, 8, dtype)
    kernel_cache = cache.fork()
    torch.ops.entmaxkv.append_token(kernel_cache.k_pages, kernel_cache.v_pages, kernel_cache.k_min,
                                    kernel_cache.k_max, kernel_cache.k_mean, kernel_cache.k_std,
                                    kernel_cache.seq_lens, kn, vn, kernel_cache.capacity, None, 0,
                                    None, None, None, None)
    caches = [cache, append_token(cache.fork(), kn, vn)[0], kernel_cache, cache.with_capacity(cache.capacity + S), cache.fork(),
              cache.to(torch.float64).to(dtype)]
    for c in caches:
        assert c.k_mean.dtype == dtype and c.k_std.dtype == dtype
    assert cache.to(torch.float16).k_mean.dtype == torch.float16


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", NARROW + [torch.float32])
def test_ops_store_the_bits_torch_stores(dtype, device):
    """append_token and page_statistics write the very bits of ``state.page_statistics``
    (float64 sums of fp16 keys are exact in any order; the rounding is the same). On CUDA too:
    the compiled kernels' conversions must round to nearest even as torch does."""
    seed = fresh_seed()
    lens = [3 * S - 1, 2 * S - 1, S + 5]  # rows 0 and 1 complete a page on the append
    cache, _, _ = make_cache(seed, 3, 2, 24, S, lens, dtype=dtype, spread=3.0)
    cache = cache.to(device=device)
    _, kn, vn = random_step(torch.Generator().manual_seed(seed), 3, 2, 2, 24, dtype)
    kn, vn = kn.to(device), vn.to(device)
    want, _ = append_token(cache.fork(), kn, vn)
    got = cache.fork()
    torch.ops.entmaxkv.append_token(got.k_pages, got.v_pages, got.k_min, got.k_max, got.k_mean, got.k_std,
                                    got.seq_lens, kn, vn, got.capacity, None, 0, None, None, None, None)
    full = want.full_page_mask()[:, None, :, None].expand_as(want.k_mean)
    for f in ("k_min", "k_max", "k_mean", "k_std"):
        assert torch.equal(getattr(got, f)[full], getattr(want, f)[full]), (f, seed)
    again = want.fork()
    for f in ("k_min", "k_max", "k_mean", "k_std"):
        getattr(again, f).fill_(float("nan"))
    torch.ops.entmaxkv.page_statistics(again.k_pages, want.seq_lens, again.k_min, again.k_max, again.k_mean,
                                       again.k_std, None, None, None, None)
    for f in ("k_min", "k_max", "k_mean", "k_std"):
        assert torch.equal(getattr(again, f)[full], getattr(want, f)[full]), (f, seed)


def _neighbours(dtype: torch.dtype) -> tuple[float, float, float]:
    """1.0 (even last bit) and the next two values of ``dtype`` (odd, even)."""
    one = torch.tensor(1.0, dtype=dtype)
    up = torch.nextafter(one, torch.tensor(2.0, dtype=dtype))
    return 1.0, float(up), float(torch.nextafter(up, torch.tensor(2.0, dtype=dtype)))


@pytest.mark.parametrize("dtype", NARROW)
def test_means_round_to_nearest_even_on_both_paths(dtype):
    """Ties go to the even neighbour and a mean 3/4 of the way up rounds up: truncation (what
    Triton's interpreter does for float32 -> bf16) or rounding down would store a mean that
    neither path's rounding argument covers alike."""
    even, odd, even2 = _neighbours(dtype)
    # 4 tokens (rows) x 4 channels (columns). Channel means: a tie odd|even2 -> even2; 3/4 of
    # the way from odd to even2 -> even2; a tie even|odd -> even; a negative tie -> -even2
    page = torch.tensor([[odd, odd, even, -odd],
                         [odd, even2, even, -odd],
                         [even2, even2, odd, -even2],
                         [even2, even2, odd, -even2]], dtype=torch.float64)
    want = torch.tensor([even2, even2, even, -even2], dtype=dtype)
    k = page.repeat(4, 1)[None, None].to(dtype)  # 16 tokens: the same 4-token pattern 4 times
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=4, capacity=2 * S, page_size=S, dtype=dtype)
    cache = ekv.prefill(cache, k, torch.zeros_like(k), [S])
    assert torch.equal(cache.k_mean[0, 0, 0], want), cache.k_mean[0, 0, 0]
    got = cache.fork()
    got.k_mean.fill_(float("nan"))
    torch.ops.entmaxkv.page_statistics(got.k_pages, got.seq_lens, got.k_min, got.k_max, got.k_mean, got.k_std,
                                       None, None, None, None)
    assert torch.equal(got.k_mean[0, 0, 0], want), got.k_mean[0, 0, 0]
    # the append op, completing the page with its last token
    part = ekv.prefill(ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=4, capacity=2 * S, page_size=S,
                                              dtype=dtype), k[:, :, : S - 1], torch.zeros_like(k[:, :, : S - 1]),
                       [S - 1])
    torch.ops.entmaxkv.append_token(part.k_pages, part.v_pages, part.k_min, part.k_max, part.k_mean, part.k_std,
                                    part.seq_lens, k[:, :, S - 1:], torch.zeros_like(k[:, :, S - 1:]), part.capacity,
                                    None, 0, None, None, None, None)
    assert torch.equal(part.k_mean[0, 0, 0], want), part.k_mean[0, 0, 0]


def _rounded_up_page(dtype: torch.dtype, subnormal: bool, device: str = "cpu") -> tuple[ekv.PagedKVCache, torch.Tensor]:
    """A cache of one full page and a newest page of one token, and a query [1, 1, 1, 4].

    The full page holds three kinds of tokens (5, 5 and 6 of them); kind j has the high value
    in channels 0..2 except j and the low value in channel j (channel 3 is 0). Each channel's
    mean lies 10/16 or 11/16 of the way from low to high, so every channel rounds up to high:
    with q = (1, 1, 1, 1) the stored mean scores 3·high, every token 2·high + low. With
    ``subnormal`` (fp16) low = 0 and high = 2^-24: the means fall below fp16's normal range,
    where rounding is absolute. The newest token scores −4 (it must not set the floor)."""
    if subnormal:
        low, high = 0.0, 2.0 ** -24
    else:
        low, high, _ = _neighbours(dtype)  # one ulp apart
    kinds = torch.full((3, 4), high, dtype=torch.float64)
    kinds[:, 3] = 0.0
    kinds[0, 0] = kinds[1, 1] = kinds[2, 2] = low
    tokens = torch.cat([kinds[0:1].expand(5, 4), kinds[1:2].expand(5, 4), kinds[2:3].expand(6, 4),
                        torch.full((1, 4), -1.0, dtype=torch.float64)])
    k = tokens[None, None].to(dtype)
    assert torch.equal(k.double()[0, 0], tokens), "the keys are representable"
    v = torch.randn(k.shape, generator=torch.Generator().manual_seed(fresh_seed()), dtype=torch.float64).to(dtype)
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=4, capacity=2 * S, page_size=S, dtype=dtype,
                                   device=device)
    cache = ekv.prefill(cache, k.to(device), v.to(device), [S + 1])
    assert torch.equal(cache.k_mean[0, 0, 0, :3].double().cpu(), torch.full((3,), high, dtype=torch.float64)), \
        "every channel's mean rounds up"
    return cache, torch.ones(1, 1, 1, 4, dtype=dtype, device=device)


def _best_attended(cache: ekv.PagedKVCache, q: torch.Tensor, scale: float) -> torch.Tensor:
    """[1, 1, 1] the best float64 score of the page and the newest token."""
    keys = cache.keys()[0, 0, : S + 1].double().cpu()
    return (keys @ q[0, 0, 0].double().cpu() * scale).max().reshape(1, 1, 1)


CASES = [(torch.float16, False), (torch.bfloat16, False), (torch.float32, False), (torch.float16, True)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, subnormal", CASES)
def test_score_floor_of_a_rounded_up_mean_is_reached(dtype, subnormal, device):
    """``KernelOps.score_floor`` (every selector but TopK on the kernels) stays at or below the
    best attended score although the stored mean scores above every token of its page.
    Without the unit-roundoff term of ``mean_slack`` (fp16, bf16) or without ν (fp16 means
    below 2^-14) the floor lands above it."""
    scale = 0.5
    cache, q = _rounded_up_page(dtype, subnormal, device)
    upper, absmax, means, _, newest_max, newest_mag, _, newest_floor = page_bounds(
        q[:, :, 0].contiguous(), cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens, None,
        cache.k_pages, S, scale, False)
    best = _best_attended(cache, q, scale)
    if dtype != torch.float32:  # the construction works: the mean score is above every token's
        assert bool((means[..., 0].double().cpu() > best).all()), (means[..., 0], best)
    mask = torch.zeros(1, 1, cache.num_pages, dtype=torch.bool, device=device)
    mask[..., 0] = True
    ops = KernelOps(cache, q, 1.5, scale, None, upper, means, absmax, newest_max, newest_mag, newest_floor)
    with pytest.raises(ValueError, match="newest_floor"):  # never a step whose floor is silently missing
        KernelOps(cache, q, 1.5, scale, None, upper, means, absmax, newest_max, newest_mag)
    floor = ops.score_floor(mask).double().cpu()
    assert bool((floor <= best).all()), (floor, best)
    assert bool((floor > newest_max.double().cpu()).all()), "the page's mean, not the newest token, sets it"


@pytest.mark.parametrize("dtype, subnormal", CASES)
def test_quest_select_floor_of_a_rounded_up_mean_is_reached(dtype, subnormal):
    """The same floor from ``quest_select`` (a TopK step on the kernels), whose launcher takes
    its slack from ``mean_slack(work, S, D)`` (without the unit-roundoff term the fp16/bf16
    cases fail)."""
    scale = 0.5
    cache, q = _rounded_up_page(dtype, subnormal)
    upper, absmax, means, _, newest_max, newest_mag, _, _ = page_bounds(
        q[:, :, 0].contiguous(), cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens, None,
        cache.k_pages, S, scale, False)
    _, _, mask, floor, _ = quest_select(upper, means, absmax, newest_max, newest_mag, cache.seq_lens, None, S, 4, 1.5,
                                     1, 0.0, 0, 0)
    assert bool(mask[..., 0].all()), "the page is selected"
    assert bool((floor.double() <= _best_attended(cache, q, scale)).all()), floor
