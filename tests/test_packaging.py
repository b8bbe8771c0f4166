"""What ``pip install entmaxkv`` ships: every subpackage of the source tree is listed in
pyproject.toml's ``packages`` (an editable install finds unlisted ones; a wheel does not)."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(setup["packages"]), setup["package-dir"]
    on_disk = set()
    for package, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *parts)))
    assert on_disk - listed == set(), "subpackages a wheel would leave out"
    assert listed - on_disk == set(), "listed packages with no folder"
