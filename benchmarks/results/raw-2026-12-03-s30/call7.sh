source .scratch/setup.sh
cd benchmarks
V="base;quest_select.RANK_PAIRS=32768;quest_select.RANK_OWN_KEYS=False,quest_select.RANK_PAIRS=8192;quest_select.RANK_OWN_KEYS=False;base"
for room in 2048 1024; do
timeout 60 python3 step_variants_gpu.py --room $room --contexts 4096,8192 --alphas 1.5 --reps 40 --variants "$V" 2>&1 | grep -E "^##|µs" | tee -a "$OUT/b1.txt"
done
timeout 60 python3 step_variants_gpu.py --room 2048 --batch 16 --contexts 8192 --alphas 1.5 --reps 20 --variants "$V" 2>&1 | grep -E "^##|µs" | tee -a "$OUT/b16.txt"
