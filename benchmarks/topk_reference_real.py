"""Which per-head reference L_h should TopK's GQA ranking key_p = max_h lin(α)·(U_hp − L_h) use?
Measured on SmolLM2-135M's real attention (9 query / 3 KV heads: groups of 3), CPU, float64.

    python benchmarks/topk_reference_real.py --contexts 4096 8192     # ~10 minutes on 2 cores

One forward over Python's language reference captures every layer's post-RoPE q/k/v
(``real_model.capture``); the last position is one decode step per layer, diagnosed against
dense attention for TopK 6.25% and 12.5% at α = 1 and 1.5, with the reference ops' TopK
selection (``ReferenceOps.quest_top_pages``) ranking by each rule:
  means   max(best candidate mean-key score, the newest page's best score): an attained
          score (the library's rule until 2026-11-29; it needs every page's mean);
  newest  the newest page's best score alone;
  upper   max_p U_hp, each head's best candidate bound (the library's rule since);
  none    0 (raw bounds compared across heads).
Prints, per setting, the cosine to dense over the 270 heads (median, 5th percentile, min,
heads below 0.9) and the mean support recall. Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import entmaxkv as ekv
from entmaxkv.backend import ReferenceOps
from entmaxkv.bounds import mean_scores
from entmaxkv.diagnostics import diagnose
from entmaxkv.entmax import lin
from entmaxkv.hf.models import load_smollm2
from entmaxkv.newest_page import newest_page_scores
from entmaxkv.topk import forced_page_mask, quest_count
from real_model import capture, corpus

RULES = ("means", "newest", "upper", "none")


def quest_top_pages_with(rule: str):
    """``ReferenceOps.quest_top_pages`` with the reference L_h of ``rule``."""

    def quest_top_pages(ops, upper, means, budget_pages, coverage, sink_pages, recent_pages):
        candidates = ops.candidates
        off = torch.full_like(upper, float("-inf"))
        newest = newest_page_scores(ops.cache, ops.q, ops.scale, ops.alibi_slopes).amax(-1)
        if rule == "means":
            means = mean_scores(ops.cache, ops.q, ops.scale, ops.alibi_slopes).to(upper.dtype)
            reference = torch.maximum(torch.where(candidates[:, :, None, :], means, off).amax(-1), newest)
        elif rule == "newest":
            reference = newest
        elif rule == "upper":
            reference = torch.where(candidates[:, :, None, :], upper, off).amax(-1)
        else:
            reference = torch.zeros_like(newest)
        key = (lin(ops.alpha) * (upper - reference.unsqueeze(-1))).amax(2)
        key = torch.where(candidates, key, torch.full_like(key, float("-inf")))
        forced = forced_page_mask(ops.cache, candidates, sink_pages, recent_pages)
        key = torch.where(forced, torch.full_like(key, float("inf")), key)
        return ops.top_pages(key, quest_count(candidates, budget_pages, coverage))

    return quest_top_pages


def main() -> None:
    def install(rule: str):
        original = ReferenceOps.quest_top_pages
        ReferenceOps.quest_top_pages = quest_top_pages_with(rule)
        return lambda: setattr(ReferenceOps, "quest_top_pages", original)

    compare_rankings(__doc__, "L_h", [(rule, lambda rule=rule: install(rule)) for rule in RULES])


def compare_rankings(doc: str, column: str, variants) -> None:
    """A real-model TopK comparison's main: per context (one captured forward), α, coverage and
    ``variants`` entry — (label, install), where ``install()`` puts a ranking in place and
    returns its undo — a ``topk_row``, as a table."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 1.5])
    parser.add_argument("--coverages", type=float, nargs="+", default=[0.0625, 0.125])
    args = parser.parse_args()
    model, tok = load_smollm2()
    print(f"| context | α | TopK | {column} | cosine median | p5 | min | heads < 0.9 | recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for context in args.contexts:
        layers = capture(model, corpus(tok, context))
        for alpha in args.alphas:
            for coverage in args.coverages:
                for label, install in variants:
                    undo = install()
                    try:
                        print(topk_row(layers, context, alpha, coverage, label), flush=True)
                    finally:
                        undo()


def topk_row(layers, context: int, alpha: float, coverage: float, label: str) -> str:
    """One table row: TopK's last-position step of every captured layer (float64 reference
    path) diagnosed against dense; cosine median, 5th percentile, min, heads below 0.9, and the
    mean support recall over the heads."""
    cosine, recall = [], []
    for q, k, v in layers:
        cache = ekv.PagedKVCache.empty(batch=1, num_kv_heads=3, head_dim=64, capacity=context, dtype=torch.float64)
        cache = ekv.prefill(cache, k[:, :, :-1].double(), v[:, :, :-1].double(), [context - 1])
        config = ekv.DecodeConfig(alpha=alpha, selector=ekv.TopK(coverage=coverage), scale=0.125)
        _, _, d = diagnose(cache, q.double(), k[:, :, -1:].double(), v[:, :, -1:].double(), config)
        cosine += d.cosine[0].tolist()
        recall += d.support_recall[0].tolist()
    cosine.sort()
    return (f"| {context} | {alpha:g} | {coverage:.2%} | {label} | {statistics.median(cosine):.5f} | "
            f"{cosine[len(cosine) // 20]:.4f} | {cosine[0]:.3f} | {sum(c < 0.9 for c in cosine)} | "
            f"{statistics.mean(recall):.4f} |")


if __name__ == "__main__":
    main()
