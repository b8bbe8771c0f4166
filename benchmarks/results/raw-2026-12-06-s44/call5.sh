source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 44 call 5: decode.py's B = 1 32/8 fp16 α = 1.5 rows at 8K–32K with enough layers in turn
# that no replay finds its bytes in L2 (N × the step's bytes >= ~3× L2: 64 layers at 8K–16K, 24 at 32K)
cd benchmarks
timeout 280 python3 decode.py --layers 64 --contexts 8192,16384 --batches 1 --heads 32/8 --dtypes fp16 --alphas 1.5 \
  --coverages 6.25,12.5 --selectors Dense,TopK --page-boxes --reps 20 --max-gib 30 --out "$OUT/l64" 2>&1 | tail -9
timeout 200 python3 decode.py --layers 24 --contexts 32768 --batches 1 --heads 32/8 --dtypes fp16 --alphas 1.5 \
  --coverages 6.25,12.5 --selectors Dense,TopK --page-boxes --reps 20 --max-gib 30 --out "$OUT/l24" 2>&1 | tail -6
