# Session 53, call 2: where a cache's free room costs (call 1: the Gaussian step at 32K held in 128K slots
# 67.2-67.5 µs against 61.5-62.2 without the room): the eager step's kernels at 32K with 2,048 and with
# 98,304 free slots, Gaussian and TopK 12.5% (needle inputs, B = 1),
# and the Gaussian step with gaussian_tau's one-kernel form forced at 8,192 page slots.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
cd benchmarks
for room in 2048 98304; do
  timeout 60 python3 profile_step.py --batch 1 --contexts 32768 --cases 1.5:Gaussian,1.5:TopK12.5 --data needles \
    --needles 4 --needle-run 16 --room $room --top 16 2>&1 | grep -E "##|µs" > "$OUT/profile-room$room.txt"
  cat "$OUT/profile-room$room.txt"
done
# is it τ̂'s form? At 8,192 page slots gaussian_tau takes its spread form (three launches) whatever the
# lengths; SPREAD_MIN_PAGES=16384 keeps the one kernel there
for room in 98304 184; do
  timeout 45 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles --contexts 32768 --reps 20 \
    --variants "base;gaussian_tau.SPREAD_MIN_PAGES=16384;base" --room $room 2>&1 | tee -a "$OUT/steps.txt" \
    | grep -E "##|µs"
done
