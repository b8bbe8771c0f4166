source .scratch/setup.sh
cd benchmarks
timeout 100 python3 profile_step.py --contexts 4096,8192 --cases "1.5:TopK12.5" --top 10 2>&1 | tee "$OUT/profile.txt" | tail -30
timeout 60 python3 step_variants_gpu.py --contexts 8192 --alphas 1.5 --reps 40 --variants "base;quest_select.RANK_OWN_KEYS=False,quest_select.RANK_PAIRS=8192;quest_select.RANK_PAIRS=8192" 2>&1 | grep -E "^##|µs" | tee "$OUT/variants.txt"
