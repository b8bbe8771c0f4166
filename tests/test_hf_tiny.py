"""entmaxkv.hf and entmaxkv.compiled.llama on a tiny random float64 Llama: transformers' own
SDPA path is the oracle for α = 1, and an independent float64 loop for dense causal entmax."""

import pytest
import torch

import entmaxkv as ekv
from hf_tiny import tiny_llama
from naive import naive_entmax

hf = pytest.importorskip("entmaxkv.hf", reason="needs the 'models' extra")
from entmaxkv.compiled import generate, llama_step, params_from_hf  # noqa: E402

DENSE1 = ekv.DecodeConfig(alpha=1.0, selector=ekv.Dense())


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def stock_greedy(model, ids, n, mask=None):
    out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False)
    return out[:, ids.shape[1]:]


def prompt(seed, length, vocab=96):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, length), generator=g)


@pytest.mark.parametrize("length", [5, 16, 37])  # inside a page, a full page, past two page edges
def test_dense_alpha1_matches_stock_sdpa(model, length):
    ids = prompt(length, length)
    expected = stock_greedy(model, ids, 20)
    out, cache = hf.generate(model, ids, DENSE1, max_new_tokens=20, do_sample=False)
    assert torch.equal(out[:, length:], expected)
    assert model.config._attn_implementation == "sdpa"  # restored after the call
    assert [int(s.seq_lens[0]) for s in cache.states()] == [length + 19] * 2


def test_decode_logits_match_stock(model):
    ids = prompt(1, 23)
    kw = dict(max_new_tokens=10, do_sample=False, return_dict_in_generate=True, output_logits=True)
    ref = model.generate(ids, **kw)
    out, _ = hf.generate(model, ids, DENSE1, **kw)
    for a, b in zip(out.logits, ref.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_ragged_left_padded_batch(model):
    """Rows of different lengths, left-padded: each row decodes as it would alone."""
    lens = [9, 21, 16]
    rows = [prompt(10 + i, n)[0] for i, n in enumerate(lens)]
    t = max(lens)
    ids = torch.zeros(len(lens), t, dtype=torch.int64)
    mask = torch.zeros(len(lens), t, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    out, cache = hf.generate(model, ids, DENSE1, max_new_tokens=12, attention_mask=mask, do_sample=False)
    for i, r in enumerate(rows):
        assert torch.equal(out[i, t:], stock_greedy(model, r[None], 12)[0]), f"row {i}"
    assert cache.states()[0].seq_lens.tolist() == [n + 11 for n in lens]


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_prompt_and_decode_attention_agree(model, alpha):
    """Prefill (dense causal entmax) and decode (the paged cache) are the same attention:
    logits of the last prompt token from one prefill equal prefill-all-but-one + one decode step."""
    ids = prompt(3, 35)
    config = ekv.DecodeConfig(alpha=alpha, selector=ekv.Dense())
    full, _ = hf.prefill(model, ids, config, capacity=40)
    _, cache = hf.prefill(model, ids[:, :-1], config, capacity=40)
    with hf.attention(model):
        out = model(ids[:, -1:], use_cache=True, **{hf.cache_kwarg(model): cache})
    torch.testing.assert_close(out.logits[:, -1], full[:, -1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_dense_causal_entmax_vs_naive(alpha):
    g = torch.Generator().manual_seed(int(alpha * 10))
    b, hq, hkv, t, d = 2, 4, 2, 19, 8
    q = torch.randn(b, hq, t, d, generator=g, dtype=torch.float64) * 2
    k = torch.randn(b, hkv, t, d, generator=g, dtype=torch.float64) * 2
    v = torch.randn(b, hkv, t, d, generator=g, dtype=torch.float64)
    pad = 5  # row 1 is left-padded by 5 tokens
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[1, :pad] = False
    mask = keep[:, None, None, :] & torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    out = hf.dense_causal_entmax(q, k, v, mask, alpha, 0.3, chunk=7)  # chunk edges inside the prompt
    for bi in range(b):
        for h in range(hq):
            for i in range(t):
                visible = [j for j in range(i + 1) if keep[bi, j]]
                if not visible:
                    assert torch.all(out[bi, i, h] == 0)
                    continue
                s = (k[bi, h // 2, visible] @ q[bi, h, i]) * 0.3
                expected = naive_entmax(s, alpha) @ v[bi, h // 2, visible]
                torch.testing.assert_close(out[bi, i, h], expected, rtol=0, atol=1e-12)


def test_beams_raise(model):
    ids = prompt(4, 8)
    with pytest.raises(ValueError, match="num_beams"):
        hf.generate(model, ids, DENSE1, max_new_tokens=4, num_beams=2)
    cache = hf.EntmaxKVCache(model.config, 16, DENSE1)
    with hf.attention(model), pytest.raises(NotImplementedError, match="beam search"):
        model.generate(ids, max_new_tokens=4, num_beams=2, do_sample=False, **{hf.cache_kwarg(model): cache})


def test_without_entmaxkv_cache_raises(model):
    with hf.attention(model), pytest.raises(RuntimeError, match="EntmaxKVCache"):
        model(prompt(5, 4))


def test_cache_full_raises(model):
    ids = prompt(6, 10)
    cache = hf.EntmaxKVCache(model.config, 8, DENSE1)
    with hf.attention(model), pytest.raises(ValueError, match="capacity 8"):
        model(ids, use_cache=True, **{hf.cache_kwarg(model): cache})


@pytest.mark.parametrize("selector", [ekv.Dense(), ekv.TopK(token_budget=16)])
def test_functional_step_matches_hf(model, selector):
    """(2) the functional loop reproduces (1) token for token, from (1)'s prefill."""
    ids = prompt(7, 45)
    config = ekv.DecodeConfig(alpha=1.0, selector=selector)
    out, _ = hf.generate(model, ids, config, max_new_tokens=14, do_sample=False)
    logits, cache = hf.prefill(model, ids, config, capacity=ids.shape[1] + 14)
    params, spec = params_from_hf(model)
    step = llama_step(spec, ekv.DecodeConfig(alpha=1.0, selector=selector, scale=spec.head_dim ** -0.5))
    states = cache.states()
    tokens, _ = generate(step, params, states, logits[:, -1].argmax(-1), states[0].seq_lens.clone(), 14)
    assert torch.equal(tokens, out[:, ids.shape[1]:])


def test_cache_options_reach_every_layer():
    """``page_boxes`` / ``key_bits`` through ``hf.generate`` and ``hf.prefill``: every layer's
    cache keeps boxes (each full page's, ``encode_boxes``' bits) and codes, and the functional
    loop from the boxed prefill reproduces the boxed ``generate`` token for token."""
    from entmaxkv.page_box import encode_boxes
    from entmaxkv.state import BOX_FIELDS

    model = tiny_llama(head_dim=32)
    ids = prompt(11, 100)  # 6 full pages: the sink page and one more ranked page a step
    config = ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(token_budget=32))
    out, cache = hf.generate(model, ids, config, max_new_tokens=12, do_sample=False, page_boxes=True, key_bits=4)
    for state in cache.states():
        assert state.page_boxes and state.key_bits == 4
        full = state.full_page_mask()[:, None, :].expand(state.batch, state.num_kv_heads, -1)
        for f, want in zip(BOX_FIELDS, encode_boxes(state.k_min, state.k_max)):
            assert torch.equal(getattr(state, f)[full], want[full]), f
    logits, cache = hf.prefill(model, ids, config, capacity=ids.shape[1] + 12, page_boxes=True)
    params, spec = params_from_hf(model)
    step = llama_step(spec, ekv.DecodeConfig(alpha=1.5, selector=config.selector, scale=spec.head_dim ** -0.5))
    states = cache.states()
    assert all(s.page_boxes for s in states)
    tokens, _ = generate(step, params, states, logits[:, -1].argmax(-1), states[0].seq_lens.clone(), 12)
    assert torch.equal(tokens, out[:, ids.shape[1]:])


def test_cache_options_are_checked_before_the_first_forward():
    """Bad ``key_bits`` / ``page_boxes`` fail when the cache is made (``EntmaxKVCache``,
    ``hf.generate``, ``hf.prefill``), naming the option, not deep inside the first forward."""
    import transformers
    from entmaxkv.hf.cache import EntmaxKVCache

    model = tiny_llama(head_dim=16)
    ids = prompt(11, 20)
    config = ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(token_budget=32))
    for options, error, match in (({"key_bits": 3}, ValueError, "key_bits must be None, 4 or 8"),
                                  ({"key_bits": True}, ValueError, "key_bits"),
                                  ({"page_boxes": 1}, TypeError, "page_boxes must be a bool"),
                                  ({"page_boxes": True}, ValueError, "head_dim=16")):
        with pytest.raises(error, match=match):
            EntmaxKVCache(model.config, 64, config, **options)
        with pytest.raises(error, match=match):
            hf.generate(model, ids, config, max_new_tokens=2, **options)
        with pytest.raises(error, match=match):
            hf.prefill(model, ids, config, capacity=64, **options)
    # the config's own head_dim, not hidden_size / heads: 32 here (64 / 4 = 16 would be refused)
    wide = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    assert EntmaxKVCache(wide, 64, config, page_boxes=True).layers[0] is not None
    with pytest.raises(ValueError, match="head_dim=16"):
        EntmaxKVCache(transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
                      64, config, page_boxes=True)


def test_functional_step_compiles_fullgraph(model):
    """The token step (model + sampling) compiles with fullgraph=True: no host sync, no graph
    break (aot_eager keeps CI fast; the inductor/CUDA-graph path is benchmarks/e2e_speed.py)."""
    ids = prompt(8, 20)
    config = ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(token_budget=16))
    logits, cache = hf.prefill(model, ids, config, capacity=32)
    params, spec = params_from_hf(model)
    step = llama_step(spec, ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(token_budget=16), scale=spec.head_dim ** -0.5))
    first = logits[:, -1].argmax(-1)
    with torch.no_grad():
        eager, _ = generate(step, params, [s.fork() for s in cache.states()], first, cache.states()[0].seq_lens.clone(), 8)
        compiled, _ = generate(step, params, cache.states(), first, cache.states()[0].seq_lens.clone(), 8,
                               mode="compile", compile_kwargs={"backend": "aot_eager"})
    assert torch.equal(eager, compiled)
