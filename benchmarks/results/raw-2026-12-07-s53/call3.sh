# Session 53, call 3 (call 2 never got a machine; ~4 device minutes left): is the free room's cost at 32K
# gaussian_tau's spread form? The Gaussian step at 32K held in 128K slots (8,192 page slots: the spread
# form) with SPREAD_MIN_PAGES=16384 (the one kernel there) against the default, alternated.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
cd benchmarks
timeout 60 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 32768 --reps 20 \
  --variants "base;gaussian_tau.SPREAD_MIN_PAGES=16384;base;gaussian_tau.SPREAD_MIN_PAGES=16384" --room 98304 2>&1 \
  | tee "$OUT/steps.txt" | grep -E "##|µs"
