"""The threshold searches of ``select_pages`` (``helpers.SEARCHES``: interpolation probes, then
bisection, and the bitwise search at radix 1 and 2; under Triton's interpreter) against a
stable descending sort, on keys that exercise what each adds.

The interpolation search places probes by the keys' values (float64 arithmetic on the
images' floats) and clamps them into its integer bracket: random bit patterns give it keys
from subnormals to the largest finite floats, both signs (its worst case), and the extremes
test below the ends of the float range, where a value model could overflow.

Radix 2 decides two bits a counting pass from three counts packed in one int64 (a FIELD-bit
field each, FIELD = bit_length(BLOCK)) and must select exactly what radix 1 selects. The keys
here are random bit patterns (every bit of the float's image decides somewhere, not only the
exponent's), rows whose keys differ only in their lowest bits (the last pass), and rows where
every lane of a chunk is at or above a candidate threshold: a chunk's count then equals
BLOCK, the largest value a field must hold, and a streamed row's totals reach several
BLOCKs (a field too narrow, or packed sums added across chunks, carries into the next
count). The rows are exactly 16 keys (one 16-lane block: 5-bit fields) or 48 keys streamed
in 16-key chunks, so the interpreter runs few programs.
"""

import pytest
import torch

from helpers import SEARCHES, fresh_seed, use_sample, use_search

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from entmaxkv.kernels.threshold_search import _ordered, _unordered, search_radix  # noqa: E402


def use(monkeypatch, search: str, streamed: bool) -> None:
    use_search(monkeypatch, search)
    if streamed:  # 16-key chunks streamed from memory instead of one block in registers
        monkeypatch.setattr("entmaxkv.kernels.select_pages.MAX_BLOCK", 16)


def assert_stable_top(keys, counts, capacity, msg):
    """select_pages(keys, counts, capacity) equals the first min(count, capacity) eligible
    keys of a stable descending sort (ties to the lower page), listed in increasing order."""
    pages, kept = torch.ops.entmaxkv.select_pages(keys.contiguous(), counts, capacity)
    order = torch.argsort(keys, dim=-1, descending=True, stable=True)
    for i in range(keys.shape[0]):
        for j in range(keys.shape[1]):
            eligible = [int(x) for x in order[i, j] if keys[i, j, x] > float("-inf")]
            expect = sorted(eligible[: min(int(counts[i, j]), capacity)])
            n = int(kept[i, j])
            assert pages[i, j, :n].long().tolist() == expect, f"{msg} row ({i}, {j})"
            assert bool((pages[i, j, n:] == -1).all()), f"{msg} row ({i}, {j})"


def bit_pattern_keys(g, shape, dtype):
    """Floats from uniformly random bit patterns (NaN patterns become −inf: not eligible)."""
    bits = torch.randint(-2 ** 31, 2 ** 31, shape[:-1] + (shape[-1] * (2 if dtype == torch.float64 else 1),),
                         generator=g, dtype=torch.int32)
    x = bits.view(dtype)
    return torch.where(x.isnan(), float("-inf"), x)


def low_bit_keys(g, shape, dtype):
    """Normal floats that differ from a random base by 0–7 in their bit image (the last search
    pass decides them), some negated, a few −0.0 (a tie with +0.0, were there one)."""
    int_type = torch.int64 if dtype == torch.float64 else torch.int32
    shift = 40 if dtype == torch.float64 else 8  # the base reaches the exponent field: normal floats
    base = torch.randint(2 ** 20, 2 ** 21, shape[:-1] + (1,), generator=g).to(int_type) << shift
    x = (base + torch.randint(0, 8, shape, generator=g).to(int_type)).view(dtype)
    x = torch.where(torch.rand(shape, generator=g) < 0.25, -x, x)
    return torch.where(torch.rand(shape, generator=g) < 0.1, -0.0, x)


def test_search_radix_fields_and_fallback():
    assert search_radix(2, 16) == (2, 5)  # counts 0..16 need 5 bits
    assert search_radix(2, 16384) == (2, 15)  # MAX_BLOCK
    assert search_radix(2, 2 ** 20) == (2, 21)  # 3 · 21 = 63 bits: the largest block radix 2 takes
    assert search_radix(2, 2 ** 21) == (1, 22)  # three 22-bit fields overflow an int64: radix 1
    assert search_radix(1, 16) == (1, 5)
    for bad in (0, 3, 4):
        with pytest.raises(ValueError, match="RADIX"):
            search_radix(bad, 16)


@pytest.mark.parametrize("search", list(SEARCHES))
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("streamed", [False, True])
def test_every_bit_of_the_key_decides(search, wide, streamed, poison, monkeypatch):
    use(monkeypatch, search, streamed)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    p = 48 if streamed else 16
    keys = torch.cat([bit_pattern_keys(g, (1, 3, p), dtype), low_bit_keys(g, (1, 3, p), dtype)], 0)
    keys[0, 0, :3] = float("inf")  # forced pages
    counts = torch.randint(1, p, (2, 3), generator=g, dtype=torch.int32)
    counts[1, 0] = p - 1  # the threshold at the second-lowest key
    assert_stable_top(keys, counts, p, f"seed {seed} {search}")


@pytest.mark.parametrize("search", list(SEARCHES))
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("streamed", [False, True])
def test_full_chunks_at_a_threshold(search, wide, streamed, poison, monkeypatch):
    """Every lane of a chunk at or above the candidate thresholds the search tries below the
    answer, and keys exactly at a candidate: per value v, rows of v repeated (all tie), of v
    with three keys one step of the bit image above it, three below, or two above and three
    below, with counts at and around those boundaries. The values' images end in each of the
    bit pairs 01, 10 and 11 followed by zeros, so that some pass of the 2-bit search tries a
    candidate t|01, t|10 or t|11 equal to v (1.125, 1.0 and 1.5 as float32; 1.25, 1.5 and 1.0
    as float64): a count that misses keys equal to its candidate changes the answer."""
    use(monkeypatch, search, streamed)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    p = 48 if streamed else 16
    value = torch.tensor([1.0, 1.125, 1.25, 1.5], dtype=dtype)[:, None, None]
    up = torch.nextafter(value, torch.tensor(float("inf"), dtype=dtype))
    down = torch.nextafter(value, torch.tensor(float("-inf"), dtype=dtype))
    keys = value.expand(4, 4, p).clone()  # head 0: all tie
    for i in range(4):
        few = torch.randperm(p, generator=g)[:5]
        keys[i, 1, few[:3]] = up[i, 0, 0]  # three keys one step above the rest
        keys[i, 2, few[:3]] = down[i, 0, 0]  # three one step below
        keys[i, 3, few[:2]], keys[i, 3, few[2:]] = up[i, 0, 0], down[i, 0, 0]  # two above, three below
    boundaries = torch.tensor([1, 2, 3, 4, p // 2, p - 4, p - 3, p - 2, p - 1], dtype=torch.int32)
    counts = boundaries[torch.randint(0, len(boundaries), (4, 4), generator=g)]
    assert_stable_top(keys, counts, p, f"seed {seed} {search} counts {counts.tolist()}")



@pytest.mark.parametrize("search", ["interpolate", "bisect"])
@pytest.mark.parametrize("wide", [False, True])
def test_interpolation_at_the_ends_of_the_float_range(search, wide, poison, monkeypatch):
    """Rows whose finite keys sit at the largest finite floats of both signs, next to
    subnormals and ±0.0 (the value model spans the whole range: its line must not overflow
    into a probe outside the bracket), rows of one finite key among +inf and −inf keys (the
    bracket is one integer wide: no probe at all), rows of one key repeated but one (a probe
    can never count exactly k), and NaN keys (not eligible, like −inf), with counts at
    k = 0, at the number of +inf keys, just past it, and at the second-lowest key."""
    use(monkeypatch, search, False)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    info = torch.finfo(dtype)
    inf = float("inf")
    rows = [
        [info.max, -info.max, info.tiny / 4, -info.tiny / 4, 0.0, -0.0, info.max / 3, -info.max, info.tiny,
         1.0, -1.0, info.max, inf, inf, float("nan"), -inf],
        [inf, -inf, 2.5, inf, -inf, inf, -inf, -inf, inf, -inf, -inf, -inf, -inf, -inf, inf, -inf],
        [3.0] * 15 + [info.max],
        [-info.max] * 15 + [-info.max / 2],
    ]
    keys = torch.tensor(rows, dtype=dtype)[:, None, :]
    for row in range(4):
        keys[row, 0] = keys[row, 0, torch.randperm(16, generator=g)]  # where the extremes sit
    keys = keys.expand(4, 6, 16).clone()
    n_inf = (keys == inf).sum(-1).to(torch.int32)
    eligible = (keys > -inf).sum(-1).to(torch.int32)
    counts = torch.stack([torch.zeros_like(n_inf), n_inf, n_inf + 1, eligible - 1, eligible - 2,
                          torch.full_like(n_inf, 7)], -1)[:, 0, :]
    assert_stable_top(keys, counts.clamp(min=0), 16, f"seed {seed} {search}")


def test_every_block_triton_builds_takes_radix_2():
    """The fallback to radix 1 is for blocks of more than 2^20 lanes, and Triton builds no
    tensor that large (at most ``TRITON_MAX_TENSOR_NUMEL`` = 2^20 elements: a 2^21-lane block
    is refused at launch). If a Triton release raises that limit, this fails and the fallback
    needs a test that launches such a block."""
    import triton.language as tl

    largest = tl.TRITON_MAX_TENSOR_NUMEL
    assert largest <= 2 ** 20, largest
    assert search_radix(2, largest) == (2, largest.bit_length())



@triton.jit
def _key_round_trip(x, back, best, N, INT: tl.constexpr, NBITS: tl.constexpr, FLOAT: tl.constexpr,
                    BLOCK: tl.constexpr):
    """back = _unordered(_ordered(x)); best = the integer atomic max of every lane's key."""
    i = tl.arange(0, BLOCK)
    key = _ordered(tl.load(x + i, mask=i < N, other=float("-inf")), INT, NBITS)
    tl.store(back + i, _unordered(key, FLOAT, NBITS), mask=i < N)
    tl.atomic_max(best + i * 0, key, mask=i < N)  # every lane into one slot


@pytest.mark.parametrize("wide", [False, True])
def test_ordered_keys_keep_the_float_order_and_come_back(wide):
    """``_ordered`` maps floats to integers of the same order (−0.0 and +0.0 to one key) and
    ``_unordered`` maps a key back to its float: round trips, and an integer atomic max over the
    keys (what ``sparse_decode``'s scoring programs exchange, ``KEYED_MAX``) decoding to the float
    max, on ±0, ±inf, subnormals, the largest finite floats and random bit patterns of both signs
    (and sets of negative floats only, whose keys take the flipped branch)."""
    dtype, ints, nbits = (torch.float64, torch.int64, 64) if wide else (torch.float32, torch.int32, 32)
    info = torch.finfo(dtype)
    g = torch.Generator().manual_seed(fresh_seed())
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), info.tiny, -info.tiny, info.tiny / 4,
                            -info.tiny / 4, info.max, -info.max, 1.0, -1.0], dtype=dtype)
    drawn = torch.randint(-(2 ** (nbits - 1)), 2 ** (nbits - 1) - 1, (52,), generator=g, dtype=torch.int64)
    drawn = drawn.to(ints).view(dtype)
    drawn = drawn[~drawn.isnan()]
    flip = (1 << (nbits - 1)) - 1
    for x in (torch.cat([special, drawn]), -special.abs() - 1.0, drawn[drawn < 0]):
        back = torch.empty_like(x)
        best = torch.full((1,), -(2 ** (nbits - 1)), dtype=ints)  # below every key
        _key_round_trip[(1,)](x, back, best, len(x), INT=tl.int64 if wide else tl.int32, NBITS=nbits,
                              FLOAT=tl.float64 if wide else tl.float32, BLOCK=triton.next_power_of_2(len(x)))
        assert torch.equal(back.view(ints), torch.where(x == 0, torch.zeros_like(x), x).view(ints))
        key = int(best)
        bits = torch.tensor([key ^ flip if key < 0 else key], dtype=torch.int64).to(ints)  # the map back, in torch
        assert torch.equal(bits.view(dtype), x.max().reshape(1) + 0.0), (bits.view(dtype), x.max())


def ordered_images(keys: torch.Tensor) -> torch.Tensor:
    """``_ordered`` in torch (−0.0 as +0.0; NaN and −inf become the lowest integer, as
    ``_eligible_ordered``): the integer images the searches count over."""
    ints, nbits = (torch.int64, 64) if keys.dtype == torch.float64 else (torch.int32, 32)
    bits = torch.where(keys == 0, torch.zeros_like(keys), keys).view(ints)
    image = bits ^ ((bits >> (nbits - 1)) & ((1 << (nbits - 1)) - 1))
    return torch.where(keys > float("-inf"), image, torch.full_like(image, -(2 ** (nbits - 1))))


@triton.jit
def _bracket_of(keys, wants, out, scratch, P, INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr,
                FIELD: tl.constexpr, SAMPLE: tl.constexpr, RUN: tl.constexpr, GATHER: tl.constexpr):
    """out[row] = (lo, hi, usable) of ``_sampled_bracket`` for the row's wanted count, then
    ``_gathering_count``'s (c_lo, c_hi, eligible) (streamed: BLOCK-key chunks; the keys between
    to scratch[row]) and whether its counts confirm the bracket for k = min(want, eligible)."""
    from entmaxkv.kernels.threshold_search import _gathering_count, _sampled_bracket
    row = tl.program_id(0).to(tl.int64)
    base = keys + row * P
    want = tl.load(wants + row)
    lo, hi, usable = _sampled_bracket(base, P, want, INT, NBITS, 12, SAMPLE, RUN)
    c_lo, c_hi, eligible = _gathering_count(base, tl.arange(0, BLOCK), P, lo, hi, usable, scratch + row * GATHER, INT,
                                            NBITS, BLOCK, FIELD, GATHER)
    k = tl.minimum(want, eligible)
    ok = usable & (c_lo >= k) & (c_hi < k)
    at = out + row * 7
    tl.store(at, lo.to(tl.int64))
    tl.store(at + 1, hi.to(tl.int64))
    tl.store(at + 2, usable.to(tl.int64))
    tl.store(at + 3, c_lo.to(tl.int64))
    tl.store(at + 4, c_hi.to(tl.int64))
    tl.store(at + 5, eligible.to(tl.int64))
    tl.store(at + 6, ok.to(tl.int64))


@pytest.mark.parametrize("wide", [False, True])
def test_a_confirmed_sampled_bracket_holds_the_kth_key(wide):
    """``_sampled_bracket`` and the pass that checks it (``_gathering_count``) on streamed rows of
    1,000 keys (16-key chunks, a 256-key sample in runs of 2). The pass's counts are the row's
    (at lo, at hi, eligible) on every row, and it gathers exactly the row's keys in [lo, hi), in
    row order, up to GATHER of them (1,024, and 16: cut short), only where the bracket is
    usable. Wherever the counts confirm the bracket, c_lo >= k > c_hi with fewer than k keys at
    +inf — and on rows of smooth random keys (with forced +inf keys and ineligible −inf ones)
    and k well inside the row they do, so the selection tests below run the sampled path.
    Rows where the sample misleads must not confirm: the top 110 keys past the last run's
    reach and the top keys exactly where the runs read (the counts refute the sample's hi, then
    its lo); one value repeated gives a bracket of one integer, that value."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype, ints, nbits = (torch.float64, tl.int64, 64) if wide else (torch.float32, tl.int32, 32)
    p, rows = 1000, 9
    keys = torch.randn(rows, p, generator=g, dtype=dtype) * 3
    keys[:, :4] = float("inf")  # forced pages
    keys[:, 500:540] = float("-inf")  # ineligible
    keys[5, :4] = 0.0  # (no +inf in the sample: its ranks reach the counting pass)
    keys[5, 890:] = 50 + torch.rand(110, generator=g, dtype=dtype)  # the top 110 where no run reads
    keys[6] = 2.0  # one value: every probe counts all or nothing
    keys[7, (torch.arange(p) % 7) < 2] += 20  # high exactly where the runs read (gap 7, runs of 2)
    wants = torch.tensor([300, 150, 500, 700, 220, 100, 400, 330, 2000], dtype=torch.int32)  # the last: every key
    images = ordered_images(keys)
    top = ordered_images(torch.tensor([float("inf")], dtype=dtype))[0]
    eligible = (keys > float("-inf")).sum(1)
    for gather in (1024, 16):
        out = torch.full((rows, 7), -7, dtype=torch.int64)
        scratch = torch.full((rows, gather), float("nan"), dtype=dtype)
        _bracket_of[(rows,)](keys, wants, out, scratch, p, INT=ints, NBITS=nbits, BLOCK=16,
                             FIELD=search_radix(1, 16)[1], SAMPLE=256, RUN=2, GATHER=gather)
        for row in range(rows):
            lo, hi, usable, c_lo, c_hi, n, ok = out[row].tolist()
            k = min(int(wants[row]), int(eligible[row]))
            msg = f"seed {seed} row {row} GATHER {gather}"
            assert n == int(eligible[row]), msg
            assert c_lo == int((images[row] >= lo).sum()) and c_hi == int((images[row] >= hi).sum()), \
                f"{msg}: counts {c_lo}, {c_hi}"
            between = keys[row][(images[row] >= lo) & (images[row] < hi)][:gather]
            if usable:
                assert lo < hi, msg
                assert torch.equal(scratch[row, : len(between)], between), msg
                assert bool(scratch[row, len(between):].isnan().all()), msg
            else:
                assert bool(scratch[row].isnan().all()), msg  # nothing gathered
            if ok:
                assert c_lo >= k > c_hi and int((images[row] >= top).sum()) < k, msg
            else:
                assert row >= 5, f"{msg}: the smooth row (k = {k}) found no bracket"
        assert out[:5, 6].tolist() == [1] * 5
        assert out[5, 6] == 0  # the sample saw none of the top 110: its hi has more than k above it
        assert out[7, 6] == 0  # the sample saw only the top keys: its lo has fewer than k above it
        assert out[6, 6] == 1 and out[6, 1] == out[6, 0] + 1  # one value: a bracket of one integer, the k-th key
        assert out[8, 2] == 0  # a wanted count past the row: the sample's rank is past its keys


@triton.jit
def _in_bracket_of(keys, scratch, args, out, P, INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr,
                   GATHER: tl.constexpr):
    """out[row] = ``_threshold_in_bracket``'s (t, ties_wanted, k) for args[row] = (want, lo, hi,
    usable, c_lo, c_hi, eligible), the row's keys streamed in BLOCK-key chunks and its scratch
    row of GATHER keys."""
    from entmaxkv.kernels.threshold_search import _threshold_in_bracket
    row = tl.program_id(0).to(tl.int64)
    a = args + row * 7
    t, ties, k = _threshold_in_bracket(
        keys + row * P, tl.arange(0, BLOCK), P, tl.load(a).to(tl.int32), tl.load(a + 1).to(INT),
        tl.load(a + 2).to(INT), tl.load(a + 3) != 0, tl.load(a + 4).to(tl.int32), tl.load(a + 5).to(tl.int32),
        tl.load(a + 6).to(tl.int32), scratch + row * GATHER, INT, NBITS, BLOCK, 12, GATHER)
    tl.store(out + row * 3, t.to(tl.int64))
    tl.store(out + row * 3 + 1, ties.to(tl.int64))
    tl.store(out + row * 3 + 2, k.to(tl.int64))


@pytest.mark.parametrize("wide", [False, True])
def test_threshold_in_bracket_uses_gathered_keys_only_where_the_counts_allow(wide):
    """``_threshold_in_bracket`` from given brackets and counts, on rows of 300 distinct keys
    (3 at +inf, 20 at −inf), want 100. The scratch holds the keys between the bracket's ends
    shuffled (on the GPU the (row, chunk) programs gather them in no particular order), then
    1e30 up to GATHER = 32 slots. Its pair must select the row's 100 largest keys (or, k <=
    the +inf keys, those first k):

    - 32 keys between the ends, GATHER 32 (exactly full): searched in the scratch alone — the
      row handed to the kernel is all −inf there, so a search that streamed it would fail;
    - 33 between (one past GATHER): the row is streamed from the confirmed bracket, and the
      scratch is all 1e30, so a search that used it would fail;
    - a bracket the counts refute (c_lo < k), and none usable: the whole finite range is
      searched, with the +inf keys counted above it (the fallback's c_hi);
    - want 2, fewer than the +inf keys, on a refuted bracket: the first two of them; and one more
      than the +inf keys with none usable, the row's 5 largest finite keys equal: the k-th key
      is that value, the top of the finite range, and the ties wanted come from the count above
      it, which only the fallback's c_hi gives (no probe counts fewer than k)."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype, ints, nbits = (torch.float64, tl.int64, 64) if wide else (torch.float32, tl.int32, 32)
    p, want, gather, rows = 300, 100, 32, 6
    row = torch.randn(p, generator=g, dtype=dtype)
    where = torch.randperm(p, generator=g)
    row[where[:3]] = float("inf")
    row[where[3:23]] = float("-inf")
    images = ordered_images(row)
    eligible = int((row > float("-inf")).sum())
    n_inf = int(torch.isposinf(row).sum())
    order = images.sort(descending=True).values  # distinct keys: the k-th largest is order[k − 1]
    lowest = -(2 ** (nbits - 1))
    top = int(ordered_images(torch.tensor([float("inf")], dtype=dtype))[0])

    def bracket(above, below):  # [lo, hi) from the (k + below)-th largest key to the (k − 1 − above)-th
        lo, hi = int(order[want - 1 + below]), int(order[want - 2 - above]) + 1
        return lo, hi, int((images >= lo).sum()), int((images >= hi).sum())

    real = row.repeat(rows, 1)
    real[5, (images < top) & (images >= int(order[n_inf + 4]))] = row[images == int(order[n_inf])]  # 5 tie at the top
    keys = real.clone()
    keys[0] = float("-inf")  # the fast path must not read the row
    scratch = torch.full((rows, gather), 1e30, dtype=dtype)
    args = torch.zeros(rows, 7, dtype=torch.int64)
    lo, hi, c_lo, c_hi = bracket(15, 15)  # 32 between
    between = row[(images >= lo) & (images < hi)]
    assert len(between) == 32 == c_lo - c_hi
    scratch[0] = between[torch.randperm(32, generator=g)]
    args[0] = torch.tensor([want, lo, hi, 1, c_lo, c_hi, eligible])
    lo, hi, c_lo, c_hi = bracket(15, 16)  # 33 between
    assert c_lo - c_hi == 33
    args[1] = torch.tensor([want, lo, hi, 1, c_lo, c_hi, eligible])
    lo, hi, c_lo, c_hi = bracket(40, -10)  # the k-th key not inside: c_lo < k
    assert c_lo < want
    args[2] = torch.tensor([want, lo, hi, 1, c_lo, c_hi, eligible])
    args[3] = torch.tensor([want, lowest + 1, top, 0, eligible, n_inf, eligible])  # no usable bracket
    args[4] = torch.tensor([2, lo, hi, 1, c_lo, c_hi, eligible])
    args[5] = torch.tensor([n_inf + 1, lowest + 1, top, 0, eligible, n_inf, eligible])  # one of the 5 ties
    out = torch.full((rows, 3), -7, dtype=torch.int64)
    _in_bracket_of[(rows,)](keys, scratch, args, out, p, INT=ints, NBITS=nbits, BLOCK=16, GATHER=gather)
    for r in range(rows):
        t, ties, k = out[r].tolist()
        k_want = min(int(args[r, 0]), eligible)
        real_images = ordered_images(real[r])
        above = int((real_images > t).sum())
        assert k == k_want, f"seed {seed} row {r}"
        assert above == k - ties and 0 <= ties <= int((real_images == t).sum()), \
            f"seed {seed} row {r}: t {t}, {ties} ties, {above} above"
    assert out[4, 0] == top and out[4, 1] == 2, f"seed {seed}: the +inf keys"


@pytest.mark.parametrize("search, gather", [("interpolate", 4096), ("interpolate", 16), ("interpolate", 0),
                                            ("bisect", 4096)])
@pytest.mark.parametrize("wide", [False, True])
def test_sampled_streamed_rows_select_the_stable_top(search, gather, wide, finite_poison, monkeypatch):
    """select_pages on streamed rows of 600 keys (16-key chunks) with a 128-key sample in runs
    of 2, its confirmed brackets searched on the keys between their ends (``GATHER`` 4,096),
    on the streamed row because more keys lie between than fit (16), or because none are
    gathered (0); the bitwise search takes no sample. Smooth random keys and keys 80% of which tie (rows like those the bracket test above
    shows confirmed; the tie, a bracket of one integer: the ties wanted come from its count);
    rows whose sample the counts refute — the top keys only where no run reads (gap 9, runs of 2
    at 9i and 9i + 1) or only where the runs read — so the search must fall back to the whole
    range; low-bit keys and bit patterns (ties, keys over the whole float range), forced and
    ineligible pages, with counts from 1 to the row's length. torch.empty hands out 1e30
    (``finite_poison``): a read of the scratch past the keys gathered would find a key above
    every real one."""
    use(monkeypatch, search, True)
    use_sample(monkeypatch, gather)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    p = 600
    keys = torch.cat([torch.randn(2, 3, p, generator=g, dtype=dtype), low_bit_keys(g, (1, 3, p), dtype),
                      bit_pattern_keys(g, (1, 3, p), dtype)], 0)
    read = (torch.arange(p) % 9) < 2  # the lanes the sample's runs read
    keys[1, 0, ~read] += 50  # the top 466 where no run reads: the counts refute the sample's hi
    keys[1, 1, read] += 50  # the top 134 exactly where the runs read: the counts refute its lo
    keys[0, 1, :5] = float("inf")
    keys[0, 1, 100:160] = float("-inf")
    keys[0, 2, torch.rand(p, generator=g) < 0.8] = 0.0  # 80% tie: the k-th key and both sample ranks among them
    counts = torch.randint(1, p, (4, 3), generator=g, dtype=torch.int32)
    counts[0] = torch.tensor([200, 333, 300], dtype=torch.int32)  # inside the first rows: sampled
    counts[1, :2] = torch.tensor([300, 120], dtype=torch.int32)
    assert_stable_top(keys, counts, p, f"seed {seed} {search} GATHER {gather}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gather", [4096, 64])
@pytest.mark.parametrize("wide", [False, True])
def test_sampled_streamed_rows_on_the_gpu_select_the_stable_top(wide, gather, monkeypatch):
    """select_pages compiled for the GPU on rows of 40,000 keys (streamed past ``MAX_BLOCK``):
    the search of the keys one program gathered and re-reads after a barrier (``GATHER``
    4,096; 64: fewer than a bracket holds, the row is streamed), float32 and float64, smooth
    keys, keys 80% tied, the top keys only where the sample's runs do not read, forced and
    ineligible pages — the same pages as a stable descending sort. (The interpreter runs one
    thread: the barrier between the scratch's writes and reads shows only here.)"""
    monkeypatch.setattr("entmaxkv.kernels.select_pages.GATHER", gather)
    seed = fresh_seed()
    g = torch.Generator(device="cuda").manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    p = 40000
    keys = torch.randn(2, 3, p, generator=g, device="cuda", dtype=dtype)
    keys[0, 1, :7] = float("inf")
    keys[0, 1, 100:400] = float("-inf")
    keys[0, 2, torch.rand(p, generator=g, device="cuda") < 0.8] = 0.0
    gap = p // 4096  # the sample's stride (SAMPLE 4,096 keys in runs of 1)
    keys[1, 0, (torch.arange(p, device="cuda") % gap) != 0] += 50
    counts = torch.tensor([[1200, 5000, 3000], [2000, 400, 39000]], dtype=torch.int32, device="cuda")
    pages, kept = (t.cpu() for t in torch.ops.entmaxkv.select_pages(keys, counts, p))
    keys = keys.cpu()
    order = torch.argsort(keys, dim=-1, descending=True, stable=True)
    for i in range(2):
        for j in range(3):
            o = order[i, j]
            want = o[keys[i, j, o] > float("-inf")][: int(counts[i, j])].sort().values
            n = int(kept[i, j])
            assert n == len(want) and torch.equal(pages[i, j, :n].long(), want), f"seed {seed} row ({i}, {j})"
            assert bool((pages[i, j, n:] == -1).all()), f"seed {seed} row ({i}, {j})"



@triton.jit
def _histogram_search(keys, wants, hist, out, P, INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr,
                      HIST_BITS: tl.constexpr, PROBES: tl.constexpr):
    """out[row] = (t, ties_wanted, k) of ``_histogram_threshold`` on a row of BLOCK lanes (P
    keys), its histogram counted here first, as ``quest_select``'s keys programs count it
    (the interpreter runs the program's atomic adds before its loads: no barrier needed)."""
    from entmaxkv.kernels.threshold_search import _eligible_ordered, _histogram_bin, _histogram_threshold
    row = tl.program_id(0).to(tl.int64)
    base = keys + row * P
    lanes = tl.arange(0, BLOCK)
    u = _eligible_ordered(tl.load(base + lanes, mask=lanes < P, other=float("-inf")), INT, NBITS)
    h = hist + row * (1 << HIST_BITS)
    eligible = (lanes < P) & (u > -(2 ** (NBITS - 1)))
    tl.atomic_add(h + _histogram_bin(u, NBITS, HIST_BITS), tl.full((BLOCK,), 1, tl.int32), mask=eligible)
    t, ties, k = _histogram_threshold(base, lanes, P, u, tl.load(wants + row), h, INT, NBITS, BLOCK, True, PROBES,
                                      HIST_BITS)
    tl.store(out + row * 3, t.to(tl.int64))
    tl.store(out + row * 3 + 1, ties.to(tl.int64))
    tl.store(out + row * 3 + 2, k.to(tl.int64))


def bin_edge_keys(dtype, hist_bits: int) -> torch.Tensor:
    """Two rows of 16 keys on both sides of histogram bin edges, for bins of positive and
    negative keys: the lowest image of a bin and the highest of the bin below (one step of the
    bit image apart) — the 16 keys of 4 edges, and the 8 keys of 2 edges twice each (ties at the
    top of a bin: a search that never counts above it takes its ties from the bracket's count
    at hi, the histogram's)."""
    ints, nbits = (torch.int64, 64) if dtype == torch.float64 else (torch.int32, 32)
    shift = nbits - hist_bits
    one = torch.tensor([1.0], dtype=dtype).view(ints)
    edges = [one + (b << shift) for b in (1, 2, 3, 5)]  # bins above 1.0: float32's third mantissa bit, float64's exponent
    x = torch.cat([e - d for e in edges for d in (0, 1)]).view(dtype)
    return torch.stack([torch.cat([x, -x]), torch.cat([x[:4], -x[:4]]).repeat_interleave(2)])


def first_column_keys(dtype, hist_bits: int) -> torch.Tensor:
    """One row of 16 positive keys, each the lowest image of a bin in column 0 of its row of
    bins (``_histogram_threshold`` scans 2^(HIST_BITS // 2) rows of bins, then one row's
    columns): the k-th key's column is then 0 for every k, where a column count off by one
    moves the bracket to another row's bins."""
    ints, nbits = (torch.int64, 64) if dtype == torch.float64 else (torch.int32, 32)
    cols, half = 1 << (hist_bits - hist_bits // 2), 1 << (hist_bits - 1)
    rows = torch.arange(half // cols + 8, half // cols + 24, dtype=ints)  # positive bins, below +inf's
    return ((rows * cols - half) << (nbits - hist_bits)).view(dtype)[None, :]


@pytest.mark.parametrize("hist_bits", [12, 14])
@pytest.mark.parametrize("wide", [False, True])
def test_the_histogram_bracket_holds_the_kth_key(hist_bits, wide, poison):
    """``_histogram_threshold`` (the search ``quest_select`` runs on rows held in registers) selects
    a stable descending sort's first k keys: on the extreme rows of
    ``test_interpolation_at_the_ends_of_the_float_range`` (largest finite floats, subnormals,
    ±0.0, one finite key among infinities, NaN; the k-th key then in the first or last finite
    bin, or +inf's), random bit patterns, keys that differ in their lowest bits (all in one
    bin), keys on both sides of bin edges (``bin_edge_keys``: a bin's first image is its
    bracket's lo, an off-by-one there moves a key across it) and in the first column of rows of
    bins (``first_column_keys``), each row with every want from 0
    to past its eligible keys. Checked in integers: (t, ties) take the keys whose image is above
    t and the first ``ties`` equal to it; k is min(want, eligible keys)."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if wide else torch.float32
    info = torch.finfo(dtype)
    inf, p = float("inf"), 16
    special = torch.tensor([
        [info.max, -info.max, info.tiny / 4, -info.tiny / 4, 0.0, -0.0, info.max / 3, -info.max, info.tiny,
         1.0, -1.0, info.max, inf, inf, float("nan"), -inf],
        [inf, -inf, 2.5, inf, -inf, inf, -inf, -inf, inf, -inf, -inf, -inf, -inf, -inf, inf, -inf],
        [3.0] * 15 + [info.max],
        [-info.max] * 15 + [-info.max / 2],
    ], dtype=dtype)
    keys = torch.cat([special, bit_pattern_keys(g, (2, p), dtype), low_bit_keys(g, (2, p), dtype),
                      bin_edge_keys(dtype, hist_bits), first_column_keys(dtype, hist_bits)])
    keys = keys[:, torch.randperm(p, generator=g)]  # where the extremes sit
    keys = keys.repeat_interleave(p + 2, 0)  # each row with every want, 0 .. p + 1
    rows = len(keys)
    images = ordered_images(keys)
    lowest = -(2 ** (63 if wide else 31))
    eligible = (images > lowest).sum(-1)
    wants = torch.arange(p + 2, dtype=torch.int32).repeat(rows // (p + 2))
    out = torch.empty((rows, 3), dtype=torch.int64)
    hist = torch.zeros((rows, 1 << hist_bits), dtype=torch.int32)
    _histogram_search[(rows,)](keys.contiguous(), wants, hist, out, p, INT=tl.int64 if wide else tl.int32,
                               NBITS=64 if wide else 32, BLOCK=p, HIST_BITS=hist_bits, PROBES=12)
    order = torch.argsort(keys, dim=-1, descending=True, stable=True)
    for i in range(rows):
        msg = f"seed {seed} row {i} want {int(wants[i])} keys {keys[i].tolist()}"
        k = min(int(wants[i]), int(eligible[i]))
        t, ties, got_k = (int(v) for v in out[i])
        assert got_k == k, msg
        ok = images[i] > lowest
        tie = ok & (images[i] == t)
        take = (ok & (images[i] > t)) | (tie & (torch.cumsum(tie.long(), 0) - tie.long() < ties))
        expect = torch.zeros(p, dtype=torch.bool)
        expect[[int(x) for x in order[i] if ok[x]][:k]] = True
        assert torch.equal(take, expect), msg
