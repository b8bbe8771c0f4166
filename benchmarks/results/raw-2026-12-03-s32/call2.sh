source .scratch/setup.sh
cd benchmarks
timeout 170 python3 e2e_data_gpu.py --contexts 8192,131072 --cases "1.5:TopK,1.5:Dense" --variants "sparse_decode.V_SUPPORT_FIRST=False;base;sparse_decode.V_SUPPORT_FIRST=False;base" > "$OUT/e2e_data.txt" 2>&1
cd ..
timeout 150 python3 -m pytest -q -n 8 -m gpu tests/test_ops_gpu.py tests/test_kernels.py > "$OUT/tests.txt" 2>&1
timeout 240 python3 benchmarks/e2e_speed.py --contexts 8192 32768 131072 --variants none sdpa topk dense \
    --no-compile --out "$OUT" 2>&1 | tail -8 > "$OUT/e2e.txt"
tail -3 "$OUT/tests.txt"
grep -E "^\||rror" "$OUT/e2e_data.txt"
cat "$OUT/e2e.txt"
