source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 44 call 6: the layers in turn captured in ONE graph (decode.in_turn_us now), not a graph
# a layer replayed in turn (call 5: per-layer times grew with the number of graphs). B = 1 32/8
# fp16 α = 1.5: 8K with 1 / 4 / 48 layers (does the growth go?), 16K at 48, 32K at 16, 64K–128K at 6;
# then the latency-floor skeleton in the same form
cd benchmarks
for spec in "1 8192" "4 8192" "48 8192,16384" "16 32768" "6 65536,131072"; do
  set -- $spec
  timeout 150 python3 decode.py --layers $1 --contexts $2 --batches 1 --heads 32/8 --dtypes fp16 --alphas 1.5 \
    --coverages 6.25,12.5 --selectors Dense,TopK --page-boxes --reps 20 --max-gib 30 --out "$OUT/l$1" 2>&1 \
    | grep -E "^\| 1 " | sed "s/^/L=$1 /"
done
timeout 150 python3 latency_floor_gpu.py --reps 30 --rounds 5 --cases 1:32:8:6.25 --contexts 32768,65536,131072 \
  2>&1 | tee "$OUT/floor.txt" | grep -E "^\| 1 |gave up"
