# Session 50, call 1 (planned in session 49, which could not start a machine). Run from the repository root. The τ̂
# kernel at B = 1 (rows leave SMs idle) — the one kernel against the new spread form
# (gaussian_tau.SPREAD: (row, chunk) programs for the kept pages, then one solve program a row) —
# alone and in the Gaussian step; the gpu test of the τ̂ forms; the Gaussian step at B = 16 on
# needles (issue 13's device is the H200); where the B = 1 step's time goes (profile).
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
cd benchmarks
G=gaussian_tau
SP="$G.SPREAD=True"
T="base;$SP;$SP,$G.SPREAD_P=1024,$G.SPREAD_WARPS=8;$SP,$G.SPREAD_P=256,$G.SPREAD_WARPS=2;$G.BLOCK_P=4096"
timeout 60 python3 gaussian_tau_gpu.py --pages 8192,4096 --batches 1 --needles 4 --variants "$T" --reps 10 2>&1 \
  | tee "$OUT/tau-alone.txt" | grep -v "^$" | tail -14
cd ..
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "gaussian_tau_forms" 2>&1 \
  | tail -4 | tee "$OUT/tests.txt"
cd benchmarks
timeout 80 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 131072,65536 \
  --reps 50 --variants "base;$SP;base" 2>&1 | tee "$OUT/step-b1.txt" | grep "µs"
timeout 90 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "base" 2>&1 | tee "$OUT/step-b16.txt" | grep "µs"
timeout 60 python3 profile_step.py --batch 1 --contexts 131072 --cases 1.5:Gaussian --data needles --needles 4 \
  --needle-run 16 2>&1 | tail -30 > "$OUT/profile-b1.txt"
