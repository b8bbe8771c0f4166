# Session 52, call 1: the Gaussian step with gaussian_tau's candidates from the lengths (no candidate mask:
# two launches fewer a step; perf-log row 161) against the tree before it (c21c915, carried as ../old), same
# machine, same call, the trees alternated (B = 1: old, new, old; each `pip install -e` of its tree); launch
# sizes of gaussian_select (CHUNK 256 against 1,024) and of page_scores (32-page blocks) in the new tree; the gpu
# tests of the Gaussian path on the new tree; the B = 1 128K step's kernels. Run from a clean `git archive` of the new tree
# (carried as .scratch/clean), the old one's beside it (.scratch/old).
source benchmarks/results/raw-2026-12-05-s39/setup.sh
rm -f "$OUT/pip.log"
NEW=$PWD
OLD=$(cd ../old && pwd)
use() { (cd "$1" && python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/pip.log 2>&1) || tail -3 /tmp/pip.log; }
steps() {  # tree, label, batch, contexts, reps, variants, seconds, [extra args]
  (cd "$1/benchmarks" && timeout "$7" python3 step_variants_gpu.py --selector Gaussian --batch "$3" --data needles \
    --contexts "$4" --reps "$5" --variants "$6" ${8:-} 2>&1 | sed "s/^/[$2] /" | tee -a "$OUT/steps.txt" \
    | grep -E "##|µs")
}
timeout 110 python3 -m pytest -q -m gpu -p no:cacheprovider -rf -n 14 -k "gaussian or Gaussian" tests/ 2>&1 \
  | tail -4 | tee "$OUT/tests.txt"
C="base;gaussian_select.CHUNK=256;page_scores.DOT_BLOCK_P=32;base"
use "$OLD"; steps "$OLD" old 1 131072,65536 20 base 50
use "$NEW"; steps "$NEW" new 1 131072,65536 20 "$C" 75
use "$OLD"; steps "$OLD" old 1 131072,65536 20 base 50; steps "$OLD" old 16 65536 10 base 45
steps "$OLD" old 1 32768 20 base 30 "--room 98304"
use "$NEW"; steps "$NEW" new 16 65536 10 "$C" 70
steps "$NEW" new 1 32768 20 base 30 "--room 98304"
cd benchmarks
timeout 40 python3 profile_step.py --batch 1 --contexts 131072 --cases 1.5:Gaussian --data needles --needles 4 \
  --needle-run 16 2>&1 | grep -E "##|µs" > "$OUT/profile-b1.txt"; head -14 "$OUT/profile-b1.txt"
