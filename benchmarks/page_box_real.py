"""TopK ranking pages by 8-bit page boxes (``entmaxkv.page_box``) instead of the exact key
range, on SmolLM2-135M's real attention (9 query / 3 KV heads, D = 64), CPU, float64.

    python benchmarks/page_box_real.py --contexts 4096 8192

One forward over Python's language reference captures every layer's post-RoPE q/k/v
(``real_model.capture``); the last position is one decode step per layer, diagnosed against
dense attention (``diagnostics.diagnose``) for TopK at each coverage and α, with the reference
step's page bounds either the exact range's Quest bound (``bounds.quest_bounds``) or the box's
(``page_box.box_upper``, what ``entmaxkv::page_box_upper`` computes). Prints, per setting, the
cosine to dense over the 270 heads (median, 5th percentile, min, heads below 0.9) and the mean
support recall. Measures only; asserts nothing.
"""

from __future__ import annotations

import torch

from entmaxkv import backend
from entmaxkv.bounds import quest_bounds
from entmaxkv.kernels.page_scores import rounding_gamma
from entmaxkv.page_box import box_codes, box_upper
from topk_reference_real import compare_rankings


def boxed_bounds(cache, q, scale, alibi_slopes=None):
    """``quest_bounds``' contract ([B, Hkv, G, P], work dtype) from the cache's page boxes."""
    if alibi_slopes is not None:
        raise ValueError("the box bound here has no ALiBi term")
    upper, _ = box_upper(q[:, :, 0], *box_codes(cache.k_min, cache.k_max), scale,
                         rounding_gamma(torch.float32, cache.head_dim))
    return upper.to(quest_bounds(cache, q, scale).dtype)


def main() -> None:
    def boxed():
        backend.quest_bounds = boxed_bounds
        return lambda: setattr(backend, "quest_bounds", quest_bounds)

    compare_rankings(__doc__, "bounds", [("exact range", lambda: lambda: None), ("8-bit box", boxed)])


if __name__ == "__main__":
    main()
