source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 46 call 1: gaussian_tau split into two kernels (kept pages; solve) where the rows fill
# the SMs, against the one-kernel form (the default, sessions 16-45): the GPU tests of both forms
# and of σ's one-pass tf32 dot; the kernel alone; the Gaussian step (B = 16, needles)
timeout 130 python3 -m pytest -q -p no:cacheprovider -x tests/test_ops_gpu.py tests/test_page_scores_chunked.py \
  -k "gaussian_tau_forms or (cuda and dot_sigma)" 2>&1 | tee "$OUT/tests.txt" | tail -4
cd benchmarks
S=gaussian_tau.SPLIT=True
T="base;$S;$S,gaussian_tau.KEEP_WARPS=8,gaussian_tau.BLOCK_P=512;$S,gaussian_tau.SPLIT_SOLVE_P=256;$S,gaussian_tau.SOLVE_WARPS=8,gaussian_tau.SPLIT_SOLVE_P=256;gaussian_tau.TAU_WARPS=4"
timeout 140 python3 gaussian_tau_gpu.py --pages 4096,8192 --batches 8,16 --needles 4,0 --variants "$T" --reps 10 2>&1 | tee "$OUT/tau-alone.txt" | grep -v "^$"
V="base;$S;$S,page_scores.SIGMA_DOT=True,page_scores.SIGMA_ONE_PASS=True"
timeout 260 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b16.txt" | tail -9
