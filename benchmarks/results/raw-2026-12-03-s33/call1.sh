source .scratch/setup.sh
bash benchmarks/gpu_session.sh box 2>&1 | tail -60
