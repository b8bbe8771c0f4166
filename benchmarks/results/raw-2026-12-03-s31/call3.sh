source .scratch/setup.sh
timeout 200 python3 -m pytest -q -m gpu -n 4 -p no:cacheprovider tests/test_ops_gpu.py -k "scoring_exchange or long_context" 2>&1 | tail -3 | tee "$OUT/gpu-tests.txt"
cd benchmarks
O="sparse_decode.MANY_ROWS=10**9"
V="base;$O;base;$O"
W="base;$O;sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=3;sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=6;sparse_decode.SCORES_WARPS_MANY_ROWS=1,sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=8;base;$O"
timeout 100 python3 step_variants_gpu.py --heads 32/32 --contexts 16384,65536,131072 --alphas 1.5 --reps 30 --variants "$W" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/mha.txt"
timeout 60 python3 step_variants_gpu.py --heads 32/32 --selector TopK6.25 --contexts 131072 --alphas 1.5 --reps 30 --variants "$V" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/mha.txt"
timeout 100 python3 step_variants_gpu.py --batch 16 --contexts 131072 --alphas 1.5 --reps 20 --variants "$W" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b16.txt"
timeout 60 python3 step_variants_gpu.py --batch 16 --dtype bf16 --contexts 131072 --alphas 1.5 --reps 20 --variants "$V" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b16.txt"
timeout 80 python3 step_variants_gpu.py --batch 16 --data needles --selector Gaussian --contexts 65536,131072 --alphas 1.5 --reps 10 --variants "$V" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b16-needles.txt"
timeout 80 python3 step_variants_gpu.py --batch 16 --data needles --selector Exact --contexts 65536,131072 --alphas 1.5 --reps 10 --variants "$V" 2>&1 | grep -E "^##|µs|rror" | tee -a "$OUT/b16-needles.txt"
timeout 150 python3 keycodes_gpu.py --contexts 131072 --batch 16 --variants "base;$O;base;$O" --out "$OUT/codes" 2>&1 | tail -12 | tee "$OUT/codes.txt"
