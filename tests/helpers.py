"""Shared test set-up: random caches with ragged lengths and their plain token lists."""

import contextlib
import dataclasses
import random

import torch

import entmaxkv as ekv


def make_cache(seed, batch, hkv, d, page_size, lens, capacity=None, dtype=torch.float64, spread=1.0, page_boxes=False):
    """A prefilled cache plus the plain per-sequence token lists it should hold.
    Returns (cache, keys, values) with keys[b]/values[b]: [Hkv, len_b, D]."""
    g = torch.Generator().manual_seed(seed)
    t = max(max(lens), 1)
    capacity = capacity or t + 40
    k = torch.randn(batch, hkv, t, d, generator=g, dtype=torch.float64) * spread
    v = torch.randn(batch, hkv, t, d, generator=g, dtype=torch.float64)
    # poison the padding: it must never be read
    pos = torch.arange(t)[None, None, :, None]
    pad = pos >= torch.tensor(lens)[:, None, None, None]
    k, v = k.masked_fill(pad, float("nan")), v.masked_fill(pad, float("nan"))
    cache = ekv.PagedKVCache.empty(batch=batch, num_kv_heads=hkv, head_dim=d, capacity=capacity,
                                   page_size=page_size, dtype=dtype, page_boxes=page_boxes)
    cache = ekv.prefill(cache, k.to(dtype), v.to(dtype), lens)
    keys = [k[b, :, : lens[b]].to(dtype).double() for b in range(batch)]
    values = [v[b, :, : lens[b]].to(dtype).double() for b in range(batch)]
    return cache, keys, values


def lengths_only_cache(rnd: random.Random, pages: int, page_size: int, dtype: torch.dtype, kv_heads: int = 2):
    """An empty cache of four sequences (D = 16) whose lengths alone are set — 1 to S tokens
    (no page before the newest), one full page and a token, a random length, every page full —
    for ops that read nothing of a cache but its lengths (their page scores are drawn directly)."""
    s = page_size
    cache = ekv.PagedKVCache.empty(batch=4, num_kv_heads=kv_heads, head_dim=16, capacity=pages * s, page_size=s,
                                   dtype=dtype)
    lens = torch.tensor([rnd.randrange(1, s + 1), s + 1, rnd.randrange(2 * s, pages * s + 1), pages * s])
    return dataclasses.replace(cache, seq_lens=lens)


def kept_pages_floor(mask, means, absmax, newest, slopes, slack, page_size):
    """``KernelOps.score_floor``'s composition over the pages of ``mask`` [B, Hkv, P]: means,
    absmax [B, Hkv, G, P], newest [B, Hkv, G], slopes [Hq] or None -> [B, Hkv, G]."""
    room = slack * absmax
    if slopes is not None:
        room = room + slopes.abs().reshape(1, means.shape[1], -1, 1).to(room.dtype) * (page_size - 1) / 2
    best = torch.where(mask[:, :, None, :], means - room, torch.full_like(means, float("-inf"))).amax(-1)
    return torch.maximum(best, newest.to(best.dtype))


def kernel_step_after_append(seed, alibi, alpha, group=2, needs_sigma=False):
    """A kernel-path step (page bounds computed) after one append: (cache, fresh), where
    ``fresh()`` builds the step anew (its ``KernelOps`` remembering nothing yet)."""
    from entmaxkv.backend import append, build_step

    cache, _, _ = make_cache(seed, 2, 2, 16, 8, [70, 41], capacity=96, dtype=torch.float32, spread=3.0)
    q, k, v = random_step(torch.Generator().manual_seed(seed), 2, 2 * group, 2, 16, torch.float32)
    cache, _ = append(cache, k, v, True)
    slopes = (torch.rand(2 * group, generator=torch.Generator().manual_seed(seed)) * 0.1 - 0.05) if alibi else None

    def fresh():
        return build_step(cache, q * 3, alpha, 0.25, slopes, kernels=True, needs_sigma=needs_sigma)

    return cache, fresh


def random_step(g, batch, hq, hkv, d, dtype=torch.float64):
    q = torch.randn(batch, hq, 1, d, generator=g, dtype=torch.float64).to(dtype)
    kn = torch.randn(batch, hkv, 1, d, generator=g, dtype=torch.float64).to(dtype)
    vn = torch.randn(batch, hkv, 1, d, generator=g, dtype=torch.float64).to(dtype)
    return q, kn, vn


def visible(cache):
    """What a holder of ``cache`` can observe: its tokens and its full pages' statistics."""
    out = []
    for b, n in enumerate(cache.seq_lens.tolist()):
        full = n // cache.page_size
        out.append((cache.keys()[b, :, :n].clone(), cache.values()[b, :, :n].clone(),
                    *(getattr(cache, f)[b, :, :full].clone() for f in ("k_min", "k_max", "k_mean", "k_std"))))
    return out


def assert_same_view(a, b):
    for xs, ys in zip(a, b):
        for x, y in zip(xs, ys):
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


@contextlib.contextmanager
def kernel_launches(on_launch):
    """Within the block, ``on_launch(kernel, bound)`` runs before every kernel launch in Triton's
    interpreter: ``kernel`` the interpreted kernel (``kernel.fn`` its Python function, with
    ``__name__`` and ``__module__``; ``kernel.arg_names`` every parameter's name), ``bound`` the
    arguments the launch passes, by name (constexprs and options such as ``num_warps``
    included; parameters left at their defaults are not). The interpreter's launch is restored
    on leaving, also on an error."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def recording(self, *args, grid, warmup, **kwargs):
        on_launch(self, dict(zip(self.arg_names, args), **kwargs))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording
    try:
        yield
    finally:
        InterpretedFunction.run = run


def fresh_seed() -> int:
    """A seed drawn afresh for every test run (tests print it when they fail)."""
    return random.SystemRandom().randrange(2 ** 31)


def output_rounding_scale(cache, q, alpha: float, scale: float) -> torch.Tensor:
    """[B, Hq] float64: the scale of a float32 decode output's rounding error, for ``q``
    [B, Hq, 1, D] over every token of ``cache`` (no ALiBi): (2·M·Σ_i g_i + 1)·max|v|. M is the
    head's largest scale·Σ_d |q_d·k_d|: a float32 score is off by a few eps of that, not of
    the score, whose terms cancel. g_i = p_i^(2−α) over the float64 weights p: entmax's
    Jacobian is diag(g) − g·gᵀ/Σg, so a score error Δ moves the weights by at most 2·Δ·Σg
    (L1), and the output by that times max|v|. The 1 is the float32 sums of p·v and the
    output's own rounding. Times eps, a tolerance that grows with what sets the error."""
    from entmaxkv.conventions import group_queries
    from entmaxkv.reference import token_scores

    wide = cache.to(torch.float64)
    live = wide.token_mask()[:, None, :, None]  # [B, 1, N, 1]
    p = ekv.entmax(token_scores(wide, q.double(), scale), alpha=alpha)  # [B, Hkv, G, N]
    g = torch.where(p > 0, p.pow(2 - alpha), torch.zeros_like(p)).sum(-1)  # [B, Hkv, G]
    keys = torch.where(live, wide.keys().abs(), torch.zeros_like(wide.keys()))
    m = torch.einsum("bhgd,bhnd->bhgn", group_queries(q.double().abs(), cache.num_kv_heads), keys).amax(-1) * scale
    vmax = torch.where(live, wide.values().abs(), torch.zeros_like(wide.values())).amax((-2, -1))  # [B, Hkv]
    return ((2 * m * g + 1) * vmax[:, :, None]).reshape(q.shape[0], -1)


def on_both_backends(cache, q, k, v, alpha, selector, alibi_slopes=None):
    """The same step through the torch reference and the Triton ops, each on its own fork of
    ``cache`` -> [(cache, out, info)] for ("torch", "triton")."""
    return [ekv.decode_step(cache.fork(), q, k, v, ekv.DecodeConfig(alpha, selector, backend=b),
                            alibi_slopes=alibi_slopes, with_info=True) for b in ("torch", "triton")]



# The threshold searches of select_pages and quest_select (``select_pages.PROBES``, ``RADIX``):
# the interpolation search (the default), the same with one probe (then bisection: the path its
# worst case takes), and the bitwise search at both radices.
SEARCHES = {"interpolate": (12, 1), "bisect": (1, 1), "radix1": (0, 1), "radix2": (0, 2)}


def use_search(monkeypatch, search: str) -> None:
    """Switch both ops to one of ``SEARCHES`` for the rest of the test."""
    probes, radix = SEARCHES[search]
    monkeypatch.setattr("entmaxkv.kernels.select_pages.PROBES", probes)
    monkeypatch.setattr("entmaxkv.kernels.select_pages.RADIX", radix)


def use_sample(monkeypatch, gather: int, sample: int = 128, run: int = 2) -> None:
    """A streamed row's sampled bracket for the rest of the test (both ops): ``sample`` keys in
    runs of ``run``, and ``gather`` keys of scratch for those inside it (``select_pages``)."""
    monkeypatch.setattr("entmaxkv.kernels.select_pages.SAMPLE", sample)
    monkeypatch.setattr("entmaxkv.kernels.select_pages.SAMPLE_RUN", run)
    monkeypatch.setattr("entmaxkv.kernels.select_pages.GATHER", gather)


def cache_with_a_nan_key(backend, seed, key_bits=None, unseeded=False, device="cpu", head_dim=4, group=1):
    """One KV head, pages of 4: 32 prompt tokens, then 5 decode steps (``Dense``) whose first key
    has a NaN in channel 2 (a step can append one: ``prefill`` rejects NaN) — page 8 fills
    holding it, page 9 is the newest. q = (2, 2, 0, …). Random prompt keys drawn from ``seed``,
    or (``unseeded``) page 0 scoring 20 and every other key far lower, page 8's other channels
    included, so that page 8's finite bounds alone would exclude it. Tensors on ``device``
    (float32, D = ``head_dim`` >= 4); ``group`` query heads, each q. -> (cache, q, generator); the
    generator draws on the CPU."""
    d, s = head_dim, 4
    g = torch.Generator().manual_seed(seed)

    def first_two(x):  # (x, x, 0, …) as a key or query row [1, 1, 1, D]
        row = torch.zeros(1, 1, 1, d)
        row[..., :2] = x
        return row

    if unseeded:
        k = torch.zeros(1, 1, 32, d)
        k[0, 0, 0:4] = first_two(5.0)[0, 0]
    else:
        k = torch.randn(1, 1, 32, d, generator=g)
    empty = ekv.PagedKVCache.empty(batch=1, num_kv_heads=1, head_dim=d, capacity=48, page_size=s,
                                   dtype=torch.float32, key_bits=key_bits, device=device)
    cache = ekv.prefill(empty, k.to(device), torch.randn(1, 1, 32, d, generator=g).to(device), [32])
    q = first_two(2.0).expand(1, group, 1, d).contiguous().to(device)
    for i in range(5):
        k_new = first_two(-3.0) if unseeded else torch.randn(1, 1, 1, d, generator=g)
        if i == 0:
            k_new[..., 2] = float("nan")
        cache, _ = ekv.decode_step(cache, q, k_new.to(device), torch.randn(1, 1, 1, d, generator=g).to(device),
                                   ekv.DecodeConfig(1.5, ekv.Dense(), backend=backend))
    return cache, q, g
