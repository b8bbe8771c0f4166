"""A decode step compiled whole, and the same step captured as a CUDA graph.

``compile_decode_step`` wraps ``torch.compile(decode_step, fullgraph=True)``: any host sync or
data-dependent Python branch in the step is a compile error, not a silent slowdown. Caches passed
to it must come from ``cache.without_host_len()`` (the host-side length bound is static metadata
that changes every step and would recompile).

``GraphedDecodeStep`` captures one step with ``torch.cuda.CUDAGraph`` over static buffers and
replays it. ``torch.compile(mode="reduce-overhead")`` cannot do this for us: a step mutates its
input cache (the append), and torch then silently skips CUDA graphs ("mutated inputs"). The
graph also advances the device-side lengths, so replays need no host work at all.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import Tensor

from entmaxkv.config import DecodeConfig, DecodeInfo
from entmaxkv.decode import decode_step
from entmaxkv.state import PagedKVCache
from entmaxkv.validation import check_config

__all__ = ["compile_decode_step", "GraphedDecodeStep"]


def _own_copy(fn: Callable) -> Callable:
    """A new function object running a new code object equal to ``fn``'s.

    Dynamo keeps its cache of compiled graphs (and the recompile limit, 8 by default) per code
    object. Compiling ``decode_step`` itself for every config would make all compiled steps of a
    process share one cache: the 9th distinct config fails with ``fullgraph=True``. A code object
    of its own per compiled step keeps each one's cache to the few variants it actually sees
    (with/without info, with/without ALiBi), without raising any global dynamo limit.
    """
    code = fn.__code__.replace()  # a distinct code object, same bytecode
    own = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    own.__kwdefaults__ = fn.__kwdefaults__
    own.__doc__, own.__qualname__ = fn.__doc__, fn.__qualname__
    return own


def compile_decode_step(config: DecodeConfig, **compile_kwargs) -> Callable:
    """``step(cache, q, k_new, v_new, alibi_slopes=None, with_info=False)`` compiled with
    ``fullgraph=True`` for a fixed config. ``compile_kwargs`` go to ``torch.compile``.

    The config is checked here, before any tracing (a bad config raises TypeError/ValueError,
    not a dynamo error). Each call compiles its own copy of ``decode_step``, so any number of
    compiled steps can live in one process.
    """
    check_config(config)
    compiled = torch.compile(_own_copy(decode_step), fullgraph=True, **compile_kwargs)

    def step(cache: PagedKVCache, q: Tensor, k_new: Tensor, v_new: Tensor, alibi_slopes: Tensor | None = None,
             with_info: bool = False):
        if cache.host_max_len is not None:
            raise ValueError("compiled steps take cache.without_host_len(): overflow is reported on the device")
        return compiled(cache, q, k_new, v_new, config, alibi_slopes=alibi_slopes, with_info=with_info)

    return step


def _check_like_buffer(name: str, x: object, buffer: Tensor) -> None:
    """``x`` must match the captured static buffer exactly: shape, dtype and device."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.shape != buffer.shape:
        raise ValueError(f"{name} must have the captured shape {tuple(buffer.shape)}, got {tuple(x.shape)}")
    if x.dtype != buffer.dtype:
        raise TypeError(f"{name} must have the captured dtype {buffer.dtype}, got {x.dtype}")
    if x.device != buffer.device:
        raise ValueError(f"{name} must be on the captured device {buffer.device}, got {x.device}")


class GraphedDecodeStep:
    """One decode step captured as a CUDA graph; ``__call__`` copies the inputs into static
    buffers and replays it.

    The object owns its cache: ``self.cache`` always describes the latest state (the graph writes
    the new token into its storage and advances its ``seq_lens`` in place), so older Python
    references to that cache value do not stay valid here — ``fork()`` first to keep one.
    Outputs are static buffers overwritten by the next replay: clone what you keep.

    Example::

        decoder = GraphedDecodeStep(cache, ekv.DecodeConfig(alpha=1.5, selector=ekv.TopK(coverage=0.125)))
        for q, k, v in stream:
            out = decoder(q, k, v)        # [B, Hq, 1, D], no host sync, no Python per kernel
    """

    def __init__(self, cache: PagedKVCache, config: DecodeConfig, num_q_heads: int, *,
                 alibi_slopes: Tensor | None = None, with_info: bool = False, compile: bool = True,
                 warmup: int = 2):
        check_config(config)
        if cache.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA cache, got one on {cache.device}")
        self.cache = cache.without_host_len()
        b, h, d = cache.batch, cache.num_kv_heads, cache.head_dim
        self.q = torch.zeros(b, num_q_heads, 1, d, dtype=cache.dtype, device=cache.device)
        self.k_new = torch.zeros(b, h, 1, d, dtype=cache.dtype, device=cache.device)
        self.v_new = torch.zeros_like(self.k_new)
        self.with_info = with_info
        step = compile_decode_step(config) if compile else (
            lambda c, q, k, v, alibi_slopes=None, with_info=False:
                decode_step(c, q, k, v, config, alibi_slopes=alibi_slopes, with_info=with_info))

        def run() -> tuple:
            result = step(self.cache, self.q, self.k_new, self.v_new, alibi_slopes=alibi_slopes, with_info=with_info)
            return result[1:]

        # Warm-up (compilation, allocator) on a side stream. It writes the zero token past the
        # cache's lengths only, which the first real step overwrites: the cache is unchanged.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)

        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            outputs = step(self.cache, self.q, self.k_new, self.v_new, alibi_slopes=alibi_slopes, with_info=with_info)
            self.cache.seq_lens.copy_(outputs[0].seq_lens)
        self.out: Tensor = outputs[1]
        self.info: DecodeInfo | None = outputs[2] if with_info else None

    def __call__(self, q: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
        """One step: q [B, Hq, 1, D], k_new / v_new [B, Hkv, 1, D]. Returns the static output
        buffer (``self.info`` holds the step's info when captured ``with_info``).

        The inputs are checked against the captured buffers first (host-side metadata only, no
        device read): ``copy_`` would broadcast a wrongly shaped tensor silently."""
        for name, x, buffer in (("q", q, self.q), ("k_new", k_new, self.k_new), ("v_new", v_new, self.v_new)):
            _check_like_buffer(name, x, buffer)
        self.q.copy_(q)
        self.k_new.copy_(k_new)
        self.v_new.copy_(v_new)
        self.graph.replay()
        return self.out
