source .scratch/setup.sh
cd benchmarks
timeout 220 python3 e2e_data_gpu.py --contexts 8192,131072 --variants "base;sparse_decode.V_SUPPORT_FIRST=True;base" > "$OUT/e2e_data.txt" 2>&1
V="base;sparse_decode.V_SUPPORT_FIRST=True;base;sparse_decode.V_SUPPORT_FIRST=True"
for spec in "--batch 1 --selector TopK12.5 --contexts 8192,131072" "--batch 16 --selector TopK12.5 --contexts 131072" "--batch 1 --selector Dense --contexts 131072"; do
timeout 100 python3 step_variants_gpu.py --alphas 1.5 --reps 10 --variants "$V" $spec 2>&1 | grep -E "^##|µs|rror" >> "$OUT/stream.txt"
done
cd ..
timeout 150 python3 -m pytest -q -x -n 8 -m gpu tests/test_ops_gpu.py tests/test_kernels.py -k "scoring_exchange or long_context or match_the_reference or many_rows or scoring_shape" > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt"
cat "$OUT/stream.txt"
grep -E "µs|Δ|surviv|^#" "$OUT/e2e_data.txt" | tail -60
