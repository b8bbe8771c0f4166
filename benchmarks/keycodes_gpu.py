"""Exact with key codes on the GPU: the code-scan decode step against torch SDPA in the same
run (CUDA-graph timing), with a correctness check against the torch path and dense entmax.

    python benchmarks/keycodes_gpu.py                 # 8K, 64K, 128K; B=1 (--batch), Hq=32/Hkv=8, D=128, fp16, α=1.5
    python benchmarks/keycodes_gpu.py --contexts 8192 --bits 4,8 --compiled
    python benchmarks/keycodes_gpu.py --contexts 65536,131072 --batch 16 --paths cores   # B = 16
    python benchmarks/keycodes_gpu.py --contexts 131072 --seed-chunk 1024   # the seed's chunk (code_scan.SEED_CHUNK)
    python benchmarks/keycodes_gpu.py --contexts 65536,131072 --paths dot,cores   # both scoring paths (the default)
    python benchmarks/keycodes_gpu.py --contexts 131072 --paths cores --variants "base;NEWEST_IN_SCAN=True"
    python benchmarks/keycodes_gpu.py --contexts 131072 --paths cores --variants "base;BLOCK_P=4,NUM_WARPS=2"

``--variants``: ``;``-separated, each a ``,``-separated list of ``code_scan`` constant
assignments ``NAME=value`` (``module.NAME=value`` for another ``entmaxkv.kernels`` module, e.g.
``pdl.PDL_MODULES='append code_scan'``; ``base``: none), applied after ``--paths``' switch; every row is
measured once per variant and path, with the same inputs, and the first row of a context
gets ``out_diff_vs_first`` (the largest difference of the other rows' certified outputs from
its own: all equal dense entmax, so a variant that breaks the step shows there and in
``certified``).

``--paths``: ``code_bounds`` scores on tensor cores (``dot``: ``code_scan.USE_DOT``, its
BLOCK_P / NUM_WARPS) or on CUDA cores (``cores``: USE_DOT off, at ``--core-launch``, by
default ``code_scan``'s BLOCK_P / NUM_WARPS); every row is measured once per path, with the
same inputs. On the ``dot`` row, ``vs_cores``: on the step's cache and query, the largest
|page_max_dot − page_max_cores| over ε, ε_dot / ε_cores (min, max; the dot path adds
``dot_margins``' term: 1.0156 for 4 bits, A as float16 hi alone; 1.0001 for 8 bits, hi + lo); the steps' outputs' largest difference is the first row's
``out_diff_vs_first`` (every row must be certified and equal dense entmax).

Data ("needles", where Exact with codes reads little): per KV head a query direction u
(each of the G query heads is u plus 30% noise); keys are noise N(0, 0.3²) — scores about
N(0, 0.3²), below 1.5 even at 128K — except ``--needles`` tokens at random positions whose
key is 8·u/(scale·|u|²) plus the noise, i.e. a score of about 8 (``entmaxkv.synthetic.needle_inputs``). At α = 1.5 the support is the needles
(τ/(α−1) ≈ 7.5), a noise page's code interval is ±0.3 or so, and a needle page's ±1: only the
needles are candidates, so a step reads the codes and page statistics of every page plus the
K of about ``needles`` pages (and V where the weights are non-zero). ``--data stream`` uses
``SyntheticStream`` instead (sink, heavy hitters, outlier channels: candidates may overflow
at long contexts; the row then says so).

Per context: SDPA over the same K/V (graph), the whole ``decode_step`` (``GraphedDecodeStep``,
eager kernels in one graph; ``--compiled``: the compiled step too), and the two scan ops alone,
each in a graph: ``code_bounds`` as the step calls it (with the newest page and the τ seed),
bare, with the newest page only and with the seed only (what each part costs), and
``code_candidates``. Correctness: one eager step on the
Triton path against the torch path (``backend="torch"``) and dense entmax on the same cache,
with the certificate, overflow, pages and candidates of the step. Writes keycodes_gpu.json
and .md to --out ($OUT); measures only, asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
import traceback
from pathlib import Path

import torch

import entmaxkv as ekv
import entmaxkv.kernels.code_scan as code_scan
from entmaxkv.backend import build_step
from entmaxkv.compiled import GraphedDecodeStep
from entmaxkv.exact_codes import code_candidates as exact_candidates
from entmaxkv.synthetic import SyntheticStream, needle_inputs
from decode import graph_of, run_meta  # benchmarks/ is on sys.path
from gpu_check import time_replays as time_us  # the same CUDA-event median timing


def check_step(cache, q, k_new, v_new, config, row, outputs=None):
    """One eager step on the Triton path vs. the torch path and dense entmax (float32 reference);
    the step's output goes to ``outputs`` (a list) when given."""
    new, out, info = ekv.decode_step(cache.fork(), q, k_new, v_new, config, with_info=True)
    if outputs is not None:
        outputs.append(out)
    torch_cfg = ekv.DecodeConfig(config.alpha, config.selector, backend="torch")
    _, ref = ekv.decode_step(cache.fork(), q, k_new, v_new, torch_cfg)
    dense, _ = ekv.dense_decode(new, q, config.alpha)
    o, r, dn = out.double().flatten(2), ref.double().flatten(2), dense.double().flatten(2)
    row["err_vs_torch_path"] = float((o - r).abs().max())
    row["err_vs_dense"] = float((o - dn).abs().max())
    row["rel_err_vs_dense"] = float((o - dn).norm() / dn.norm())
    row["certified"] = bool(info.certified.all())
    row["overflow_rows"] = int(info.overflow.sum())
    full = float(new.seq_lens.double().div(new.page_size).ceil().mean())
    row["pages_read"] = float(info.page_mask.sum(-1).double().mean() / full)
    step = build_step(new, q, config.alpha, config.scale or q.shape[-1] ** -0.5, None, kernels=True,
                      needs_sigma=False)
    found = exact_candidates(step, config.selector.top_tokens, config.selector.max_candidates)
    row["candidates_med_max"] = [int(found.count.median()), int(found.count.max())]
    row["seed_pages_max"] = int(found.seed_pages.sum(-1).max())
    return step, found


def use_path(path: str, core_launch: tuple[int, int], defaults: tuple[int, int]) -> None:
    """Switch ``code_bounds`` to tensor cores (``dot``, at the module's launch) or CUDA cores."""
    code_scan.USE_DOT = path == "dot"
    code_scan.BLOCK_P, code_scan.NUM_WARPS = defaults if path == "dot" else core_launch


def variant_of(text: str) -> list[tuple[object, str, object]]:
    """``NAME=value,...`` -> [(module, NAME, value)] of ``code_scan`` constants (values as Python
    literals; ``module.NAME`` for another ``entmaxkv.kernels`` module, e.g.
    ``pdl.PDL_MODULES='append code_scan'``); ``base`` -> []. Fails on a name the module does
    not have (before any GPU work)."""
    if text.strip() in ("", "base"):
        return []
    out = []
    for item in text.split(","):
        name, value = (x.strip() for x in item.split("="))
        module_name, _, name = name.rpartition(".")
        try:
            module = importlib.import_module(f"entmaxkv.kernels.{module_name or 'code_scan'}")
        except ModuleNotFoundError:
            raise SystemExit(f"entmaxkv.kernels has no module {module_name}") from None
        if not hasattr(module, name):
            raise SystemExit(f"{module.__name__} has no {name}")
        out.append((module, name, eval(value)))  # noqa: S307 (a benchmark's own command line)
    return out


def compare_paths(args_, bits, scale, row, core_launch, defaults) -> None:
    """page_max and ε of both paths on the same inputs (the dot row's ``vs_cores``)."""
    use_path("cores", core_launch, defaults)
    pm_c, eps_c = torch.ops.entmaxkv.code_bounds(*args_, bits, scale, False)[:2]
    use_path("dot", core_launch, defaults)
    pm_d, eps_d = torch.ops.entmaxkv.code_bounds(*args_, bits, scale, False)[:2]
    coded = eps_c > 0
    ratio = (eps_d[coded].double() / eps_c[coded].double())
    row["vs_cores"] = dict(
        page_max_diff_over_eps=float(((pm_d - pm_c).abs()[coded].double() / eps_c[coded].double()).max()),
        eps_ratio_min_max=[float(ratio.min()), float(ratio.max())])


def bench(args, n, bits, bandwidth, log, path="dot", outputs=None, variant="base") -> dict:
    b, hq, hkv, d, dtype, alpha = args.batch, args.hq, args.hkv, 128, torch.float16, args.alpha
    row = dict(context=n, bits=bits, batch=b, hq=hq, hkv=hkv, d=d, dtype="fp16", alpha=alpha, data=args.data,
               path=path, launch=[code_scan.BLOCK_P, code_scan.NUM_WARPS], variant=variant)
    if args.data == "needles":
        k, v, q, k_new, v_new = needle_inputs(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, context=n,
                                              needles=args.needles, seed=n, dtype=dtype, device="cuda")
    else:
        stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=hq // hkv, head_dim=d, seed=n, dtype=dtype,
                                 device="cuda")
        k, v = stream.prompt(n)
        q, k_new, v_new = stream.step()
    sdpa = graph_of(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    row["sdpa_us"] = time_us(sdpa.replay, args.reps, args.rounds)
    del sdpa
    capacity = n + 64 + (args.reps * (args.rounds + 1) + 32) * (1 + args.compiled)
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=d, capacity=capacity, dtype=dtype,
                                   device="cuda", key_bits=bits)
    cache = ekv.prefill(empty, k, v, [n] * b)
    del k, v
    row["code_MB"] = cache.k_codes[:, :, : n // cache.page_size].numel() / 1e6
    row["kv_MB"] = 2 * b * hkv * n * d * 2 / 1e6
    # pass 1 reads every coded page's codes and fp16 min/max once: its byte floor
    row["scan_floor_us"] = (row["code_MB"] + b * hkv * (n // cache.page_size) * 2 * d * 2 / 1e6) * 1e6 / bandwidth * 1e6
    config = ekv.DecodeConfig(alpha=alpha, selector=ekv.Exact(max_candidates=args.max_candidates))
    try:
        step, found = check_step(cache, q, k_new, v_new, config, row, outputs)
        # the two scan ops alone, on the step's cache (τ_low from the step)
        c = step.cache
        args_ = (step.q[:, :, 0].contiguous(), c.k_codes, c.k_min, c.k_max, c.seq_lens, None)
        page_max, eps = torch.ops.entmaxkv.code_bounds(*args_, bits, step.scale, False)[:2]
        if path == "dot":
            defaults = code_scan.BLOCK_P, code_scan.NUM_WARPS
            compare_paths(args_, bits, step.scale, row, args.core_launch, defaults)
        # as the step calls it (the newest page's program, the seed's chunk and merge launches),
        # bare, and with each part alone: the differences are what the parts cost in the scan
        top = config.selector.top_tokens
        g1 = graph_of(lambda: torch.ops.entmaxkv.code_bounds(*args_, bits, step.scale, False, c.k_pages, top))
        row["code_bounds_us"] = time_us(g1.replay, args.reps, args.rounds)
        for key, pages, slots in (("bare", None, 0), ("newest", c.k_pages, 0), ("seed", None, top)):
            g0 = graph_of(lambda p=pages, k=slots: torch.ops.entmaxkv.code_bounds(*args_, bits, step.scale, False,
                                                                                  p, k))
            row[f"code_bounds_{key}_us"] = time_us(g0.replay, args.reps, args.rounds)
            del g0
        g2 = graph_of(lambda: torch.ops.entmaxkv.code_candidates(*args_, page_max, eps, found.tau_low, bits,
                                                                 step.scale, alpha - 1, args.max_candidates))
        row["code_candidates_us"] = time_us(g2.replay, args.reps, args.rounds)
        del g1, g2
        decoder = GraphedDecodeStep(cache.fork(), config, num_q_heads=hq, compile=False)
        decoder(q, k_new, v_new)  # sets the captured input buffers (a graph of zeros would read everything)
        row["step_us"] = time_us(decoder.graph.replay, args.reps, args.rounds)
        del decoder
        if args.compiled:
            t0 = time.perf_counter()
            decoder = GraphedDecodeStep(cache.fork(), config, num_q_heads=hq, compile=True)
            row["compile_s"] = time.perf_counter() - t0
            decoder(q, k_new, v_new)
            row["compiled_us"] = time_us(decoder.graph.replay, args.reps, args.rounds)
            del decoder
    except Exception as err:  # report and go on: one failing case must not hide the others
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        log(traceback.format_exc())
    torch.cuda.empty_cache()
    log(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="8192,65536,131072")
    parser.add_argument("--bits", default="4")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hq", type=int, default=32)
    parser.add_argument("--hkv", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--data", choices=["needles", "stream"], default="needles")
    parser.add_argument("--needles", type=int, default=16)
    parser.add_argument("--max-candidates", type=int, default=512)
    parser.add_argument("--seed-chunk", type=int, default=code_scan.SEED_CHUNK,
                        help="pages a τ-seed program reduces (code_scan.SEED_CHUNK)")
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--paths", default="dot,cores", help="code_bounds scoring: dot (tensor cores), cores")
    parser.add_argument("--core-launch", default=f"{code_scan.BLOCK_P},{code_scan.NUM_WARPS}",
                        help="BLOCK_P,NUM_WARPS of the CUDA-core path (default: code_scan's)")
    parser.add_argument("--variants", default="base",
                        help="';'-separated code_scan constant sets (module.NAME for another "
                             "entmaxkv.kernels module), e.g. 'base;NEWEST_IN_SCAN=True'")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=os.environ.get("OUT", "keycodes_gpu_out"))
    args = parser.parse_args()
    code_scan.SEED_CHUNK = args.seed_chunk
    args.core_launch = tuple(int(x) for x in args.core_launch.split(","))
    variants = [(v.strip(), variant_of(v)) for v in args.variants.split(";")]
    defaults = code_scan.BLOCK_P, code_scan.NUM_WARPS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(msg)
        print(msg, flush=True)

    meta = run_meta("keycodes_gpu.py")
    meta["code_scan_launch"] = {name: getattr(code_scan, name) for name in  # what the scan ops ran with
                                ("BLOCK_P", "NUM_WARPS", "CANDIDATE_SPAN", "CANDIDATE_BLOCK_P", "CANDIDATE_WARPS",
                                 "SEED_CHUNK", "SEED_TILE", "SEED_WARPS", "USE_DOT", "NEWEST_IN_SCAN",
                                 "WORD_CODES", "UNROLL_HEADS", "PAD_SINGLE_HEAD", "HI_ONLY")}
    meta["code_scan_launch"]["core_launch"] = list(args.core_launch)
    bandwidth = meta["copy_bandwidth_TBps"] * 1e12
    log(json.dumps(meta))
    rows = []
    for bits in (int(x) for x in args.bits.split(",")):
        for n in (int(x) for x in args.contexts.split(",")):
            outputs: list[torch.Tensor] = []
            first = len(rows)
            for name, sets in variants:
                for path in args.paths.split(","):
                    use_path(path, args.core_launch, defaults)
                    saved = [(module, key, getattr(module, key)) for module, key, _ in sets]
                    try:
                        for module, key, value in sets:
                            setattr(module, key, value)
                        rows.append(bench(args, n, bits, bandwidth, log, path, outputs, name))
                    finally:
                        for module, key, value in saved:
                            setattr(module, key, value)
            use_path("dot", args.core_launch, defaults)
            if len(outputs) >= 2:  # the rows' certified outputs (all equal dense entmax)
                rows[first]["out_diff_vs_first"] = max(
                    float((o.double() - outputs[0].double()).abs().max()) for o in outputs[1:])
            (out / "keycodes_gpu.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    nan = float("nan")
    table = ["| context | bits | variant, path (pages/warps) | SDPA µs | step µs | × SDPA | code_bounds µs (bare / +newest / +seed) | "
             "scan floor µs | code_candidates µs | pages read | candidates (med/max) | seed pages (max) | certified | "
             "overflow rows | max err vs torch path | max err vs dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        step = r.get("step_us", nan)
        table.append(
            f"| {r['context']} | {r['bits']} | {r['variant']}, {r['path']} {r['launch']} | {r['sdpa_us']:.1f} | {step:.1f} | {step / r['sdpa_us']:.2f} | "
            f"{r.get('code_bounds_us', nan):.1f} ({r.get('code_bounds_bare_us', nan):.1f} / "
            f"{r.get('code_bounds_newest_us', nan):.1f} / {r.get('code_bounds_seed_us', nan):.1f}) | "
            f"{r.get('scan_floor_us', nan):.1f} | {r.get('code_candidates_us', nan):.1f} | {r.get('pages_read', nan):.4f} | "
            f"{r.get('candidates_med_max', '-')} | {r.get('seed_pages_max', '-')} | {r.get('certified', '-')} | "
            f"{r.get('overflow_rows', '-')} | "
            f"{r.get('err_vs_torch_path', nan):.1e} | {r.get('err_vs_dense', nan):.1e} |"
            + (f" compiled {r['compiled_us']:.1f} µs" if "compiled_us" in r else "")
            + (f" vs_cores {json.dumps(r['vs_cores'])}" if "vs_cores" in r else "")
            + (f" out_diff_vs_first {r['out_diff_vs_first']:.1e}" if "out_diff_vs_first" in r else "")
            + (f" {r['error']}" if "error" in r else ""))
    (out / "keycodes_gpu.md").write_text("\n".join([json.dumps(meta), ""] + table) + "\n")
    (out / "keycodes_gpu.log").write_text("\n".join(lines))
    print("\n".join(table))


if __name__ == "__main__":
    main()
