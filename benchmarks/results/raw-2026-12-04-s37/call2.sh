source .scratch/setup.sh
# three probes a counting pass in the threshold search: GPU tests, then same-run A/B against one probe
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_threshold_search.py tests/test_quest_select.py -x 2>&1 | tail -3 | tee "$OUT/tests.txt"
cd benchmarks
run() { timeout "$1" python3 step_variants_gpu.py --reps 40 --variants "base;select_pages.PROBE_WIDTH=1;base" "${@:2}" 2>&1 | tee -a "$OUT/variants$TAG.txt" | grep -E "^##|µs|failed|Error"; }
TAG=
run 90 --page-boxes --selector TopK6.25 --contexts 32768,65536,131072
run 90 --page-boxes --selector TopK12.5 --contexts 8192,32768,131072
run 60 --selector TopK3 --contexts 1048576
run 70 --page-boxes --batch 16 --selector TopK6.25 --contexts 65536
timeout 60 python3 profile_step.py --contexts 131072 --cases "1.5:TopK6.25box" --top 5 2>&1 | tee "$OUT/profile.txt" | tail -8
echo "## separate reductions (ONE_REDUCTION False)"
sed -i 's/^ONE_REDUCTION = tl.constexpr(not _INTERPRETED)/ONE_REDUCTION = tl.constexpr(False)/' ../kernels/threshold_search.py
grep -n "^ONE_REDUCTION" ../kernels/threshold_search.py
TAG=-separate
run 90 --page-boxes --selector TopK6.25 --contexts 32768,131072
