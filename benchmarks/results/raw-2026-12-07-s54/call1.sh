# Session 54, call 1: (1) perf-log row 165 timed: the tensor-core scan's 2^k from ε's sum (on) against the old
# max|A| rule, alternated in one process, B = 1 at 128K and B = 16 at 64K (needles, 4-bit codes, dot path);
# (2) the gpu tests of the key-code scan on this tree (code_scan changed: 8b1c469, 7866613);
# (3) 1M tokens TopK 3% (B = 1, 32/8, stream) on a cache with 8-bit page boxes against the min/max cache: page_scores
# was ~77 of the 155 µs step (session 15), the box reads half those bytes.
# Run from a clean `git archive` of the tree (carried as .scratch/clean) with the wheels in .whl.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
OLD="code_scan.EXPONENT_FROM_SUM=False"
cd benchmarks
timeout 130 python3 keycodes_gpu.py --contexts 131072 --paths dot --reps 30 --variants "base;$OLD;base;$OLD" \
  --out "$OUT/keycodes-b1" 2>&1 | tail -5 | tee "$OUT/keycodes-b1.txt"
timeout 110 python3 keycodes_gpu.py --contexts 65536 --batch 16 --paths dot --reps 20 --variants "base;$OLD;base" \
  --out "$OUT/keycodes-b16" 2>&1 | tail -4 | tee "$OUT/keycodes-b16.txt"
cd ..
timeout 170 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf tests/test_code_dot.py \
  tests/test_code_scan_variants.py tests/test_kernels_codes.py tests/test_keycodes.py 2>&1 | tail -4 \
  | tee "$OUT/gpu-tests.txt"
cd benchmarks
for boxes in "" "--page-boxes"; do
  timeout 100 python3 step_variants_gpu.py --selector TopK3 --contexts 1048576 --reps 20 --variants "base;base" \
    $boxes 2>&1 | tee -a "$OUT/steps-1m.txt" | grep -E "##|µs"
done
