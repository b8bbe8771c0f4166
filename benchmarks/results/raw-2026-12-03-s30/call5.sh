source .scratch/setup.sh
timeout 200 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf tests/test_quest_select.py tests/test_kernel_edge_cases.py tests/test_selection_ops_edge_cases.py tests/test_kernels_compile.py 2>&1 | tail -2 | tee "$OUT/gpu-tests.txt"
cd benchmarks
V="base;quest_select.RANK_OWN_KEYS=False,quest_select.RANK_PAIRS=8192;base;quest_select.RANK_OWN_KEYS=False,quest_select.RANK_PAIRS=8192"
timeout 100 python3 step_variants_gpu.py --contexts 4096,8192,16384 --alphas 1.5,1 --reps 40 --variants "$V" 2>&1 | tee "$OUT/b1.txt"
timeout 40 python3 step_variants_gpu.py --contexts 8192 --alphas 1.5 --reps 40 --heads 32/32 --variants "$V" 2>&1 | tee "$OUT/mha.txt"
timeout 60 python3 step_variants_gpu.py --batch 16 --contexts 4096,8192 --alphas 1.5 --reps 20 --variants "$V" 2>&1 | tee "$OUT/b16.txt"
grep -hE "^##|µs" "$OUT/b1.txt" "$OUT/mha.txt" "$OUT/b16.txt" | sed 's/max |Δout| vs first/Δ/;s/quest_select\.//g' | head -60
cat "$OUT/gpu-tests.txt"
