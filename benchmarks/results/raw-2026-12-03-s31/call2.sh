source .scratch/setup.sh
cd benchmarks
timeout 90 python3 grid_barrier_gpu.py 2>&1 | tee "$OUT/barrier.txt"
W="sparse_decode.SCORES_WARPS=2,sparse_decode.PROGRAMS_PER_SM=4"
V="base;$W;base;$W;base;$W"
for sel in TopK12.5 TopK6.25; do
timeout 150 python3 step_variants_gpu.py --batch 16 --selector $sel --contexts 65536,131072 --alphas 1.5 --reps 20 --variants "$V" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b16.txt"
done
timeout 60 python3 step_variants_gpu.py --batch 16 --selector Dense --contexts 65536 --alphas 1.5 --reps 10 --variants "base;$W;base;$W" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b16-dense.txt"
timeout 80 python3 step_variants_gpu.py --batch 4 --contexts 65536,131072 --alphas 1.5 --reps 30 --variants "$V" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b4.txt"
timeout 80 python3 step_variants_gpu.py --heads 32/32 --contexts 65536,131072 --alphas 1.5 --reps 30 --variants "$V" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/mha.txt"
timeout 60 python3 step_variants_gpu.py --batch 16 --contexts 16384,32768 --alphas 1.5 --reps 20 --variants "$V" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b16-short.txt"
