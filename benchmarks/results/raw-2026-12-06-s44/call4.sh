source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 44 call 4: sparse_decode's scoring shape at B = 1 (8 rows: the default shape, 2 programs
# an SM of 4 warps) — the many-rows shape (5 an SM of 2 warps, 2 stages), more programs an SM,
# more stages or warps — on the boxed TopK step, 4 layers in turn
cd benchmarks
V="base;sparse_decode.MANY_ROWS=8;sparse_decode.PROGRAMS_PER_SM=4;sparse_decode.SCORES_STAGES=4;sparse_decode.SCORES_WARPS=8;sparse_decode.PROGRAMS_PER_SM=3,sparse_decode.SCORES_STAGES=2;base"
for sel in TopK6.25 TopK12.5; do
timeout 140 python3 step_variants_gpu.py --contexts 32768,131072 --alphas 1.5 --selector $sel \
  --page-boxes --layers 4 --reps 30 --variants "$V" 2>&1 | tee "$OUT/variants-$sel.txt" | grep -vE "^\s*$" | tail -18
done
