source .scratch/setup.sh
python3 .scratch/s29/regs.py 2>&1 | tee "$OUT/regs.txt"
cd benchmarks
timeout 150 python3 step_variants_gpu.py --contexts 16384,32768,65536,131072 --alphas 1,1.5 --reps 30 \
  --variants "base;quest_select.FUSED_KEYS=False;base" 2>&1 | tee "$OUT/fused.txt"
timeout 100 python3 step_variants_gpu.py --batch 16 --contexts 65536,131072 --alphas 1.5 --reps 20 \
  --variants "base;quest_select.FUSED_KEYS=False;base" 2>&1 | tee -a "$OUT/fused.txt"
timeout 90 python3 profile_step.py --contexts 131072 --cases 1.5:TopK12.5 --top 12 2>&1 | tee "$OUT/profile.txt" | tail -14
cd ..
timeout 280 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf 2>&1 | tail -8 | tee "$OUT/gpu-tests.txt"
grep -E "^##|µs|diff|regs" "$OUT/fused.txt" "$OUT/regs.txt" | head -60
