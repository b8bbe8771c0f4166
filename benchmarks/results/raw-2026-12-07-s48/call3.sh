# Session 48, call 3: the committed defaults after calls 1-2 (σ as one tf32 dot on tensor cores, one
# block a program: perf-log row 153; the split τ̂ solve at 4 warps / 128-page blocks: row 154) —
# the `gpu` tests of the statistics pass, the ops, the kernels and their edge cases, then the Gaussian step against the previous forms on needles (B = 16, B = 1) and on the synthetic stream (B = 16: rows that keep more pages, where the wide solve won
# in session 46).
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
timeout 200 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf tests/test_page_scores_chunked.py tests/test_ops_gpu.py \
  tests/test_kernels.py tests/test_kernel_edge_cases.py tests/test_nan_inputs.py tests/test_stats_dtype.py 2>&1 | tail -8 \
  | tee "$OUT/gpu-tests.txt"
cd benchmarks
P=page_scores
OLD="$P.SIGMA_DOT=False,$P.SIGMA_ONE_PASS=False"
W="gaussian_tau.SOLVE_WARPS=16,gaussian_tau.SPLIT_SOLVE_P=1024"
timeout 150 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "base;$W;$OLD,$W" 2>&1 | tee "$OUT/step-b16.txt" | grep "µs"
timeout 150 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data stream --contexts 65536,131072 \
  --reps 20 --variants "base;$W;$OLD,$W" 2>&1 | tee "$OUT/step-b16-stream.txt" | grep "µs"
timeout 100 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 65536,131072 \
  --reps 50 --variants "base;$OLD" 2>&1 | tee "$OUT/step-b1.txt" | grep "µs"
