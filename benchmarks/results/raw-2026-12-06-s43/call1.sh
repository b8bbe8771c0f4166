source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 43 call 1: the latency floor of a TopK step's dependency skeleton (latency_floor_gpu.py),
# and the committed step at the same shapes in the same call (step_variants_gpu.py, base only)
cd benchmarks
timeout 330 python3 latency_floor_gpu.py --reps 50 --rounds 5 2>&1 | tee "$OUT/floor.txt" | grep -vE "^\{" | tail -30
run() { timeout "$1" python3 step_variants_gpu.py --reps 30 "${@:2}" 2>&1 | tee -a "$OUT/steps.txt" | grep -E "^##|µs|failed|Error"; }
run 70 --page-boxes --selector TopK6.25 --contexts 32768,65536,131072
run 50 --page-boxes --selector TopK12.5 --contexts 8192,16384
run 60 --page-boxes --selector TopK6.25 --contexts 65536 --batch 16
