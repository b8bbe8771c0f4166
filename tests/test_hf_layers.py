"""Per-layer configs in entmaxkv.hf (``dense_layers``, one config per layer) on a tiny float64
Llama: layers below ``dense_layers`` are exactly the Dense path, the others use the selector."""

import dataclasses

import pytest
import torch

import entmaxkv as ekv
from hf_tiny import tiny_llama

hf = pytest.importorskip("entmaxkv.hf", reason="needs the 'models' extra")

LAYERS = 3
# One full page per step (the sink page): on an 80-token prompt (5 pages) the selector drops pages.
TOPK1 = ekv.DecodeConfig(alpha=1.0, selector=ekv.TopK(token_budget=16))


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=1, layers=LAYERS)


def prompt(seed, length, vocab=96):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, length), generator=g)


def attention_outputs(model, ids, feed, config, dense_layers=0):
    """Teacher-forced decode of ``feed`` after prefilling ``ids``; per step, each layer's
    attention output [1, 1, hidden] (o_proj input) and the cache (with DecodeInfos)."""
    _, cache = hf.prefill(model, ids, config, capacity=ids.shape[1] + len(feed), dense_layers=dense_layers)
    for layer in cache.layers:
        layer.record_info = True
    seen = []
    hooks = [block.self_attn.o_proj.register_forward_hook(lambda m, a, o, i=i: seen.append((i, a[0].clone())))
             for i, block in enumerate(model.model.layers)]
    steps = []
    try:
        with torch.no_grad(), hf.attention(model):
            for t in feed:
                seen.clear()
                model(t.view(1, 1), use_cache=True, **{hf.cache_kwarg(model): cache})
                steps.append([out for _, out in sorted(seen, key=lambda x: x[0])])
    finally:
        for h in hooks:
            h.remove()
    return steps, cache


@pytest.mark.parametrize("dense_layers", [1, 2])
def test_dense_layers_are_the_dense_path_and_the_rest_select(model, dense_layers):
    ids, feed = prompt(11, 80), prompt(12, 10)[0]
    dense_cfg = dataclasses.replace(TOPK1, selector=ekv.Dense())
    mixed, cache = attention_outputs(model, ids, feed, TOPK1, dense_layers)
    dense, _ = attention_outputs(model, ids, feed, dense_cfg)
    sparse, _ = attention_outputs(model, ids, feed, TOPK1)
    for step in range(len(feed)):
        for layer in range(dense_layers):  # same inputs, same (dense) attention: bit for bit
            assert torch.equal(mixed[step][layer], dense[step][layer]), (step, layer)
        # the first selecting layer sees the dense layers' (exact) input, so it is the TopK
        # layer fed dense inputs: it differs from the dense run
        assert not torch.allclose(mixed[step][dense_layers], dense[step][dense_layers], rtol=0, atol=1e-6)
    # without dense layers layer 0 already selects and differs from the dense path
    assert any(not torch.allclose(sparse[s][0], dense[s][0], rtol=0, atol=1e-6) for s in range(len(feed)))
    for i, layer in enumerate(cache.layers):
        assert isinstance(layer.config.selector, ekv.Dense if i < dense_layers else ekv.TopK)
        for info in layer.infos:
            live = layer.state.live_page_mask().sum(-1)  # after the last step; every step has >= 6 pages
            read = info.pages_per_kv_head
            if i < dense_layers:
                assert torch.all(info.certified) and torch.all(read >= 6)
            else:
                assert torch.all(read <= 2), read  # the sink page and the newest page
        assert int(live.min()) >= 6


def test_per_layer_sequence_equals_dense_layers(model):
    """config=[Dense, Dense, TopK] decodes exactly like config=TopK with dense_layers=2."""
    ids = prompt(13, 70)
    configs = [dataclasses.replace(TOPK1, selector=ekv.Dense())] * 2 + [TOPK1]
    a, _ = hf.generate(model, ids, configs, max_new_tokens=12, do_sample=False)
    b, _ = hf.generate(model, ids, TOPK1, max_new_tokens=12, do_sample=False, dense_layers=2)
    assert torch.equal(a, b)


def test_all_layers_dense_equals_dense(model):
    ids = prompt(14, 70)
    a, _ = hf.generate(model, ids, TOPK1, max_new_tokens=12, do_sample=False, dense_layers=LAYERS)
    b, _ = hf.generate(model, ids, dataclasses.replace(TOPK1, selector=ekv.Dense()), max_new_tokens=12,
                       do_sample=False)
    assert torch.equal(a, b)


def test_layer_configs_keeps_alpha_scale_backend():
    config = ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(coverage=0.25), scale=0.3, backend="torch")
    out = hf.layer_configs(config, 4, dense_layers=1)
    assert out[0] == dataclasses.replace(config, selector=ekv.Dense())
    assert out[1:] == [config] * 3
    assert hf.layer_configs(config, 4) == [config] * 4


@pytest.mark.parametrize("config, dense_layers, error, match", [
    (TOPK1, 4, ValueError, r"dense_layers must be in \[0, 3\]"),
    (TOPK1, -1, ValueError, r"dense_layers must be in \[0, 3\]"),
    (TOPK1, 1.0, TypeError, "dense_layers must be an int"),
    (TOPK1, True, TypeError, "dense_layers must be an int"),
    ([TOPK1] * 2, 0, ValueError, r"one per layer \(3\), got 2"),
    ([TOPK1, TOPK1, "x"], 0, TypeError, r"config\[2\] must be a DecodeConfig"),
    (1.5, 0, TypeError, "config must be a DecodeConfig"),
])
def test_bad_layer_configs_raise(model, config, dense_layers, error, match):
    with pytest.raises(error, match=match):
        hf.layer_configs(config, LAYERS, dense_layers)
    with pytest.raises(error, match=match):  # the cache checks before anything runs
        hf.EntmaxKVCache(model.config, 32, config, dense_layers=dense_layers)
