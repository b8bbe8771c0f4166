# Session 48, call 2 (the machine still warm after call 1): σ on tensor cores, one block a program
# (call 1's best), around its launch shape, with the split τ̂ solve's narrow shape on top; Gaussian on
# needles at B = 16 and B = 1, 64K and 128K.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
cd benchmarks
P=page_scores
S="$P.SIGMA_DOT=True,$P.SIGMA_ONE_PASS=True,$P.DOT_ITERS=1"
N="gaussian_tau.SOLVE_WARPS=4,gaussian_tau.SPLIT_SOLVE_P=128"
V="base;$S;$S,$N;$S,$P.DOT_STAGES_WITH_MEAN=1;$S,$P.DOT_STAGES_WITH_MEAN=3;$S,$P.DOT_BLOCK_P=32;$S,$P.DOT_WARPS=8"
timeout 300 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b16.txt" | grep "µs"
V="base;$S;$S,$P.DOT_STAGES_WITH_MEAN=1;$S,$P.DOT_BLOCK_P=32"
timeout 150 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 65536,131072 \
  --reps 50 --variants "$V" 2>&1 | tee "$OUT/step-b1.txt" | grep "µs"
