"""``code_bounds``' seed launch (``_seed_kernel``) run alone on crafted page bounds.

``test_kernels_codes`` checks the seed on page_max − ε of real codes: random float values,
so float32 ties never happen, and its few pages fit in one round of the [G, ROUNDS, K] tile.
Here the kernel reads page_max and ε built to have what those cannot: several rounds
(ROUNDS 1 and 2 on up to 8 pages a class), exact ties and float64 values that differ but
round to the same float32 (the seed compares as float32, ties to the lower page), classes
with no coded page, and rows with no coded page at all. Oracle: ``class_seed`` (sets of
pages per row, each listed once, −1 padded, and the count). page_max and ε carry float64
parts below float32's resolution, so page_max − ε must be rounded to float32 once, after the
difference (rounding each term first changes some near-ties: caught in about 2 runs of 3).
"""

import pytest
import torch

from helpers import fresh_seed

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import triton.language as tl  # noqa: E402

from entmaxkv.exact_codes import class_seed  # noqa: E402
from entmaxkv.kernels.code_scan import _seed_kernel  # noqa: E402


def crafted_bounds(seed: int, b: int, hkv: int, g: int, p: int, s: int, work: torch.dtype):
    """page_max, ε [B, Hkv, G, P] and seq_lens [B] as pass 1 leaves them (−inf / 0 past the
    coded pages), with values drawn from a few levels so that ties are common, and in float64
    nudges below float32's resolution (distinct in float64, equal as float32)."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.tensor([1, 2 + s, p * s + 1, int(torch.randint(2, p * s + 2, (1,), generator=gen))][:b])
    coded = (lens - 1).clamp(min=0) // s  # [B]
    level = torch.randint(0, 3, (b, hkv, g, p), generator=gen).double()
    page_max = level + 0.5
    if work == torch.float64:  # below float32's rounding of ~0.5..2.5: equal as float32
        page_max = page_max + torch.randint(0, 8, (b, hkv, g, p), generator=gen).double() * 2.0 ** -26
    eps = torch.where(torch.rand((b, hkv, g, p), generator=gen) < 0.5, 0.25, 0.0).double()
    if work == torch.float64:  # ε off float32's grid: page_max − ε must be rounded once, not each term
        eps = eps + torch.randint(0, 8, (b, hkv, g, p), generator=gen).double() * 2.0 ** -26
    dead = torch.arange(p)[None, None, None, :] >= coded[:, None, None, None]
    page_max = torch.where(dead, float("-inf"), page_max).to(work)
    eps = torch.where(dead, 0.0, eps).to(work)
    return page_max.contiguous(), eps.contiguous(), lens, coded


@pytest.mark.parametrize("rounds", [1, 2])
@pytest.mark.parametrize("work,group,slots", [(torch.float64, 2, 3), (torch.float32, 3, 4), (torch.float64, 1, 1)])
def test_seed_kernel_equals_class_seed_on_ties_and_many_rounds(work, group, slots, rounds):
    seed = fresh_seed()
    for trial in range(4):  # fresh draws: float32 near-ties decide a class only now and then
        check_seed(seed + 7 * trial, work, group, slots, rounds)


def check_seed(seed, work, group, slots, rounds):
    b, hkv, p, s, d = 4, 2, 23, 2, 4
    page_max, eps, lens, coded = crafted_bounds(seed, b, hkv, group, p, s, work)
    gen = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(b, hkv * group, d, generator=gen, dtype=work)
    k_min = -torch.rand(b, hkv, p, d, generator=gen, dtype=work)
    k_max = torch.rand(b, hkv, p, d, generator=gen, dtype=work)
    scale_t = torch.full((1,), 0.5, dtype=torch.float64)
    pages = torch.full((b, hkv, group * slots), -7, dtype=torch.int32)
    count = torch.full((b, hkv), -7, dtype=torch.int32)
    mag = torch.full((b, hkv, group), float("nan"), dtype=work)
    gp, kp = 1 << (group - 1).bit_length(), 1 << (slots - 1).bit_length()
    _seed_kernel[(b * hkv,)](
        q, k_min, k_max, lens, scale_t, page_max, eps, pages, count, mag, 0.5, hkv, p, d,
        S=s, G=group, BD=d, WORK=tl.float64 if work == torch.float64 else tl.float32, SLOTS=slots, GP=gp, KP=kp,
        ROUNDS=rounds,
    )
    want = class_seed(page_max - eps, slots)
    for i in range(b):
        for j in range(hkv):
            n = int(count[i, j])
            listed = pages[i, j, :n].tolist()
            expect = set(x for x in want[i, j].tolist() if x >= 0)
            assert len(listed) == len(set(listed)), (seed, i, j, listed)
            assert set(listed) == expect, (seed, i, j, int(coded[i]), sorted(listed), sorted(expect))
            assert bool((pages[i, j, n:] == -1).all()), (seed, i, j)
