"""entmaxkv.compiled.generate: on-device sampling and the decode loop on a tiny random model."""

import pytest
import torch

import entmaxkv as ekv
from entmaxkv.compiled import LlamaSpec, Sampling, generate, llama_step, random_params, sample

SPEC = LlamaSpec(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, hidden=64, vocab=50, rms_eps=1e-5)


def test_greedy_is_argmax():
    logits = torch.randn(7, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(logits, Sampling()), logits.argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampling_follows_softmax(temperature):
    torch.manual_seed(1)
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 40000
    draws = sample(logits.expand(n, -1), Sampling(temperature=temperature))
    freq = torch.bincount(draws, minlength=5).double() / n
    p = torch.softmax(logits.double() / temperature, -1)
    sigma = (p * (1 - p) / n).sqrt()
    assert torch.all((freq - p).abs() < 5 * sigma), (freq, p)


def test_top_k_keeps_the_k_best():
    torch.manual_seed(2)
    logits = torch.randn(2000, 50)
    draws = sample(logits, Sampling(temperature=1.0, top_k=3))
    top3 = logits.topk(3, -1).indices
    assert torch.all((top3 == draws[:, None]).any(-1))
    assert len(set(draws.tolist())) > 3  # not collapsed onto one token per row


def prefilled(batch, lens, dtype=torch.float32, device="cpu", extra=16):
    g = torch.Generator(device=device).manual_seed(3)
    caches = []
    for _ in range(SPEC.num_layers):
        cache = ekv.PagedKVCache.empty(batch=batch, num_kv_heads=2, head_dim=16, capacity=max(lens) + extra,
                                       dtype=dtype, device=device)
        k = torch.randn(batch, 2, max(lens), 16, generator=g, device=device).to(dtype)
        v = torch.randn(batch, 2, max(lens), 16, generator=g, device=device).to(dtype)  # seeded too
        caches.append(ekv.prefill(cache, k, v, lens))
    return caches


def test_eos_rows_keep_emitting_eos():
    params = random_params(SPEC, 96, dtype=torch.float32)
    step = llama_step(SPEC, ekv.DecodeConfig(alpha=1.5))
    caches = prefilled(2, [20, 33])
    pos = caches[0].seq_lens.clone()
    free, _ = generate(step, params, [c.fork() for c in caches], torch.tensor([4, 9]), pos, 6)
    eos = int(free[0, 2])  # make row 0's third token the EOS
    tokens, _ = generate(step, params, caches, torch.tensor([4, 9]), pos, 6, eos_id=eos)
    assert torch.equal(tokens[0, :3], free[0, :3]) and torch.all(tokens[0, 3:] == eos)
    stop = next((i for i in range(6) if free[1, i] == eos), 6)
    assert torch.equal(tokens[1, :stop + 1], free[1, :stop + 1])


def test_bad_arguments():
    params = random_params(SPEC, 96, dtype=torch.float32)
    step = llama_step(SPEC, ekv.DecodeConfig(alpha=1.5))
    caches = prefilled(1, [10])
    with pytest.raises(ValueError, match="mode"):
        generate(step, params, caches, torch.tensor([1]), torch.tensor([10]), 3, mode="fast")
    with pytest.raises(ValueError, match=r"\[B\]"):
        generate(step, params, caches, torch.tensor([[1]]), torch.tensor([10]), 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (the lead runs this)")
@pytest.mark.parametrize("selector", [ekv.Dense(), ekv.TopK(coverage=0.25)])
def test_cuda_graph_generation_equals_eager(selector):
    """The captured loop (inductor, one CUDA graph per token) gives eager's greedy tokens, and
    replays never sync the host."""
    params = random_params(SPEC, 96, dtype=torch.float32, device="cuda")
    step = llama_step(SPEC, ekv.DecodeConfig(alpha=1.5, selector=selector))
    lens = [40, 77]
    first = torch.tensor([3, 5], device="cuda")
    eager, _ = generate(step, params, prefilled(2, lens, device="cuda", extra=40), first,
                        torch.tensor(lens, device="cuda"), 24)
    caches = prefilled(2, lens, device="cuda", extra=40)
    graphed, caches = generate(step, params, caches, first, torch.tensor(lens, device="cuda"), 24, mode="cuda_graph")
    assert torch.equal(graphed, eager)
    assert caches[0].seq_lens.tolist() == [n + 23 for n in lens]
