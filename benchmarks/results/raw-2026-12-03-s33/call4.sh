source .scratch/setup.sh
python3 .scratch/s33/diag_box_bounds.py 2>&1 | tee "$OUT/diag.txt"
cd benchmarks
common="--page-boxes --alphas 1.5 --coverages 6.25,12.5 --selectors TopK --reps 20 --rounds 3"
timeout 150 python3 decode.py $common --dtypes bf16 --contexts 32768,65536,131072 --batches 1,16 --heads 32/8 --out "$OUT/bf16" 2>&1 | grep "^| [0-9]" | tee "$OUT/bf16.txt"
