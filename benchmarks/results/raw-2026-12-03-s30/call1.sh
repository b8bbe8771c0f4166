source .scratch/setup.sh
cd benchmarks
timeout 200 python3 profile_step.py --contexts 8192,16384 --cases "1.5:TopK12.5,1.5:Dense,1:Dense" --top 12 2>&1 | tee "$OUT/profile-8k16k.txt" | tail -80
cd ..
timeout 330 python3 benchmarks/e2e_speed.py --contexts 8192 32768 131072 --variants none sdpa topk topk1 dense \
    --no-compile --out "$OUT" 2>&1 | tail -20 | tee "$OUT/e2e.txt"
ls "$OUT"
