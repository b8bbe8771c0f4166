"""Triton ops (installed as ``entmaxkv.kernels``): one ``torch.library.triton_op`` per file.

Importing this package registers ``torch.ops.entmaxkv.*``:

    append_token      write the new token's K/V and, when it fills a page, its statistics
    page_statistics   statistics of every full page of a prompt (prefill), one launch
    page_scores       per-page safe score bound, |score| scale, mean-key score, Gaussian σ
    page_bounds       the same, plus the newest page's best score and |score| scale (one launch)
    page_box_upper    TopK's page bound from 8-bit page boxes on int8 tensor cores
    box_bounds        the same plus page_bounds' newest-page outputs, one launch (TopK on a boxed cache)
    quest_select      a TopK step's whole selection: rank key, forced pages, count, list, floor
    select_pages      top-k / threshold page selection into a fixed-capacity page list
    sparse_decode     entmax attention over a page list (K read once, V only on the support)
    gaussian_tau      the Gaussian page model's τ̂ (closed forms, Fejér quadrature otherwise)
    gaussian_select   the Gaussian selector's page rule (margins, kept pages, list) from τ̂
    pages_above       Exact's exclusion round: pages a safe bound puts above τ's lower bound, listed
    safe_tau          the kernel path's safe lower bound of τ from an attention's τ
    listed_tau        the same over a short page list and the newest page, scores and τ included (one launch)
    code_bounds       pass 1 over the key codes: best ŝ and ε per page and query head (+ τ seed, newest page)
    code_candidates   pass 2: tokens whose code bound reaches τ_low, as a fixed-capacity list (+ page list)
    entmax_rows       dense α-entmax over the last dim (``triton_entmax``, the original path)

Kernels never import ``entmaxkv.reference``; tests compare them against it. ``entmaxkv.backend``
is the one place that decides whether a step runs these ops or the reference.
"""

from entmaxkv.kernels import (  # noqa: F401
    append, box_bounds, code_scan, exact_pages, gaussian_select, gaussian_tau, listed_tau, page_box_upper, page_scores,
    page_stats, quest_select, safe_tau, select_pages, sparse_decode, triton_entmax,
)
