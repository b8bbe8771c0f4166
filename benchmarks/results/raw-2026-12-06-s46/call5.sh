source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 46 call 5: the Gaussian step (B = 16, needles) on the committed split form against the
# one kernel, and with σ's one-pass tf32 dot on top (perf-log row 149, on the H200 this time)
cd benchmarks
V="gaussian_tau.SPLIT=False;base;page_scores.SIGMA_DOT=True,page_scores.SIGMA_ONE_PASS=True"
timeout 150 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b16.txt" | tail -9
