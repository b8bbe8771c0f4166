source benchmarks/results/raw-2026-12-05-s39/setup.sh >/dev/null  # session 44 call 7: the skeleton at 8K and 16K, one graph
cd benchmarks && timeout 200 python3 latency_floor_gpu.py --reps 30 --rounds 5 --cases 1:32:8:6.25,1:32:8:12.5 --contexts 8192,16384 2>&1 | tee "$OUT/floor-short.txt" | grep -E "^\| 1 |gave up"
