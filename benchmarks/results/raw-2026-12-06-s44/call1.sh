source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 43 call 6: the reviewed skeleton (counter reset, loads in flight together, 3x L2 of layers)
cd benchmarks
timeout 135 python3 latency_floor_gpu.py --reps 30 --rounds 5 --cases 1:32:8:6.25,1:32:8:12.5 \
  --contexts 32768,65536,131072,8192 2>&1 | tee "$OUT/floor.txt" | grep -vE "^\{'b'" | tail -14
