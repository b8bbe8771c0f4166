source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 43 call 4: decode.py's B = 1 32/8 fp16 α = 1.5 table with every step and SDPA read in
# turn over 4 layers' caches (--layers 4): no replay finds the last one's bytes in L2
cd benchmarks
timeout 480 python3 decode.py --layers 4 --contexts 8192,16384,32768,65536,131072 --batches 1 --heads 32/8 \
  --dtypes fp16 --alphas 1.5 --coverages 6.25,12.5 --selectors Dense,TopK --page-boxes --reps 30 2>&1 \
  | tail -40
