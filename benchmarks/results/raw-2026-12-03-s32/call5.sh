source .scratch/setup.sh
cd benchmarks
timeout 200 python3 page_box_gpu.py --no-step --contexts 131072,65536 --batches 16,1 --variants "base;DOT_ITERS=1;DOT_STAGES=2;DOT_STAGES=1;DOT_WARPS=8;DOT_BLOCK_P=128;DOT_ITERS=8" 2>&1 | tee "$OUT/page_box.txt" | grep -E "^##|µs|rror|Trace"
# run as: bash .scratch/s32/call5.sh && timeout 100 python3 -m pytest -q -n 8 -m gpu tests/test_page_box.py (its failures: 2 of 4, messages not kept)
