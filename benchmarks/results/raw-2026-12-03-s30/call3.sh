source .scratch/setup.sh
timeout 240 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf tests/test_quest_select.py tests/test_kernel_edge_cases.py tests/test_ops_gpu.py tests/test_selection_ops_edge_cases.py tests/test_kernels_compile.py tests/test_pdl.py 2>&1 | tail -3 | tee "$OUT/gpu-tests.txt"
cd benchmarks
V="base;quest_select.RANK_OWN_KEYS=False;sparse_decode.ONE_TILE_EXCHANGE=False;sparse_decode.ONE_TILE_EXCHANGE=False,quest_select.RANK_PAGES=1100;quest_select.RANK_PAGES=1100;quest_select.RANK_PAGES=1100,quest_select.RANK_OWN_KEYS=False;quest_select.RANK_PAGES=1100,quest_select.RANK_PAIRS=32768;base;quest_select.RANK_OWN_KEYS=False"
timeout 120 python3 step_variants_gpu.py --contexts 8192,16384 --alphas 1.5,1 --reps 40 --variants "$V" 2>&1 | tee "$OUT/b1.txt"
timeout 60 python3 step_variants_gpu.py --contexts 8192,16384 --alphas 1.5 --reps 40 --heads 32/32 --variants "$V" 2>&1 | tee "$OUT/mha.txt"
timeout 90 python3 step_variants_gpu.py --batch 16 --contexts 8192,16384 --alphas 1.5 --reps 20 --variants "$V" 2>&1 | tee "$OUT/b16.txt"
timeout 60 python3 profile_step.py --contexts 8192 --cases "1.5:TopK12.5" --top 12 2>&1 | tee "$OUT/profile.txt" | tail -14
grep -hE "^##|µs" "$OUT/b1.txt" "$OUT/mha.txt" "$OUT/b16.txt" | sed 's/max |Δout| vs first/Δ/;s/quest_select\.//g;s/sparse_decode\.//g' | head -80
cat "$OUT/gpu-tests.txt"
