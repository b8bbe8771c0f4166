source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 45 call 2: B = 16 at 64K per kernel (call 1 had 32K and 128K), the same script and data;
# then Exact with 4-bit codes at B = 16 64K/128K through keycodes_gpu.py (certified, vs SDPA)
cd benchmarks
timeout 170 python3 profile_step.py --batch 16 --contexts 65536 --data needles --needles 4 --needle-run 16 \
  --cases "1.5:Gaussian,1.5:Exact,1.5:ExactCodes4" 2>&1 | grep -v Warn | tee "$OUT/b16-needles-64k.txt" | tail -3
timeout 120 python3 profile_step.py --batch 16 --contexts 65536 \
  --cases "1.5:TopK6.25box,1.5:TopK12.5box" 2>&1 | grep -v Warn | tee "$OUT/b16-stream-64k.txt" | tail -2
timeout 200 python3 keycodes_gpu.py --contexts 65536,131072 --batch 16 --paths dot --reps 20 --out "$OUT/keycodes" \
  2>&1 | tail -8 | tee "$OUT/keycodes.txt"
