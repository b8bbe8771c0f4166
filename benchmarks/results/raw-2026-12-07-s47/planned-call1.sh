source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# PLANNED in session 47 for the next session's first device call; NOT RUN (session 47 had no device
# time). Measures perf-log row 151 (gaussian_tau's Jensen low end, committed in session 46, never
# measured) in one call of ~5 minutes:
# 1. the τ̂ kernel alone on split needle runs (the moments whose rows kept every page with the old
#    low end), the one kernel (SPLIT=False: B = 16 only; B = 1 takes it anyway) and the split
#    solve's narrow shape (session 46: it won alone where rows keep few pages);
# 2. the Gaussian step at B = 16 and B = 1 on needles (compare base with session 46's 498.8 / 874.8
#    µs at B = 16 on the H200), the narrow split solve again, σ one-pass at B = 1;
# 3. the gpu test of gaussian_tau's two forms against the reference solver.
cd benchmarks
P=page_scores
T="base;gaussian_tau.SPLIT=False;gaussian_tau.SOLVE_WARPS=4,gaussian_tau.SPLIT_SOLVE_P=128"
timeout 60 python3 gaussian_tau_gpu.py --pages 8192 --batches 1,16 --needles 4 --variants "$T" --reps 10 2>&1 \
  | tee "$OUT/tau-alone.txt" | grep -v "^$"
V="base;gaussian_tau.SOLVE_WARPS=4,gaussian_tau.SPLIT_SOLVE_P=128;$P.SIGMA_DOT=True,$P.SIGMA_ONE_PASS=True"
timeout 200 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b16.txt" | tail -9
V="base;$P.SIGMA_DOT=True,$P.SIGMA_ONE_PASS=True"
timeout 120 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 65536,131072 \
  --reps 50 --variants "$V" 2>&1 | tee "$OUT/step-b1.txt" | tail -7
cd ..
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "gaussian_tau_forms" 2>&1 \
  | tee "$OUT/tests.txt" | tail -4
