"""A tiny random transformers Llama built offline (no weights to download), for fast exact tests."""

import torch

transformers = __import__("pytest").importorskip("transformers", reason="needs the 'models' extra")


def tiny_llama(seed: int = 0, dtype=torch.float64, layers: int = 2, head_dim: int = 16):
    """2 layers, 4 query / 2 KV heads, head_dim 16, vocab 96; weights with std 0.2 so logits
    are far from ties; float64 so batched and single-row runs agree to ~1e-15."""
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=4 * head_dim, intermediate_size=128,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=1024, initializer_range=0.2,
                                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                                      bos_token_id=2)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(dtype).eval()
    model.set_attn_implementation("sdpa")
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # fixed-length generations: every token compared
    return model
