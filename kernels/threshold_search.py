"""The k-th largest key of a row without sorting: counting passes over an order-preserving
integer image of the float keys, shared by ``select_pages`` and ``quest_select``.

Each counting pass is one block-wide reduction (a ``tl.sum`` with barriers) over the row, which
one program holds in registers (or streams from memory when it is longer than a register
block). The passes depend on each other. (On the H200 a pass costs only ~0.25 µs on a
16,384-lane row: fewer passes saved 2–3 µs of the per-row program's ~45; ``select_pages``' docstring
has the measurements.) Two searches:

- **bitwise** (``_threshold`` with ``PROBES`` = 0): most significant bit first, ``RADIX`` bits a
  pass — 32 passes for float32 keys, 64 for float64 at radix 1; radix 2 tests the three
  candidates t|01, t|10, t|11 of the next two bits in one reduction (three 0/1 indicators
  packed in one int64, ``FIELD``-bit fields) and keeps the largest whose count is >= k, which
  is what two 1-bit passes decide. Both then count the keys above the threshold (the ties).
- **interpolation** (``PROBES`` > 0): a bracket [lo, hi) of the integer image with
  #{u >= lo} >= k > #{u >= hi}, from the smallest and largest finite key, narrowed by probes
  placed where a linear model of the count between the ends puts the k-th key (regula falsi
  in the keys' values, with the Illinois halving of a stale end), for at most ``PROBES``
  probes, then by bisection of the integer bracket (at most NBITS more). It stops as soon as
  a probe counts exactly k keys (those are the k largest: no tie at the boundary) or the
  bracket holds one integer (the k-th key; the keys above it are the bracket end's count).
  On the benchmark's rank keys that is 11–18 passes instead of 35 (simulated with the same
  arithmetic at 8K and 128K); the worst case is ``PROBES`` + NBITS + 4 passes (as many on a
  streamed row whose sampled bracket the counts refute, below: the pass that checks the
  bracket also counts the eligible keys, the pass a row without a sample takes first).

A streamed row (longer than a register block: read from memory every pass, one program
reading the whole row, ~15 µs a pass at 65,540 keys on the H200) is searched from a sampled
bracket (``SAMPLE`` > 0, ``_row_threshold`` → ``_sampled_threshold``): the sample's order
statistics a few standard deviations above and below where the k-th key should rank in it are
searched in registers, and one streamed pass counts the row's eligible keys and its keys at or
above both, and copies the keys between them (~1,100 at 1M tokens, TopK 3%) to a scratch row of
``GATHER`` keys. Where the counts confirm the bracket and those keys fit, the interpolation
search runs on them in registers, no streamed pass more; a confirmed bracket with more keys
between is searched on the streamed row; a refuted one falls back to the whole finite range,
as without a sample. TopK 3% at 1M tokens (B = 1, 32/8, α = 1.5): the step 426.9 µs without a
sample, 313.4 with it (the search streaming the row from the confirmed bracket), 255.9 with
the keys between gathered (sessions 14, 15). ``quest_select`` runs the same steps in separate
launches — the bracket, then the counting pass over (row, chunk) programs (``row_passes``),
then ``_threshold_in_bracket`` — since one program's pass over a long row is slow: 155.4 µs.

A row held in registers (``ONE_CHUNK``) is one power-of-two block of lanes, or — where the row
is a few lanes longer than a power of two, as a cache with room for more tokens is — that block
and a small power-of-two ``TAIL`` block for its last lanes: 8,196 pages take 8,192 + 16 lanes,
not 16,384, and every counting pass half the work (``u_tail``; ``TAIL`` = 0: one block).
Such a row's interpolation search can also start from a histogram of its keys' top bits that
the programs writing the keys counted (``_histogram_threshold``, ``quest_select.HIST_BITS``):
the histogram gives the eligible count and the bin of the k-th key, which is the first bracket,
so no pass counts the row's eligible keys or its finite range.

Both select the same pages, bit for bit (``_take``: the keys above t, then the first
``ties_wanted`` keys equal to t), though not always from the same (t, ties_wanted): the
interpolation search's exact exit returns t = probe − 1, which need not be a key, with no
ties; k <= #{+inf} returns the image of +inf with k ties; and when every eligible key is taken
it returns the lowest value with ties_wanted = k where the bitwise search gives 0.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["search_radix"]  # and the @triton.jit helpers, imported by name


def search_radix(radix: int, block: int) -> tuple[int, int]:
    """``(RADIX, FIELD)`` launch constexprs of a threshold search over ``block``-lane chunks.

    A radix-2 pass sums, over one chunk, three counts packed in one int64: each count is at
    most ``block`` (lanes past the row are ineligible and count 0), so FIELD = bit_length(block)
    bits hold it and the fields cannot carry into each other. A streamed row unpacks every
    chunk's sum before adding it to int32 totals, so the row length P does not bound it. The
    three fields need 3·FIELD <= 63 bits (the int64 stays non-negative): blocks up to 2^20
    lanes, which is every block Triton builds (``tl.TRITON_MAX_TENSOR_NUMEL`` = 2^20 in Triton
    3.7); a larger block would fall back to radix 1.
    """
    if radix not in (1, 2):
        raise ValueError(f"RADIX must be 1 or 2, got {radix!r}")
    field = int(block).bit_length()
    return (radix if 3 * field <= 63 else 1), field


@triton.jit
def _ordered(x, INT: tl.constexpr, NBITS: tl.constexpr):
    """Order-preserving map of floats to signed ints (−inf lowest, +inf highest): flip the
    magnitude bits of negative floats. −0.0 becomes +0.0 first: they are equal keys (a tie)."""
    bits = tl.where(x == 0, tl.zeros_like(x), x).to(INT, bitcast=True)
    magnitude = (tl.full(bits.shape, 1, INT) << (NBITS - 1)) - 1
    return bits ^ ((bits >> (NBITS - 1)) & magnitude)


@triton.jit
def _unordered(key, FLOAT: tl.constexpr, NBITS: tl.constexpr):
    """The float of an ``_ordered`` key (the map flips the magnitude bits of negative keys, which
    keeps the sign bit: it is its own inverse on the bits)."""
    magnitude = (tl.full(key.shape, 1, key.dtype) << (NBITS - 1)) - 1
    return (key ^ ((key >> (NBITS - 1)) & magnitude)).to(FLOAT, bitcast=True)


@triton.jit
def _eligible_ordered(x, INT: tl.constexpr, NBITS: tl.constexpr):
    """``_ordered(x)``, and the lowest integer for ineligible keys (−inf): below every
    threshold the search tries (those are all > the lowest integer)."""
    lowest = tl.full(x.shape, -(2 ** (NBITS - 1)), INT)
    return tl.where(x > float("-inf"), _ordered(x, INT, NBITS), lowest)


@triton.jit
def _count(base, lanes, P, cand, u_all, INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr,
           ONE_CHUNK: tl.constexpr, u_tail=None, TAIL: tl.constexpr = 0):
    """#{eligible u >= cand} over the row (from registers when the row is one chunk: ``u_all``,
    and with ``TAIL`` > 0 the row's last lanes ``u_tail``, see the module docstring)."""
    if ONE_CHUNK:
        c = tl.sum((u_all >= cand).to(tl.int32))
        if TAIL > 0:
            c += tl.sum((u_tail >= cand).to(tl.int32))
        return c
    c = 0
    for start in range(0, P, BLOCK):
        x = tl.load(base + start + lanes, mask=start + lanes < P, other=float("-inf"))
        c += tl.sum((_eligible_ordered(x, INT, NBITS) >= cand).to(tl.int32))
    return c


@triton.jit
def _packed_ge(u, c1, c2, c3, FIELD: tl.constexpr):
    """Per lane, the indicators u >= c1, c2, c3 as one int64 with a FIELD-bit field each (low
    to high): summing it sums the three counts at once."""
    return ((u >= c1).to(tl.int64) | ((u >= c2).to(tl.int64) << FIELD)
            | ((u >= c3).to(tl.int64) << (2 * FIELD)))


@triton.jit
def _unpacked(total, FIELD: tl.constexpr):
    """The three int32 counts of a sum of ``_packed_ge`` over at most 2^FIELD − 1 lanes."""
    field_mask: tl.constexpr = (1 << FIELD) - 1
    return ((total & field_mask).to(tl.int32), ((total >> FIELD) & field_mask).to(tl.int32),
            ((total >> (2 * FIELD)) & field_mask).to(tl.int32))


@triton.jit
def _count3(base, lanes, P, c1, c2, c3, u_all, INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr,
            ONE_CHUNK: tl.constexpr, FIELD: tl.constexpr, u_tail=None, TAIL: tl.constexpr = 0):
    """(#{eligible u >= c1}, … >= c2, … >= c3) over the row, one reduction per chunk. A chunk's
    counts are <= BLOCK < 2^FIELD (``search_radix``), so its packed sum has no carry between
    fields; a streamed row adds the unpacked counts (int32), so the row length is not bounded
    by the field."""
    tl.static_assert((1 << FIELD) > BLOCK, "a FIELD-bit field must hold a chunk's count (up to BLOCK)")
    tl.static_assert(3 * FIELD <= 63, "three FIELD-bit fields must fit a non-negative int64")
    if ONE_CHUNK:
        n1, n2, n3 = _unpacked(tl.sum(_packed_ge(u_all, c1, c2, c3, FIELD)), FIELD)
        if TAIL > 0:  # a tail's counts (<= TAIL <= BLOCK) unpacked on their own
            t1, t2, t3 = _unpacked(tl.sum(_packed_ge(u_tail, c1, c2, c3, FIELD)), FIELD)
            n1, n2, n3 = n1 + t1, n2 + t2, n3 + t3
        return n1, n2, n3
    n1 = 0
    n2 = 0
    n3 = 0
    for start in range(0, P, BLOCK):
        x = tl.load(base + start + lanes, mask=start + lanes < P, other=float("-inf"))
        a1, a2, a3 = _unpacked(tl.sum(_packed_ge(_eligible_ordered(x, INT, NBITS), c1, c2, c3, FIELD)), FIELD)
        n1 += a1
        n2 += a2
        n3 += a3
    return n1, n2, n3


@triton.jit
def _row_threshold(base, lanes, P, u_all, want, scratch, INT: tl.constexpr, NBITS: tl.constexpr,
                   BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr, RADIX: tl.constexpr, FIELD: tl.constexpr,
                   PROBES: tl.constexpr, u_tail=None, TAIL: tl.constexpr = 0, SAMPLE: tl.constexpr = 0,
                   RUN: tl.constexpr = 1, GATHER: tl.constexpr = 0):
    """(t, ties_wanted, k) of a row: k = min(want, the row's eligible keys), and ``_threshold``'s
    pair for that k. ``SAMPLE`` > 0 (a streamed row, interpolation search): through
    ``_sampled_threshold``, whose one streamed pass counts the eligible keys with the sampled
    bracket's ends (``scratch``: GATHER keys, see there); else a counting pass finds the
    eligible keys first."""
    if SAMPLE > 0:
        tl.static_assert((not ONE_CHUNK) and PROBES > 0, "a sampled bracket only for a streamed row, searched by "
                         "interpolation")
        return _sampled_threshold(base, lanes, P, want, scratch, INT, NBITS, BLOCK, FIELD, PROBES, SAMPLE, RUN,
                                  GATHER)
    else:
        eligible_total = _count(base, lanes, P, tl.full((), -(2 ** (NBITS - 1)) + 1, INT), u_all, INT, NBITS, BLOCK,
                                ONE_CHUNK, u_tail, TAIL)
        k = tl.minimum(want, eligible_total)
        t, ties = _threshold(base, lanes, P, u_all, k, eligible_total, INT, NBITS, BLOCK, ONE_CHUNK, RADIX, FIELD,
                             PROBES, u_tail, TAIL)
        return t, ties, k


@triton.jit
def _threshold(base, lanes, P, u_all, k, eligible_total, INT: tl.constexpr, NBITS: tl.constexpr,
               BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr, RADIX: tl.constexpr, FIELD: tl.constexpr,
               PROBES: tl.constexpr, u_tail=None, TAIL: tl.constexpr = 0):
    """(t, ties_wanted) such that the keys above t and the first ``ties_wanted`` keys equal to
    t are the row's k largest (the bitwise search: t the k-th largest key, or the lowest value
    when every eligible key is taken; the interpolation search may return another such pair,
    see the module docstring) — by the bitwise search (``PROBES`` = 0) or the interpolation
    search from the row's whole finite range. Keys are read from ``base`` (P of them) or, when
    ONE_CHUNK, from their images ``u_all`` in registers."""
    if PROBES > 0:
        return _interpolated_threshold(base, lanes, P, u_all, k, eligible_total, INT, NBITS, BLOCK, ONE_CHUNK,
                                       PROBES, u_tail, TAIL)
    else:
        return _bitwise_threshold(base, lanes, P, u_all, k, eligible_total, INT, NBITS, BLOCK, ONE_CHUNK, RADIX,
                                  FIELD, u_tail, TAIL)


@triton.jit
def _bitwise_threshold(base, lanes, P, u_all, k, eligible_total, INT: tl.constexpr, NBITS: tl.constexpr,
                       BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr, RADIX: tl.constexpr, FIELD: tl.constexpr,
                       u_tail=None, TAIL: tl.constexpr = 0):
    """(t, ties_wanted): the k-th largest ordered key t of the row, and how many keys equal to
    t the k largest include. t is the largest t with #{u >= t} >= k, built from the most
    significant bit down, RADIX bits a pass (1 or 2; NBITS is even). Bits are set on the
    unsigned image (u + 2^(N-1)); flipping the sign bit turns it back into the signed value
    that the comparisons use. When every eligible page is taken there is nothing to search: t
    is the lowest value."""
    one = tl.full((), 1, INT)
    sign = one << (NBITS - 1)
    t_bits = tl.zeros((), INT)
    above = k
    if k < eligible_total:
        if RADIX == 1:
            for i in range(NBITS):
                cand_bits = t_bits | (one << (NBITS - 1 - i))
                c = _count(base, lanes, P, cand_bits ^ sign, u_all, INT, NBITS, BLOCK, ONE_CHUNK, u_tail, TAIL)
                t_bits = tl.where(c >= k, cand_bits, t_bits)
        else:
            tl.static_assert(RADIX == 2, "RADIX is 1 or 2")
            for i in range(0, NBITS, 2):
                hi = one << (NBITS - 1 - i)
                lo = one << (NBITS - 2 - i)
                # t|01 < t|10 < t|11, so n01 >= n10 >= n11: the largest candidate with a count
                # >= k is the one the two 1-bit passes (bit hi, then bit lo) would reach
                n01, n10, n11 = _count3(base, lanes, P, (t_bits | lo) ^ sign, (t_bits | hi) ^ sign,
                                        (t_bits | hi | lo) ^ sign, u_all, INT, NBITS, BLOCK, ONE_CHUNK, FIELD,
                                        u_tail, TAIL)
                t_bits = tl.where(n11 >= k, t_bits | hi | lo,
                                  tl.where(n10 >= k, t_bits | hi, tl.where(n01 >= k, t_bits | lo, t_bits)))
        above = _count(base, lanes, P, (t_bits ^ sign) + 1, u_all, INT, NBITS, BLOCK, ONE_CHUNK, u_tail, TAIL)
    return t_bits ^ sign, k - above


@triton.jit
def _value_of(u, INT: tl.constexpr, NBITS: tl.constexpr):
    """The key (float32 for 32-bit images, float64 for 64-bit ones) whose ``_ordered`` image is
    the scalar u: the map is its own inverse."""
    magnitude = (tl.full((), 1, INT) << (NBITS - 1)) - 1
    bits = u ^ ((u >> (NBITS - 1)) & magnitude)
    if NBITS == 32:
        return bits.to(tl.float32, bitcast=True)
    else:
        return bits.to(tl.float64, bitcast=True)


@triton.jit
def _finite_range(base, lanes, P, u_all, INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr,
                  ONE_CHUNK: tl.constexpr, u_tail=None, TAIL: tl.constexpr = 0):
    """(#{u = +inf}, smallest finite u, largest finite u) of the row's ordered keys; the ends
    are the image of +inf and the lowest integer when no key is finite. Ineligible keys (−inf,
    NaN) have the lowest integer (``_eligible_ordered``): they are neither."""
    lowest = tl.full((), -(2 ** (NBITS - 1)), INT)
    top = tl.full((), float("inf"), tl.float32 if NBITS == 32 else tl.float64).to(INT, bitcast=True)
    if ONE_CHUNK:
        finite = (u_all > lowest) & (u_all < top)
        n_inf = tl.sum((u_all == top).to(tl.int32))
        small = tl.min(tl.where(finite, u_all, top))
        large = tl.max(tl.where(finite, u_all, lowest))
        if TAIL > 0:
            finite_t = (u_tail > lowest) & (u_tail < top)
            n_inf += tl.sum((u_tail == top).to(tl.int32))
            small = tl.minimum(small, tl.min(tl.where(finite_t, u_tail, top)))
            large = tl.maximum(large, tl.max(tl.where(finite_t, u_tail, lowest)))
    else:
        n_inf = 0
        small = top
        large = lowest
        for start in range(0, P, BLOCK):
            x = tl.load(base + start + lanes, mask=start + lanes < P, other=float("-inf"))
            u = _eligible_ordered(x, INT, NBITS)
            finite = (u > lowest) & (u < top)
            n_inf += tl.sum((u == top).to(tl.int32))
            small = tl.minimum(small, tl.min(tl.where(finite, u, top)))
            large = tl.maximum(large, tl.max(tl.where(finite, u, lowest)))
    return n_inf, small, large


@triton.jit
def _sampled_bracket(base, P, want, INT: tl.constexpr, NBITS: tl.constexpr, PROBES: tl.constexpr,
                     SAMPLE: tl.constexpr, RUN: tl.constexpr):
    """(lo, hi, usable): a bracket [lo, hi) of a streamed row's integer images that should hold
    its k-th largest key, from a sample: SAMPLE keys in runs of RUN consecutive ones (a run
    shares memory sectors), the runs evenly spaced over the P keys. The sample rank the k-th
    key should have is r = k·(sample eligible)/(row eligible); with the row's eligible keys
    estimated from the sample's share of the keys it read, r = min(want·(keys read)/P, sample
    eligible). With m = 3·sqrt(RUN·r) + RUN (three standard deviations of the sample's count
    above the k-th key were each run's keys all alike), two searches of the sample in registers
    give t_hi and t_lo with #{sample > t_hi} <= r − m and #{sample >= t_lo} >= r + m
    (``_threshold``'s pairs: at or near those order statistics); lo = t_lo, hi = t_hi + 1
    (lo < hi). usable is 0 when the sample does not reach both ranks or its (r − m)-th key is
    +inf; lo and hi are then the lowest eligible image and the image of +inf. Nothing here is
    trusted: ``_gathering_count`` counts the row at lo and hi, and only counts that confirm the
    bracket are used (``_sampled_threshold``)."""
    lowest = tl.full((), -(2 ** (NBITS - 1)), INT)
    top = tl.full((), float("inf"), tl.float32 if NBITS == 32 else tl.float64).to(INT, bitcast=True)
    runs: tl.constexpr = SAMPLE // RUN
    j = tl.arange(0, SAMPLE)
    gap = tl.maximum(P // runs, RUN)  # runs never overlap; past P the lanes are masked
    at = (j // RUN).to(tl.int64) * gap + j % RUN
    u_s = _eligible_ordered(tl.load(base + at, mask=at < P, other=float("-inf")), INT, NBITS)
    n_s = tl.sum((u_s > lowest).to(tl.int32))
    n_read = tl.sum((at < P).to(tl.int32))
    r = tl.minimum(want.to(tl.float64) * n_read.to(tl.float64) / tl.maximum(P, 1), n_s.to(tl.float64))
    m = 3.0 * tl.sqrt(RUN * r) + RUN
    rank_hi = tl.floor(r - m).to(tl.int32)  # sample ranks: hi's key above the k-th, lo's below it
    rank_lo = tl.ceil(r + m).to(tl.int32)
    lo = lowest + 1
    hi = top
    usable = (rank_hi >= 1) & (rank_lo < n_s)
    if usable:
        # #{sample > t_hi} <= rank_hi and #{sample >= t_lo} >= rank_lo (``_threshold``'s pair)
        t_hi, _ = _interpolated_threshold(base, j, SAMPLE, u_s, rank_hi, n_s, INT, NBITS, SAMPLE, True, PROBES)
        t_lo, _ = _interpolated_threshold(base, j, SAMPLE, u_s, rank_lo, n_s, INT, NBITS, SAMPLE, True, PROBES)
        usable = t_hi < top  # t_lo <= t_hi: lo < hi
        if usable:
            lo = t_lo
            hi = t_hi + 1
    return lo, hi, usable


@triton.jit
def _gathering_count(base, lanes, P, lo, hi, gather, scratch, INT: tl.constexpr, NBITS: tl.constexpr,
                     BLOCK: tl.constexpr, FIELD: tl.constexpr, GATHER: tl.constexpr):
    """One streamed pass over the row: (#{u >= lo}, #{u >= hi}, #{eligible u}) (lo < hi), one
    packed reduction a chunk; and, with ``GATHER`` > 0 where ``gather``, the keys with lo <= u <
    hi copied in row order to scratch[0 : min(their count, GATHER)] (their count is the first
    count less the second)."""
    lowest_eligible = tl.full((), -(2 ** (NBITS - 1)) + 1, INT)
    c_lo = 0
    c_hi = 0
    n = 0
    for start in range(0, P, BLOCK):
        x = tl.load(base + start + lanes, mask=start + lanes < P, other=float("-inf"))
        u = _eligible_ordered(x, INT, NBITS)
        a_lo, a_hi, a_n = _unpacked(tl.sum(_packed_ge(u, lo, hi, lowest_eligible, FIELD)), FIELD)
        if GATHER > 0:
            between = ((u >= lo) & (u < hi) & gather).to(tl.int32)
            at = c_lo - c_hi + tl.cumsum(between, axis=0) - between  # the keys gathered before, then this chunk's
            tl.store(scratch + at, x, mask=(between == 1) & (at < GATHER))
        c_lo += a_lo
        c_hi += a_hi
        n += a_n
    return c_lo, c_hi, n


@triton.jit
def _sampled_threshold(base, lanes, P, want, scratch, INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr,
                       FIELD: tl.constexpr, PROBES: tl.constexpr, SAMPLE: tl.constexpr, RUN: tl.constexpr,
                       GATHER: tl.constexpr):
    """``_row_threshold`` for a streamed row, by interpolation: a sampled bracket
    (``_sampled_bracket``), then one streamed pass (``_gathering_count``) that counts the row's
    eligible keys and the keys at or above both ends, and gathers the keys between the ends to
    ``scratch`` (GATHER keys of the key dtype, a power of two; 0: none gathered), then the
    search from those counts (``_threshold_in_bracket``)."""
    lo, hi, usable = _sampled_bracket(base, P, want, INT, NBITS, PROBES, SAMPLE, RUN)
    c_lo, c_hi, eligible_total = _gathering_count(base, lanes, P, lo, hi, usable, scratch, INT, NBITS, BLOCK, FIELD,
                                                  GATHER)
    return _threshold_in_bracket(base, lanes, P, want, lo, hi, usable, c_lo, c_hi, eligible_total, scratch, INT, NBITS,
                                 BLOCK, PROBES, GATHER)


@triton.jit
def _threshold_in_bracket(base, lanes, P, want, lo, hi, usable, c_lo, c_hi, eligible_total, scratch,
                          INT: tl.constexpr, NBITS: tl.constexpr, BLOCK: tl.constexpr, PROBES: tl.constexpr,
                          GATHER: tl.constexpr):
    """(t, ties_wanted, k) of a streamed row from a sampled bracket [lo, hi) (``usable``) and
    the row's counts: c_lo = #{u >= lo}, c_hi = #{u >= hi}, its eligible keys, and (GATHER > 0,
    where usable) its c_lo − c_hi keys with lo <= u < hi in ``scratch``, as many as fit, in any
    order. With k = min(want, eligible): where the counts confirm the bracket (c_lo >= k > c_hi)
    and the keys between number at most GATHER, the search runs in registers on those keys
    alone (the row's count at a probe inside the bracket is c_hi plus theirs); a confirmed
    bracket with more keys between is searched on the streamed row; otherwise (a sample that
    misleads, or none usable) the whole finite range is (one more streamed pass finds it).
    Whatever the sample, the pair is the row's: the sample only decides how many passes it
    takes."""
    KEY: tl.constexpr = tl.float32 if NBITS == 32 else tl.float64
    lowest = tl.full((), -(2 ** (NBITS - 1)), INT)
    k = tl.minimum(want, eligible_total)
    t = lowest
    ties = k
    if k < eligible_total:  # else every eligible key is taken: nothing to search
        ready = (usable & (c_lo >= k) & (c_hi < k)).to(tl.int32)  # 1: [lo, hi) brackets the k-th key
        between = c_lo - c_hi
        in_registers = tl.zeros((), tl.int32)
        if GATHER > 0:
            in_registers = ((ready == 1) & (between <= GATHER)).to(tl.int32)
            if in_registers == 1:
                tl.debug_barrier()  # every thread's gathered keys are stored before any is read
                g = tl.arange(0, GATHER)
                x_g = tl.load(scratch + g, mask=g < between, other=float("-inf"), volatile=True)
                t, ties = _bracketed_threshold(scratch, g, between, _eligible_ordered(x_g, INT, NBITS), k - c_hi, lo,
                                               hi, between, tl.zeros((), tl.int32), INT, NBITS, GATHER, True, PROBES)
        if in_registers == 0:
            if ready == 0:
                n_inf, small, large = _finite_range(base, lanes, P, lanes, INT, NBITS, BLOCK, False)
                if k <= n_inf:  # the k largest are +inf keys, the first k of them
                    t = tl.full((), float("inf"), KEY).to(INT, bitcast=True)
                else:  # n_inf < k < eligible: some finite key is the k-th, and large + 1 cannot overflow
                    lo = small
                    hi = large + 1
                    c_lo = eligible_total
                    c_hi = n_inf
                    ready = tl.full((), 1, tl.int32)
            if ready == 1:
                t, ties = _bracketed_threshold(base, lanes, P, lanes, k, lo, hi, c_lo, c_hi, INT, NBITS, BLOCK, False,
                                               PROBES)
    return t, ties, k


@triton.jit
def _histogram_bin(u, NBITS: tl.constexpr, HIST_BITS: tl.constexpr):
    """The bin of ordered images u (``_ordered``) in a histogram of 2^HIST_BITS bins: their top
    HIST_BITS bits, read as an unsigned int (int32), so that the bins keep the keys' order. For
    float32 keys and 12 bits a bin is the sign, the exponent and three mantissa bits (an eighth
    of a binade). With at least the sign and exponent bits (HIST_BITS >= 9 for float32 keys, 12
    for float64) the bin of +inf holds no finite key (its image's low NBITS − HIST_BITS bits
    are 0), only +inf and NaN images; ``_histogram_threshold`` relies on that."""
    return ((u >> (NBITS - HIST_BITS)) + (1 << (HIST_BITS - 1))).to(tl.int32)


@triton.jit
def _histogram_threshold(base, lanes, P, u_all, want, hist, INT: tl.constexpr, NBITS: tl.constexpr,
                         BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr, PROBES: tl.constexpr, HIST_BITS: tl.constexpr,
                         u_tail=None, TAIL: tl.constexpr = 0):
    """``_row_threshold``'s (t, ties_wanted, k) by the interpolation search, from a histogram of
    the row's eligible keys: hist[b] (2^HIST_BITS int32) counts the eligible keys of bin b
    (``_histogram_bin``; the programs that wrote the keys counted them). The histogram gives the
    eligible count, and the bin that holds the k-th largest key is the bracket: lo its lowest
    image, hi the next bin's, with both counts from the histogram. That replaces the counting
    pass for the eligible keys, the pass for the finite range and the passes that narrow the
    whole range to a bin. The bins are scanned in two levels (2^(HIST_BITS // 2) rows of bins,
    then the bins of one row): reductions and short scans, no scan over 2^HIST_BITS lanes."""
    ROWS: tl.constexpr = 1 << (HIST_BITS // 2)
    COLS: tl.constexpr = 1 << (HIST_BITS - HIST_BITS // 2)
    SHIFT: tl.constexpr = NBITS - HIST_BITS
    HALF: tl.constexpr = 1 << (HIST_BITS - 1)
    KEY: tl.constexpr = tl.float32 if NBITS == 32 else tl.float64
    tl.static_assert(SHIFT <= (23 if NBITS == 32 else 52), "the bins must split at +inf: sign and exponent bits "
                     "at least (HIST_BITS >= 9 for float32 keys, 12 for float64)")
    r = tl.arange(0, ROWS)
    c = tl.arange(0, COLS)
    bins = r[:, None] * COLS + c[None, :]
    h = tl.load(hist + bins)  # [ROWS, COLS]: bin r·COLS + c
    per_row = tl.sum(h, axis=1)
    eligible_total = tl.sum(per_row)
    k = tl.minimum(want, eligible_total)
    top = tl.full((), float("inf"), KEY).to(INT, bitcast=True)
    inf_bin = _histogram_bin(top, NBITS, HIST_BITS)
    n_inf = tl.sum(tl.sum(tl.where(bins >= inf_bin, h, 0), axis=1))  # the +inf keys (NaN is not counted)
    t = tl.full((), -(2 ** (NBITS - 1)), INT)
    ties = k
    if k < eligible_total:  # else every eligible key is taken: nothing to search
        if k <= n_inf:  # the k largest are +inf keys (k = 0: none), the first k of them
            t = top
        else:  # n_inf < k < eligible: the k-th key is finite, in a bin below +inf's
            row_ge = eligible_total - tl.cumsum(per_row, axis=0) + per_row  # keys in rows r.. of bins
            r_k = tl.sum((row_ge >= k).to(tl.int32)) - 1  # the last row with >= k keys at or above it
            in_row = tl.sum(tl.where(r[:, None] == r_k, h, 0), axis=0)  # [COLS]: row r_k's bins
            above = tl.sum(tl.where(r == r_k, row_ge - per_row, 0))  # keys in the rows above r_k
            col_ge = above + tl.sum(in_row) - tl.cumsum(in_row, axis=0) + in_row  # keys in bins (r_k, c)..
            c_k = tl.sum((col_ge >= k).to(tl.int32)) - 1
            c_lo = tl.sum(tl.where(c == c_k, col_ge, 0))  # #{u >= lo} >= k
            c_hi = c_lo - tl.sum(tl.where(c == c_k, in_row, 0))  # #{u >= hi} < k
            b = r_k * COLS + c_k
            lo = (b - HALF).to(INT) << SHIFT
            hi = (b + 1 - HALF).to(INT) << SHIFT  # b < inf_bin <= 2^HIST_BITS − 1: no overflow
            t, ties = _bracketed_threshold(base, lanes, P, u_all, k, lo, hi, c_lo, c_hi, INT, NBITS, BLOCK,
                                           ONE_CHUNK, PROBES, u_tail, TAIL)
    return t, ties, k


@triton.jit
def _interpolated_threshold(base, lanes, P, u_all, k, eligible_total, INT: tl.constexpr, NBITS: tl.constexpr,
                            BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr, PROBES: tl.constexpr, u_tail=None,
                            TAIL: tl.constexpr = 0):
    """``_threshold``'s (t, ties_wanted) by interpolation probes, then bisection (module
    docstring), from a bracket of the row's whole finite range."""
    KEY: tl.constexpr = tl.float32 if NBITS == 32 else tl.float64
    lowest = tl.full((), -(2 ** (NBITS - 1)), INT)
    t = lowest
    ties = k
    if k < eligible_total:  # else every eligible key is taken: nothing to search
        n_inf, small, large = _finite_range(base, lanes, P, u_all, INT, NBITS, BLOCK, ONE_CHUNK, u_tail, TAIL)
        if k <= n_inf:  # the k largest are +inf keys (k = 0: none), the first k of them
            t = tl.full((), float("inf"), KEY).to(INT, bitcast=True)
        else:  # n_inf < k < eligible: some finite key is the k-th, and large + 1 cannot overflow
            t, ties = _bracketed_threshold(base, lanes, P, u_all, k, small, large + 1, eligible_total, n_inf, INT,
                                           NBITS, BLOCK, ONE_CHUNK, PROBES, u_tail, TAIL)
    return t, ties


@triton.jit
def _bracketed_threshold(base, lanes, P, u_all, k, lo, hi, c_lo, c_hi, INT: tl.constexpr, NBITS: tl.constexpr,
                         BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr, PROBES: tl.constexpr, u_tail=None,
                         TAIL: tl.constexpr = 0):
    """``_interpolated_threshold``'s search in the bracket [lo, hi) of finite keys' images, with
    #{u >= lo} = c_lo >= k > #{u >= hi} = c_hi. Invariant: lo < hi, #{u >= lo} >= k > #{u >=
    hi} = c_hi. The probe's value is clamped into (lo, hi) as an integer, so any rounding of
    the model only slows it. The model (the line's values and its Illinois counts) is in the
    keys' dtype, float32 for float32 keys: each pass's scalar chain — a division, two products,
    a conversion — is then not a float64 latency chain. On the H200 (TopK step, B = 1, 32/8,
    session 37) that took ~1 µs off the step at 32K–1M against float64 (32K 35.4 → 34.4 µs,
    64K 43.7–44.0 → 42.6–43.1, 128K 49.4–51.8 → 48.8–50.1)."""
    KEY: tl.constexpr = tl.float32 if NBITS == 32 else tl.float64
    kf = k.to(KEY)
    c_lo_model = c_lo.to(KEY)  # the model's counts at the ends (Illinois-weighted)
    c_hi_model = c_hi.to(KEY)
    side = tl.full((), 0, tl.int32)  # which end the last probe moved: 1 lo, −1 hi
    probe = lo
    done = tl.full((), 0, tl.int32)  # 1 once a probe counted exactly k
    i = tl.full((), 0, tl.int32)
    go = hi > lo + 1
    while go:
        # where a line through (lo, c_lo) and (hi − 1, c_hi) crosses k + ½; or the middle
        f = (c_lo_model - kf - 0.5) / (c_lo_model - c_hi_model)
        guess = _value_of(lo, INT, NBITS) * (1.0 - f) + _value_of(hi - 1, INT, NBITS) * f
        middle = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        probe = tl.where(i < PROBES, _ordered(guess, INT, NBITS), middle)
        probe = tl.minimum(tl.maximum(probe, lo + 1), hi - 1)
        c = _count(base, lanes, P, probe, u_all, INT, NBITS, BLOCK, ONE_CHUNK, u_tail, TAIL)
        up = c >= k
        c_f = c.to(KEY)
        # Illinois: an end kept twice in a row has its model count halved toward k + ½
        c_hi_model = tl.where(up, tl.where(side == 1, (c_hi_model + kf + 0.5) * 0.5, c_hi_model), c_f)
        c_lo_model = tl.where(up, c_f, tl.where(side == -1, (c_lo_model + kf + 0.5) * 0.5, c_lo_model))
        c_hi = tl.where(up, c_hi, c)
        lo = tl.where(up, probe, lo)
        hi = tl.where(up, hi, probe)
        side = tl.where(up, 1, -1)
        done = (c == k).to(tl.int32)
        i += 1
        go = (hi > lo + 1) & (done == 0)
    # exactly k keys >= probe: take u > probe − 1, no ties; else the k-th key is lo
    t = tl.where(done == 1, probe - 1, lo)
    ties = tl.where(done == 1, 0, k - c_hi)
    return t, ties
