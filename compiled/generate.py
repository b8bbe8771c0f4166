"""The decode loop: sampling on the device, no host sync per token, optionally one CUDA graph.

``generate(step, params, caches, first_token, pos, max_new_tokens)`` runs
``step(params, caches, token, pos) -> (caches, logits)`` (e.g. ``llama_step``) and returns
``[B, max_new_tokens]`` tokens, the first being ``first_token`` (the token sampled from the
prefill logits, as ``model.generate`` counts new tokens). Every token is written into a
preallocated device buffer; finished rows (after ``eos_id``) keep emitting ``eos_id``; the
loop always runs ``max_new_tokens`` steps (a data-dependent early exit would sync the host).

Modes:
    "eager"       plain Python calls (CPU reference).
    "compile"     the token step (model step + sampling) ``torch.compile``d with ``fullgraph=True``.
    "cuda_graph"  the compiled token step captured once as a CUDA graph and replayed: the graph
                  also advances the caches' lengths, the position, the output index and the
                  finished flags in place, so a replay needs no host work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from entmaxkv.state import PagedKVCache

__all__ = ["generate", "sample", "Sampling", "GraphedLoop", "token_step"]


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (argmax); top_k keeps the k most likely tokens (None: all)."""

    temperature: float = 0.0
    top_k: int | None = None


def sample(logits: Tensor, sampling: Sampling) -> Tensor:
    """logits [B, V] -> tokens [B] int64, on the device. Sampling uses the exponential race
    (argmax of p / E, E ~ Exp(1), is a draw from p): no ``multinomial``, capturable."""
    if sampling.temperature == 0.0:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k is not None:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
    probs = torch.softmax(logits, dim=-1)
    return (probs / torch.empty_like(probs).exponential_(1)).argmax(-1)


def token_step(step: Callable, sampling: Sampling, eos_id: int | None) -> Callable:
    """``body(params, caches, token, pos, done) -> (caches, next_token, pos + 1, done)``."""
    def token_step(params, caches, token, pos, done):
        caches, logits = step(params, caches, token, pos)
        nxt = sample(logits, sampling)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done = done | (nxt == eos_id)
        return caches, nxt, pos + 1, done

    return token_step


def generate(step: Callable, params, caches: list[PagedKVCache], first_token: Tensor, pos: Tensor,
             max_new_tokens: int, *, sampling: Sampling = Sampling(), eos_id: int | None = None,
             mode: str = "eager", compile_kwargs: dict | None = None) -> tuple[Tensor, list[PagedKVCache]]:
    """Decode ``max_new_tokens`` tokens (the first is ``first_token``).

    Args:
        step: ``step(params, caches, token, pos) -> (caches, logits [B, V])``.
        caches: per-layer caches after prefill; compiled modes strip their host-side length
            bound (``without_host_len``), so overflow there gives NaN rows, not an exception.
        first_token, pos: [B] int64; ``pos`` the position of ``first_token`` (its row's length).
        mode: "eager", "compile" or "cuda_graph" (see the module docstring).
    Returns ``(tokens [B, max_new_tokens], caches)``. In "cuda_graph" mode the returned caches
    share storage with (and replace) the ones passed in: the graph advanced them in place.
    """
    if mode not in ("eager", "compile", "cuda_graph"):
        raise ValueError(f"mode must be 'eager', 'compile' or 'cuda_graph', got {mode!r}")
    if first_token.dim() != 1 or pos.shape != first_token.shape:
        raise ValueError(f"first_token and pos must both be [B], got {tuple(first_token.shape)} and {tuple(pos.shape)}")
    b, device = first_token.shape[0], first_token.device
    out = torch.empty(b, max_new_tokens, dtype=torch.int64, device=device)
    out[:, 0] = first_token
    done = first_token == eos_id if eos_id is not None else torch.zeros(b, dtype=torch.bool, device=device)
    body = token_step(step, sampling, eos_id)
    if mode == "cuda_graph":
        return _generate_graphed(body, params, caches, first_token, pos, done, out, compile_kwargs or {})
    if mode == "compile":
        body = torch.compile(body, fullgraph=True, **(compile_kwargs or {}))
        caches = [c.without_host_len() for c in caches]
    token = first_token
    for i in range(1, max_new_tokens):
        caches, token, pos, done = body(params, caches, token, pos, done)
        out[:, i] = token
    return out, caches


def _generate_graphed(body, params, caches, token, pos, done, out, compile_kwargs):
    loop = GraphedLoop(body, params, caches, token, pos, done, out, compile_kwargs)
    loop.replay(out.shape[1] - 1)
    return loop.out, loop.caches


class GraphedLoop:
    """One token step (model + sampling + bookkeeping) compiled and captured as a CUDA graph.

    ``replay(n)`` generates ``n`` tokens into ``out`` (columns 1, 2, ...) with no host work:
    the graph writes the token into ``out`` at a device-side index and advances the caches'
    lengths, the position and the finished flags in place. At most ``out.shape[1] - 1``
    tokens in total. Benchmarks time ``replay`` alone (capture and compilation excluded).
    """

    def __init__(self, body, params, caches, token, pos, done, out, compile_kwargs=None, *, compile: bool = True):
        if token.device.type != "cuda":
            raise ValueError(f"mode='cuda_graph' needs CUDA tensors, got {token.device}")
        if compile:  # without it the eager kernels are captured as they are (no fusion)
            body = torch.compile(body, fullgraph=True, **(compile_kwargs or {}))
        self.caches = [c.without_host_len() for c in caches]
        self.token, self.pos, self.done = token.clone(), pos.clone(), done.clone()  # static inputs
        self.out = out
        self.index = torch.ones(1, dtype=torch.int64, device=token.device)  # next column of out
        self.remaining = out.shape[1] - 1

        # Warm-up (compilation, allocator) on a side stream. It writes the new token past the
        # caches' lengths only, which the first replay overwrites; no buffer above changes.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                body(params, self.caches, self.token, self.pos, self.done)
        torch.cuda.current_stream().wait_stream(side)

        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            new_caches, nxt, new_pos, new_done = body(params, self.caches, self.token, self.pos, self.done)
            for cache, new in zip(self.caches, new_caches):
                cache.seq_lens.copy_(new.seq_lens)
            self.out.index_copy_(1, self.index, nxt[:, None])
            self.token.copy_(nxt)
            self.pos.copy_(new_pos)
            self.done.copy_(new_done)
            self.index.add_(1)

    def replay(self, n: int) -> None:
        if n > self.remaining:
            raise ValueError(f"{n} more tokens requested, room for {self.remaining}")
        self.remaining -= n
        for _ in range(n):
            self.graph.replay()
