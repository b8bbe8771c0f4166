# Session 54, call 5: the Gaussian step's statistics pass (page_scores with σ on tensor cores, one 64-page block a
# program: 31.6 µs of the B = 1 128K step at ~2.1 TB/s in session 51's profile) in other launch shapes: two blocks in
# turn (pipelined), 32-page blocks, 8 warps, 32-page blocks two in turn; B = 1 128K and B = 16 64K, needles.
# ptxas for sm_90a (fp16, G = 4, with the mean and σ; a one-off compile on the CPU, session 54): the default
# 64 pages / 4 warps, one block a program: 168 registers, no spill (3 programs an SM); two 64-page blocks in
# turn: 255 and 72 B of spill stores; 32-page blocks: 168; 8 warps: 128; 32-page blocks two in turn: 128, no spill.
# Not in this script: sigma_d_chunks_prototype.patch (the head dim in D_CHUNKS chunks, each dot accumulating into the
# last) gives the σ form 144 registers at 2 chunks and 120 at 4 (4 programs an SM), but as written it also moves the
# TopK form from 130 to 165 registers (1125 -> 1203 SASS): applied, it needs its own branch for D_CHUNKS > 1.
# Chunking σ's std² alone leaves the σ form at 168 registers: the other statistics' tiles hold them
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
cd benchmarks
V="base;page_scores.DOT_ITERS_WITH_SIGMA=2;page_scores.DOT_BLOCK_P=32;page_scores.DOT_WARPS=8;page_scores.DOT_BLOCK_P=32,page_scores.DOT_ITERS_WITH_SIGMA=2;base"
timeout 90 python3 step_variants_gpu.py --selector Gaussian --data needles --contexts 131072 --reps 20 --variants "$V" \
  2>&1 | tee "$OUT/steps-b1.txt" | grep -E "##|µs"
timeout 120 python3 step_variants_gpu.py --selector Gaussian --data needles --batch 16 --contexts 65536 --reps 10 \
  --variants "$V" 2>&1 | tee "$OUT/steps-b16.txt" | grep -E "##|µs"
