source .scratch/setup.sh
rm -f "$OUT/pip.log"
cd benchmarks
timeout 70 python3 keycodes_gpu.py --paths dot --contexts 131072 --batch 16 --reps 8 --rounds 3 --out "$OUT/codes-b16" 2>&1 | grep -E "^\|" | tee "$OUT/codes-b16.txt"
timeout 50 python3 keycodes_gpu.py --paths dot --contexts 65536,131072 --hkv 32 --reps 20 --rounds 3 --out "$OUT/codes-mha" 2>&1 | grep -E "^\|" | tee "$OUT/codes-mha.txt"
timeout 50 python3 decode.py --contexts 8192,32768,131072 --batches 1 --heads 32/8 --dtypes fp16 --alphas 2 --selectors Dense --reps 30 --rounds 3 --out "$OUT/dense-a2" 2>&1 | grep -E "^\|" | tee "$OUT/dense-a2.txt"
timeout 50 python3 step_variants_gpu.py --batch 16 --selector Dense --alphas 1.5 --contexts 65536,131072 --reps 10 2>&1 | grep -E "^##|µs" | tee "$OUT/dense-b16.txt"
rm -f "$OUT"/*/*.png
