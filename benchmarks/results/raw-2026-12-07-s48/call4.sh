# Session 48, call 4 (the machine still warm after call 3): the split τ̂ solve's two shapes at B = 16
# 128K in turn, three times each in one process (call 2 and call 3 disagreed at 128K: 672.0 against
# 710.2, then 723.9 against 707.0). Run as one command line:
source benchmarks/results/raw-2026-12-05-s39/setup.sh >/dev/null; rm -f "$OUT/pip.log"; cd benchmarks
W="gaussian_tau.SOLVE_WARPS=16,gaussian_tau.SPLIT_SOLVE_P=1024"
timeout 150 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 131072 --reps 20 \
  --variants "base;$W;base;$W;base;$W" 2>&1 | tee "$OUT/step-b16-128k-ab.txt" | grep "µs"
