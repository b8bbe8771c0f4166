"""Static decode configuration and the per-step information ``decode_step`` can return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from torch import Tensor

from entmaxkv.selection import Dense, Selector
from entmaxkv.validation import check_alpha, check_real

__all__ = ["DecodeConfig", "DecodeInfo"]


@dataclass(frozen=True)
class DecodeConfig:
    """How a decode step attends. Hashable and static: changing it recompiles a compiled step.
    Every field is checked when the config is built (TypeError / ValueError naming the field).

    Attributes:
        alpha: entmax α in [1, 2]; 1 is softmax, 2 sparsemax.
        selector: which pages to attend (``Dense()``, ``TopK(...)``, ``Gaussian()``, ``Exact()``).
        scale: score scale; ``None`` means 1/sqrt(head_dim).
        backend: where the arithmetic runs (``entmaxkv.backend``): "auto" (Triton ops on CUDA,
            the pure-torch reference elsewhere), "triton" (the ops; on a CPU through Triton's
            interpreter) or "torch" (the reference).
    """

    alpha: float = 1.5
    selector: Selector = field(default_factory=Dense)
    scale: float | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        from entmaxkv.backend import BACKENDS

        check_alpha(self.alpha)
        if not isinstance(self.selector, Selector):
            raise TypeError("selector must be an entmaxkv selector (Dense(), TopK(...), Gaussian(), Exact()), "
                            f"got {type(self.selector).__name__} {self.selector!r}")
        self.selector.check(float(self.alpha))
        if self.scale is not None and not check_real("scale", self.scale) > 0:
            raise ValueError(f"scale must be > 0 or None, got {self.scale}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


class DecodeInfo(NamedTuple):
    """What a step did, per (batch, query head) unless said otherwise.

    tau: [B, Hq] float64, the threshold the weights used (log-sum-exp for softmax).
    num_pages, num_tokens: [B, Hq] int64, pages and tokens attended (equal within a GQA group).
    dropped_mass_bound: [B, Hq] float64 in [0, 1], a bound on the dense attention mass outside
        the attended pages (0 when nothing that matters was dropped); see ``certificate``. It is
        clamped at 1: a value of 1 is vacuous ("no bound"), which is common with TopK and
        Gaussian on real attention, where page bounds are loose.
    certified: [B, Hq] bool, the output equals dense attention up to rounding.
    page_mask: [B, Hkv, P] bool, the pages attended.
    fits: [B] bool, False where the sequence was full and the step could not append.
    overflow: [B, Hq] bool, True where ``Exact``'s fixed-capacity candidate list (key codes)
        overflowed and the row fell back to every page (still exact); False otherwise.
    """

    tau: Tensor
    num_pages: Tensor
    num_tokens: Tensor
    dropped_mass_bound: Tensor
    certified: Tensor
    page_mask: Tensor
    fits: Tensor
    overflow: Tensor

    @property
    def pages_per_kv_head(self) -> Tensor:
        """[B, Hkv] int64: pages attended per (sequence, KV head), the unit selection decides."""
        return self.page_mask.sum(-1)
