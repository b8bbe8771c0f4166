source .scratch/setup.sh
cd benchmarks
OLD="sparse_decode.MANY_ROWS_LIST_PAGES=512,sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=4,sparse_decode.SCORES_STAGES_MANY_ROWS=None"
V="base;$OLD;sparse_decode.SCORES_STAGES_MANY_ROWS=None;sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=4;sparse_decode.MANY_ROWS_LIST_PAGES=512;base"
run() { timeout "$1" python3 step_variants_gpu.py --reps 30 --variants "$V" "${@:2}" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs|failed"; }
run 150 --page-boxes --batch 16 --heads 32/32 --selector TopK6.25 --contexts 65536
run 200 --page-boxes --batch 16 --heads 32/32 --selector TopK6.25 --contexts 131072
run 100 --page-boxes --batch 8 --heads 32/32 --selector TopK6.25 --contexts 65536
