"""Synthetic keys, values and queries with the structure of real decoder attention.

What makes real attention hard for page selection, reproduced here on purpose:
- an attention sink (position 0) that every query looks at;
- a few heavy hitters scattered through the context — short runs of related tokens, like a
  phrase — each followed by some query heads;
- a recent window: queries resemble the newest keys;
- per-dimension key offsets (keys are not centred) and a few outlier channels with a large
  offset and a wider spread, which loosen min/max page bounds;
- keys close to low-rank (a decaying spread across channels), as in real models;
- everything else is weak noise.

With the defaults the structure is close to what ../shared/FINDINGS.md measured on SmolLM2.
At 4,096 tokens (D = 64, 2 KV x 4 query heads, 8 steps x 3 seeds; benchmarks/results/fidelity.md)
entmax supports are (median / p90 / max) 4 / 6 / 45 tokens in 1 / 3 / 38 pages at α = 1.5 and
3 / 4 / 7 tokens in 1 / 2 / 5 pages at α = 2, and a Quest top-k at 12.5% of the pages covers
the whole support for 84% (α = 1.5) and 95% (α = 2) of heads (FINDINGS: about 90%).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["SyntheticStream", "needle_inputs"]


class SyntheticStream:
    """A reproducible stream: a prompt, then one (q, k_new, v_new) per decode step.

    Example::

        stream = SyntheticStream(batch=1, num_kv_heads=2, group=2, head_dim=64, seed=0)
        k, v = stream.prompt(1000)            # [1, 2, 1000, 64]
        q, k_new, v_new = stream.step()       # [1, 4, 1, 64], [1, 2, 1, 64], [1, 2, 1, 64]
    """

    def __init__(
        self,
        *,
        batch: int,
        num_kv_heads: int,
        group: int,
        head_dim: int,
        seed: int = 0,
        heavy_hitters: int = 4,
        strength: float = 0.7,
        run: int = 4,
        outlier_scale: float = 2.0,
        spectrum_decay: float = 0.5,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        self.b, self.h, self.g, self.d = batch, num_kv_heads, group, head_dim
        self.dtype, self.device = dtype, device
        self.gen = torch.Generator().manual_seed(seed)
        self.heavy_hitters = heavy_hitters
        self.run = run
        self.strength = strength
        self.offset = self._randn(1, num_kv_heads, 1, head_dim) * 0.5
        # keys are close to low-rank in real models: a decaying spectrum of channel spreads
        spectrum = torch.arange(1, head_dim + 1, dtype=torch.float32).pow(-spectrum_decay)
        self.channel_scale = spectrum / spectrum.square().mean().sqrt()
        outliers = max(1, head_dim // 32)  # massive channels: a large offset, a wider spread
        self.offset[..., :outliers] = 6.0 * torch.sign(self._randn(1, num_kv_heads, 1, outliers))
        self.channel_scale[:outliers] = outlier_scale
        # unit directions (norm sqrt(D)) of the sink and of each heavy hitter, per KV head
        self.directions = self._randn(1 + heavy_hitters, 1, num_kv_heads, 1, head_dim)
        # which heavy hitter each query head follows
        self.follows = torch.randint(0, heavy_hitters, (batch, num_kv_heads * group), generator=self.gen)
        self.last_key = torch.zeros(batch, num_kv_heads, 1, head_dim)

    def _randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.gen)

    def _keys(self, n: int) -> Tensor:
        return self.offset + self._randn(self.b, self.h, n, self.d) * self.channel_scale

    def _out(self, x: Tensor) -> Tensor:
        return x.to(device=self.device, dtype=self.dtype)

    def prompt(self, length: int) -> tuple[Tensor, Tensor]:
        """Keys and values of a prompt: [B, Hkv, length, D] each."""
        k = self._keys(length)
        k[:, :, 0] = self.offset[:, :, 0] + 1.5 * self.directions[0, :, :, 0]  # the sink
        if length > 1:
            where = torch.randint(1, length, (self.heavy_hitters,), generator=self.gen)
            for j, pos in enumerate(where.tolist()):  # a short run of related tokens (a phrase)
                span = slice(pos, min(pos + self.run, length))
                noise = self._randn(self.b, self.h, span.stop - span.start, self.d) * 0.5
                k[:, :, span] = self.offset + 1.2 * self.directions[1 + j] + noise
        self.last_key = k[:, :, -1:].clone()
        v = self._randn(self.b, self.h, length, self.d)
        return self._out(k), self._out(v)

    def step(self) -> tuple[Tensor, Tensor, Tensor]:
        """One decode step's query [B, Hq, 1, D] and new key/value [B, Hkv, 1, D]."""
        b, h, g, d = self.b, self.h, self.g, self.d
        heavy = self.directions[1:, 0]  # [hh, Hkv, 1, D]
        kv_of_head = torch.arange(h * g) // g
        chosen = heavy[self.follows, kv_of_head[None, :]]  # [B, Hq, 1, D]
        sink = self.directions[0, 0][kv_of_head][None]  # [1, Hq, 1, D]
        recent = self.last_key[:, kv_of_head] / math.sqrt(d)
        q = self.strength * (0.8 * chosen + 0.4 * sink + 2.0 * recent) + self._randn(b, h * g, 1, d) * 0.6
        k_new = self._keys(1)
        self.last_key = k_new
        v_new = self._randn(b, h, 1, d)
        return self._out(q), self._out(k_new), self._out(v_new)


def needle_inputs(*, batch: int, num_kv_heads: int, group: int, head_dim: int, context: int, needles: int = 16,
                  run: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Inputs on which a certified selector can read little: (k, v [B, Hkv, context, D],
    q [B, Hkv·group, 1, D], k_new, v_new [B, Hkv, 1, D]).

    Per KV head a query direction u (each of its query heads is u plus 30% noise); keys are
    noise N(0, 0.3²), so scores (scale = D^-1/2) are about N(0, 0.3²) — except ``needles``
    runs of ``run`` tokens at random positions (never in the last 64) whose key is
    8·u/(scale·|u|²) plus the noise: a score of about 8. At α = 1.5 the entmax support is the needles (τ/(α − 1) ≈ 7.5); a noise page's
    Quest bound is about 5 (scale·Σ|q_d|·0.53), below that threshold, so page bounds, the
    Gaussian page model and key codes can all rule the noise pages out. Lone needles
    (``run=1``) defeat the Gaussian page model (a 16-token Gaussian cannot see one outlier:
    its outlier rule then keeps pages by their loose Quest bounds); runs of a page or more
    (``run=16``: phrases, heavy hitters) are what it models.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    b, hkv, d, n = batch, num_kv_heads, head_dim, context
    scale = d ** -0.5
    u = torch.randn(b, hkv, 1, d, generator=g)
    q = (u + 0.3 * torch.randn(b, hkv, group, d, generator=g)).reshape(b, hkv * group, 1, d)
    k = 0.3 * torch.randn(b, hkv, n, d, generator=g)
    needle = 8.0 * u / (scale * u.square().sum(-1, keepdim=True))  # q·k·scale ≈ 8
    for i in range(b):
        for h in range(hkv):
            for start in torch.randperm(max(1, n - 64 - run), generator=g)[:needles].tolist():
                k[i, h, start:start + run] += needle[i, h]
    v = torch.randn(b, hkv, n, d, generator=g)
    k_new, v_new = 0.3 * torch.randn(b, hkv, 1, d, generator=g), torch.randn(b, hkv, 1, d, generator=g)
    return tuple(x.to(device=device, dtype=dtype) for x in (k, v, q, k_new, v_new))
