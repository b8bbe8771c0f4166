"""(row, chunk)-parallel counting passes over a row of selection keys too long for one
program's registers (``threshold_search``'s streamed rows), for ``quest_select``.

A streamed row's search program reads the whole row for every counting pass, on one SM: in the
1M-token TopK 3% step (65,540 keys a row) its pass that counts at the sampled bracket's ends,
and the one that counts each list chunk at the threshold, took most of its 116 µs (H200,
session 15). Those two passes need no search state, only values the search program's launches
before them stored, so here they run over (row, ``CHUNK``-key chunk) programs:

- ``_bracket_counts_kernel``: a row's #{u >= lo}, #{u >= hi} and eligible keys at a sampled
  bracket [lo, hi) (``threshold_search._sampled_bracket``), by atomic adds to the row's int32
  totals, which the bracket's program zeroed (the fourth total counts the scratch slots taken:
  every key between the ends where the bracket is usable, possibly more than GATHER; nothing
  reads it after this kernel); and, where the bracket is usable, the keys with
  lo <= u < hi copied to the row's scratch of ``GATHER`` keys — each program takes its slots
  with one atomic add, so they land in no particular order (the search counts them, it does not
  need their order), the first ``GATHER`` taken slots only.
- ``_chunk_counts_kernel``: per LIST-key chunk, its keys above the threshold t and its ties
  with t (not summed over the chunks before: the list programs sum those themselves).

Both read the row's length from its bracket row, ``bracket`` [rows, 4] int64: (lo, hi,
usable, n), with keys past n not eligible.
"""

from __future__ import annotations

import triton
import triton.language as tl

from entmaxkv.kernels.pdl import pdl_enter
from entmaxkv.kernels.threshold_search import _eligible_ordered, _ordered, _packed_ge, _unpacked

__all__ = []  # the @triton.jit kernels, launched by quest_select


@triton.jit
def _bracket_counts_kernel(keys, bracket, totals, scratch, P, CHUNK: tl.constexpr, NBITS: tl.constexpr,
                           INT: tl.constexpr, FIELD: tl.constexpr, GATHER: tl.constexpr, PDL: tl.constexpr = False):
    """One chunk's counts at the row's bracket ends added to totals[row] = (#{u >= lo}, #{u >=
    hi}, eligible, scratch slots taken), and its keys in [lo, hi) gathered (module docstring)."""
    pdl_enter(PDL)
    tl.static_assert((1 << FIELD) > CHUNK, "a FIELD-bit field must hold a chunk's count")
    row = tl.program_id(0).to(tl.int64)
    lo = tl.load(bracket + row * 4).to(INT)
    hi = tl.load(bracket + row * 4 + 1).to(INT)
    usable = tl.load(bracket + row * 4 + 2) != 0
    n = tl.load(bracket + row * 4 + 3)
    idx = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    x = tl.load(keys + row * P + idx, mask=idx < n, other=float("-inf"))
    u = _eligible_ordered(x, INT, NBITS)
    lowest_eligible = tl.full((), -(2 ** (NBITS - 1)) + 1, INT)
    c_lo, c_hi, eligible = _unpacked(tl.sum(_packed_ge(u, lo, hi, lowest_eligible, FIELD)), FIELD)
    at = totals + row * 4
    tl.atomic_add(at, c_lo)
    tl.atomic_add(at + 1, c_hi)
    tl.atomic_add(at + 2, eligible)
    if GATHER > 0:
        between = ((u >= lo) & (u < hi) & usable).to(tl.int32)
        count = tl.sum(between)
        if count > 0:
            first = tl.atomic_add(at + 3, count)  # this chunk's slots: first .. first + count − 1
            slot = first + tl.cumsum(between, axis=0) - between
            tl.store(scratch + row * GATHER + slot, x, mask=(between == 1) & (slot < GATHER))


@triton.jit
def _chunk_counts_kernel(keys, bracket, found, taken, P, NLIST, LIST: tl.constexpr, NBITS: tl.constexpr,
                         INT: tl.constexpr, PDL: tl.constexpr = False):
    """taken[row, chunk] = (its eligible keys above the row's threshold t, its ties with t), t
    the first of found[row] = (t, ties wanted)."""
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n = tl.load(bracket + row * 4 + 3)
    t = tl.load(found + row * 2).to(INT)
    idx = chunk * LIST + tl.arange(0, LIST)
    x = tl.load(keys + row * P + idx, mask=idx < n, other=float("-inf"))
    u = _ordered(x, INT, NBITS)
    ok = x > float("-inf")
    at = taken + (row * NLIST + chunk) * 2
    tl.store(at, tl.sum((ok & (u > t)).to(tl.int32)))
    tl.store(at + 1, tl.sum((ok & (u == t)).to(tl.int32)))
