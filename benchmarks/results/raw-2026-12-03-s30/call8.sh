source .scratch/setup.sh
timeout 100 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider tests/test_quest_select.py tests/test_selection_ops_edge_cases.py 2>&1 | tail -1 | tee "$OUT/gpu-tests.txt"
cd benchmarks
V="base;quest_select.MANY_ROWS=10**9;base;quest_select.MANY_ROWS=10**9"
for room in 0 2048; do
timeout 50 python3 step_variants_gpu.py --room $room --batch 16 --contexts 4096,8192 --alphas 1.5 --reps 20 --variants "$V" 2>&1 | grep -E "^##|µs" | tee -a "$OUT/b16.txt"
timeout 30 python3 step_variants_gpu.py --room $room --heads 32/32 --contexts 8192 --alphas 1.5 --reps 30 --variants "$V" 2>&1 | grep -E "^##|µs" | tee -a "$OUT/mha.txt"
done
timeout 30 python3 step_variants_gpu.py --batch 4 --contexts 8192 --alphas 1.5 --reps 30 --variants "$V" 2>&1 | grep -E "^##|µs" | tee -a "$OUT/b4.txt"
