source .scratch/setup.sh
# the interpolation search's model in float32 (MODEL_IN_KEY_DTYPE) against float64: GPU tests, then A/B by
# flipping the module constant between two runs of the same script (a jit global cannot change in a process)
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_threshold_search.py tests/test_quest_select.py -x 2>&1 | tail -2 | tee "$OUT/tests.txt"
cd benchmarks
run() { timeout "$1" python3 step_variants_gpu.py --reps 40 --variants "base;base" "${@:2}" 2>&1 | tee -a "$OUT/variants$TAG.txt" | grep -E "^##|µs|failed|Error"; }
both() {
  for model in True False True; do
    sed -i "s/^MODEL_IN_KEY_DTYPE = tl.constexpr(.*)/MODEL_IN_KEY_DTYPE = tl.constexpr($model)/" ../kernels/threshold_search.py
    echo "### MODEL_IN_KEY_DTYPE=$model"; TAG=-$model run "$@"
  done
}
both 70 --page-boxes --selector TopK6.25 --contexts 32768,131072
both 50 --page-boxes --selector TopK12.5 --contexts 65536
both 60 --selector TopK3 --contexts 1048576
