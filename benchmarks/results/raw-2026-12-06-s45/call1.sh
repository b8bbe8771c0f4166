source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 45 call 1: where B = 16 time goes, per kernel (eager steps, torch.profiler), against the
# bytes each kernel must move: the selectors furthest from issue 13's B = 16 targets
which ncu nsys 2>&1 | tee "$OUT/tools.txt"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv | tee -a "$OUT/tools.txt"
cd benchmarks
timeout 200 python3 profile_step.py --batch 16 --contexts 131072 --data needles --needles 4 --needle-run 16 \
  --cases "1.5:Gaussian,1.5:Exact,1.5:ExactCodes4" 2>&1 | grep -v Warn | tee "$OUT/b16-needles.txt" | tail -4
timeout 200 python3 profile_step.py --batch 16 --contexts 32768,131072 \
  --cases "1.5:TopK6.25box,1.5:TopK12.5box,1.5:Dense" 2>&1 | grep -v Warn | tee "$OUT/b16-stream.txt" | tail -7
