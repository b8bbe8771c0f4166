"""Selectors on a real model: SmolLM2-135M-Instruct (30 layers, 9 query / 3 KV heads) on real
English text (Python's language reference, ``pydoc_data.topics``).

    python benchmarks/real_model.py                         # all parts, CPU (tens of minutes)
    python benchmarks/real_model.py --parts fidelity --contexts 2048 4096 8192
    python benchmarks/real_model.py --report                # md + png from the saved json

Parts (each writes its section of benchmarks/results/real-model.json):
  fidelity  One forward over the text with transformers' SDPA captures every layer's post-RoPE
            q/k/v; the last position becomes one decode step per layer over the preceding
            tokens (float64 cache), for every selector and α in {1, 1.5, 2}, measured against
            dense attention with ``entmaxkv.diagnostics.diagnose``: cosine, relative error,
            pages read, certified share, dropped-mass bound vs. the true dropped mass, support
            size per layer. 270 heads per (context, α, selector).
  lm        α = 1, teacher-forced on held-out text (a section not in the context): each new
            token is decoded through the functional step (``entmaxkv.compiled.llama``) with TopK,
            against transformers' SDPA over the same tokens: top-1 (greedy) agreement and
            perplexity change.
  passkey   A 5-digit pass key hidden at several depths of the text; α = 1 greedy answer with
            TopK at several budgets and with SDPA.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import entmaxkv as ekv
from entmaxkv.diagnostics import diagnose

RESULTS = Path(__file__).resolve().parent / "results"
HELD_OUT = "try"  # the lm part's held-out section; never part of a context
SELECTORS = {
    "TopK 6.25%": ekv.TopK(coverage=0.0625),
    "TopK 12.5%": ekv.TopK(coverage=0.125),
    "TopK 25%": ekv.TopK(coverage=0.25),
    "TopK 12.5% recent 4": ekv.TopK(coverage=0.125, recent_pages=4),
    "Gaussian exact": ekv.Gaussian(tau_mode="exact"),
    "Gaussian fixed": ekv.Gaussian(tau_mode="fixed"),
    "Gaussian corrected": ekv.Gaussian(tau_mode="corrected"),
    "Exact": ekv.Exact(),
}


def corpus(tok, tokens: int) -> torch.Tensor:
    """[1, tokens] ids: language-reference sections in sorted order, without the held-out one."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[name] for name in sorted(topics) if name != HELD_OUT)
    ids = tok(text, return_tensors="pt").input_ids
    if ids.shape[1] < tokens:
        raise ValueError(f"the corpus has {ids.shape[1]} tokens, fewer than {tokens}")
    return ids[:, :tokens]


def capture(model, ids) -> list[tuple]:
    """Per layer (q [1, 9, T, 64], k, v [1, 3, T, 64]) after RoPE, from one SDPA forward."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    captured = []

    def record(module, query, key, value, attention_mask, **kwargs):
        captured.append((query[:, :, -1:].detach().clone(), key.detach().clone(), value.detach().clone()))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("entmaxkv_capture", record)
    model.set_attn_implementation("entmaxkv_capture")
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        model.set_attn_implementation("sdpa")
    return captured


def fidelity(model, tok, contexts: list[int], alphas: list[float], names: list[str] | None) -> list[dict]:
    rows = []
    for context in contexts:
        t0 = time.time()
        layers = capture(model, corpus(tok, context))
        for alpha in alphas:
            for name, selector in {"Dense": ekv.Dense(), **SELECTORS}.items():
                if alpha == 1.0 and not isinstance(selector, (ekv.TopK, ekv.Dense)):
                    continue  # Gaussian and Exact are entmax-only
                if names is not None and name not in names and name != "Dense":
                    continue
                heads = []
                for li, (q, k, v) in enumerate(layers):
                    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=3, head_dim=64, capacity=context,
                                                   dtype=torch.float64)
                    cache = ekv.prefill(cache, k[:, :, :-1].double(), v[:, :, :-1].double(), [context - 1])
                    config = ekv.DecodeConfig(alpha=alpha, selector=selector, scale=0.125)
                    _, _, d = diagnose(cache, q.double(), k[:, :, -1:].double(), v[:, :, -1:].double(), config)
                    for h in range(9):
                        heads.append(dict(layer=li, head=h, cosine=float(d.cosine[0, h]),
                                          rel=float(d.relative_error[0, h]),
                                          pages=float(d.num_pages[0, h] / d.total_pages[0, h]),
                                          certified=bool(d.certified[0, h]), recall=float(d.support_recall[0, h]),
                                          true_dropped=float(d.true_dropped_mass[0, h]),
                                          bound=float(d.dropped_mass_bound[0, h])))
                if name == "Dense" and alpha > 1:  # support size per layer, from the dense weights
                    for li, (q, k, _) in enumerate(layers):
                        s = torch.einsum("bhgd,bhnd->bhgn", q.double().view(1, 3, 3, 64), k.double()) * 0.125
                        support = (ekv.entmax(s, alpha=alpha) > 0).sum(-1).flatten()
                        for h in range(9):
                            heads[li * 9 + h]["support"] = int(support[h])
                rows.append(dict(context=context, alpha=alpha, selector=name, heads=heads))
                print(summary_line(rows[-1]), flush=True)
        print(f"context {context}: {time.time() - t0:.0f} s", flush=True)
    return rows


def summary(row: dict) -> dict:
    h = row["heads"]
    cos = sorted(x["cosine"] for x in h)
    return dict(median_cos=statistics.median(cos), p10_cos=cos[len(cos) // 10], worst_cos=cos[0],
                median_rel=statistics.median(x["rel"] for x in h), pages=statistics.mean(x["pages"] for x in h),
                certified=statistics.mean(x["certified"] for x in h),
                bound_ok=all(x["bound"] >= x["true_dropped"] - 1e-12 for x in h),
                median_bound=statistics.median(x["bound"] for x in h),
                median_true=statistics.median(x["true_dropped"] for x in h),
                support_kept=sum(x["recall"] >= 1.0 for x in h))


def summary_line(row: dict) -> str:
    s = summary(row)
    return (f"{row['context']:>5} a={row['alpha']:<3} {row['selector']:<19} cos med {s['median_cos']:.5f} "
            f"p10 {s['p10_cos']:.4f} worst {s['worst_cos']:.3f}  rel med {s['median_rel']:.2e}  "
            f"pages {s['pages']:.1%}  certified {s['certified']:.0%}  support kept {s['support_kept']}/270  "
            f"bound med {s['median_bound']:.2e} true med {s['median_true']:.2e} bound>=true {s['bound_ok']}")


def teacher_forced(model, tok, context: int, new: int, coverages: list[float]) -> list[dict]:
    """α = 1: decode held-out tokens one at a time through the functional step with TopK."""
    from pydoc_data.topics import topics

    from entmaxkv import hf
    from entmaxkv.compiled import llama_step, params_from_hf

    ctx = corpus(tok, context)
    held = tok(topics[HELD_OUT], return_tensors="pt").input_ids[:, : new + 1]
    ids = torch.cat([ctx, held], dim=1)
    with torch.no_grad():
        dense_logits = model(ids).logits[0, context - 1: context + new].double()  # predicts held[0..new]
    target = held[0, : new + 1]
    rows = [dict(selector="SDPA (dense)", agreement=1.0,
                 nll=float(torch.nn.functional.cross_entropy(dense_logits, target)))]
    params, spec = params_from_hf(model)
    for cov in coverages:
        config = ekv.DecodeConfig(alpha=1.0, selector=ekv.TopK(coverage=cov), scale=0.125)
        logits0, cache = hf.prefill(model, ctx, config, capacity=context + new + 1)
        step = llama_step(spec, config)
        caches, pos = cache.states(), cache.states()[0].seq_lens.clone()
        logits = [logits0[0, -1].double()]
        with torch.no_grad():
            for i in range(new):
                caches, lg = step(params, caches, held[:, i], pos)
                pos = pos + 1
                logits.append(lg[0].double())
        lg = torch.stack(logits)
        rows.append(dict(selector=f"TopK {cov:.2%}",
                         agreement=float((lg.argmax(-1) == dense_logits.argmax(-1)).double().mean()),
                         nll=float(torch.nn.functional.cross_entropy(lg, target))))
        print(rows[-1], flush=True)
    for r in rows:
        r.update(context=context, tokens=new + 1, ppl=math.exp(r["nll"]))
    return rows


def passkey(model, tok, context: int, depths: list[float], coverages: list[float],
            recent: list[int] = (0,)) -> list[dict]:
    from entmaxkv import hf

    key = "73914"
    filler = tok.decode(corpus(tok, context)[0])
    rows = []
    for depth in depths:
        cut = int(len(filler) * depth)
        text = filler[:cut] + f"\nThe pass key is {key}. Remember it: the pass key is {key}.\n" + filler[cut:]
        msg = [{"role": "user", "content": text + "\n\nWhat is the pass key? Answer with the number only."}]
        ids = tok.apply_chat_template(msg, add_generation_prompt=True, return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        with torch.no_grad():
            ref = model.generate(ids, max_new_tokens=10, do_sample=False)
        answers = {"SDPA (dense)": tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)}
        for cov in coverages:
            for r in recent:
                config = ekv.DecodeConfig(alpha=1.0, selector=ekv.TopK(coverage=cov, recent_pages=r))
                out, _ = hf.generate(model, ids, config, max_new_tokens=10, do_sample=False)
                name = f"TopK {cov:.2%}" + (f" recent {r}" if r else "")
                answers[name] = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        for name, answer in answers.items():
            rows.append(dict(context=ids.shape[1], depth=depth, selector=name, answer=answer.strip(),
                             found=key in answer))
        print(rows[-len(answers):], flush=True)
    return rows


def report(data: dict) -> None:
    """real-model.md and the plots from the saved results."""
    lines = [f"# Selectors on a real model (SmolLM2-135M-Instruct), {data['meta']['date']}", "",
             "Commands: " + ", ".join(f"`{c}`" for c in data.get("commands", [data["meta"]["command"]]))
             + f" — torch {data['meta']['torch']}, transformers "
             f"{data['meta']['transformers']}, {data['meta']['machine']}. Made by `benchmarks/real_model.py`; "
             "raw numbers in `real-model.json`.", "",
             "The Gaussian rows (2K) predate issue 7's fix (a forced sink page and the outlier rule): they drop "
             "token 0 on heads whose mass sits there. Post-fix Gaussian on SmolLM2 at 4K: "
             "`gaussian-issue7-2026-11-28.md`.", ""]
    if "fidelity" in data:
        lines += ["## One decode step per layer, all 270 heads (last position of the text, float64 cache)", "",
                  "| context | α | selector | cosine median / p10 / worst | rel. error median | pages read | "
                  "certified | support kept (of 270) | dropped mass: bound median / true median | bound ≥ true |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        order = ["Dense", *SELECTORS]
        for row in sorted(data["fidelity"], key=lambda r: (r["context"], r["alpha"], order.index(r["selector"]))):
            s = summary(row)
            lines.append(f"| {row['context']} | {row['alpha']} | {row['selector']} | {s['median_cos']:.5f} / "
                         f"{s['p10_cos']:.4f} / {s['worst_cos']:.3f} | {s['median_rel']:.2e} | {s['pages']:.1%} | "
                         f"{s['certified']:.0%} | {s['support_kept']} | {s['median_bound']:.2e} / "
                         f"{s['median_true']:.2e} | {'yes' if s['bound_ok'] else 'NO'} |")
        lines += [""]
    agreement = RESULTS / "real-model-agreement.json"
    if agreement.exists():  # made by benchmarks/real_model_agreement.py
        from real_model_agreement import report as agreement_report

        lines += agreement_report(json.loads(agreement.read_text()))
    if "lm" in data:
        lines += [f"## α = 1, teacher-forced held-out text ({data['lm'][0]['tokens']} tokens; the agreement section "
                  "above is the longer measure)",
                  "",
                  "| context | tokens | selector | top-1 agreement with dense | perplexity |", "|---|---|---|---|---|"]
        for r in data["lm"]:
            lines.append(f"| {r['context']} | {r['tokens']} | {r['selector']} | {r['agreement']:.1%} | {r['ppl']:.3f} |")
        lines += [""]
    if "passkey" in data:
        lines += ["## Pass key retrieval, α = 1, greedy", "", "| context | depth | selector | answer | found |",
                  "|---|---|---|---|---|"]
        for r in sorted(data["passkey"], key=lambda r: (r["depth"], r["selector"] != "SDPA (dense)", r["selector"])):
            lines.append(f"| {r['context']} | {r['depth']:.0%} | {r['selector']} | `{r['answer'][:40]}` | "
                         f"{'yes' if r['found'] else 'no'} |")
        lines += [""]
    lines += data.get("notes", [])
    (RESULTS / "real-model.md").write_text("\n".join(lines) + "\n")
    plots(data)


def plots(data: dict) -> None:
    if "fidelity" not in data:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = sorted({r["context"] for r in data["fidelity"]})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, alpha in zip(axes, (1.0, 1.5, 2.0)):
        for row in data["fidelity"]:
            if row["alpha"] != alpha or row["selector"] == "Dense":
                continue
            s = summary(row)
            marker = "o^s"[contexts.index(row["context"]) % 3]  # one marker per context, one colour per selector
            mean_rel = statistics.mean(h["rel"] for h in row["heads"])
            ax.scatter(s["pages"], max(mean_rel, 1e-6), marker=marker, color=f"C{list(SELECTORS).index(row['selector'])}",
                       label=f"{row['selector']} ({row['context']})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"α = {alpha}")
        ax.set_xlabel("share of pages read")
    axes[0].set_ylabel("mean relative error over 270 heads (floor 1e-6)")
    for ax in axes:
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(RESULTS / "real-model-error-vs-pages.png", dpi=120)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in data["fidelity"]:
        if row["selector"] != "Dense" or row["alpha"] == 1.0 or row["context"] != contexts[-1]:
            continue
        per_layer = [statistics.median(h["support"] for h in row["heads"] if h["layer"] == li) for li in range(30)]
        ax.plot(range(30), per_layer, marker="o", label=f"α = {row['alpha']}, median head")
    ax.set_xlabel("layer")
    ax.set_ylabel("entmax support (tokens)")
    ax.set_yscale("log")
    ax.set_title(f"Support size per layer, {contexts[-1]}-token context")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "real-model-support-per-layer.png", dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["fidelity", "lm", "passkey"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--selectors", nargs="+", default=None, help="names as in SELECTORS (default: all)")
    parser.add_argument("--lm-context", type=int, default=2048)
    parser.add_argument("--lm-tokens", type=int, default=64)
    parser.add_argument("--lm-coverages", type=float, nargs="+", default=[0.0625, 0.125, 0.25],
                        help="TopK coverages; 1.0 (every page) checks the harness against SDPA")
    parser.add_argument("--passkey-context", type=int, default=2048)
    parser.add_argument("--depths", type=float, nargs="+", default=[0.25, 0.75])
    parser.add_argument("--passkey-coverages", type=float, nargs="+", default=[0.0625, 0.125, 0.25])
    parser.add_argument("--passkey-recent", type=int, nargs="+", default=[0],
                        help="TopK recent_pages values to try at each coverage")
    parser.add_argument("--report", action="store_true", help="only rebuild md and png from the json")
    parser.add_argument("--json", default=str(RESULTS / "real-model.json"), help="results file (parts merge into it)")
    parser.add_argument("--merge", nargs="*", default=[], help="with --report: add the parts of these files")
    args = parser.parse_args(argv)
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.exists() else {}
    for extra in args.merge:
        more = json.loads(Path(extra).read_text())
        data.setdefault("commands", [data.get("meta", {}).get("command")]).append(more["meta"]["command"])
        for key, value in more.items():
            if key == "fidelity" and key in data:  # the other file's rows replace rows of the same kind
                done = {(r["context"], r["alpha"], r["selector"]) for r in value}
                data[key] = [r for r in data[key] if (r["context"], r["alpha"], r["selector"]) not in done] + value
            elif key in ("lm", "passkey") and key in data:
                data[key] = data[key] + value  # rows from another run of the same part
            elif key not in ("meta", "commands"):
                data[key] = value
    if not args.report:
        import transformers

        from entmaxkv import hf

        model, tok = hf.load_smollm2()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python benchmarks/real_model.py " + " ".join(argv or sys.argv[1:])
        if "meta" in data:
            data.setdefault("commands", [data["meta"]["command"]]).append(command)
        data["meta"] = dict(date=stamp, command=command,
                            torch=torch.__version__, transformers=transformers.__version__,
                            machine=f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
        for part in args.parts:
            if part == "fidelity":
                new = fidelity(model, tok, args.contexts, args.alphas, args.selectors)
                done = {(r["context"], r["alpha"], r["selector"]) for r in new}
                data["fidelity"] = [r for r in data.get("fidelity", [])
                                    if (r["context"], r["alpha"], r["selector"]) not in done] + new
            elif part == "lm":
                data["lm"] = teacher_forced(model, tok, args.lm_context, args.lm_tokens, args.lm_coverages)
            elif part == "passkey":
                new = passkey(model, tok, args.passkey_context, args.depths, args.passkey_coverages,
                              args.passkey_recent)
                done = {(r["depth"], r["selector"]) for r in new}  # rerun rows replace old ones
                data["passkey"] = [r for r in data.get("passkey", [])
                                   if (r["depth"], r["selector"]) not in done] + new
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
    if args.merge:
        path.write_text(json.dumps(data))
    report(data)


if __name__ == "__main__":
    main()
