source .scratch/setup.sh
# skip the tail block's reduction in every counting pass when the row ends inside the block (SKIP_EMPTY_TAIL):
# GPU tests, then A/B by flipping the module constant between runs of the same script
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_threshold_search.py tests/test_quest_select.py -x 2>&1 | tail -2 | tee "$OUT/tests.txt"
cd benchmarks
run() { timeout "$1" python3 step_variants_gpu.py --reps 40 --variants "base;base" "${@:2}" 2>&1 | tee -a "$OUT/variants$TAG.txt" | grep -E "^##|µs|failed|Error"; }
both() {
  for skip in True False True; do
    sed -i "s/^SKIP_EMPTY_TAIL = tl.constexpr(.*)/SKIP_EMPTY_TAIL = tl.constexpr($skip)/" ../kernels/threshold_search.py
    echo "### SKIP_EMPTY_TAIL=$skip"; TAG=-$skip run "$@"
  done
}
both 70 --page-boxes --selector TopK6.25 --contexts 32768,131072
both 50 --page-boxes --selector TopK12.5 --contexts 65536
both 50 --page-boxes --selector TopK6.25 --batch 16 --contexts 65536
