source .scratch/setup.sh
cd benchmarks
v="base;sparse_decode.MANY_ROWS_LIST_PAGES=256;sparse_decode.MANY_ROWS_LIST_PAGES=128;base;sparse_decode.MANY_ROWS_LIST_PAGES=128"
timeout 250 python3 step_variants_gpu.py --page-boxes --batch 16 --selector TopK6.25 --contexts 32768,65536 --reps 30 --variants "$v" 2>&1 | tee "$OUT/variants.txt" | grep -E "^##|µs"
timeout 150 python3 step_variants_gpu.py --page-boxes --batch 16 --selector TopK12.5 --contexts 32768 --reps 30 --variants "base;sparse_decode.MANY_ROWS_LIST_PAGES=256;base;sparse_decode.MANY_ROWS_LIST_PAGES=256" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs"
