# Session 50, call 2: Nsight Compute on the key-code scan (`_code_bounds_kernel`, Exact with 4-bit codes,
# needles, 128K) at B = 1 and B = 16 — why it reads at ~2 TB/s against a 4.3 TB/s copy (issue 9's
# ≤ 0.30× SDPA): occupancy, issue slots used, stall reasons — and where the B = 1 step's time goes.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"  # at most 8 files come back
cd benchmarks
M="gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__block_size,launch__registers_per_thread,launch__occupancy_limit_registers,launch__occupancy_limit_blocks,launch__shared_mem_per_block_static,sm__warps_active.avg.pct_of_peak_sustained_active,sm__inst_executed.sum,sm__inst_executed.avg.per_cycle_active,smsp__issue_active.avg.pct_of_peak_sustained_active,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,lts__t_sector_hit_rate.pct,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
for b in 1 16; do
  timeout 150 ncu --kernel-name regex:_code_bounds_kernel --launch-count 2 --csv --page raw --metrics "$M" \
    python3 ncu_step.py 1.5:ExactCodes4 131072 needles --batch $b --steps 2 > "$OUT/ncu-b$b.csv" 2>> "$OUT/ncu.err"
  echo "ncu B=$b rc=$?"; tail -c 300 "$OUT/ncu.err"
done
python3 - <<'PY'
import csv, os, re
for b in (1, 16):
    text = open(f"{os.environ['OUT']}/ncu-b{b}.csv").read()
    lines = [l for l in text.splitlines() if l.startswith('"')]
    if len(lines) < 3: print(b, "no ncu rows"); continue
    rows = list(csv.reader(lines))
    head, data = rows[0], rows[2:]
    d = dict(zip(head, data[-1]))
    keep = {k: v for k, v in d.items() if re.search(r"duration|dram|grid|block_size|registers|occupancy|shared|warps_active|inst_executed|issue_active|sectors|requests|hit_rate", k)}
    stalls = sorted(((float(v.replace(",", "")), k.split("stalled_")[1].split("_per")[0]) for k, v in d.items()
                     if "stalled_" in k and v.replace(",", "").replace(".", "").isdigit()), reverse=True)[:6]
    print("B", b, keep); print("B", b, "top stalls", stalls)
PY
timeout 90 python3 profile_step.py --batch 1 --contexts 131072 --cases 1.5:ExactCodes4 --data needles 2>&1 \
  | tail -30 > "$OUT/profile-codes-b1.txt"
tail -30 "$OUT/profile-codes-b1.txt"
