source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 43 call 2: call 1's floor run again with each form checked before it is timed (call 1
# timed a grid whose barrier gave up, 4 programs an SM, and ran out of time after one shape)
cd benchmarks
timeout 400 python3 latency_floor_gpu.py --reps 50 --rounds 5 2>&1 | tee "$OUT/floor.txt" | grep -vE "^\{" | tail -30
