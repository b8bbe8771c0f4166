source .scratch/setup.sh
timeout 120 python3 -m pytest -q -n 8 -m gpu tests/test_page_box.py tests/test_page_scores_chunked.py > "$OUT/tests.txt" 2>&1
tail -2 "$OUT/tests.txt"
cd benchmarks
timeout 330 python3 page_box_gpu.py --contexts 65536,131072 --batches 16,1 2>&1 | tee "$OUT/page_box.txt" | grep -E "^##|µs|Δ|rror|Trace"
