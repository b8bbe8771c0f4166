"""torch.compile / CUDA-graph capture and generation loops (installed as ``entmaxkv.compiled``).

No math of its own: everything here wraps ``entmaxkv.decode_step``.
"""

from entmaxkv.compiled.step import GraphedDecodeStep, compile_decode_step

__all__ = ["compile_decode_step", "GraphedDecodeStep"]
