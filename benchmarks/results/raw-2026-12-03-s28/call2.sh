source .scratch/setup.sh
bash benchmarks/gpu_session.sh verify topk
