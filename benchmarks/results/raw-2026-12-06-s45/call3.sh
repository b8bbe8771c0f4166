source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 45 call 3: does σ on tensor cores pay in one tf32 pass? Gaussian step, B = 16, needles,
# same run: CUDA-core σ (default) / tf32x3 dot (SIGMA_DOT, row 90's form) / one-pass tf32 dot
cd benchmarks
# ran with the string switch of that tree, committed as page_scores.SIGMA_ONE_PASS=True (a boolean)
V="base;page_scores.SIGMA_DOT=True;page_scores.SIGMA_DOT=True,page_scores.SIGMA_PRECISION='tf32';base"
timeout 400 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/sigma-variants.txt" | tail -14
