source .scratch/setup.sh
cd benchmarks
timeout 90 python3 grid_barrier_gpu.py 2>&1 | tee "$OUT/barrier.txt"
V="base;sparse_decode.SCORES_WARPS=2,sparse_decode.PROGRAMS_PER_SM=4;sparse_decode.PROGRAMS_PER_SM=4;sparse_decode.SCORES_WARPS=2,sparse_decode.PROGRAMS_PER_SM=8;page_scores.DOT_WARPS=8;page_scores.DOT_ITERS=8;base"
for sel in TopK6.25 TopK12.5; do
timeout 200 python3 step_variants_gpu.py --batch 16 --selector $sel --contexts 65536,131072 --alphas 1.5 --reps 20 --variants "$V" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b16.txt"
done
