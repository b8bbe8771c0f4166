source .scratch/setup.sh
cd benchmarks
timeout 170 python3 step_variants_gpu.py --contexts 16384,32768,65536,131072 --alphas 1,1.5 --reps 30 \
  --variants "base;quest_select.FUSED_KEYS=False;base;quest_select.FUSED_KEYS=False" 2>&1 | tee "$OUT/fused.txt"
timeout 100 python3 step_variants_gpu.py --batch 16 --contexts 65536,131072 --alphas 1.5 --reps 20 \
  --variants "base;quest_select.FUSED_KEYS=False;base;quest_select.FUSED_KEYS=False" 2>&1 | tee -a "$OUT/fused.txt"
timeout 100 python3 profile_step.py --contexts 32768,131072 --cases 1.5:TopK12.5 --top 12 2>&1 | grep -v -i warn | tee "$OUT/profile.txt" | tail -4
cd ..
timeout 150 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf tests/test_quest_select.py tests/test_kernel_edge_cases.py tests/test_ops_gpu.py tests/test_selection_ops_edge_cases.py 2>&1 | tail -2 | tee "$OUT/gpu-tests.txt"
grep -E "^##|µs" "$OUT/fused.txt" | sed 's/max |Δout| vs first/Δ/; s/  */ /g'
grep -E "^##|_search|_keys|_chunk" "$OUT/profile.txt"
