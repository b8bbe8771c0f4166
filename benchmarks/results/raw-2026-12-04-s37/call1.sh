source .scratch/setup.sh
cd benchmarks
timeout 400 python3 profile_step.py --contexts 8192,32768,131072 --cases "1.5:TopK12.5box,1.5:TopK6.25box" --top 16 2>&1 | tee "$OUT/profile.txt" | tail -60
