# Session 53, call 1: PDL for the Gaussian step's selection kernels (perf-log row 163: gaussian_tau's and
# gaussian_select's launches, off by default) timed against the default in one process (base, PDL, base);
# the Gaussian step at 32K with and without free room (is the room's cost real?); then the whole gpu suite
# on the tree with one candidate-count helper for every kernel (kernels/common.py: candidate_count).
# Run from a clean `git archive` of the tree (carried as .scratch/clean) with the wheels in .whl.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
PDL="pdl.PDL_MODULES='append page_scores quest_select code_scan gaussian_tau gaussian_select'"
steps() {  # label, batch, contexts, reps, variants, seconds, [extra args]
  (cd benchmarks && timeout "$6" python3 step_variants_gpu.py --selector Gaussian --batch "$2" --data needles \
    --contexts "$3" --reps "$4" --variants "$5" ${7:-} 2>&1 | sed "s/^/[$1] /" | tee -a "$OUT/steps.txt" \
    | grep -E "##|µs")
}
steps pdl-b1 1 131072,65536 20 "base;$PDL;base;$PDL" 100
steps pdl-b16 16 65536 10 "base;$PDL;base" 60
steps room 1 32768 20 "base;base" 30 "--room 98304"
steps noroom 1 32768 20 "base;base" 30
timeout 300 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf tests/ 2>&1 | tail -12 | tee "$OUT/gpu-tests.txt"
