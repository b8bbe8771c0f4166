"""``sparse_decode``'s scoring loop with its loads one iteration ahead (``PREFETCH`` 1: K, 2: K
and V) against the loop without (0): the same loads and arithmetic, so the same output and τ
bit for bit — on lists long enough for several iterations a split, ragged lengths, a shuffled
page table, the dense and the listed form, softmax and entmax — and both equal to the float64
reference."""

import random

import pytest
import torch

import entmaxkv as ekv
from helpers import fresh_seed, make_cache

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
from entmaxkv.kernels import sparse_decode as module  # noqa: E402
from entmaxkv.kernels.sparse_decode import TAU_EXACT, sparse_decode  # noqa: E402

ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICES = ["cpu", pytest.param("cuda", marks=ON_GPU)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha,dtype", [(1.0, torch.float32), (1.0, torch.float16), (1.5, torch.float32),
                                         (1.5, torch.bfloat16), (2.0, torch.float64)])
def test_prefetch_gives_the_same_bits(monkeypatch, poison, device, alpha, dtype):
    seed = fresh_seed()
    r = random.Random(seed)
    b, hkv, group, d, s = 2, 2, 4, 32, 16
    lens = [600 + r.randrange(200), 300 + r.randrange(17)]
    cache, _, _ = make_cache(seed, b, hkv, d, s, lens, dtype=dtype, spread=2.0)
    g = torch.Generator().manual_seed(seed + 1)
    q = (torch.randn(b, hkv * group, 1, d, generator=g, dtype=torch.float64) * 2).to(dtype)
    newest = (cache.seq_lens - 1) // s
    pages = torch.full((b, hkv, cache.num_pages), -1, dtype=torch.int32)
    count = torch.zeros(b, hkv, dtype=torch.int32)
    for i in range(b):  # every other full page, in a shuffled order for one KV head
        chosen = torch.arange(0, int(newest[i]), 2, dtype=torch.int32)
        pages[i, 0, : len(chosen)] = chosen
        pages[i, 1, : len(chosen)] = chosen[torch.randperm(len(chosen), generator=g)]
        count[i] = len(chosen)
    # physical pages shuffled, found through the table
    perm = torch.randperm(cache.num_pages, generator=g)
    table = torch.argsort(perm).int().expand(b, -1).contiguous()
    k_phys = cache.k_pages[:, :, perm].contiguous()
    v_phys = cache.v_pages[:, :, perm].contiguous()
    args = [t.to(device) for t in (q[:, :, 0].contiguous(), k_phys, v_phys, table, pages, count, cache.seq_lens)]
    results = {}
    for prefetch in (0, 1, 2):
        monkeypatch.setattr(module, "PREFETCH", prefetch)
        for dense in (False, True):
            results[prefetch, dense] = sparse_decode(*args, None, None, None, None, alpha, 0.3, dense, TAU_EXACT, 0)
    for prefetch in (1, 2):
        for dense in (False, True):
            for got, want in zip(results[prefetch, dense], results[0, dense]):
                assert torch.equal(got, want), (seed, prefetch, dense)
    want, _ = ekv.dense_decode(cache, q, alpha, 0.3)
    out = results[2, True][0].cpu().double()
    err = float((out - want[:, :, 0].double()).abs().max() / want.double().abs().max())
    assert err < {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype, 2e-2), (seed, err)
