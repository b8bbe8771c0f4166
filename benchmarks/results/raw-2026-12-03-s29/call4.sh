source .scratch/setup.sh
cd benchmarks
timeout 200 python3 step_variants_gpu.py --contexts 65536,131072 --alphas 1.5 --reps 30 \
  --variants "base;quest_select.SELECT_WARPS=4;quest_select.SELECT_WARPS=16;select_pages.PROBES=6;select_pages.PROBES=24;page_scores.DOT_ITERS=2;page_scores.DOT_ITERS=8;quest_select.LIST_CHUNK=1024;base" 2>&1 | tee "$OUT/sweep.txt"
ENTMAXKV_PDL=0 timeout 60 python3 step_variants_gpu.py --contexts 65536,131072 --alphas 1.5 --reps 30 \
  --variants "base" 2>&1 | sed 's/base /PDL=0/' | tee -a "$OUT/sweep.txt"
grep -E "^##|µs" "$OUT/sweep.txt" | sed 's/max |Δout| vs first/Δ/; s/  */ /g'
