source .scratch/setup.sh
cd benchmarks
timeout 200 python3 decode.py --data needles --needles 4 --needle-run 16 --contexts 65536,131072 --batches 1 --heads 32/8 --dtypes fp16 --alphas 1.5 --coverages 12.5 --selectors Gaussian,Exact --reps 20 --rounds 3 --out "$OUT/needles" 2>&1 | grep -E "^\|" | tee "$OUT/needles.txt"
timeout 120 python3 keycodes_gpu.py --contexts 65536,131072 2>&1 | tee "$OUT/keycodes.txt" | tail -12
for sel in Exact Gaussian; do timeout 100 python3 step_variants_gpu.py --data needles --batch 16 --contexts 65536,131072 --selector $sel --reps 10 2>&1 | grep -E "^##|µs" | tee -a "$OUT/needles-b16.txt"; done
rm -f "$OUT"/needles/*.png
