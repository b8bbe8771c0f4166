# Session 50, call 3: the Gaussian step's glue (perf-log row 157: z a host constant, α − 1 as int words,
# the candidates read as bool: four launches fewer a step) and the spread τ̂ form from 8,192 pages a row
# (row 156), against the tree before them (HEAD's six files, carried as .scratch/base and swapped in for
# the middle process), same machine, same run; the gpu tests of the Gaussian ops and float64_of on CUDA.
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"  # at most 8 files come back
FILES="entmaxkv/backend.py entmaxkv/gaussian.py entmaxkv/selection.py kernels/gaussian_select.py kernels/gaussian_tau.py kernels/quest_select.py"
mkdir -p /tmp/new && for f in $FILES; do mkdir -p /tmp/new/$(dirname $f); cp $f /tmp/new/$f; done
step() {  # label, variants
  (cd benchmarks && timeout 100 python3 step_variants_gpu.py --selector Gaussian --batch 1 --data needles \
    --contexts 131072,65536 --reps 50 --variants "$2" 2>&1 | sed "s/^/$1 /" | grep -E "##|µs")
}
step new "base;gaussian_tau.SPREAD=False;base" | tee "$OUT/step-b1.txt"
for f in $FILES; do cp .scratch/base/$f $f; done
step old "base;base" | tee -a "$OUT/step-b1.txt"
(cd benchmarks && timeout 60 python3 profile_step.py --batch 1 --contexts 131072 --cases 1.5:Gaussian --data needles \
  --needles 4 --needle-run 16 2>&1 | grep -E "##|µs" | sed "s/^/old /") > "$OUT/profile.txt"
for f in $FILES; do cp /tmp/new/$f $f; done
step new "base" | tee -a "$OUT/step-b1.txt"
(cd benchmarks && timeout 60 python3 profile_step.py --batch 1 --contexts 131072 --cases 1.5:Gaussian --data needles \
  --needles 4 --needle-run 16 2>&1 | grep -E "##|µs" | sed "s/^/new /") >> "$OUT/profile.txt"
cat "$OUT/profile.txt" | grep "##"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -rf -n 8 \
  -k "gaussian or Gaussian or float64 or graph_replay or compile" tests/ 2>&1 | tail -5 | tee "$OUT/tests.txt"
timeout 110 python3 -m pytest -q -p no:cacheprovider -rf -n 8 tests/test_compiled.py -k "Gaussian or gaussian or graph" \
  2>&1 | tail -3 | tee -a "$OUT/tests.txt"
