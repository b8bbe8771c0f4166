source .scratch/setup.sh
# the committed rule (session 36) on the GPU: the many-rows launches really run at once there
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py tests/test_kernels.py -k "many_rows or shape" 2>&1 | tail -4 | tee "$OUT/tests.txt"
cd benchmarks
OLD="sparse_decode.MANY_ROWS_LIST_PAGES=512,sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=4,sparse_decode.SCORES_STAGES_MANY_ROWS=None"
V="base;$OLD;base;$OLD"
run() { timeout "$1" python3 step_variants_gpu.py --reps 30 --variants "$V" "${@:2}" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs|failed"; }
run 90 --page-boxes --batch 16 --selector TopK6.25 --contexts 131072,65536
run 120 --page-boxes --batch 16 --heads 32/32 --selector TopK6.25 --contexts 65536
run 70 --page-boxes --batch 16 --selector TopK12.5 --contexts 32768
