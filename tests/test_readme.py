"""README.md is the front door: its examples must run as written and do what the text says."""

import re
from pathlib import Path

import torch

import entmaxkv as ekv
from naive import naive_decode, naive_entmax

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_block_after(heading: str) -> str:
    match = re.search(rf"## {re.escape(heading)}\n.*?```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md has no python block under '## {heading}'"
    return match.group(1)


def test_readme_example_runs_and_decodes_what_it_says(capsys):
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(_python_block_after("Example"), "README-example", "exec"), scope)
    printed = capsys.readouterr().out
    # ragged prompts [1000, 700] plus 8 decoded tokens each; Dense attends every token
    assert printed.strip() == "torch.Size([2, 4, 1, 64]) [1008, 708] [1008, 708]"
    cache, q, out, k_new, v_new = scope["cache"], scope["q"], scope["out"], scope["k_new"], scope["v_new"]
    for b, n in enumerate([1008, 708]):  # the last step's output is dense entmax over the sequence
        k, v = cache.keys()[b, :, :n].double(), cache.values()[b, :, :n].double()
        torch.testing.assert_close(k[:, -1], k_new[b, :, 0].double())  # the newest token is the last one
        torch.testing.assert_close(v[:, -1], v_new[b, :, 0].double())
        expected = naive_decode(k, v, q[b, :, 0], 1.5)
        torch.testing.assert_close(out[b, :, 0].double(), expected, rtol=1e-4, atol=1e-5)
    p = scope["p"]  # a probability vector
    assert abs(p.sum().item() - 1) < 1e-6 and (p >= 0).all()
