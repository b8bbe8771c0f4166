source benchmarks/results/raw-2026-12-05-s39/setup.sh
# session 39 call 1: the histogram-started search (quest_select.HIST_BITS, off by default) — GPU tests, then A/B in one process
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_threshold_search.py tests/test_quest_select.py 2>&1 | tail -3 | tee "$OUT/tests.txt"
cd benchmarks
V="base;quest_select.HIST_BITS=12;base;quest_select.HIST_BITS=12;quest_select.HIST_BITS=14"
run() { timeout "$1" python3 step_variants_gpu.py --reps 40 --variants "$V" "${@:2}" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs|failed|Error"; }
run 90 --page-boxes --selector TopK6.25 --contexts 32768,131072
run 60 --page-boxes --selector TopK12.5 --contexts 65536
run 60 --selector TopK6.25 --contexts 131072
run 90 --selector TopK6.25 --contexts 65536 --batch 16
for h in 0 12; do
  sed -i "s/^HIST_BITS = .*/HIST_BITS = $h/" ../kernels/quest_select.py
  echo "### profile HIST_BITS=$h"
  timeout 90 python3 profile_step.py --contexts 131072 --cases 1.5:TopK6.25box --top 9 2>&1 | tee "$OUT/profile-$h.txt" | tail -14
done
