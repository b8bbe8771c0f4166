"""Eager decode steps for Nsight Compute: run under ``ncu`` to see a step's kernels one by one
(stall reasons, occupancy, instructions), e.g. on the H200:

    ncu --kernel-name regex:"_scores_kernel|_tau_kernel|_search_kernel|_code_candidates_kernel|_seed_merge_kernel" \\
        --launch-count 60 --csv --page raw \\
        --metrics "gpu__time_duration.sum,launch__grid_size,sm__inst_executed.avg.per_cycle_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio" \\
        python3 benchmarks/ncu_step.py 1.5:TopK12.5 131072 stream

CASE is ``alpha:selector`` with a selector of ``profile_step.SELECTORS`` (``ExactCodes4`` /
``ExactCodes8``: ``Exact`` on a cache with key codes); DATA ``stream`` (``SyntheticStream``)
or ``needles`` (``needle_inputs``, 16 single-token needles a KV head). B = 1 (or ``--batch``),
Hq/Hkv = 32/8, D = 128, fp16, page boxes with ``--page-boxes``, kernel constants set with
``--set``; four eager steps (the first compiles). ncu's times are longer than a graph's (it
serialises launches and flushes caches between them): compare kernels within one run.
"""

from __future__ import annotations

import argparse

import torch

import entmaxkv as ekv
from entmaxkv.synthetic import SyntheticStream, needle_inputs
from profile_step import KEY_BITS, SELECTORS
from step_variants_gpu import assignments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", help="alpha:selector, e.g. 1.5:TopK12.5 or 1.5:ExactCodes4")
    parser.add_argument("context", type=int)
    parser.add_argument("data", choices=["stream", "needles"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--set", default="",
                        help="module.CONSTANT=value,... of entmaxkv.kernels (step_variants_gpu.py)")
    parser.add_argument("--page-boxes", action="store_true", help="a cache with 8-bit page boxes (TopK ranks by them)")
    args = parser.parse_args()
    for module, constant, value in assignments(args.set):
        setattr(module, constant, value)
    alpha, name = args.case.split(":")
    n, hkv, group, b = args.context, 8, 4, args.batch
    if args.data == "needles":
        k, v, q, k_new, v_new = needle_inputs(batch=b, num_kv_heads=hkv, group=group, head_dim=128, context=n,
                                              needles=16, run=1, seed=n, dtype=torch.float16, device="cuda")
    else:
        stream = SyntheticStream(batch=b, num_kv_heads=hkv, group=group, head_dim=128, seed=n, dtype=torch.float16,
                                 device="cuda")
        k, v = stream.prompt(n)
        q, k_new, v_new = stream.step()
    empty = ekv.PagedKVCache.empty(batch=b, num_kv_heads=hkv, head_dim=128, capacity=n + 64, dtype=torch.float16,
                                   device="cuda", key_bits=KEY_BITS.get(name), page_boxes=args.page_boxes)
    cache = ekv.prefill(empty, k, v, [n] * b)
    config = ekv.DecodeConfig(alpha=float(alpha), selector=SELECTORS[name]())
    for _ in range(args.steps):  # each step appends past the same cache value (functional)
        ekv.decode_step(cache, q, k_new, v_new, config)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
