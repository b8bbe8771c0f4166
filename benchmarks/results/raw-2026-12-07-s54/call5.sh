# Session 54, call 5 (not run: no device time was left): the Gaussian step's statistics pass (page_scores with σ on
# tensor cores, one 64-page block a program: 31.6 µs of the B = 1 128K step at ~2.1 TB/s in session 51's profile) in
# other shapes: the head dim in 4 or 2 chunks (page_scores.SIGMA_D_CHUNKS), 8 warps, 32-page blocks two in turn; B = 1
# 128K and B = 16 64K, needles. First the oracle gpu test of the statistics forms (the chunked one among them).
# ptxas for sm_90a (fp16, G = 4, with the mean and σ; one-off compiles on the CPU, session 54), registers a thread:
# the default 168, no spill (3 programs of 4 warps an SM); 4 chunks 120 (4 programs), 2 chunks 144; 8 warps 128;
# 32-page blocks two in turn 128; two 64-page blocks in turn 255 with 72 B of spill stores (not timed here). The
# chunked form leaves the other forms' code as it was (TopK 1125 SASS / 130 registers, Exact 1333 / 242); its first
# form (sigma_d_chunks_prototype.patch) had moved TopK's to 1203 / 165. Chunking σ's std² alone leaves 168.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
timeout 120 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider -rf tests/test_page_scores_chunked.py 2>&1 | tail -3 \
  | tee "$OUT/gpu-tests.txt"
cd benchmarks
V="base;page_scores.SIGMA_D_CHUNKS=4;page_scores.SIGMA_D_CHUNKS=2;page_scores.DOT_WARPS=8;page_scores.DOT_BLOCK_P=32,page_scores.DOT_ITERS_WITH_SIGMA=2;base"
timeout 90 python3 step_variants_gpu.py --selector Gaussian --data needles --contexts 131072 --reps 20 --variants "$V" \
  2>&1 | tee "$OUT/steps-b1.txt" | grep -E "##|µs"
timeout 120 python3 step_variants_gpu.py --selector Gaussian --data needles --batch 16 --contexts 65536 --reps 10 \
  --variants "$V" 2>&1 | tee "$OUT/steps-b16.txt" | grep -E "##|µs"
