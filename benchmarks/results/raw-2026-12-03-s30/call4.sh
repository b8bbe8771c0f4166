source .scratch/setup.sh
cd benchmarks
V="quest_select.RANK_OWN_KEYS=False;quest_select.RANK_PAIRS=32768;quest_select.RANK_OWN_KEYS=False,quest_select.RANK_PAIRS=32768;quest_select.RANK_PAIRS=16384;quest_select.RANK_OWN_KEYS=False;quest_select.RANK_PAIRS=32768"
timeout 100 python3 step_variants_gpu.py --contexts 4096,8192 --alphas 1.5,1 --reps 40 --variants "$V" 2>&1 | tee "$OUT/b1.txt"
timeout 50 python3 step_variants_gpu.py --contexts 8192 --alphas 1.5 --reps 40 --heads 32/32 --variants "$V" 2>&1 | tee "$OUT/mha.txt"
timeout 80 python3 step_variants_gpu.py --batch 16 --contexts 4096,8192 --alphas 1.5 --reps 20 --variants "$V" 2>&1 | tee "$OUT/b16.txt"
grep -hE "^##|µs" "$OUT/b1.txt" "$OUT/mha.txt" "$OUT/b16.txt" | sed 's/max |Δout| vs first/Δ/;s/quest_select\.//g' | head -60
