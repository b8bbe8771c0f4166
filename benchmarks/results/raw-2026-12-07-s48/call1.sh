# Session 48, call 1: session 47's planned-call1.sh (row 151 measured; narrow split solve; σ one-pass at
# B = 1; the gpu test of gaussian_tau's two forms) with σ-pass variants added, then Nsight Compute on the page-statistics pass as
# Gaussian calls it (min, max, mean, std) against page-box Exact's (min, max, mean), B = 16, 128K:
# why the σ form streams at 1.73 TB/s where the other reads at 2.67 (session 45).
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"  # at most 8 files come back
cd benchmarks
P=page_scores
T="base;gaussian_tau.SPLIT=False;gaussian_tau.SOLVE_WARPS=4,gaussian_tau.SPLIT_SOLVE_P=128"
timeout 60 python3 gaussian_tau_gpu.py --pages 8192 --batches 1,16 --needles 4 --variants "$T" --reps 10 2>&1 \
  | tee "$OUT/tau-alone.txt" | grep -v "^$"
# σ on tensor cores: as committed (4 blocks in turn at B = 16: 200 B of spill for sm_90a), one block a
# program (no spill), and the CUDA-core σ form at 4 warps (session 17: -7%, left for a bit contract)
S="$P.SIGMA_DOT=True,$P.SIGMA_ONE_PASS=True"
V="base;gaussian_tau.SOLVE_WARPS=4,gaussian_tau.SPLIT_SOLVE_P=128;$S;$S,$P.DOT_ITERS=1;$P.NUM_WARPS=4"
timeout 240 python3 step_variants_gpu.py --selector Gaussian --batch 16 --data needles --contexts 65536,131072 \
  --reps 20 --variants "$V" 2>&1 | tee "$OUT/step-b16.txt" | tail -11
V="base;$S;$S,$P.DOT_ITERS=1"
timeout 120 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 65536,131072 \
  --reps 50 --variants "$V" 2>&1 | tee "$OUT/step-b1.txt" | tail -8
cd ..
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "gaussian_tau_forms" 2>&1 \
  | tee "$OUT/tests.txt" | tail -4
cd benchmarks
M="gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__block_size,launch__registers_per_thread,launch__occupancy_limit_registers,sm__warps_active.avg.pct_of_peak_sustained_active,sm__inst_executed.sum,sm__inst_executed.avg.per_cycle_active,smsp__issue_active.avg.pct_of_peak_sustained_active,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,lts__t_sector_hit_rate.pct,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
for c in Gaussian Exact; do
  timeout 120 ncu --kernel-name regex:_page_scores_kernel --launch-count 2 --csv --page raw --metrics "$M" \
    python3 ncu_step.py "1.5:$c" 131072 needles --batch 16 --steps 2 > "$OUT/ncu-$c.csv" 2>> "$OUT/ncu.err"
  echo "ncu $c rc=$?"; tail -c 300 "$OUT/ncu.err"
done
python3 - <<'PY'
import csv, os, re
for c in ("Gaussian", "Exact"):
    text = open(f"{os.environ['OUT']}/ncu-{c}.csv").read()
    lines = [l for l in text.splitlines() if l.startswith('"')]
    if len(lines) < 3: print(c, "no ncu rows"); continue
    rows = list(csv.reader(lines))
    head, data = rows[0], rows[2:]
    for r in data[-1:]:
        d = dict(zip(head, r))
        keep = {k: v for k, v in d.items() if re.search(r"duration|dram|grid|block_size|registers|warps_active|inst_executed|issue_active|sectors|requests|hit_rate", k)}
        stalls = sorted(((float(v.replace(",", "")), k.split("stalled_")[1].split("_per")[0]) for k, v in d.items()
                         if "stalled_" in k and v.replace(",", "").replace(".", "").isdigit()), reverse=True)[:6]
        print(c, keep); print(c, "top stalls", stalls)
PY
