source benchmarks/results/raw-2026-12-05-s39/setup.sh  # the same set-up as session 39's call
# session 40 call 1: s39's call cut to fit one call of a short budget — the histogram-started
# search (quest_select.HIST_BITS, off by default): GPU tests, same-process A/B, one profile
timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 -m gpu tests/test_threshold_search.py tests/test_quest_select.py 2>&1 | tail -3 | tee "$OUT/tests.txt"
cd benchmarks
V="base;quest_select.HIST_BITS=12;base;quest_select.HIST_BITS=12"
run() { timeout "$1" python3 step_variants_gpu.py --reps 30 --variants "$V" "${@:2}" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs|failed|Error"; }
run 90 --page-boxes --selector TopK6.25 --contexts 32768,131072
run 60 --page-boxes --selector TopK12.5 --contexts 65536
run 80 --selector TopK6.25 --contexts 65536 --batch 16
sed -i "s/^HIST_BITS = .*/HIST_BITS = 12/" ../kernels/quest_select.py
echo "### profile HIST_BITS=12"
timeout 80 python3 profile_step.py --contexts 131072 --cases 1.5:TopK6.25box --top 9 2>&1 | tee "$OUT/profile-12.txt" | tail -14
