"""Which of box_bounds' outputs differ on the GPU from page_box_upper's / page_bounds' (and by how much)."""
import torch
import entmaxkv as ekv
from entmaxkv.kernels.box_bounds import box_bounds
from entmaxkv.kernels.page_box_upper import page_box_upper
from entmaxkv.kernels.page_scores import page_bounds, uses_dot
from entmaxkv.page_box import box_codes

S = 16
for dtype in (torch.float16, torch.bfloat16, torch.float64):
    g = torch.Generator().manual_seed(0)
    lens = [S * 5, S * 2 + 7]
    k = (torch.randn(2, 2, 90, 32, generator=g, dtype=torch.float64) * 3).to(dtype)
    cache = ekv.prefill(ekv.PagedKVCache.empty(batch=2, num_kv_heads=2, head_dim=32, capacity=120, dtype=dtype),
                        k, k, lens).to(device="cuda")
    q = (torch.randn(2, 6, 32, generator=g, dtype=torch.float64) * 2).to(dtype).cuda()
    box = tuple(x.cuda() for x in box_codes(cache.k_min.cpu(), cache.k_max.cpu()))
    want = page_bounds(q, cache.k_min, cache.k_max, cache.k_mean, cache.k_std, cache.seq_lens, None, cache.k_pages, S,
                       0.3, False, False)[4:]
    got = box_bounds(q, *box, cache.seq_lens, cache.k_pages, 0.3)
    up = page_box_upper(q, *box, cache.seq_lens, S, 0.3)
    full = cache.full_page_mask()[:, None, None, :].expand_as(up)
    print(dtype, "uses_dot", uses_dot(q, cache.k_pages, False))
    print("  upper equal", torch.equal(got[0][full], up[full]), float((got[0][full] - up[full]).abs().max()))
    for name, x, y in zip(("newest_max", "newest_mag", "newest_scores", "newest_floor"), got[1:], want):
        fin = torch.isfinite(y)
        print(f"  {name} equal {torch.equal(x, y)} shapes {tuple(x.shape)} {tuple(y.shape)} dtypes {x.dtype} {y.dtype} "
              f"maxdiff {float((x[fin] - y[fin]).abs().max()) if fin.any() else 0:.3e} same-inf {torch.equal(~fin, ~torch.isfinite(x))}")
