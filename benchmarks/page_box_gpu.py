"""8-bit page boxes (``entmaxkv.page_box``, ``entmaxkv::page_box_upper``) against the fp16
page statistics: what the kernel costs, and what the looser bounds do to TopK's choice.

    cd benchmarks && python page_box_gpu.py --contexts 65536,131072 --batches 1,16
    python benchmarks/page_box_gpu.py --cpu --contexts 16384 --batches 1   # the choice only

Per context and batch (Hq/Hkv = 32/8, D = 128, fp16, ``SyntheticStream`` data, or with
``--data model`` `e2e_data_gpu.py`'s random-weight layer, whose scores are nearly flat):

- (GPU) ``page_scores`` without the mean (TopK's form: the fp16 min/max on tensor cores) and
  ``page_box_upper`` alone (``triton.testing.do_bench_cudagraph``), each with the bandwidth on
  the bytes it reads (4·D against 2·D + 8 a page and KV head);
- (GPU) the TopK step (``GraphedDecodeStep``, median of replays, as ``step_variants_gpu.py``)
  for each ``--selectors`` entry, as it runs and with its ``page_bounds`` call replaced by
  ``box_bounds`` on the prefilled pages' boxes (one launch, under programmatic dependent launch
  as ``page_bounds`` is). The timed cache stores no boxes (a boxed cache's step is timed by
  ``decode.py --page-boxes``), so pages that fill during the replays keep their prefill-time
  boxes (timing only); the step then ranks pages by the box's bounds, so its output is not
  compared;
- the choice: TopK's rank keys (``topk.rank_key``) from the exact range's float64 Quest bound
  and from the box's bound, and the share of the pages each coverage picks from the exact
  keys that the box's keys also pick, and the dense α = 1.5 entmax weight on each choice's pages
  (the mean and the smallest over query heads); the box bound's mean excess over the exact one, against the
  spread of the exact bounds.

Measures only; asserts nothing. Perf-log row 133 has the prediction this is to test.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from entmaxkv import PagedKVCache, prefill
from entmaxkv.conventions import group_queries
from entmaxkv.page_box import box_codes, box_upper
from entmaxkv.synthetic import SyntheticStream
from entmaxkv.topk import rank_key

SCALE = 128 ** -0.5


def choice(cache, q, box, coverages) -> str:
    """How many of the exact bounds' TopK pages the box's bounds pick too."""
    qg = group_queries(q.double()[:, :, None], cache.num_kv_heads)
    exact = (torch.einsum("bhgd,bhpd->bhgp", qg.clamp_min(0), cache.k_max.double())
             + torch.einsum("bhgd,bhpd->bhgp", qg.clamp_max(0), cache.k_min.double())) * SCALE
    boxed, _ = box_upper(q.cpu() if q.is_cuda else q, *(x.cpu() for x in box), SCALE, 0.0)
    boxed = boxed.to(exact.device)
    full = cache.full_page_mask()[:, None, :]  # [B, 1, P]
    pages = int(full.sum(-1).min())
    parts = [f"box − exact: mean {float((boxed - exact)[full[:, :, None].expand_as(exact)].mean()):.3f}, "
             f"exact bounds' std {float(exact[full[:, :, None].expand_as(exact)].std()):.3f}"]
    keys = [rank_key(u, full, 1.5) for u in (exact, boxed)]
    mass = page_mass(cache, qg)  # [B, Hkv, G, P]
    for coverage in coverages:
        k = max(1, int(coverage * pages))
        picked = [key.topk(k, dim=-1).indices for key in keys]
        same = torch.zeros(keys[0].shape, dtype=torch.bool, device=exact.device).scatter(-1, picked[0], True)
        kept = same.gather(-1, picked[1]).double().mean()
        held = [mass.gather(-1, p[:, :, None, :].expand(*mass.shape[:3], k)).sum(-1) for p in picked]
        parts.append(f"TopK {coverage:.2%}: {float(kept):.3f} of the exact choice kept, α = 1.5 mass on the pages "
                     f"(mean / worst head) exact {float(held[0].mean()):.4f} / {float(held[0].min()):.4f}, "
                     f"box {float(held[1].mean()):.4f} / {float(held[1].min()):.4f}")
    return "; ".join(parts)


def page_mass(cache, qg) -> torch.Tensor:
    """[B, Hkv, G, P] float64: dense α = 1.5 entmax weight of each full page (the newest page's
    tokens left out), each query head's; qg: [B, Hkv, G, D] float64 grouped queries."""
    from entmaxkv.entmax import entmax_with_threshold

    b, h, p, s, d = cache.k_pages.shape
    full = int(cache.full_page_mask().sum(-1).min())
    scores = torch.einsum("bhgd,bhtd->bhgt", qg, cache.k_pages[:, :, :full].double().reshape(b, h, full * s, d))
    weights, _ = entmax_with_threshold(scores * SCALE, 1.5)
    out = torch.zeros(*weights.shape[:3], p, dtype=torch.float64, device=weights.device)
    out[..., :full] = weights.reshape(*weights.shape[:3], full, s).sum(-1)
    return out


class BoxedStep:
    """While active, the step's ``page_bounds`` calls on statistics of ``shape`` without σ or the
    mean (TopK's) run as ``box_bounds`` on ``box`` (one launch)."""

    def __init__(self, shape, box):
        self.shape, self.box = tuple(shape), box
        self.real = torch.ops.entmaxkv.page_bounds

    def __call__(self, q, k_min, k_max, k_mean, k_std, seq_lens, slopes, k_pages, s, scale, with_sigma, with_mean):
        if tuple(k_min.shape) != self.shape or with_sigma or with_mean or slopes is not None:
            return self.real(q, k_min, k_max, k_mean, k_std, seq_lens, slopes, k_pages, s, scale, with_sigma, with_mean)
        upper, *newest = torch.ops.entmaxkv.box_bounds(q, *self.box, seq_lens, k_pages, scale)
        empty = upper.new_empty(0)
        return (upper, empty, empty, empty, *newest)

    def __enter__(self):
        setattr(torch.ops.entmaxkv, "page_bounds", self)
        return self

    def __exit__(self, *exc):
        setattr(torch.ops.entmaxkv, "page_bounds", self.real)


def step_times(cache, q, k_new, v_new, box, selectors: list[str], reps: int, sdpa: float) -> str:
    import entmaxkv as ekv
    from decode import loaded
    from entmaxkv.compiled import GraphedDecodeStep
    from gpu_check import time_replays
    from step_variants_gpu import SELECTORS

    lines = []
    for sel in selectors:
        config = ekv.DecodeConfig(alpha=1.5, selector=SELECTORS[sel]())
        for form in ("min/max", "8-bit box", "min/max", "8-bit box"):
            with BoxedStep(cache.k_min.shape, box) if form != "min/max" else contextlib.nullcontext():
                step = GraphedDecodeStep(cache.fork(), config, num_q_heads=q.shape[1], compile=False)
            decoder = loaded(step, q, k_new, v_new)
            us = time_replays(decoder.graph.replay, reps, 5)
            lines.append(f"  step {sel} α = 1.5, {form:<10} {us:8.1f} µs  ×SDPA {us / sdpa:5.3f}")
            del decoder, step
            torch.cuda.empty_cache()
    return "\n".join(lines)


def kernel_alone(cache, q, box, n: int, b: int) -> str:
    import triton

    from entmaxkv.kernels.page_box_upper import page_box_upper
    from entmaxkv.kernels.page_scores import page_scores

    q2 = q[:, :, 0].contiguous()
    runs = {"fp16 min/max": lambda: page_scores(q2, cache.k_min, cache.k_max, cache.k_mean, cache.k_std,
                                                cache.seq_lens, None, cache.page_size, SCALE, False, False),
            "8-bit box": lambda: page_box_upper(q2, *box, cache.seq_lens, cache.page_size, SCALE)}
    pages = b * cache.num_kv_heads * (n // cache.page_size)
    reads = {"fp16 min/max": pages * 4 * cache.head_dim, "8-bit box": pages * (2 * cache.head_dim + 8)}
    lines = []
    for name, run in runs.items():
        us = triton.testing.do_bench_cudagraph(run, rep=200) * 1000
        lines.append(f"  {name:<14} {us:7.1f} µs  {reads[name] / 1e6:6.1f} MB  {reads[name] / us / 1e6:5.2f} TB/s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="65536,131072")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--coverages", default="0.125,0.0625")
    parser.add_argument("--cpu", action="store_true", help="the choice only, on the CPU")
    parser.add_argument("--selectors", default="TopK6.25,TopK12.5", help="the steps timed (GPU)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-step", action="store_true", help="no step timing")
    parser.add_argument("--data", choices=["stream", "model"], default="stream",
                        help="SyntheticStream, or e2e_data_gpu.py's random-weight model data (B = 1 only)")
    args = parser.parse_args()
    device = "cpu" if args.cpu else "cuda"
    hq, hkv, d, dtype = 32, 8, 128, torch.float16
    for b in (int(x) for x in args.batches.split(",")):
        for n in (int(x) for x in args.contexts.split(",")):
            if args.data == "stream":
                stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, seed=n, dtype=dtype,
                                         device=device)
                k, v = stream.prompt(n)
                q, k_new, v_new = stream.step()
            else:  # e2e_speed.py's random-weight layer (flat scores), B = 1
                from e2e_data_gpu import model_data

                k, v, q, k_new, v_new = model_data(n, device, dtype)
            sdpa = 0.0
            if not args.cpu:
                from decode import graph_of
                from gpu_check import time_replays

                sdpa = time_replays(graph_of(lambda: torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, enable_gqa=True)).replay, args.reps, 5)
            # every graph replay appends a token: room for the warm-ups and the timed replays
            cache = prefill(PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=n + 64 + 6 * args.reps,
                                               dtype=dtype, device=device), k, v, [n] * b)
            del k, v
            box = box_codes(cache.k_min, cache.k_max)
            print(f"\n## {n} tokens, B = {b}, {hq}/{hkv}, fp16" + (f": SDPA {sdpa:.1f} µs" if sdpa else ""),
                  flush=True)
            if not args.cpu:
                print(kernel_alone(cache, q, box, n, b), flush=True)
                if not args.no_step:
                    print(step_times(cache, q, k_new, v_new, box, args.selectors.split(","), args.reps, sdpa),
                          flush=True)
            print("  " + choice(cache, q[:, :, 0], box, [float(c) for c in args.coverages.split(",")]), flush=True)
            del cache
            if device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
