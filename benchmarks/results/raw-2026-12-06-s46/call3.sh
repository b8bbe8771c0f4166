source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 46 call 3: the split gaussian_tau in the Gaussian step (B = 16, needles) with the solve's
# long-path blocks as wide as the one kernel's (call 2: the kernel alone 173 -> 68-80 µs on 8,192
# needle-like pages, yet the step slower in call 1: its rows keep more pages)
cd benchmarks
S=gaussian_tau.SPLIT=True
V="base;$S;$S,gaussian_tau.SOLVE_WARPS=16,gaussian_tau.SPLIT_SOLVE_P=1024;$S,gaussian_tau.KEEP_WARPS=4,gaussian_tau.SOLVE_WARPS=8,gaussian_tau.SPLIT_SOLVE_P=512"
timeout 200 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b16.txt" | tail -11
