"""Programmatic dependent launch (PDL, Hopper and later): a step's kernels overlap their
launches with the tail of the kernel before them.

Launched with ``launch_pdl``, a kernel may start while the kernel before it in the stream is
still running: its programs begin once every program of the one before has started and
signalled (``griddepcontrol.launch_dependents``) or exited. Every program of a PDL kernel
therefore waits first (``griddepcontrol.wait``: the kernel before it has completed and its
writes are visible) and only then reads or writes memory — unconditionally and before
anything else, so that a kernel's completion still implies its predecessor's (a program that
exited without waiting would break that chain for the kernel after it). Then it signals at
once, so that the next kernel's programs can be placed as this kernel's last programs run.
What overlaps is launch latency and program placement, never memory traffic.

``PDL`` switches it (on by default, read at each launch; ``ENTMAXKV_PDL=0`` in the environment
turns it off at import) for the kernel modules named in ``PDL_MODULES``. It applies only to
eager launches on CUDA devices of compute capability >= 9 — not under the interpreter, and
not while ``torch.compile`` traces an op (Inductor launches user kernels with its own launch
options; with PDL traced into a compiled step, its outputs differed from eager on the H200:
``torch.compile``d steps never use it).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

__all__ = ["PDL", "PDL_MODULES", "pdl_kwargs"]

PDL = os.environ.get("ENTMAXKV_PDL", "1") == "1"
# the kernel modules whose launches use it (space-separated, so that a benchmark variant can set
# it). On the H200 (session 9, perf-log row 50; B = 1, 32/8, fp16, TopK 12.5%) the selection's
# kernels gain 1-3 µs a step at 8K-128K (128K α = 1 74.2 -> 71.7 µs, α = 1.5 89.0 -> 86.2; 8K
# 30.2 -> 28.1, 38.0 -> 35.6), while sparse_decode's cost the Dense step 1.5-2.6 µs (then out; below).
# The key-code scans (session 23, perf-log row 106; 128K, B = 1, 4 bits, needles): the Exact-with-
# codes step 113.2 -> 110.8 µs
# ``gaussian_tau`` and ``gaussian_select`` (the Gaussian step's kernels between the statistics and the
# attention: six at B = 1 from 8,192 pages a row, where τ̂ takes its spread form, four below, five where
# it splits; perf-log row 163): on the H100 (session 53, needles, the same process, base / PDL twice)
# B = 1 128K 100.9 / 100.7 -> 99.4 / 99.4 µs, 64K 75.9 / 74.3 -> 75.1 / 73.8, B = 16 64K 326.4 (the
# second base) -> 323.8, the same outputs; predicted −3 to −6 at 128K. The command (its base has
# them on now; the variant turns them off):
#   step_variants_gpu.py --selector Gaussian --data needles --contexts 131072,65536 --variants \
#     "base;pdl.PDL_MODULES='append page_scores quest_select code_scan'"
# ``sparse_decode`` (the attention's two kernels over a page list — TopK, Gaussian, Exact — where the
# launch has fewer than ``sparse_decode.PDL_ROWS_BELOW`` rows B·Hkv) and ``sparse_decode_dense`` (its
# dense pass, the Dense step, and lists of more rows) apart. On the H100 (session 54, perf-log row 166;
# B = 1, 32/8, fp16, α = 1.5, stream data, base / PDL twice each, the same outputs) TopK 12.5% 8K
# 26.6 / 26.3 -> 25.3 / 25.4 µs, 32K 36.5 / 36.0 -> 35.5 / 35.7, 128K 64.9 / 65.0 -> 64.1 / 64.3; Dense
# 8K 22.5 / 22.2 -> 21.9 / 21.2, 32K level, 128K 116.2 / 116.2 -> 117.0 / 117.3 (session 9 had the Dense
# step 1.5-2.6 µs slower with it); B = 16 TopK 64K ~+3 µs: the few rows' lists take it, the rest not
PDL_MODULES = "append page_scores quest_select code_scan gaussian_tau gaussian_select sparse_decode"


@functools.lru_cache(maxsize=None)
def _hopper_or_later(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def _traced(t: torch.Tensor) -> bool:
    """Whether an op runs under a tracer rather than on real data: Dynamo, or the FakeTensor /
    functional tensors that torch.compile's later passes (AOT autograd, Inductor's lowering of a
    ``triton_op``) call the op with — where ``torch.compiler.is_compiling()`` can be False."""
    return torch.compiler.is_compiling() or type(t) is not torch.Tensor


def pdl_kwargs(t: torch.Tensor, module: str) -> dict:
    """The launch keywords of a kernel of ``module`` on ``t``'s device: the kernel's ``PDL``
    constexpr, and Triton's ``launch_pdl`` where PDL applies. ``PDL`` is passed either way:
    Inductor launches a user kernel only with every parameter given (a defaulted constexpr
    left out fails a compiled step on the GPU: "launcher() missing 1 required positional
    argument")."""
    if not PDL or module not in PDL_MODULES.split() or t.device.type != "cuda" or _traced(t):
        return {"PDL": False}
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if not _hopper_or_later(index):
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True}


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """A PDL kernel's first statement: wait for the kernel before it, then let the next one
    launch. Nothing without ``PDL``."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
