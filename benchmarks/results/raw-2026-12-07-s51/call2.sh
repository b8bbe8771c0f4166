# Session 51, call 2: with the pre-solve (call 1), what the τ̂ solve program's warps cost at B = 1
# (gaussian_tau.TAU_WARPS: the one kernel at 64K and the spread form's solve at 128K; 16 since session
# 15, when each row's passes read every page): the kernel alone and the Gaussian step on needles and on
# the stream (rows that keep every page), same run; then the whole gpu suite on this tree.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
V="base;gaussian_tau.TAU_WARPS=8;gaussian_tau.TAU_WARPS=4;base"
cd benchmarks
timeout 60 python3 gaussian_tau_gpu.py --pages 8192,4096 --batches 1 --alphas 1.5 --needles 4,0 --variants "$V" \
  --reps 10 2>&1 | tee "$OUT/tau-alone.txt" | grep -E "µs|##"
timeout 100 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 131072,65536 \
  --reps 50 --variants "$V" 2>&1 | tee "$OUT/step-b1.txt" | grep -E "##|µs"
timeout 60 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data stream --contexts 131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b1-stream.txt" | grep -E "##|µs"
cd ..
timeout 300 python3 -m pytest -q -m gpu -n 14 -p no:cacheprovider -rf 2>&1 | tail -12 | tee "$OUT/gpu-tests.txt"
