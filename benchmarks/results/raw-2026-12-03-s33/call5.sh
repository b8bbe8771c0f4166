source .scratch/setup.sh
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider -rf -n 4 tests/test_page_box.py tests/test_page_box_cache.py 2>&1 | tail -3 | tee "$OUT/tests.txt"
timeout 300 python3 benchmarks/soak.py --selectors "TopK 6.25% box,TopK 12.5%" --out "$OUT" 2>&1 | tail -5
