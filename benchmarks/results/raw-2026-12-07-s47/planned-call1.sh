source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# PLANNED in session 47 for the next session's first device call; NOT RUN (session 47 had no device
# time). Measures perf-log rows 151 (gaussian_tau's Jensen low end, committed) and 152 (page_scores'
# σ form without register spills: constants only), in one call of ~6 minutes:
# 1. the τ̂ kernel alone on split needle runs (the moments that made rows keep every page), its forms;
# 2. the Gaussian step at B = 16 and B = 1 on needles with page_scores' shapes flipped, the split τ̂
#    solve narrow again (session 46: it won alone where rows keep few pages), σ one-pass at B = 1;
# 3. the gpu oracle test of page_scores' forms (its chunk and block shapes are parametrized there)
#    and of gaussian_tau's two forms.
cd benchmarks
P=page_scores
T="base;gaussian_tau.SPLIT=False;gaussian_tau.SOLVE_WARPS=4,gaussian_tau.SPLIT_SOLVE_P=128"
timeout 60 python3 gaussian_tau_gpu.py --pages 8192 --batches 1,16 --needles 4 --variants "$T" --reps 10 2>&1 \
  | tee "$OUT/tau-alone.txt" | grep -v "^$"
V="base;$P.BLOCK_P=8,$P.CHUNK=8;$P.BLOCK_P=16,$P.CHUNK=8,$P.NUM_WARPS=4;gaussian_tau.SOLVE_WARPS=4,gaussian_tau.SPLIT_SOLVE_P=128"
timeout 200 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b16.txt" | tail -11
V="base;$P.BLOCK_P=8,$P.CHUNK=8;$P.SIGMA_DOT=True,$P.SIGMA_ONE_PASS=True"
timeout 120 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 65536,131072 \
  --reps 50 --variants "$V" 2>&1 | tee "$OUT/step-b1.txt" | tail -9
cd ..
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_page_scores_chunked.py tests/test_ops_gpu.py \
  -k "cuda and (forms_equal or gaussian_tau_forms)" 2>&1 | tee "$OUT/tests.txt" | tail -4
