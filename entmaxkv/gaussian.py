"""Gaussian-aware selection: model each page's scores as a Gaussian, solve the distributional
entmax constraint for τ̂, keep the pages whose maximum can reach it.

For a page p with mean key m_p and per-dimension key std σ_pd, the scores of its tokens are
modelled as S_p ~ N(μ_p, σ_p²) with μ_p = scale·q·m_p (+ the page's mean ALiBi bias) and
σ_p² = scale²·Σ_d q_d²·σ_pd² (+ the ALiBi bias variance within the page). τ̂ solves

    Σ_p n_p · E[ρ_α((α-1)·S_p - τ)] + Σ_{i in newest page} ρ_α((α-1)·s_i - τ) = 1,

the newest page's tokens entering with their exact scores (they are attended anyway). The
expectation has a closed form when 1/(α-1) is 1, 2 or 3 (α = 2, 1.5, 4/3) and is integrated
with a fixed Fejér rule otherwise (nodes computed on the device: no host-to-device copy).
F(τ) is convex and decreasing, so a bracket from Jensen's inequality plus a fixed number of
bisection steps solves it with no host sync.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
from torch import Tensor

from entmaxkv.entmax import lin, rho
from entmaxkv.selection import Selection, Selector, Step
from entmaxkv.validation import check_count, check_real

__all__ = ["Gaussian", "gaussian_keep", "gaussian_moment", "solve_gaussian_tau", "page_gaussians", "gaussian_tau_hat",
           "fejer_rule", "normal_quantile", "page_max_quantile", "page_max_z"]

TAU_MODES = ("exact", "fixed", "corrected")


_QUAD_NODES = 64
_QUAD_REACH = 10.0  # standard deviations integrated on each side


def fejer_rule(like: Tensor, n: int = _QUAD_NODES) -> tuple[Tensor, Tensor]:
    """Fejér's first quadrature rule on [-1, 1]: nodes cos θ_k, θ_k = (2k+1)π/(2n), and weights
    (2/n)·(1 - 2·Σ_{j=1}^{n/2} cos(2jθ_k)/(4j²-1)); two [n] tensors in ``like``'s dtype and device.

    Why not Gauss–Legendre: its nodes have no closed form, and copying a table from the host
    inside a step is a host sync and breaks CUDA-graph capture. These nodes are computed on the
    device from an ``arange`` (capturable), and for the smooth-or-endpoint-singular integrands
    here Fejér is about as accurate as Gauss with the same number of nodes.
    """
    k = torch.arange(n, dtype=like.dtype, device=like.device)
    theta = (2 * k + 1) * (math.pi / (2 * n))
    j = torch.arange(1, n // 2 + 1, dtype=like.dtype, device=like.device)
    terms = torch.cos(2 * j * theta.unsqueeze(-1)) / (4 * j * j - 1)
    return torch.cos(theta), (2.0 / n) * (1 - 2 * terms.sum(-1))


def _power(alpha: float) -> float:
    return 1.0 / (alpha - 1.0)


def gaussian_moment(a: Tensor, s: Tensor, alpha: float, rule: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """E[[a + s·Z]_+^(1/(α-1))] for Z ~ N(0, 1), elementwise; s >= 0, α in (1, 2].

    Closed forms for 1/(α-1) in {1, 2, 3}; otherwise a 64-node Fejér rule over
    [max(-a/s, -10), 10] (``rule``: nodes and weights from ``fejer_rule``, computed here when
    not given; pass them to reuse them across calls).
    """
    n = _power(alpha)
    s_safe = s.clamp_min(torch.finfo(s.dtype).tiny)
    d = a / s_safe
    cdf = 0.5 * torch.erfc(-d / math.sqrt(2.0))
    pdf = torch.exp(-0.5 * d * d) / math.sqrt(2.0 * math.pi)
    if abs(n - 1) < 1e-9:
        return a * cdf + s * pdf
    if abs(n - 2) < 1e-9:
        return (a * a + s * s) * cdf + a * s * pdf
    if abs(n - 3) < 1e-9:
        return (a ** 3 + 3 * a * s * s) * cdf + (a * a + 2 * s * s) * s * pdf
    lower = (-d).clamp(-_QUAD_REACH, _QUAD_REACH)
    half = (_QUAD_REACH - lower) / 2
    nodes, weights = fejer_rule(a) if rule is None else rule
    z = (lower + half).unsqueeze(-1) + half.unsqueeze(-1) * nodes
    f = (a.unsqueeze(-1) + s.unsqueeze(-1) * z).clamp_min(0).pow(n) * torch.exp(-0.5 * z * z)
    return half * (f * weights).sum(-1) / math.sqrt(2.0 * math.pi)


def _excess(tau: Tensor, am: Tensor, sm: Tensor, counts: Tensor, exact: Tensor, nodes: Tensor, weights: Tensor,
            alpha: float) -> Tensor:
    """F(τ) = Σ_p n_p·E[ρ(am_p + sm_p·Z − τ)] + Σ_i ρ(exact_i − τ) − 1 for τ [...] (pages [..., P],
    exact scores [..., N]; all already scaled by lin(α); n_p = 0 and −inf entries are absent)."""
    t = tau.unsqueeze(-1)
    pages = torch.where(counts > 0, counts * gaussian_moment(am - t, sm, alpha, (nodes, weights)), torch.zeros_like(am))
    tokens = torch.where(torch.isneginf(exact), torch.zeros_like(exact), rho(exact - t, alpha))
    return pages.sum(-1) + tokens.sum(-1) - 1


def _expand(lo: Tensor, hi: Tensor, width: Tensor, am: Tensor, sm: Tensor, counts: Tensor, exact: Tensor,
            nodes: Tensor, weights: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """One bracket expansion: where F(hi) > 0 the root lies above hi, so [lo, hi] moves up and
    the next step doubles."""
    positive = _excess(hi, am, sm, counts, exact, nodes, weights, alpha) > 0
    return torch.where(positive, hi, lo), torch.where(positive, hi + width, hi), torch.where(positive, 2 * width, width)


def _halve(lo: Tensor, hi: Tensor, am: Tensor, sm: Tensor, counts: Tensor, exact: Tensor, nodes: Tensor,
           weights: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """One bisection step of [lo, hi] (F(lo) >= 0 >= F(hi), F decreasing)."""
    mid = (lo + hi) / 2
    positive = _excess(mid, am, sm, counts, exact, nodes, weights, alpha) >= 0
    return torch.where(positive, mid, lo), torch.where(positive, hi, mid)


# torch.compile unrolls Python loops: the solver's 30 + 50 steps used to trace into 3,110 graph
# nodes, 92% of a Gaussian step's graph, and Inductor compiled that step 5x slower than a Dense
# one (CPU: 445 s against 86 s; now 81 s; benchmarks/results/compile-graph-size-2026-11-28.md).
# A nested compile region is traced and compiled once and called at every step; in eager code
# it is a plain call (same arithmetic, same results). torch < 2.8 lacks it, and functorch
# transforms (vmap, grad) cannot trace through it (torch 2.13: KeyError TransformType.Vmap):
# plain steps there.
_compile_once = getattr(torch.compiler, "nested_compile_region", lambda fn: fn)


@_compile_once
def _expand_once(*args):
    return _expand(*args)


@_compile_once
def _halve_once(*args):
    return _halve(*args)


def solve_gaussian_tau(
    mu: Tensor, sigma: Tensor, count: Tensor, exact_scores: Tensor, alpha: float,
    iters: int = 50, expansions: int = 30,
) -> Tensor:
    """τ̂ for a mixture of Gaussian pages plus exactly known scores.

    Args:
        mu, sigma, count: [..., P] page score means, stds and token counts (0 = not modelled);
        exact_scores: [..., N] scores known exactly (-inf = absent).
    Returns τ̂ [...] in float64, within (bracket width)/2^iters of the root.

    Fixed step counts (``expansions`` bracket doublings, then ``iters`` bisection steps): no
    data-dependent control flow. Under torch.compile each step is one nested compile region,
    traced once however many steps there are.
    """
    c = lin(alpha)
    am, sm = c * mu.double(), c * sigma.double()
    counts = count.double()
    exact = c * exact_scores.double()
    model = (am, sm, counts, exact, *fejer_rule(am), alpha)  # the rule is built once per solve, on the device

    top = torch.maximum(torch.where(counts > 0, am, torch.full_like(am, float("-inf"))).amax(-1), exact.amax(-1))
    lo, width = top - 1, torch.ones_like(top)  # F(lo) >= 0 by Jensen: the top entry alone has mass >= 1
    hi = top
    transformed = torch._C._are_functorch_transforms_active()  # under vmap / grad: plain steps
    expand, halve = (_expand, _halve) if transformed else (_expand_once, _halve_once)
    for _ in range(expansions):
        lo, hi, width = expand(lo, hi, width, *model)
    for _ in range(iters):
        lo, hi = halve(lo, hi, *model)
    return (lo + hi) / 2


def gaussian_tau_hat(step: Step, mu: Tensor, sigma: Tensor, iters: int = 50) -> Tensor:
    """τ̂ [B, Hkv, G] of the model: candidate pages as Gaussians, the newest page's tokens with
    their exact scores (solved by the step's backend: ``solve_gaussian_tau`` or its kernel)."""
    return step.ops.gaussian_tau(mu, sigma, step.newest_scores, iters)


def page_gaussians(step: Step) -> tuple[Tensor, Tensor]:
    """Score mean and std of every page under the Gaussian model: two [B, Hkv, G, P] float64."""
    return step.means.double(), step.sigma.double()


def gaussian_keep(candidates: Tensor, forced: Tensor, mu: Tensor, sigma: Tensor, upper: Tensor, tau_hat: Tensor,
                  z: float | Tensor, alpha: float, safety_margin_z: float, excess_margin_fraction: float,
                  outlier_margin: float | None) -> tuple[Tensor, Tensor]:
    """``Gaussian``'s page rule (its docstring, rules 1–3) -> ``(keep [B, Hkv, P] bool,
    tau_floor [B, Hkv, G] float64)``: candidates [B, 1, P] and forced [B, 1, P] bool; μ, σ, U
    [B, Hkv, G, P] (read in float64); τ̂ [B, Hkv, G] float64; z: the quantile of a page's
    estimated maximum (``page_max_z``: a float, or a 0-d tensor under torch.compile). The
    ``gaussian_select`` op computes the same on the kernels."""
    c = lin(alpha)
    cand = candidates[:, :, None, :]  # [B, 1, 1, P]
    mu, sigma = mu.double(), sigma.double()

    def over_candidates(x: Tensor) -> Tensor:  # mean over candidate pages: [B, Hkv, G]
        return torch.where(cand, x, torch.zeros_like(x)).sum(-1) / cand.sum(-1).clamp_min(1)

    mean_mu = over_candidates(mu)
    sigma_global = (over_candidates(sigma.square()) + over_candidates((mu - mean_mu.unsqueeze(-1)).square())).sqrt()
    excess = (tau_hat / c - over_candidates(mu + 1.5 * sigma)).clamp_min(0)
    margin = c * torch.maximum(safety_margin_z * sigma_global, excess_margin_fraction * excess)
    tau_floor = tau_hat - margin
    reaches = c * (mu + z * sigma) > tau_floor.unsqueeze(-1)
    if outlier_margin is not None:
        reaches = reaches | (c * upper.double() >= (tau_hat + outlier_margin).unsqueeze(-1))
    return candidates & ((reaches & cand).any(2) | forced), tau_floor


@dataclass(frozen=True)
class Gaussian(Selector):
    """Gaussian-aware entmax selection (α > 1); the number of pages adapts to the scores.

    A page is kept when any of these holds, for some query head of its group:
      1. the model says it can reach τ̂: its estimated maximum μ_p + z·σ_p — z the
         ``max_quantile`` quantile of the largest of ``page_size`` Gaussian draws — reaches
         ``τ̂ - margin`` in (α-1)-scaled units. The margin is the original method's:
         (α-1)·max(safety_margin_z·σ_global, threshold_excess_margin_fraction·excess), with
         σ_global² the pooled score variance and excess how far τ̂/(α-1) lies above the mean of
         μ_p + 1.5σ_p;
      2. the model is implausible for it: its safe Quest bound U_p (an upper bound of every score
         in the page) satisfies (α-1)·U_p >= τ̂ + ``outlier_margin``. A 16-token Gaussian model
         cannot see one outlier token (an attention sink, a lone heavy hitter): its mean and std
         barely move. But such a token raises the page's max key entries, hence U_p. With the
         default margin 1 the page is kept when a token at its bound would, alone, carry mass
         >= 1 at τ̂ (ρ((α-1)·U_p - τ̂) >= 1): such a token would prove τ̂ wrong (the true τ >=
         (α-1)·s - 1 >= τ̂). Pages whose bound stays below that can still hold weight, so this is
         a heuristic, not a certificate (``Exact`` certifies). ``None`` turns the rule off.
         Page bounds are loose on real keys, so the margin trades pages for safety: on
         SmolLM2-135M (4K tokens, α = 1.5, 270 heads, with the sink page) margin 1 kept the
         whole support on 270 heads reading 87% of the pages, margin 5 on 266 heads (37%),
         no rule on 252 heads (23%) (benchmarks/results/gaussian-issue7-2026-11-28.md);
      3. it is forced: the first ``sink_pages`` pages and the ``recent_pages`` full pages before
         the newest one, as in ``TopK`` (on real attention most mass often sits on token 0,
         see ../shared/FINDINGS.md).

    tau_mode:
        "exact": attend the kept pages with the exact τ over their tokens (the default);
        "fixed": use τ̂ as the threshold (weights renormalised);
        "corrected": τ̂ refined on the kept tokens by ``entmaxkv.refine.refine_tau``
            (``correction_iters`` safeguarded Newton steps; default 1), never worse than τ̂
            by the constraint residual |Σ p - 1|.
    clamp_tau: before "fixed"/"corrected", lower τ̂ to what the kept pages can reach: at most
        (α-1)·max(μ_p + z_c·σ_p, newest page's top score) - 1e-4, with z_c for
        ``tau_clamp_page_max_quantile``, but never below τ̂ - margin.
    solver_iters: bisection steps of the τ̂ solver (>= 1).
    """

    needs_sigma = True  # class attribute, not a field

    tau_mode: str = "exact"
    safety_margin_z: float = 0.0
    max_quantile: float = 0.995
    clamp_tau: bool = True
    threshold_excess_margin_fraction: float = 0.1
    tau_clamp_page_max_quantile: float = 0.5
    correction_iters: int | None = None
    solver_iters: int = 50
    sink_pages: int = 1
    recent_pages: int = 0
    outlier_margin: float | None = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.tau_mode, str) or self.tau_mode not in TAU_MODES:
            raise ValueError(f"tau_mode must be one of {TAU_MODES}, got {self.tau_mode!r}")
        for name in ("max_quantile", "tau_clamp_page_max_quantile"):
            value = check_real(name, getattr(self, name))
            if not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        for name in ("safety_margin_z", "threshold_excess_margin_fraction"):
            if not check_real(name, getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.outlier_margin is not None and not check_real("outlier_margin", self.outlier_margin) >= 0:
            raise ValueError(f"outlier_margin must be >= 0 or None, got {self.outlier_margin}")
        if not isinstance(self.clamp_tau, bool):
            raise TypeError(f"clamp_tau must be a bool, got {type(self.clamp_tau).__name__}")
        check_count("correction_iters", self.correction_iters, allow_none=True)
        check_count("solver_iters", self.solver_iters)
        if self.solver_iters < 1:
            raise ValueError(f"solver_iters must be >= 1, got {self.solver_iters}")
        check_count("sink_pages", self.sink_pages)
        check_count("recent_pages", self.recent_pages)

    def check(self, alpha: float) -> None:
        if alpha <= 1.0:
            raise ValueError(f"Gaussian selection needs alpha > 1 (entmax zeros), got alpha={alpha}")

    def select(self, step: Step) -> Selection:
        cache, alpha = step.cache, step.alpha
        c, size = lin(alpha), cache.page_size
        # the page moments in the work dtype: the solver and the page rule read them in float64
        # (float64 copies here were two more launches and 2·8 bytes a page and query head; the
        # "fixed" and "corrected" modes still make them below, for their clamp)
        tau_hat = gaussian_tau_hat(step, step.means, step.sigma, self.solver_iters)

        keep, tau_floor = step.ops.gaussian_pages(
            step.means, step.sigma, step.upper, tau_hat, self.max_quantile, self.safety_margin_z,
            self.threshold_excess_margin_fraction, self.outlier_margin, self.sink_pages, self.recent_pages)
        if self.tau_mode == "exact":
            return Selection(keep)

        kept = keep[:, :, None, :]
        mu, sigma = page_gaussians(step)
        newest_top = step.newest_scores.double().amax(-1)
        tau = tau_hat
        if self.clamp_tau:
            zc = page_max_z(self.tau_clamp_page_max_quantile, size, mu)
            cap = torch.where(kept, mu + zc * sigma, torch.full_like(mu, float("-inf"))).amax(-1)
            upper = torch.maximum(c * torch.maximum(cap, newest_top) - 1e-4, tau_floor)
            tau = torch.minimum(tau, upper)
        # The attention lowers τ below the top kept token's score (refine.usable_tau) and, for
        # "corrected", refines it with safeguarded Newton steps on the kept tokens.
        iters = self.correction_iters if self.correction_iters is not None else 1
        return Selection(keep, tau=tau, refine_iters=iters if self.tau_mode == "corrected" else 0)


def normal_quantile(p: float) -> float:
    """Φ⁻¹(p), 0 < p <= 1, as a Python float, on the host (``statistics``: plain Python, so it
    also runs where torch traces with fake tensors); +inf for p = 1 (a quantile so close to 1
    that q^(1/S) rounds to 1). Within 8 ulps of the exact quantile (``tests/test_selectors.py``;
    measured at most 5, torch's float64 ``ndtri`` 3)."""
    return math.inf if p >= 1.0 else statistics.NormalDist().inv_cdf(p)


def page_max_quantile(quantile: float, page_size: int) -> float:
    """On the host, z with P(the largest of ``page_size`` standard normal draws <= z) =
    ``quantile``: Φ⁻¹(quantile^(1/page_size)) (``normal_quantile``)."""
    return normal_quantile(quantile ** (1.0 / page_size))


@torch.library.custom_op("entmaxkv::page_max_z", mutates_args=())
def _page_max_z_op(quantile: float, page_size: int, like: Tensor) -> Tensor:
    """``page_max_z`` inside a compiled step: the same host value (the numbers are concrete
    here even where the trace made them symbols), as a 0-d float64 tensor on ``like``'s device."""
    return torch.full((), page_max_quantile(quantile, page_size), dtype=torch.float64, device=like.device)


@_page_max_z_op.register_fake
def _(quantile, page_size, like):
    return like.new_empty((), dtype=torch.float64)


def page_max_z(quantile: float, page_size: int, like: Tensor) -> float | Tensor:
    """``page_max_quantile`` as a step takes it: a Python float in an eager step, so
    that the step launches nothing for it (it was a fill and an ``ndtri`` a step, ~5 µs of a
    B = 1 step on the H100); under torch.compile, which cannot trace ``statistics`` and may
    trace the numbers as symbols (a second config recompiling the same code), the same value
    from an opaque op as a 0-d float64 tensor on ``like``'s device — compiled and eager steps
    take the same z, bit for bit. ``gaussian_select`` computes it with ``page_max_quantile`` too."""
    if torch.compiler.is_compiling():
        return _page_max_z_op(quantile, page_size, like)
    return page_max_quantile(quantile, page_size)
