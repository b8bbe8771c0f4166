"""``@triton.jit`` helpers shared by the ops, and the host-side launch conventions.

Conventions every op follows:
- α is a runtime float; ``alpha_kind(α)`` picks a fast path as a ``tl.constexpr``
  (0: softmax, 1: α = 1.5, 2: α = 2, 3: any other α in (1, 2)).
- Loads are converted to the work dtype (float32, or float64 for a float64 cache) right after
  ``tl.load``: that is what fast kernels do anyway, and bfloat16 arithmetic is broken under
  Triton's CPU interpreter.
- Float scalars are cast inside kernels (Inductor may pass Python floats as fp64); where float64
  exactness matters (a float64 cache) the launcher folds the scale into q, or passes the scalar
  in a one-element float64 tensor made by a fill (never a host-to-device copy).
- Layouts are the cache's own contiguous storage; offsets are computed in int64.
- Launch configurations are fixed per shape (no autotuning); outputs are allocated per call.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["alpha_kind", "work_dtype_of", "next_pow2", "candidate_count", "rho", "rho_slope", "page_stats_of",
           "page_box_of", "store_box", "register_batch_rule",
           "SOFTMAX", "ALPHA_15", "ALPHA_2", "ALPHA_ANY"]

SOFTMAX, ALPHA_15, ALPHA_2, ALPHA_ANY = 0, 1, 2, 3


def alpha_kind(alpha: float) -> int:
    if alpha == 1.0:
        return SOFTMAX
    if alpha == 1.5:
        return ALPHA_15
    if alpha == 2.0:
        return ALPHA_2
    return ALPHA_ANY


def work_dtype_of(dtype: torch.dtype) -> torch.dtype:
    """Scores, statistics and sums are float32, or float64 for a float64 cache."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def multiprocessors(device: torch.device) -> int:
    """The device's SM count (1 off CUDA: the interpreter runs one program at a time)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@triton.jit
def candidate_count(length, S, P):
    """n = (len − 1) // S, int32: how many pages of a sequence of ``length`` tokens are
    candidates — its full pages before the one holding the newest token (0 for an empty
    sequence), never more than the P page slots (also for a length past the capacity).
    Computed in the length's own integer type until clamped to P: an int64 length does not wrap."""
    return tl.minimum(tl.maximum(length - 1, 0) // S, P).to(tl.int32)


@triton.jit
def rho(x, inv_power, KIND: tl.constexpr):
    """Entmax weight as a function of x = lin(α)·s − τ: [x]_+^(1/(α−1)), or exp(x) for softmax."""
    if KIND == 0:
        return tl.exp(x)
    elif KIND == 1:
        y = tl.maximum(x, 0.0)
        return y * y
    elif KIND == 2:
        return tl.maximum(x, 0.0)
    else:
        y = tl.maximum(x, 0.0)
        return tl.where(y > 0, tl.exp2(tl.log2(tl.where(y > 0, y, 1.0)) * inv_power), 0.0)


@triton.jit
def rho_slope(x, inv_power, KIND: tl.constexpr):
    """d rho / dx for x > 0 (0 elsewhere), entmax kinds only."""
    if KIND == 1:
        return 2.0 * tl.maximum(x, 0.0)
    elif KIND == 2:
        return tl.where(x > 0, 1.0, 0.0)
    else:
        y = tl.maximum(x, 0.0)
        return tl.where(y > 0, inv_power * tl.exp2(tl.log2(tl.where(y > 0, y, 1.0)) * (inv_power - 1.0)), 0.0)


@triton.jit
def code_step(kmin, kmax, BITS: tl.constexpr, WORK: tl.constexpr):
    """The key-code step (kmax − kmin)·fl(1/(2^bits − 1)) in the work dtype, one rounded
    product: ``keycodes.code_steps`` bit for bit (the encoder's and both scans' one definition)."""
    return (kmax - kmin) * tl.full((), 1.0 / (2**BITS - 1), WORK)


@triton.jit
def page_stats_of(keys, S: tl.constexpr):
    """min, max, mean and population std over the S rows of a [S, D] block (work dtype). A NaN
    in a column makes its min and max NaN, as torch's ``amin``/``amax`` (the reference's): a
    reduction's min/max skips NaN, and a page's bounds must not hide a NaN key."""
    mean = tl.sum(keys, axis=0) / S
    centred = keys - mean[None, :]
    std = tl.sqrt(tl.sum(centred * centred, axis=0) / S)
    has_nan = tl.max((keys != keys).to(tl.int32), axis=0) > 0
    lo = tl.where(has_nan, float("nan"), tl.min(keys, axis=0))
    hi = tl.where(has_nan, float("nan"), tl.max(keys, axis=0))
    return lo, hi, mean, std


@triton.jit
def page_box_of(lo, hi, dmask):
    """``page_box.encode_boxes`` of one page, the same bits: its min/max lo, hi [BLOCK_D]
    float64 (channels outside ``dmask`` ignored) -> (code_min, code_max [BLOCK_D] int8, scale,
    l1 float32). The float32 scale is a/127 rounded twice to nearest (floor or ceil of it in
    float32), then moved up one ulp if 127·scale < a (exact in float64); the codes are floor /
    ceil of lo/scale, hi/scale with the quotient's rounding corrected both ways by exact
    products. A non-finite page, or one whose scale overflows, gets the vacuous box."""
    inf = float("inf")
    finite = (lo == lo) & (hi == hi) & (tl.abs(lo) < inf) & (tl.abs(hi) < inf)
    bad = tl.max(tl.where(dmask & ~finite, 1, 0), axis=0) > 0
    lo = tl.where(dmask & finite, lo, 0.0)
    hi = tl.where(dmask & finite, hi, 0.0)
    a = tl.max(tl.maximum(tl.abs(lo), tl.abs(hi)), axis=0)
    s32 = (a / 127.0).to(tl.float32)
    up = (s32.to(tl.int32, bitcast=True) + 1).to(tl.float32, bitcast=True)  # the next float32 up (s32 >= 0)
    s32 = tl.where(127.0 * s32.to(tl.float64) < a, up, s32)
    s32 = tl.where(a > 0, s32, 1.0)
    vacuous = bad | (s32 == inf)
    s = tl.where(vacuous, 1.0, s32).to(tl.float64)
    cmin = tl.floor(lo / s)
    cmin = tl.where(cmin * s > lo, cmin - 1.0, cmin)
    cmin = tl.maximum(tl.where((cmin + 1.0) * s <= lo, cmin + 1.0, cmin), -127.0)
    cmax = tl.ceil(hi / s)
    cmax = tl.where(cmax * s < hi, cmax + 1.0, cmax)
    cmax = tl.minimum(tl.where((cmax - 1.0) * s >= hi, cmax - 1.0, cmax), 127.0)
    cmin = tl.where(vacuous, -127.0, cmin)
    cmax = tl.where(vacuous, 127.0, cmax)
    l1 = tl.sum(tl.where(dmask, tl.maximum(tl.abs(cmin), tl.abs(cmax)), 0.0), axis=0)
    return cmin.to(tl.int8), cmax.to(tl.int8), tl.where(vacuous, inf, s32), l1.to(tl.float32)


@triton.jit
def store_box(lo, hi, d, dmask, row, box_min, box_max, box_scale, box_l1, D):
    """Write ``page_box_of(lo, hi)`` at page ``row`` (int64, of [B·Hkv·P]) of the cache's boxes."""
    cmin, cmax, scale, l1 = page_box_of(lo, hi, dmask)
    tl.store(box_min + row * D + d, cmin, mask=dmask)
    tl.store(box_max + row * D + d, cmax, mask=dmask)
    tl.store(box_scale + row, scale)
    tl.store(box_l1 + row, l1)


def register_batch_rule(op, batch_args: tuple[int, ...]) -> None:
    """A ``register_vmap`` rule for an op whose tensors at positions ``batch_args`` share a
    leading batch dimension B: the vmapped dimension V is folded into it (V·B rows) and
    unfolded from every output, so ``torch.func.vmap`` runs one batched launch, not one per
    example. Unbatched tensors among ``batch_args`` are expanded (read-only ones only: an
    unbatched tensor the op mutates cannot take batched writes, and vmap rejects that anyway).
    Batched tensors elsewhere (e.g. per-head ALiBi slopes) fall back to a loop over V."""

    def rule(info, in_dims, *args, **kwargs):
        size = info.batch_size
        if any(d is not None for i, d in enumerate(in_dims) if i not in batch_args):
            rows = [op(*[a.select(d, j) if d is not None else a for a, d in zip(args, in_dims)], **kwargs)
                    for j in range(size)]
            if rows[0] is None:
                return None, None
            if isinstance(rows[0], torch.Tensor):
                return torch.stack(rows), 0
            return tuple(torch.stack(r) for r in zip(*rows)), tuple(0 for _ in rows[0])
        folded = []
        for i, (a, d) in enumerate(zip(args, in_dims)):
            if i in batch_args and isinstance(a, torch.Tensor):
                a = a.movedim(d, 0) if d is not None else a.unsqueeze(0).expand(size, *a.shape)
                a = a.reshape(size * a.shape[1], *a.shape[2:])  # a view for contiguous batched inputs
            folded.append(a)
        out = op(*folded, **kwargs)
        if out is None:
            return None, None

        def unfold(o):  # [V·B, ...] -> [V, B, ...] (B spelled out: an empty output has no -1 to infer)
            return o.reshape(size, o.shape[0] // size, *o.shape[1:])

        if isinstance(out, torch.Tensor):
            return unfold(out), 0
        return tuple(unfold(o) for o in out), tuple(0 for _ in out)

    op.register_vmap(rule)
