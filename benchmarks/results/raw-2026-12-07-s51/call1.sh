# Session 51, call 1: the float32 pre-solve of the Gaussian τ̂ (gaussian_tau.PRESOLVE, perf-log row 158:
# one float64 pass at two points around a float32 Newton guess, then two Newton passes, where a row's
# kept pages fit one block) against the same tree without it, same machine, same run: the τ̂ kernel
# alone, the Gaussian step at B = 1 and 16 on needle inputs (and B = 1 on the stream, where rows keep
# most pages and the pre-solve does not run), the B = 1 step's kernels, and the gpu tests of the τ̂ forms.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"  # at most 8 files come back
V="base;gaussian_tau.PRESOLVE=False;base"
cd benchmarks
timeout 70 python3 gaussian_tau_gpu.py --pages 8192,4096 --batches 1,16 --alphas 1.5,2 --needles 4,0 --variants "$V" \
  --reps 10 2>&1 | tee "$OUT/tau-alone.txt" | grep -E "µs|##" | tail -40
timeout 110 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 131072,65536 \
  --alphas 1.5,2 --reps 50 --variants "$V" 2>&1 | tee "$OUT/step-b1.txt" | grep -E "##|µs"
timeout 90 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b16.txt" | grep -E "##|µs"
timeout 50 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data stream --contexts 131072 \
  --reps 30 --variants "$V" 2>&1 | tee "$OUT/step-b1-stream.txt" | grep -E "##|µs"
timeout 50 python3 profile_step.py --batch 1 --contexts 131072 --cases 1.5:Gaussian --data needles --needles 4 \
  --needle-run 16 2>&1 | grep -E "##|µs" > "$OUT/profile-b1.txt"; head -12 "$OUT/profile-b1.txt"
cd ..
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -rf -n 8 -k "gaussian or Gaussian" tests/ 2>&1 \
  | tail -5 | tee "$OUT/tests.txt"
