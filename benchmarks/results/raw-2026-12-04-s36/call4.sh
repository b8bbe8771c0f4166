source .scratch/setup.sh
# quest_select's keys changed (vacuous bounds): its GPU tests, the boxed-cache tests, and the step's time
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_quest_select.py tests/test_page_box_cache.py tests/test_page_box.py 2>&1 | tail -3 | tee "$OUT/tests.txt"
cd benchmarks
run() { timeout "$1" python3 step_variants_gpu.py --reps 30 --variants "base;base" "${@:2}" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs|failed"; }
run 70 --page-boxes --batch 16 --selector TopK6.25 --contexts 65536
run 50 --page-boxes --selector TopK6.25 --contexts 131072
