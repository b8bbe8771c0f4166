# session 47 (CPU, no GPU): page_scores' specialisations as the Gaussian step launches them (D = 128,
# G = 4, fp16), compiled for sm_90a with Triton 3.7.1's ptxas: registers, spills, static SASS; other
# page and chunk shapes beside them. Perf-log row 152 (a retracted finding: a first version of the
# tool left D unmarked as divisible by 16 and showed spills a launch does not have).
# Run from the repository root: bash benchmarks/results/raw-2026-12-07-s47/kernel_registers.sh
K="--kernel _page_scores_kernel --selector Gaussian()"
P=page_scores
V="base;$P.BLOCK_P=8,$P.CHUNK=8;$P.BLOCK_P=16,$P.CHUNK=8;$P.BLOCK_P=8,$P.CHUNK=16;$P.BLOCK_P=4,$P.CHUNK=8,$P.NUM_WARPS=1"
V="$V;$P.BLOCK_P=16,$P.CHUNK=8,$P.NUM_WARPS=4;$P.NUM_WARPS=4"
echo "## as launched (the newest page's program in the same kernel)"
python benchmarks/kernel_registers.py $K --variants "base;$P.BLOCK_P=8,$P.CHUNK=8"
echo "## the page block alone (WITH_NEWEST=False)"
python benchmarks/kernel_registers.py $K --variants "$V" --override WITH_NEWEST=False
echo "## without σ (the lean CUDA-core form: float32 caches), the page block alone"
python benchmarks/kernel_registers.py $K --variants "base;$P.BLOCK_P=8,$P.CHUNK=8" --override WITH_NEWEST=False,WITH_SIGMA=False
echo "## σ on tensor cores (SIGMA_DOT, one tf32 pass), as at B = 16 (4 blocks in turn, 2 stages) and one block"
python benchmarks/kernel_registers.py $K --variants "$P.SIGMA_DOT=True,$P.SIGMA_ONE_PASS=True" --override ITERS=4,STAGES=2
python benchmarks/kernel_registers.py $K --variants "$P.SIGMA_DOT=True,$P.SIGMA_ONE_PASS=True"
