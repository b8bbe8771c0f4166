# Session 51, call 3: the pre-solve for rows that keep more than SHORT_P pages (gaussian_tau.PRESOLVE_LONG,
# perf-log row 160: float32 passes over the kept pages, then one float64 pass at the guess's left point and
# two steps) against the same tree without it, same run: the τ̂ kernel alone on noise rows (every page kept)
# and needle rows, the Gaussian step on the stream (B = 1 and 16) and on needles (B = 1), the gpu tests of
# the τ̂ forms. Run from a clean copy of the committed tree (carried as .scratch/clean).
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
V="base;gaussian_tau.PRESOLVE_LONG=False;base"
cd benchmarks
timeout 80 python3 gaussian_tau_gpu.py --pages 8192,4096 --batches 1,16 --alphas 1.5,2 --needles 0,4 --variants "$V" \
  --reps 10 2>&1 | tee "$OUT/tau-alone.txt" | grep -E "µs|##"
timeout 70 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data stream --contexts 131072,65536 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b1-stream.txt" | grep -E "##|µs"
timeout 70 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data stream --contexts 65536 \
  --reps 10 --variants "$V" 2>&1 | tee "$OUT/step-b16-stream.txt" | grep -E "##|µs"
timeout 60 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 131072,65536 \
  --reps 30 --variants "$V" 2>&1 | tee "$OUT/step-b1.txt" | grep -E "##|µs"
cd ..
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -rf -n 8 -k "gaussian or Gaussian" tests/ 2>&1 \
  | tail -4 | tee "$OUT/tests.txt"
