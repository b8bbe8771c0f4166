# session 47 (CPU, no GPU): every kernel each step launches (D = 128, G = 4, fp16), compiled for sm_90a
# as a CUDA launch specialises it, with Triton 3.7.1's ptxas: registers, spills, static SASS.
# Run from the repository root: bash benchmarks/results/raw-2026-12-07-s47/kernel_registers_steps.sh
for sel in "Dense()" "TopK(coverage=0.125)" "Gaussian()" "Exact()"; do
  echo "## $sel"
  python benchmarks/kernel_registers.py --selector "$sel"
done
echo "## TopK(coverage=0.125), page boxes"
python benchmarks/kernel_registers.py --selector "TopK(coverage=0.125)" --page-boxes
echo "## Exact(), 4-bit key codes"
python benchmarks/kernel_registers.py --selector "Exact()" --key-bits 4
echo "## the scoring kernel at its long-context token block (BLOCK_N = 128), 4 and 2 warps"
python benchmarks/kernel_registers.py --kernel _scores_kernel --selector "Dense()" --override BLOCK_N=128
python benchmarks/kernel_registers.py --kernel _scores_kernel --selector "Dense()" --override BLOCK_N=128,warps=2
