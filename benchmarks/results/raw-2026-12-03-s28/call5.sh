source .scratch/setup.sh
OUT=$OUT bash benchmarks/gpu_session.sh soak 2>&1 | tail -12
rm -f $OUT/pip.log
