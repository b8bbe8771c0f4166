import os

import pytest
import torch

# Triton's interpreter must be on before any @triton.jit decorator runs (CPU machines).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":
    import fast_interpreter  # noqa: E402

    fast_interpreter.install()  # helpers inside kernels reuse the launch's patch of triton.language

settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile("dev", max_examples=15, deadline=None)
# HYPOTHESIS_PROFILE picks the profile explicitly (.ci/run sets "ci"); without it, the CI
# variable most CI services set still selects "ci", and a plain local run gets "dev".
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``interpreter`` run Triton kernels on CPU tensors: they need Triton's
    interpreter, which is on by default only where there is no GPU."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    import pytest

    skip = pytest.mark.skip(reason="runs Triton kernels on CPU tensors: needs TRITON_INTERPRET=1")
    for item in items:
        if "interpreter" in item.keywords and "gpu" not in item.keywords:
            item.add_marker(skip)


def _poison(monkeypatch, value: float) -> None:
    """torch.empty / empty_like hand out floats filled with ``value``, True (bool) or −7 (ints)."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(value if t.dtype.is_floating_point else (True if t.dtype == torch.bool else -7))

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))


@pytest.fixture
def poison(monkeypatch):
    """torch.empty / empty_like hand out NaN-filled (floats), True (bool) or −7-filled (ints)
    memory, so that an element a kernel forgot to write cannot pass."""
    _poison(monkeypatch, float("nan"))


@pytest.fixture
def finite_poison(monkeypatch):
    """As ``poison`` with floats filled with 1e30: where a kernel reads past what was written
    into keys it selects from, NaN (not eligible, like −inf) would hide the read, and a finite
    key above every real one shows it."""
    _poison(monkeypatch, 1e30)
