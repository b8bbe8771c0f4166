source .scratch/setup.sh
cd benchmarks
timeout 150 python3 decode.py --contexts 65536,131072 --batches 1 --heads 32/32 --dtypes fp16 --alphas 1.5 \
    --coverages 6.25,12.5 --selectors TopK --reps 20 --rounds 3 --out "$OUT/mha" 2>&1 | grep -E "^\|" | tee "$OUT/mha.txt"
O="base;sparse_decode.MANY_ROWS=10**9"
for spec in "--contexts 65536,131072" "--selector TopK6.25 --contexts 131072" "--data needles --selector Exact --contexts 131072"; do
timeout 90 python3 step_variants_gpu.py --batch 16 --alphas 1.5 --reps 10 --variants "$O;base;sparse_decode.MANY_ROWS=10**9" $spec 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b16.txt"
done
