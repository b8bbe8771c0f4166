source .scratch/setup.sh
cd benchmarks
for spec in "--contexts 65536,131072 --alphas 1,1.5" "--batch 16 --contexts 131072 --alphas 1.5"; do
  timeout 200 python3 step_variants_gpu.py $spec --reps 30 \
    --variants "base;quest_select.MAX_BLOCK=4096;quest_select.MAX_BLOCK=2048;quest_select.MAX_BLOCK=1024" 2>&1 | tee -a "$OUT/maxblock.txt"
done
timeout 120 python3 profile_step.py --contexts 131072 --cases 1.5:TopK12.5 --top 12 2>&1 | tee "$OUT/profile.txt" | tail -16
grep -E "^##|µs|diff" "$OUT/maxblock.txt"
