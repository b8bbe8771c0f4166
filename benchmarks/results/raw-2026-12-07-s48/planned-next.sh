# PLANNED in session 48, NOT RUN (too little device time was left to start a machine): the one τ̂ kernel (B = 1: the rows leave SMs idle) with larger blocks for its
# two kept-pages passes (BLOCK_P) while its solve keeps 1,024-page blocks (TAU_SOLVE_P, new: larger
# solve blocks spill), alone on 4,096 and 8,192 pages and in the Gaussian step at B = 1.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
cd benchmarks
T="base;gaussian_tau.BLOCK_P=2048;gaussian_tau.BLOCK_P=4096;gaussian_tau.BLOCK_P=8192"
timeout 60 python3 gaussian_tau_gpu.py --pages 4096,8192 --batches 1 --needles 4 --variants "$T" --reps 10 2>&1 \
  | tee "$OUT/tau-alone.txt" | grep -v "^$"
timeout 90 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 65536,131072 \
  --reps 50 --variants "base;gaussian_tau.BLOCK_P=4096;gaussian_tau.BLOCK_P=8192" 2>&1 | tee "$OUT/step-b1.txt" | grep "µs"
