source benchmarks/results/raw-2026-12-05-s39/setup.sh  # install the repo and the carried wheels
# session 44 call 2: quest_select's spread search (kernels/spread_search.py) — its gpu tests, then
# the boxed TopK step A/B: SPREAD '' (one program a row) / 'fused' / 'split', B = 1 and 16
timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/test_quest_select.py \
  -k "spread_search_on_the_gpu or (on_the_gpu_equals and 8300)" 2>&1 | tail -15 | tee "$OUT/tests.txt"
cd benchmarks
V="quest_select.SPREAD='';quest_select.SPREAD='fused';quest_select.SPREAD='split';quest_select.SPREAD=''"
timeout 170 python3 step_variants_gpu.py --contexts 16384,32768,65536,131072 --alphas 1.5 --selector TopK6.25 \
  --page-boxes --layers 4 --reps 30 --variants "$V" 2>&1 | tee "$OUT/variants-b1.txt" | tail -22
timeout 80 python3 step_variants_gpu.py --batch 16 --contexts 65536 --alphas 1.5 --selector TopK6.25 \
  --page-boxes --reps 30 --variants "quest_select.SPREAD='';quest_select.SPREAD='split'" 2>&1 \
  | tee "$OUT/variants-b16.txt" | tail -8
timeout 60 python3 profile_step.py --contexts 131072 --cases "1.5:TopK6.25box" 2>&1 | tee "$OUT/profile.txt" | tail -20
