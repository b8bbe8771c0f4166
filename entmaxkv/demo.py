"""The main job: a short decode loop on structured synthetic data, checked against float64.

    python -m entmaxkv.demo            # CPU unless a GPU is present
    python -m entmaxkv.demo --steps 64 --context 4096

Prints, every few steps: tokens attended, entmax support size (summed over heads) and the
largest |out - float64 dense reference|.
"""

from __future__ import annotations

import argparse

import torch

import entmaxkv as ekv
from entmaxkv.synthetic import SyntheticStream


def _support(cache: ekv.PagedKVCache, q: torch.Tensor, alpha: float) -> int:
    from entmaxkv.reference import default_scale, token_scores

    scores = token_scores(cache, q.double(), default_scale(cache.head_dim))
    return int((ekv.entmax(scores.double(), alpha=alpha) > 0).sum())


def run(steps: int, context: int, alpha: float, every: int, device: str) -> list[dict]:
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    batch, kv_heads, group, head_dim = 2, 2, 2, 64
    stream = SyntheticStream(batch=batch, num_kv_heads=kv_heads, group=group, head_dim=head_dim,
                             seed=0, dtype=dtype, device=device)
    cache = ekv.PagedKVCache.empty(batch=batch, num_kv_heads=kv_heads, head_dim=head_dim,
                                   capacity=context + steps, dtype=dtype, device=device)
    k, v = stream.prompt(context)
    cache = ekv.prefill(cache, k, v, [context, context - 37])  # ragged on purpose
    config = ekv.DecodeConfig(alpha=alpha)
    rows = []
    for step in range(1, steps + 1):
        q, k_new, v_new = stream.step()
        cache, out, info = ekv.decode_step(cache, q, k_new, v_new, config, with_info=True)
        if step % every == 0 or step == 1:
            exact64 = cache.to(torch.float64)
            ref, _ = ekv.dense_decode(exact64, q.double(), alpha)
            rows.append(dict(step=step, tokens=int(info.num_tokens[:, 0].sum()),
                             support=_support(exact64, q, alpha),
                             err=float((out.double() - ref).abs().max())))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--every", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    rows = run(args.steps, args.context, args.alpha, args.every, args.device)
    print(f"EntmaxKV demo: alpha={args.alpha}, batch 2 (ragged), 2 KV heads x 2 query heads, "
          f"D=64, {args.context}-token prompt, {args.steps} steps on {args.device}, Dense selector")
    print("(tokens attended: summed over the 2 sequences; support: summed over sequences and query heads)")
    print(f"{'step':>6} {'tokens attended':>16} {'entmax support':>15} {'max |out - ref64|':>18}")
    for r in rows:
        print(f"{r['step']:>6} {r['tokens']:>16} {r['support']:>15} {r['err']:>18.2e}")


if __name__ == "__main__":
    main()
