"""Does a batched ``tl.dot`` with a small N give the right products on this GPU? A standalone
check of the shape behind session 21's finding: the key-code scan's tensor-core form, whose dot
is [BLOCK_P, S, K] x [BLOCK_P, K, G] (fp16 in, fp32 out), was off by 4–10 ε at G = 1 on the
H200 and right at G = 2, 3, 4, 8 (``benchmarks/results/decode-2026-12-01-s21.md``, call 6).
Session 22 ran it: every N = 1..16 right (``decode-2026-12-01-s22.md``, call 1), so the scan now
pads its head tile to two at G = 1 (``code_scan._heads_padded``). This script takes the scan's shape alone —
small exact integer codes against fp16 values, two dots chained in one accumulator, as the scan's
low and high nibbles — and prints the largest error against a float64 matmul for each N, with
the operands as the scan builds them (the right operand transposed from a [B, N, K] tile) and
as plain loads. Exact products and sums of 2K terms at most: any error above fp32 rounding is a
wrong result. Measures only.

    python benchmarks/small_n_dot_gpu.py                 # on a GPU
    TRITON_INTERPRET=1 python benchmarks/small_n_dot_gpu.py --device cpu   # the interpreter (a numpy matmul)
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl


@triton.jit
def _chained_dot(codes_lo, codes_hi, right_lo, right_hi, out, B: tl.constexpr, M: tl.constexpr,
                 K: tl.constexpr, N: tl.constexpr, TRANSPOSED: tl.constexpr):
    """out [B, M, N] = codes_lo @ right_lo + codes_hi @ right_hi, chained in one fp32 accumulator;
    codes [B, M, K] fp16; right [B, K, N] fp16, read as a [B, N, K] tile and permuted
    (``TRANSPOSED``, as the code scan builds its operand) or as a [B, K, N] load."""
    b = tl.arange(0, B)[:, None, None]
    m = tl.arange(0, M)[None, :, None]
    k = tl.arange(0, K)[None, None, :]
    lo = tl.load(codes_lo + (b * M + m) * K + k)
    hi = tl.load(codes_hi + (b * M + m) * K + k)
    if TRANSPOSED:
        n = tl.arange(0, N)[None, :, None]
        r_lo = tl.permute(tl.load(right_lo + (b * K + tl.arange(0, K)[None, None, :]) * N + n), (0, 2, 1))
        r_hi = tl.permute(tl.load(right_hi + (b * K + tl.arange(0, K)[None, None, :]) * N + n), (0, 2, 1))
    else:
        kk = tl.arange(0, K)[None, :, None]
        n = tl.arange(0, N)[None, None, :]
        r_lo = tl.load(right_lo + (b * K + kk) * N + n)
        r_hi = tl.load(right_hi + (b * K + kk) * N + n)
    acc = tl.dot(hi, r_hi, tl.dot(lo, r_lo, out_dtype=tl.float32), out_dtype=tl.float32)
    tl.store(out + (b * M + m) * N + tl.arange(0, N)[None, None, :], acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ns", default="1,2,4,8,16")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    b, m, k = 2, 16, 64
    print("N  transposed  max |err| (fp32 ulps of the row's magnitude)")
    for n in (int(x) for x in args.ns.split(",")):
        codes = [torch.randint(0, 16, (b, m, k), generator=g).half() for _ in range(2)]
        right = [(torch.randn(b, k, n, generator=g) * 64).half() for _ in range(2)]
        want = sum(c.double() @ r.double() for c, r in zip(codes, right))
        scale = sum(c.double() @ r.double().abs() for c, r in zip(codes, right)).clamp_min(1e-30)
        for transposed in (True, False):
            out = torch.full((b, m, n), float("nan"), device=args.device)
            _chained_dot[(1,)](*(t.to(args.device) for t in codes + right), out, B=b, M=m, K=k, N=n,
                               TRANSPOSED=transposed)
            err = ((out.double().cpu() - want).abs() / (scale * 2.0**-24)).max().item()
            print(f"{n:<2} {str(transposed):<11} {err:.3g}", flush=True)


if __name__ == "__main__":
    main()
