source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 46 call 4: the gpu tests of gaussian_tau's two forms (split now on where the rows fill the
# SMs, its solve 16 warps and 1,024-page blocks: call 3) and of σ's one-pass tf32 oracle bound
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py tests/test_page_scores_chunked.py \
  -k "gaussian_tau_forms or (cuda and dot_sigma)" 2>&1 | tee "$OUT/tests.txt" | tail -6
