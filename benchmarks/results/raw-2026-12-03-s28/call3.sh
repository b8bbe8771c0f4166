source .scratch/setup.sh
cd benchmarks
python3 decode.py --contexts 8192,16384,65536,131072 --batches 1 --heads 32/8 --dtypes bf16 --alphas 1,1.5 --coverages 6.25,12.5 --selectors Dense,TopK --reps 30 --rounds 3 --out "$OUT/bf16" 2>&1 | grep -E "^\|" | tee "$OUT/bf16.txt"
python3 decode.py --contexts 8192,16384,65536,131072 --batches 1 --heads 32/32 --dtypes fp16 --alphas 1.5 --coverages 6.25,12.5 --selectors Dense,TopK --reps 20 --rounds 3 --out "$OUT/mha" 2>&1 | grep -E "^\|" | tee "$OUT/mha.txt"
python3 decode.py --contexts 1048576 --batches 1 --heads 32/8 --dtypes fp16 --alphas 1,1.5 --coverages 3 --selectors TopK --reps 10 --rounds 3 --out "$OUT/1m" 2>&1 | grep -E "^\|" | tee "$OUT/1m.txt"
cd ..
OUT=$OUT bash benchmarks/gpu_session.sh b16 2>&1 | tail -40
