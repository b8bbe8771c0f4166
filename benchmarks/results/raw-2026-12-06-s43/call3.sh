source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 43 call 3: the same with the data of 4 layers read in turn (L2 holds 50 MB: a step whose
# bytes fit finds them there when it replays alone), the floor and the committed step
cd benchmarks
timeout 200 python3 latency_floor_gpu.py --reps 50 --rounds 5 --layers 4 --cases 1:32:8:6.25,1:32:8:12.5,16:32:8:6.25 \
  --contexts 8192,32768,65536,131072 2>&1 | tee "$OUT/floor-4layers.txt" | grep -vE "^\{" | tail -20
run() { timeout "$1" python3 step_variants_gpu.py --reps 30 "${@:2}" 2>&1 | tee -a "$OUT/steps.txt" | grep -E "^##|µs|failed|Error"; }
for L in 1 4; do
  echo "### layers $L"
  run 90 --layers $L --page-boxes --selector TopK6.25 --contexts 32768,65536,131072
  run 60 --layers $L --page-boxes --selector TopK12.5 --contexts 8192,131072
done
