"""Fidelity of every selector against dense entmax on structured synthetic data.

    python benchmarks/fidelity.py                      # defaults below, CPU, ~2 minutes
    python benchmarks/fidelity.py --context 8192 --steps 16

For α in {1, 1.5, 2} and each selector (top-k at 6.25 / 12.5 / 25 / 50% coverage, Gaussian in
its three τ modes, Exact uncapped and capped): L2 and relative error, cosine similarity vs.
dense, support recall, fraction of pages attended, the dropped-mass bound vs. the true dropped
mass, and how often the step was certified. Also prints the structure of the data (support
sizes, pages holding the support). Writes JSON and Markdown under benchmarks/results/.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

import entmaxkv as ekv
from entmaxkv.diagnostics import diagnose
from entmaxkv.synthetic import SyntheticStream

RESULTS = Path(__file__).resolve().parent / "results"


def selectors(alpha: float) -> list[tuple[str, ekv.Selector]]:
    chosen = [(f"TopK {c:.2%}", ekv.TopK(coverage=c)) for c in (0.0625, 0.125, 0.25, 0.5)]
    if alpha > 1:
        chosen += [(f"Gaussian {m}", ekv.Gaussian(tau_mode=m)) for m in ("exact", "fixed", "corrected")]
        chosen += [("Exact", ekv.Exact()), ("Exact max 12.5%", None)]
    return chosen


def run_one(alpha, name, selector, args, seed) -> list[dict]:
    stream = SyntheticStream(batch=1, num_kv_heads=args.kv_heads, group=args.group, head_dim=args.head_dim,
                             seed=seed)
    cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=args.kv_heads, head_dim=args.head_dim,
                                   capacity=args.context + args.steps, dtype=torch.float32)
    k, v = stream.prompt(args.context)
    cache = ekv.prefill(cache, k, v, [args.context])
    if selector is None:  # capped Exact: 12.5% of the pages
        selector = ekv.Exact(max_pages=args.context // cache.page_size // 8)
    config = ekv.DecodeConfig(alpha=alpha, selector=selector)
    rows = []
    for _ in range(args.steps):
        q, k_new, v_new = stream.step()
        cache, _, d = diagnose(cache, q, k_new, v_new, config)
        rows.append(d)
    return rows


def summarise(rows, gaussian: bool) -> dict:
    def cat(field):
        return torch.cat([getattr(r, field).flatten().double() for r in rows])

    bound, true = cat("dropped_mass_bound"), cat("true_dropped_mass")
    out = dict(
        l2_error=cat("l2_error").mean().item(),
        relative_error=cat("relative_error").mean().item(),
        cosine_mean=cat("cosine").mean().item(),
        cosine_min=cat("cosine").min().item(),
        support_recall=cat("support_recall").mean().item(),
        heads_fully_covered=(cat("support_recall") == 1).double().mean().item(),
        pages_fraction=(cat("num_pages") / cat("total_pages")).mean().item(),
        true_dropped_mass=true.mean().item(),
        dropped_mass_bound_median=bound.median().item(),
        bound_holds=(true <= bound + 1e-12).double().mean().item(),
        certified=cat("certified").double().mean().item(),
    )
    if gaussian:
        out["tau_hat_minus_true_median"] = (cat("tau_hat") - cat("tau_true")).median().item()
    return out


def structure(args) -> dict:
    """Support sizes of dense entmax on this data: what selection has to find."""
    from entmaxkv.reference import default_scale, token_scores

    found = {}
    for alpha in (1.5, 2.0):
        tokens, pages = [], []
        for seed in range(args.seeds):
            stream = SyntheticStream(batch=1, num_kv_heads=args.kv_heads, group=args.group,
                                     head_dim=args.head_dim, seed=seed)
            cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=args.kv_heads, head_dim=args.head_dim,
                                           capacity=args.context + args.steps, dtype=torch.float32)
            k, v = stream.prompt(args.context)
            cache = ekv.prefill(cache, k, v, [args.context])
            for _ in range(args.steps):
                q, k_new, v_new = stream.step()
                cache, _ = ekv.decode_step(cache, q, k_new, v_new)
                p = ekv.entmax(token_scores(cache, q, default_scale(args.head_dim)).double(), alpha=alpha)
                tokens += (p > 0).sum(-1).flatten().tolist()
                pages += (p > 0).reshape(*p.shape[:3], -1, cache.page_size).any(-1).sum(-1).flatten().tolist()

        def q90(x):
            return sorted(x)[int(0.9 * (len(x) - 1))]

        found[str(alpha)] = dict(support_tokens=[statistics.median(tokens), q90(tokens), max(tokens)],
                                 support_pages=[statistics.median(pages), q90(pages), max(pages)])
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--name", default="fidelity")
    args = parser.parse_args(argv)

    results = []
    for alpha in (1.0, 1.5, 2.0):
        for name, selector in selectors(alpha):
            rows = [r for seed in range(args.seeds) for r in run_one(alpha, name, selector, args, seed)]
            results.append(dict(alpha=alpha, selector=name, **summarise(rows, isinstance(selector, ekv.Gaussian))))
            print(f"  done alpha={alpha} {name}", file=sys.stderr)

    meta = dict(
        date=datetime.date.today().isoformat(),
        command="python benchmarks/fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        device="CPU", torch=torch.__version__, python=platform.python_version(),
        data=f"SyntheticStream defaults, context {args.context}, {args.steps} decode steps x {args.seeds} seeds, "
             f"B=1, Hkv={args.kv_heads}, Hq={args.kv_heads * args.group}, D={args.head_dim}, page 16, float32",
    )
    found = structure(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(dict(meta=meta, structure=found, results=results), indent=1))
    table = render(meta, found, results)
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)


def render(meta: dict, found: dict, results: list[dict]) -> str:
    lines = [f"# Selector fidelity ({meta['date']})", "",
             f"Command: `{meta['command'].strip()}`  ", f"Machine: {meta['device']}, torch {meta['torch']}, "
             f"Python {meta['python']}  ", f"Data: {meta['data']}", "",
             "Dense entmax support on this data (median / p90 / max): " + "; ".join(
                 f"α = {a}: {v['support_tokens']} tokens in {v['support_pages']} pages" for a, v in found.items()),
             "", "| α | selector | pages read | L2 err | rel err | cos (mean / min) | support recall | heads fully "
             "covered | true dropped mass | bound (median) | bound holds | certified | τ̂ − τ (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        tau = f"{r['tau_hat_minus_true_median']:+.3f}" if "tau_hat_minus_true_median" in r else "—"
        # softmax has no zeros: every token is in the support, so recall is just pages read
        recall = "—" if r["alpha"] == 1.0 else f"{r['support_recall']:.3f}"
        covered = "—" if r["alpha"] == 1.0 else f"{r['heads_fully_covered']:.0%}"
        lines.append(
            f"| {r['alpha']} | {r['selector']} | {r['pages_fraction']:.1%} | {r['l2_error']:.3f} | "
            f"{r['relative_error']:.3f} | {r['cosine_mean']:.4f} / {r['cosine_min']:.3f} | {recall} | "
            f"{covered} | {r['true_dropped_mass']:.2e} | {r['dropped_mass_bound_median']:.2e} | "
            f"{r['bound_holds']:.0%} | {r['certified']:.0%} | {tau} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
