# Session 54, call 3: the tree with sparse_decode's list launches under PDL (perf-log row 166), the code
# scan's 2^k back from max|A| (row 165) and the token-group form removed: the whole gpu suite, then the
# Gaussian and Exact needle steps (B = 1, 128K) with and without sparse_decode's PDL, alternated.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
OFF="pdl.PDL_MODULES='append page_scores quest_select code_scan gaussian_tau gaussian_select'"
cd benchmarks
for sel in Gaussian Exact; do
  timeout 70 python3 step_variants_gpu.py --selector $sel --data needles --contexts 131072 --reps 20 \
    --variants "base;$OFF;base;$OFF" 2>&1 | tee -a "$OUT/steps-pdl.txt" | grep -E "##|µs"
done
cd ..
timeout 330 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf tests/ 2>&1 | tail -6 | tee "$OUT/gpu-tests.txt"
