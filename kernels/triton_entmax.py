"""Dense α-entmax over the last dimension: one Triton program per row (the original EntmaxKV's
``entmaxkv.kernels.triton_entmax``).

The op ``entmaxkv::entmax_rows(x, alpha)`` works in float32 whatever the input dtype (fp16, bf16,
fp32; float64 inputs are computed in float32 too — use ``entmaxkv.entmax`` for a float64
oracle) and returns x's shape and dtype. Per row, with z = (α-1)·(x - max x), so that max z = 0:

* α = 1: softmax (three passes: max, Σ exp, write).
* α > 1: τ lies in [-1, 0] (the top entry alone has mass ≥ 1 at τ = -1; at τ = 0 every mass
  is 0), and a fixed number of bisection steps (``BISECTION_STEPS``, below float32
  resolution) narrows it. For α = 2 and 1.5 the support S = {z > τ} found that way then gives
  τ exactly: α = 2: τ = (Σ_S z - 1)/|S|; α = 1.5: τ = mean_S - sqrt((1 - Σ_S (z - mean_S)²)/|S|).
  Other α: weights at the bisection τ, renormalised to sum to 1 (as ``entmaxkv.entmax`` does).

Subtracting the row maximum first keeps large offsets harmless. Rows of any length: each pass
loops over blocks of at most ``MAX_BLOCK`` entries. Entries equal to -inf get weight 0. A row
that is entirely -inf gives what ``entmaxkv.entmax`` gives: zeros for α = 1.5 and 2, NaN for
α = 1 (like ``torch.softmax``) and other α (0/0 when renormalising).

Bytes: each pass reads the row once; α > 1 makes ``BISECTION_STEPS`` + 3 passes, which stay in
L1/L2 for rows of a few thousand entries. This is a dense utility kernel, not a decode path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from entmaxkv.kernels.common import alpha_kind  # MODE: 0 softmax, 1 α = 1.5, 2 α = 2, 3 other α

__all__ = ["triton_entmax", "entmax_rows", "BISECTION_STEPS", "MAX_BLOCK"]

BISECTION_STEPS = 40  # bracket [-1, 0] halved 40 times: 1e-12, below float32 resolution of τ
MAX_BLOCK = 1024  # longer rows loop over blocks



@triton.jit
def _load_z(x_row, offs, n_cols, xmax, a1):
    """(α-1)·(x - max) for one block; -inf for masked tail entries and -inf inputs."""
    x = tl.load(x_row + offs, mask=offs < n_cols, other=float("-inf")).to(tl.float32)
    return a1 * (x - xmax)


@triton.jit
def _weights(z, tau, inv, MODE: tl.constexpr):
    """ρ(z - τ) = [z - τ]_+^(1/(α-1)); exp(z - τ) for softmax."""
    if MODE == 0:
        return tl.exp(z - tau)
    t = tl.maximum(z - tau, 0.0)
    if MODE == 2:
        return t
    if MODE == 1:
        return t * t
    return tl.where(t > 0.0, tl.exp2(tl.log2(tl.maximum(t, 1e-30)) * inv), 0.0)


@triton.jit
def _row_sum(x_row, n_cols, xmax, a1, tau, inv, BLOCK: tl.constexpr, MODE: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += _weights(_load_z(x_row, offs, n_cols, xmax, a1), tau, inv, MODE)
    return tl.sum(acc, axis=0)


@triton.jit
def _entmax_rows_kernel(x_ptr, out_ptr, n_cols, alpha, n_bisect, BLOCK: tl.constexpr, MODE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * n_cols
    o_row = out_ptr + row * n_cols
    # Python floats can arrive as fp64 under Inductor: fix the working type here.
    alpha = tl.cast(alpha, tl.float32)
    a1 = alpha - 1.0
    if MODE == 0:
        a1 = 1.0
    inv = 1.0 / a1

    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = tl.maximum(m, tl.load(x_row + offs, mask=offs < n_cols, other=float("-inf")).to(tl.float32))
    xmax = tl.max(m, axis=0)
    # An all -inf row: shift by 0 so z stays -inf (not NaN); the result is then defined below.
    xmax = tl.where(xmax > float("-inf"), xmax, 0.0)

    if MODE == 0:
        tau = tl.log(_row_sum(x_row, n_cols, xmax, a1, 0.0, inv, BLOCK, MODE))
    else:
        lo = -1.0
        hi = 0.0
        for _ in range(n_bisect):
            mid = (lo + hi) * 0.5
            f = _row_sum(x_row, n_cols, xmax, a1, mid, inv, BLOCK, MODE) - 1.0
            lo = tl.where(f >= 0.0, mid, lo)
            hi = tl.where(f >= 0.0, hi, mid)
        tau = (lo + hi) * 0.5
        if MODE == 2 or MODE == 1:
            # The support at the bisection τ gives τ in closed form (exact up to rounding).
            cnt = tl.zeros([BLOCK], dtype=tl.float32)
            s1 = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                z = _load_z(x_row, offs, n_cols, xmax, a1)
                inside = z > tau
                cnt += tl.where(inside, 1.0, 0.0)
                s1 += tl.where(inside, z, 0.0)
            k = tl.maximum(tl.sum(cnt, axis=0), 1.0)
            mean = tl.sum(s1, axis=0) / k
            if MODE == 2:
                tau = mean - 1.0 / k
            else:
                s2 = tl.zeros([BLOCK], dtype=tl.float32)  # centred: no cancellation
                for start in range(0, n_cols, BLOCK):
                    offs = start + tl.arange(0, BLOCK)
                    z = _load_z(x_row, offs, n_cols, xmax, a1)
                    s2 += tl.where(z > tau, (z - mean) * (z - mean), 0.0)
                tau = mean - tl.sqrt(tl.maximum((1.0 - tl.sum(s2, axis=0)) / k, 0.0))

    norm = 1.0
    if MODE == 3:
        norm = _row_sum(x_row, n_cols, xmax, a1, tau, inv, BLOCK, MODE)
    for start in range(0, n_cols, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        p = _weights(_load_z(x_row, offs, n_cols, xmax, a1), tau, inv, MODE)
        if MODE == 0 or MODE == 3:
            p = p / norm
        tl.store(o_row + offs, p.to(out_ptr.dtype.element_ty), mask=offs < n_cols)


@triton_op("entmaxkv::entmax_rows", mutates_args=())
def entmax_rows(x: Tensor, alpha: float) -> Tensor:
    """α-entmax over the last dim of ``x`` (any shape, fp16/bf16/fp32/fp64), α in [1, 2].
    Returns a new contiguous tensor of x's shape and dtype. See the module docstring."""
    out = x.new_empty(x.shape)
    n_cols = x.shape[-1] if x.dim() > 0 else 1
    rows = x.numel() // max(n_cols, 1)
    if rows == 0 or n_cols == 0:
        return out
    block = min(triton.next_power_of_2(n_cols), MAX_BLOCK)
    wrap_triton(_entmax_rows_kernel)[(rows,)](
        x.contiguous(), out, n_cols, alpha, BISECTION_STEPS, BLOCK=block, MODE=alpha_kind(alpha)
    )
    return out


@entmax_rows.register_fake
def _entmax_rows_fake(x: Tensor, alpha: float) -> Tensor:
    return x.new_empty(x.shape)


def triton_entmax(
    x: Tensor, alpha: float = 1.5, n_iter: int = 10, fast_math: bool = True, *, backend: str = "auto"
) -> Tensor:
    """α-entmax along the last dimension (α = 1 softmax, 2 sparsemax), the original signature.

    Args:
        x: [..., N] fp16, bf16, fp32 (or fp64 on the reference backend).
        alpha: in [1, 2].
        n_iter, fast_math: accepted for compatibility and without effect: τ is found with a
            fixed bisection that reaches float32 resolution (then solved exactly for α = 1.5
            and 2), and no approximate math is used.
        backend: ``"auto"`` runs the Triton op on CUDA tensors and ``entmaxkv.entmax`` (the
            pure-torch reference) elsewhere; ``"triton"`` always runs the op (on the CPU only
            under ``TRITON_INTERPRET=1``); ``"reference"`` always runs ``entmaxkv.entmax``.
    Returns a tensor of x's shape and dtype. Forward only (no autograd formula).

    Example::

        >>> p = triton_entmax(torch.randn(4, 128, device="cuda"), alpha=1.5)
    """
    from entmaxkv.entmax import entmax
    from entmaxkv.validation import check_alpha

    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_alpha(alpha)
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    if backend == "reference" or (backend == "auto" and x.device.type != "cuda"):
        return entmax(x, float(alpha), dim=-1)
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x must be a floating tensor (fp16, bf16, fp32, fp64), got {x.dtype}")
    return torch.ops.entmaxkv.entmax_rows(x, float(alpha))
