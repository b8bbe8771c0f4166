source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 46 call 2: why call 1's split gaussian_tau made the Gaussian step slower (B = 16): the
# kernel alone (8,192 pages, needles), the solve cut short (iters=0, expansions=0: the kept
# pages and the bracket's first pass), the split solve at the one kernel's shape
cd benchmarks
S=gaussian_tau.SPLIT=True
T="base;$S;iters=0,expansions=0;$S,iters=0,expansions=0;$S,gaussian_tau.SOLVE_WARPS=16,gaussian_tau.SPLIT_SOLVE_P=1024;$S,gaussian_tau.KEEP_WARPS=4"
timeout 100 python3 gaussian_tau_gpu.py --pages 8192 --batches 16 --needles 4 --variants "$T" --reps 10 2>&1 | tee "$OUT/tau-alone.txt" | grep -v "^$"
