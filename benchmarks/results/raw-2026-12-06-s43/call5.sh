bash benchmarks/gpu_session.sh verify   # session 43 call 5 (run(carry=[".whl"]))
