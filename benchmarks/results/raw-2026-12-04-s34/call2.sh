source .scratch/setup.sh
cd benchmarks
M="gpu__time_duration.sum,launch__grid_size,launch__registers_per_thread,launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem,launch__shared_mem_per_block_dynamic,launch__shared_mem_per_block_static,launch__shared_mem_config_size,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__inst_executed.avg.per_cycle_active,smsp__inst_executed.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio"
for s in "" "sparse_decode.SCORES_STAGES=2" "sparse_decode.MANY_ROWS_LIST_PAGES=256,sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=5" "sparse_decode.MANY_ROWS_LIST_PAGES=256,sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=6,sparse_decode.SCORES_STAGES=2"; do
  echo "## set: $s" >> "$OUT/ncu.csv"
  timeout 120 ncu --kernel-name regex:"_scores_kernel" --launch-skip 1 --launch-count 1 --csv --page raw --metrics "$M" \
    python3 ncu_step.py 1.5:TopK6.25 65536 stream --batch 16 --page-boxes --steps 2 --set "$s" >> "$OUT/ncu.csv" 2>> "$OUT/ncu.err"
done
A="sparse_decode.MANY_ROWS_LIST_PAGES=256,sparse_decode.PROGRAMS_PER_SM_MANY_ROWS"
v="base;sparse_decode.SCORES_STAGES=2;sparse_decode.SCORES_STAGES=4;$A=5;$A=5,sparse_decode.SCORES_STAGES=2;$A=6,sparse_decode.SCORES_STAGES=2;sparse_decode.LONG_LIST_PAGES=256;base;sparse_decode.SCORES_STAGES=2;$A=5,sparse_decode.SCORES_STAGES=2"
timeout 200 python3 step_variants_gpu.py --page-boxes --batch 16 --selector TopK6.25 --contexts 65536 --reps 30 --variants "$v" 2>&1 | tee "$OUT/variants.txt" | grep -E "^##|µs"
v="base;sparse_decode.SCORES_STAGES=2;sparse_decode.SCORES_STAGES=4;base;sparse_decode.SCORES_STAGES=2"
timeout 100 python3 step_variants_gpu.py --page-boxes --selector TopK6.25 --contexts 131072 --reps 50 --variants "$v" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs"
timeout 100 python3 step_variants_gpu.py --page-boxes --heads 32/32 --selector TopK12.5 --contexts 65536 --reps 50 --variants "$v" 2>&1 | tee -a "$OUT/variants.txt" | grep -E "^##|µs"
