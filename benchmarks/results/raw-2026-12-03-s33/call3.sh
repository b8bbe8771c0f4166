source .scratch/setup.sh
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -rf -n 8 tests/test_page_box_cache.py tests/test_page_box.py 2>&1 | tail -4 | tee "$OUT/tests.txt"
cd benchmarks
common="--page-boxes --dtypes fp16 --alphas 1.5 --coverages 6.25,12.5 --selectors TopK --reps 20 --rounds 3"
timeout 200 python3 decode.py $common --contexts 8192,16384,32768,65536,131072 --batches 1,16 --heads 32/8 --out "$OUT/d328" 2>&1 | grep "^| [0-9]"
timeout 120 python3 decode.py $common --contexts 16384,65536,131072 --batches 1 --heads 32/32 --out "$OUT/d3232b1" 2>&1 | grep "^| [0-9]"
timeout 100 python3 decode.py $common --contexts 65536 --batches 16 --heads 32/32 --out "$OUT/d3232b16" 2>&1 | grep "^| [0-9]"
