# Session 50, call 4 (same warm H100 as call 3): the Gaussian step at B = 16 on needles on the committed
# tree (25bca78; the split τ̂ form there: only the glue change applies), then the whole gpu suite.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
(cd benchmarks && timeout 90 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles \
  --contexts 65536,131072 --reps 20 --variants "base" 2>&1 | grep -E "##|µs" | tee "$OUT/step-b16.txt")
timeout 300 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf 2>&1 | tail -12 | tee "$OUT/gpu-tests.txt"
