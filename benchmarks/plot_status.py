"""The README's speed status as one figure: step time as a multiple of SDPA, with issue 13's targets.

Reads the ``decode.json`` files that ``decode.py`` wrote on the GPU (committed under
``benchmarks/results/raw-*``), one panel per (batch, heads, dtype), one line per selector at
α = ``--alpha``; every ratio is against the SDPA timed in the same run::

    python benchmarks/plot_status.py --out benchmarks/results/status-2026-12-03.png \
        benchmarks/results/raw-2026-12-03-s28/call2/topk/decode.json \
        benchmarks/results/raw-2026-12-03-s33/call2/decode/decode.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# issue 13's TopK targets (× SDPA) and the smallest context each holds from; at 8K–16K the target is 1.0 (the SDPA line)
TARGETS = {"TopK 12.5%": (65536, 0.25), "TopK 6.25%": (32768, 0.14)}
COLORS = {"Dense": "tab:blue", "TopK 12.5%": "tab:orange", "TopK 6.25%": "tab:green"}  # "… box": dashed


def load_rows(paths: list[Path], alpha: float) -> list[dict]:
    """Rows with a step time at α, the later file's row winning for the same case."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        for r in json.loads(path.read_text())["rows"]:
            if "step_us" in r and r["alpha"] == alpha:
                rows[(r["batch"], r["hq"], r["hkv"], r["dtype"], r["context"], r["selector"])] = r
    return list(rows.values())


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["batch"], r["hq"], r["hkv"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        mine = [r for r in rows if (r["batch"], r["hq"], r["hkv"], r["dtype"]) == panel]
        for name in sorted({r["selector"] for r in mine}):
            pts = sorted((r["context"], r["step_us"] / r["sdpa_us"]) for r in mine if r["selector"] == name)
            base = name.removesuffix(" box")
            ax.plot(*zip(*pts), marker="o", label=name, color=COLORS.get(base),
                    linestyle="--" if base != name else "-")
        ax.axhline(1.0, color="k", linewidth=1, label="torch SDPA (dense)")
        for name, (start, ratio) in TARGETS.items():
            ax.hlines(ratio, start, max(r["context"] for r in mine), colors=COLORS[name], linestyles=":",
                      label=f"target, {name}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("step time / SDPA time (same run)")
        b, hq, hkv, dtype = panel
        ax.set_title(f"B={b}, Hq={hq}, Hkv={hkv}, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="decode.json files, later ones win")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--heads", default="32/8")
    parser.add_argument("--title", default="EntmaxKV decode step on the H200, α = 1.5 (dotted: issue 13's targets)")
    args = parser.parse_args()
    hq, hkv = (int(x) for x in args.heads.split("/"))
    rows = [r for r in load_rows(args.files, args.alpha)
            if r["dtype"] == args.dtype and (r["hq"], r["hkv"]) == (hq, hkv)]
    if not rows:
        raise SystemExit(f"no rows at α = {args.alpha}, {args.dtype}, {args.heads} in {args.files}")
    plot(rows, args.out, args.title)
    print(f"{len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
