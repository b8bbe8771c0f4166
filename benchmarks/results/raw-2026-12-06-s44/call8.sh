bash benchmarks/gpu_session.sh verify   # session 44 call 8 (run(carry=[".whl"])), tree 6f2345c
