"""The code scans' word unpacking (``code_scan.WORD_CODES``, ``_word_tile``: the code bytes
read as int32 words, each code taken out in place) against an independent unpacking of the
bytes in torch, and the scan ops with and without it (the same codes: the same outputs, bit
for bit). Mutations caught: a field's mask or magic off by one position, the join order of
the fields, a missing shift of the top fields (``test_word_tile_equals_torch_unpacking`` on
every byte value); a path choice that reads words where W % 4 != 0 (the fallback test).
"""

import pytest
import torch

from helpers import fresh_seed
from test_kernels_codes import coded_pages, coded_setup

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import entmaxkv.kernels.code_scan as code_scan  # noqa: E402


@triton.jit
def _tile_kernel(codes, out, W, f23, S: tl.constexpr, BW: tl.constexpr, BD: tl.constexpr, BLOCK_P: tl.constexpr,
                 BITS: tl.constexpr, WORDS: tl.constexpr):
    """Writes ``_code_tile`` of the BLOCK_P pages of ``codes`` [BLOCK_P, S, W] to out
    [BLOCK_P, S, BD] (float32 work; the first page masked out: must read as 0)."""
    p = tl.arange(0, BLOCK_P)
    live = p > 0
    tile = code_scan._code_tile(codes, p.to(tl.int64), live, W, S, BW, BLOCK_P, BITS, tl.float32, WORDS, f23)
    tok = tl.arange(0, S)
    d = tl.arange(0, BD)
    tl.store(out + (p[:, None, None] * S + tok[None, :, None]) * BD + d[None, None, :], tile)


def torch_unpack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., W] uint8 -> [..., W·(8 / bits)] float32: channel 2j the low nibble of byte j and
    2j + 1 the high one (4 bits), channel j byte j (8 bits) — the ``keycodes`` layout."""
    c = codes.to(torch.int32)
    if bits == 8:
        return c.float()
    return torch.stack([c & 15, c >> 4], dim=-1).flatten(-2).float()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("width", [4, 8, 12, 64])
@pytest.mark.parametrize("words", [True, False])
def test_word_tile_equals_torch_unpacking(bits, width, words):
    """Every byte value (the top bit set too: the sign of a word's high byte) at every byte
    position of a word, pages of 4 tokens, W not a power of two (12: padded columns)."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    block_p, s = 4, 4
    codes = torch.randint(0, 256, (block_p, s, width), generator=g, dtype=torch.uint8)
    flat = codes.view(-1)
    flat[: min(256, flat.numel())] = torch.arange(min(256, flat.numel()), dtype=torch.uint8)
    bw = triton.next_power_of_2(width)
    bd = 2 * bw if bits == 4 else bw
    out = torch.full((block_p, s, bd), float("nan"))
    _tile_kernel[(1,)](codes, out, width, code_scan.F23, S=s, BW=bw, BD=bd, BLOCK_P=block_p, BITS=bits, WORDS=words)
    want = torch.zeros(block_p, s, bd)
    want[1:, :, : width * (8 // bits)] = torch_unpack(codes[1:], bits)
    assert torch.equal(out, want), (seed, (out - want).abs().max())


@pytest.mark.parametrize("dtype,bits,group,alibi,d", [
    (torch.float16, 4, 2, True, 24), (torch.float32, 8, 3, False, 16), (torch.bfloat16, 4, 4, False, 128),
    (torch.float16, 8, 1, True, 20), (torch.float16, 4, 2, False, 20),  # W = 10: no words (the fallback)
])
def test_scans_with_words_equal_the_byte_form(dtype, bits, group, alibi, d, monkeypatch, poison):
    """``code_bounds`` (ŝ of coded tokens, page_max, ε, the seed) and ``code_candidates`` with
    ``WORD_CODES`` on and off: equal bit for bit (the same codes in the same order). Words are
    a form of the CUDA-core path (``USE_DOT`` off; the tensor-core path reads bytes)."""
    monkeypatch.setattr(code_scan, "USE_DOT", False)
    seed = fresh_seed()
    cache, q, slopes, _ = coded_setup(seed, dtype, bits, group, alibi, d=d)
    args = (q[:, :, 0].contiguous(), cache.k_codes, cache.k_min, cache.k_max, cache.seq_lens, slopes)
    width = cache.k_codes.shape[-1]
    assert code_scan._words(cache.k_codes, torch.float32, d, bits, group) == (width % 4 == 0)
    outs = []
    for words in (True, False):
        monkeypatch.setattr(code_scan, "WORD_CODES", words)
        bounds = code_scan.code_bounds(*args, bits, 0.3, True, cache.k_pages, 2)
        page_max, eps = bounds[:2]
        top = torch.where(coded_pages(cache), page_max, float("-inf")).amax(-1).double()
        tau_low = (0.5 * (top - 0.5)).nan_to_num(neginf=0.0).contiguous()
        cands = code_scan.code_candidates(*args, page_max, eps, tau_low, bits, 0.3, 0.5, 64)
        outs.append((bounds, cands))
    tokens = coded_pages(cache).repeat_interleave(cache.page_size, -1).expand_as(outs[0][0][2])
    (b1, c1), (b0, c0) = outs
    assert torch.equal(b1[2][tokens], b0[2][tokens]), seed
    for i in (0, 1, 3, 4, 5, 6, 7):
        assert torch.equal(b1[i], b0[i]), (seed, i)
    assert torch.equal(c1[1], c0[1]) and torch.equal(c1[2], c0[2]), seed  # counts and page masks
    for i in range(c1[0].shape[0]):
        for j in range(c1[0].shape[1]):
            n = min(int(c1[1][i, j]), 64)
            assert sorted(c1[0][i, j, :n].tolist()) == sorted(c0[0][i, j, :n].tolist()), (seed, i, j)
