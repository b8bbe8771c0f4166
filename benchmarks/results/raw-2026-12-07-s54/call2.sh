# Session 54, call 2: session 53's unrun calls 2 and 3: which kernels pay for a cache's free room (the Gaussian
# step at 32K held in 128K slots), and whether gaussian_tau's spread form is the cause (SPREAD_MIN_PAGES=16384 keeps
# the one kernel at 8,192 page slots).
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
cd benchmarks
for room in 2048 98304; do
  timeout 50 python3 profile_step.py --batch 1 --contexts 32768 --cases 1.5:Gaussian,1.5:TopK12.5 --data needles \
    --needles 4 --needle-run 16 --room $room --top 16 2>&1 | grep -E "##|µs" > "$OUT/profile-room$room.txt"
done
timeout 50 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 32768 --reps 20 \
  --variants "base;gaussian_tau.SPREAD_MIN_PAGES=16384;base;gaussian_tau.SPREAD_MIN_PAGES=16384" --room 98304 2>&1 \
  | tee "$OUT/steps.txt" | grep -E "##|µs"
head -30 "$OUT/profile-room2048.txt" "$OUT/profile-room98304.txt"
# sparse_decode under PDL (out since session 9, when it cost the Dense step 1.5-2.6 µs; many kernels changed since)
PDLALL="pdl.PDL_MODULES='append page_scores quest_select code_scan gaussian_tau gaussian_select sparse_decode'"
for sel in Dense TopK12.5; do
  timeout 60 python3 step_variants_gpu.py --selector $sel --contexts 8192,32768,131072 --reps 20 \
    --variants "base;$PDLALL;base;$PDLALL" 2>&1 | tee -a "$OUT/steps-pdl.txt" | grep -E "##|µs"
done
