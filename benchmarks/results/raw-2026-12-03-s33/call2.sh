source .scratch/setup.sh
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -rf -n 8 tests/test_page_box_cache.py tests/test_page_box.py \
    tests/test_kernels.py -k "box or append or statistics or strided or flat_scores" 2>&1 | tail -5 | tee "$OUT/tests.txt"
cd benchmarks
timeout 330 python3 decode.py --page-boxes --contexts 32768,65536,131072 --batches 1,16 --heads 32/8 --dtypes fp16 \
    --alphas 1.5 --coverages 6.25,12.5 --selectors TopK --reps 20 --rounds 3 --out "$OUT/decode" 2>&1 | tail -26
