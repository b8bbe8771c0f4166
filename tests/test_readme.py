"""README.md is the front door: its examples must run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_block_after(heading: str) -> str:
    match = re.search(rf"## {re.escape(heading)}\n.*?```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md has no python block under '## {heading}'"
    return match.group(1)


def test_readme_example_runs(capsys):
    exec(compile(_python_block_after("Example"), "README-example", "exec"), {})
    assert "torch.Size([2, 4, 1, 64])" in capsys.readouterr().out
