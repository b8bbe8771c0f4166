# Session 54, call 4 (run as one command line from .scratch/clean): TopK 12.5% at B = 16 64K with and without
# sparse_decode's list launches under PDL (call 3's tree, where they took it at every row count)
source benchmarks/results/raw-2026-12-05-s39/setup.sh && rm -f "$OUT/pip.log" && cd benchmarks && \
  OFF="pdl.PDL_MODULES='append page_scores quest_select code_scan gaussian_tau gaussian_select'" && \
  timeout 150 python3 step_variants_gpu.py --selector TopK12.5 --batch 16 --contexts 65536 --reps 10 \
  --variants "base;$OFF;base;$OFF" 2>&1 | tee "$OUT/steps-b16.txt" | grep -E "##|µs"
