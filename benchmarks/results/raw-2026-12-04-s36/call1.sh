source .scratch/setup.sh
# 1. the boxed-cache and page-box tests on the GPU (the kernel changed: float32's lowest below range)
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_page_box.py tests/test_page_box_cache.py 2>&1 | tail -5 | tee "$OUT/tests.txt"
cd benchmarks
C="sparse_decode.MANY_ROWS_LIST_PAGES=256,sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=5,sparse_decode.SCORES_STAGES=2"
V="base;$C;sparse_decode.SCORES_STAGES=2;base;$C"
run() { timeout "$1" python3 step_variants_gpu.py --reps 30 --variants "$V" "${@:2}" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs|failed"; }
run 110 --page-boxes --batch 16 --selector TopK6.25 --contexts 131072,65536,32768,16384
run 60 --page-boxes --batch 16 --selector TopK12.5 --contexts 131072,32768
run 60 --batch 16 --selector TopK6.25 --contexts 131072,65536
run 45 --page-boxes --batch 16 --heads 32/32 --selector TopK6.25 --contexts 65536
run 40 --page-boxes --batch 4 --selector TopK6.25 --contexts 131072
run 40 --page-boxes --selector TopK6.25 --contexts 131072,32768
