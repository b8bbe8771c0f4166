source .scratch/setup.sh
which ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null
cd benchmarks
M="gpu__time_duration.sum,launch__grid_size,launch__block_size,launch__registers_per_thread,launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem,launch__occupancy_limit_warps,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,lts__t_sector_hit_rate.pct,sm__inst_executed.avg.per_cycle_active,smsp__inst_executed.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio"
timeout 240 ncu --kernel-name regex:"_scores_kernel|_tau_kernel|_search_kernel|_box_bounds_kernel" --launch-skip 4 --launch-count 4 --csv --page raw --metrics "$M" \
  python3 ncu_step.py 1.5:TopK6.25 65536 stream --batch 16 --page-boxes > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
echo ncu rc=$?; tail -3 "$OUT/ncu.err"
v="base;sparse_decode.PROGRAMS_PER_SM=3;sparse_decode.SCORES_WARPS=8;sparse_decode.MANY_ROWS_LIST_PAGES=256,sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=3;sparse_decode.MANY_ROWS_LIST_PAGES=256,sparse_decode.PROGRAMS_PER_SM_MANY_ROWS=5;sparse_decode.TOKENS_PER_ITER=32,sparse_decode.PROGRAMS_PER_SM=4;base"
timeout 250 python3 step_variants_gpu.py --page-boxes --batch 16 --selector TopK6.25 --contexts 65536 --reps 30 --variants "$v" 2>&1 | tee "$OUT/variants.txt" | grep -E "^##|µs"
