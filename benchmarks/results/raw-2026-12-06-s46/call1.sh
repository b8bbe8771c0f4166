source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 46 call 1: gaussian_tau split into two kernels (kept pages; solve) where the rows fill
# the SMs, against the one-kernel form (the default, sessions 16-45): the kernel alone against the
# float64 reference solver (max |Δτ|), then the Gaussian step (B = 16, needles). Trimmed to ~4 min
# after nine failed machine starts had spent 20 of the session's 30 device minutes (the gpu tests
# of tests/test_ops_gpu.py and tests/test_page_scores_chunked.py were left out)
cd benchmarks
S=gaussian_tau.SPLIT=True
T="base;$S;$S,gaussian_tau.KEEP_WARPS=8,gaussian_tau.BLOCK_P=512"
timeout 60 python3 gaussian_tau_gpu.py --pages 8192 --batches 16 --needles 4,0 --variants "$T" --reps 10 2>&1 | tee "$OUT/tau-alone.txt" | grep -v "^$"
V="base;$S"
timeout 180 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b16.txt" | tail -7
