source .scratch/setup.sh
cd benchmarks
V="base;sparse_decode.PROGRAMS_PER_SM=4;sparse_decode.PROGRAMS_PER_SM=4,sparse_decode.SCORES_WARPS=2;sparse_decode.PROGRAMS_PER_SM=8,sparse_decode.SCORES_WARPS=2;sparse_decode.TOKENS_PER_ITER=32;base"
timeout 150 python3 step_variants_gpu.py --contexts 8192,16384,32768 --alphas 1.5 --reps 30 --variants "$V" 2>&1 | tee "$OUT/short-topk.txt"
timeout 150 python3 step_variants_gpu.py --contexts 8192,16384,32768 --alphas 1.5 --reps 30 --selector Dense --variants "$V" 2>&1 | tee "$OUT/short-dense.txt"
timeout 200 python3 step_variants_gpu.py --contexts 1048576 --alphas 1.5,1 --reps 10 --selector TopK3 \
  --variants "base;sparse_decode.EXCHANGE_AT_START=True;base;sparse_decode.EXCHANGE_AT_START=True" 2>&1 | tee "$OUT/1m.txt"
grep -hE "^##|µs" "$OUT/short-topk.txt" "$OUT/short-dense.txt" "$OUT/1m.txt" | sed 's/max |Δout| vs first/Δ/' | head -80
