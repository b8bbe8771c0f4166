source .scratch/setup.sh
cd benchmarks
V="sparse_decode.V_SUPPORT_FIRST=False;base;sparse_decode.SUPPORT_MIN=16;sparse_decode.V_SUPPORT_FIRST=False;base;sparse_decode.SUPPORT_MIN=16"
timeout 200 python3 e2e_data_gpu.py --contexts 131072,8192 --data stream,model --cases "1.5:TopK,1.5:Dense" --variants "$V" > "$OUT/e2e_data.txt" 2>&1
timeout 120 python3 step_variants_gpu.py --alphas 1.5 --reps 10 --variants "$V" --batch 16 --selector TopK12.5 --contexts 131072 2>&1 | grep -E "^##|µs|rror" >> "$OUT/stream.txt"
grep -E "^\||rror" "$OUT/e2e_data.txt"
cat "$OUT/stream.txt"
