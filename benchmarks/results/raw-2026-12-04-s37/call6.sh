source .scratch/setup.sh
# the search narrows to its bracket's keys (quest_select.NARROW_KEYS): GPU tests, then same-run A/B
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_quest_select.py -x 2>&1 | tail -2 | tee "$OUT/tests.txt"
cd benchmarks
run() { timeout "$1" python3 step_variants_gpu.py --reps 30 "${@:2}" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs|failed|Error"; }
V="base;quest_select.NARROW_KEYS=0;quest_select.NARROW_KEYS=512;base"
run 80 --variants "$V" --page-boxes --selector TopK6.25 --contexts 32768,131072
run 50 --variants "base;quest_select.NARROW_KEYS=0;base" --page-boxes --selector TopK12.5 --contexts 65536
run 50 --variants "base;quest_select.NARROW_KEYS=0;base" --page-boxes --batch 16 --selector TopK6.25 --contexts 65536
