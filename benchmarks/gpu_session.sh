#!/usr/bin/env bash
# What a device session runs; each phase fits the device tool's 10-minute limit, and one call
# may run several (`gpu_session.sh verify topk`):
#
#   bash benchmarks/gpu_session.sh verify   # install; the gpu-marked tests and the other CUDA tests
#   bash benchmarks/gpu_session.sh select   # quest_select's launch-constant sweep against the torch glue
#   bash benchmarks/gpu_session.sh topk     # issue 13's table: B = 1, 32/8, fp16, 8K-128K, Dense and TopK
#   bash benchmarks/gpu_session.sh shapes   # the README table's other B = 1 rows: bf16, 32/32 heads,
#                                           # Dense α = 2, 1M tokens (~6 minutes)
#   bash benchmarks/gpu_session.sh sparse   # needle inputs: Gaussian, Exact (B = 1 by decode.py, B = 16
#                                           # by step_variants_gpu.py), Exact with 4-bit codes (B = 1, 16, MHA)
#   bash benchmarks/gpu_session.sh b16      # TopK at B = 16 (32/8 fp16 and bf16, 32/32; 12.5% and
#                                           # 6.25%) and Dense by step_variants_gpu.py: no float32 reference run
#   quick / changed / codes / e2e           # short forms for a last call: 3-context TopK/Dense table,
#                                           # the changed ops' gpu tests, the key-code step, issue 10's e2e
#   profile                                 # per-kernel time of TopK (8K, 128K) and Exact with codes (128K)
#   box                                     # the page boxes' gpu tests, page_box_upper against the fp16 page
#                                           # bounds, the boxed TopK step against the min/max one (rows 133–134)
#   gaussian                                # the Gaussian ops' gpu tests, SIGMA_DOT and the τ kernel's shape
#                                           # for many rows A/B at B = 16 on needles, the needles table
#   variants                                # the TopK step with sparse_decode's constants flipped
#   soak                                    # 10,000 graph replays at 64K with every selector (soak.py)
#
# The README's status table: `verify topk`, `shapes`, `b16 soak`, `sparse`, one call each, 5–8
# minutes a call (session 28 ran the same commands from its own scripts, kept in
# benchmarks/results/raw-2026-12-03-s28/).
#
# Logs and raw json go to $OUT (or benchmarks/results/raw-<date>/ without it); each phase prints
# a short table last. Copy what you quote into benchmarks/results/ with date, GPU and versions.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/raw-$(date +%F)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"  # the benchmarks run from benchmarks/
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/pip.log" 2>&1
# The tests compare against the `entmax` library, which the GPU machine lacks: carry its wheel,
# and pytest-xdist's for `verify` (`pip download --no-deps entmax pytest-xdist execnet -d .whl`,
# then `run(carry=[".whl"])`).
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >>"$out/pip.log" 2>&1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
    | tee "$out/versions.txt"
bench() { (cd benchmarks && python3 "$@"); }

for phase in "${@:-verify}"; do
case "$phase" in
verify)
    # the whole gpu suite in ~2.5 minutes over 14 workers with pytest-xdist (carried as a wheel, below;
    # serially it takes over 10): ENTMAXKV_PDL=0 in front runs it without kernels/pdl.py's launches
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 14")
    timeout 330 python3 -m pytest -q -m gpu $workers -p no:cacheprovider --durations=10 -rf 2>&1 \
        | tail -30 | tee "$out/gpu-tests.txt"
    # CUDA tests without the gpu marker: graph replay, generation, torch.func on CUDA, the soaks.
    timeout 150 python3 -m pytest -q tests/test_compiled.py tests/test_compiled_generate.py tests/test_func.py \
        -k "cuda or graph" -p no:cacheprovider --durations=5 -rf 2>&1 | tail -15 | tee "$out/cuda-tests.txt"
    ;;
select)
    timeout 150 python3 benchmarks/quest_select_gpu.py --contexts 8192,131072 2>&1 | tee "$out/quest-select.txt"
    ;;
topk)
    bench decode.py --contexts 8192,16384,32768,65536,131072 --batches 1 --heads 32/8 --dtypes fp16 \
        --alphas 1,1.5 --coverages 6.25,12.5 --selectors Dense,TopK --reps 30 --rounds 3 --out "$out/topk"
    ;;
shapes)
    bench decode.py --contexts 8192,16384,65536,131072 --batches 1 --heads 32/8 --dtypes bf16 --alphas 1,1.5 \
        --coverages 6.25,12.5 --selectors Dense,TopK --reps 30 --rounds 3 --out "$out/bf16" 2>&1 | grep -E "^\|"
    bench decode.py --contexts 8192,16384,65536,131072 --batches 1 --heads 32/32 --dtypes fp16 --alphas 1.5 \
        --coverages 6.25,12.5 --selectors Dense,TopK --reps 20 --rounds 3 --out "$out/mha" 2>&1 | grep -E "^\|"
    bench decode.py --contexts 8192,32768,131072 --batches 1 --heads 32/8 --dtypes fp16 --alphas 2 \
        --selectors Dense --reps 30 --rounds 3 --out "$out/dense-a2" 2>&1 | grep -E "^\|"
    bench decode.py --contexts 1048576 --batches 1 --heads 32/8 --dtypes fp16 --alphas 1,1.5 --coverages 3 \
        --selectors TopK --reps 10 --rounds 3 --out "$out/1m" 2>&1 | grep -E "^\|"
    ;;
b16)
    for spec in "--dtype fp16 --contexts 65536,131072" "--dtype bf16 --contexts 65536,131072" \
        "--selector TopK6.25 --contexts 65536,131072" "--heads 32/32 --contexts 65536" \
        "--selector Dense --contexts 65536,131072"; do
        timeout 150 bash -c "cd benchmarks && python3 step_variants_gpu.py --batch 16 --alphas 1.5 --reps 10 $spec" \
            2>&1 | grep -E "^##|µs" | tee -a "$out/b16.txt"
    done
    ;;
sparse)
    bench decode.py --data needles --needles 4 --needle-run 16 --contexts 65536,131072 --batches 1 --heads 32/8 \
        --dtypes fp16 --alphas 1.5 --coverages 12.5 --selectors Gaussian,Exact --reps 20 --rounds 3 \
        --out "$out/needles"
    for selector in Exact Gaussian; do
        timeout 150 bash -c "cd benchmarks && python3 step_variants_gpu.py --data needles --batch 16 \
            --contexts 65536,131072 --selector $selector --reps 10" 2>&1 | grep -E "^##|µs" | tee -a "$out/needles-b16.txt"
    done
    bench keycodes_gpu.py --contexts 65536,131072 2>&1 | tee "$out/keycodes.txt"
    timeout 200 bash -c "cd benchmarks && python3 keycodes_gpu.py --paths dot --contexts 131072 --batch 16 --reps 8 \
        --rounds 3 --out '$out/codes-b16'" 2>&1 | grep -E "^\|" | tee "$out/keycodes-b16.txt"
    timeout 120 bash -c "cd benchmarks && python3 keycodes_gpu.py --paths dot --contexts 65536,131072 --hkv 32 \
        --reps 20 --rounds 3 --out '$out/codes-mha'" 2>&1 | grep -E "^\|" | tee "$out/keycodes-mha.txt"
    ;;
quick)  # the TopK / Dense step at three contexts: a before/after check of a kernel change
    timeout 120 bash -c "cd benchmarks && python3 decode.py --contexts 8192,32768,131072 --batches 1 --heads 32/8 \
        --dtypes fp16 --alphas 1,1.5 --coverages 12.5 --selectors Dense,TopK --reps 30 --rounds 3 --out '$out/quick'" \
        2>&1 | grep -E "^\|" | tee "$out/quick.txt"
    ;;
changed)  # the gpu tests of the ops this session changed, without the slow full run (~1 minute)
    timeout 300 python3 -m pytest -q -p no:cacheprovider -rf --durations=5 -m gpu tests/test_stats_dtype.py \
        tests/test_code_dot.py tests/test_kernel_edge_cases.py tests/test_quest_select.py \
        tests/test_selection_ops_edge_cases.py 2>&1 | tail -15 | tee "$out/changed-tests.txt"
    ;;
codes)  # the key-code step with the bare scan, with the newest page and with the seed
    timeout 120 bash -c "cd benchmarks && python3 keycodes_gpu.py --contexts 65536,131072 --out '$out/codes'" 2>&1 \
        | tail -6 | tee "$out/keycodes.txt"
    ;;
variants)  # the TopK step at α = 1.5 with sparse_decode's τ-kernel constants flipped
    timeout 200 bash -c "cd benchmarks && python3 step_variants_gpu.py --contexts 8192,131072 --alphas 1.5 --variants \
'base;sparse_decode.EXACT_ITERS=0;sparse_decode.GATHER=64;sparse_decode.ROWS_PER_ITER=128;sparse_decode.ROWS_PER_ITER=32;\
sparse_decode.BLOCK_REGS=64;sparse_decode.PROGRAMS_PER_SM=1;sparse_decode.PROGRAMS_PER_SM=4'" 2>&1 | tee "$out/variants.txt"
    ;;
profile)  # where the step's time goes: per-kernel time of TopK at 8K and 128K, Exact with codes at 128K
    timeout 120 bash -c "cd benchmarks && python3 profile_step.py --contexts 8192,131072 --cases 1:TopK12.5,1.5:TopK12.5 \
        --top 10" 2>&1 | tee "$out/profile.txt" | tail -40
    timeout 90 bash -c "cd benchmarks && python3 profile_step.py --contexts 131072 --cases 1.5:ExactCodes4 --data needles \
        --top 10" 2>&1 | tee "$out/profile-codes.txt" | tail -16
    ;;
gaussian)  # session 17's open questions: the Gaussian ops' gpu tests (the floor from gaussian_select, the
    # dot_sigma oracle form), then on needles at B = 16 the σ tensor-core form and the τ kernel's shape for
    # many rows against the defaults in the same run, and the needles table with Exact at B = 1 and 16
    timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -rf $(python3 -c "import xdist" 2>/dev/null && echo "-n 14") \
        -k "gaussian or Gaussian or page_scores or page_bounds or ops_match or graph_replay" 2>&1 | tail -5 \
        | tee "$out/gaussian-tests.txt"
    timeout 200 bash -c "cd benchmarks && python3 step_variants_gpu.py --data needles --batch 16 --contexts 65536,131072 \
        --selector Gaussian --reps 20 --variants 'base;page_scores.SIGMA_DOT=True;gaussian_tau.BLOCK_P=512,gaussian_tau.TAU_WARPS=8'" \
        2>&1 | grep -E "^##|µs|failed" | tee "$out/gaussian-variants.txt"
    bench decode.py --data needles --needles 4 --needle-run 16 --contexts 65536,131072 --batches 1,16 --heads 32/8 \
        --dtypes fp16 --alphas 1.5 --coverages 12.5 --selectors TopK,Gaussian,Exact --reps 20 --rounds 3 \
        --out "$out/needles"
    ;;
soak)  # issue 13's soak: 10,000 graph replays at 64K a selector, no host sync, no new specialisation
    timeout 300 python3 benchmarks/soak.py --out "$out/soak" 2>&1 | tail -8 | tee "$out/soak.txt"
    ;;
box)  # perf-log rows 133–134: the page boxes' gpu tests, the kernel alone against the fp16 page bounds,
    # then the TopK step on a boxed cache against the min/max step in one run (decode.py --page-boxes)
    timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -rf $(python3 -c "import xdist" 2>/dev/null && echo "-n 8") \
        tests/test_page_box.py tests/test_page_box_cache.py 2>&1 | tail -5 | tee "$out/box-tests.txt"
    timeout 150 bash -c "cd benchmarks && python3 page_box_gpu.py --no-step --contexts 65536,131072 --batches 16,1" \
        2>&1 | tee "$out/page-box.txt" | grep -E "^##|µs|kept"
    timeout 250 python3 benchmarks/decode.py --page-boxes --dtypes fp16 --alphas 1.5 --coverages 6.25,12.5 \
        --selectors TopK --reps 20 --rounds 3 --contexts 32768,65536,131072 --batches 1,16 --heads 32/8 \
        --out "$out/decode-box" 2>&1 | grep "^| "
    ;;
e2e)  # issue 10's end-to-end table (8B shape, random weights, eager kernels in one graph a token)
    timeout 200 python3 benchmarks/e2e_speed.py --contexts 8192 32768 131072 --variants none sdpa topk topk1 dense \
        --no-compile --out "$out" 2>&1 | tail -6 | tee "$out/e2e.txt"
    ;;
*)
    echo "unknown phase $phase (verify, select, topk, shapes, b16, sparse, quick, changed, codes, profile, variants," \
        "gaussian, soak, e2e, box)" >&2
    exit 2
    ;;
esac
done
