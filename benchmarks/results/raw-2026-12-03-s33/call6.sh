source .scratch/setup.sh
cd benchmarks
timeout 200 python3 profile_step.py --batch 16 --contexts 32768,65536 --cases "1.5:TopK6.25box,1.5:TopK6.25" 2>&1 | tee "$OUT/profile.txt" | tail -80
