"""``benchmarks/latency_floor_gpu.py``'s skeleton reads exactly the words it says it reads: its
CPU smoke run (one program, so a grid barrier of one passes at once) checks every phase's xor
against the host's, in both forms (one kernel, three launches)."""

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.interpreter
def test_latency_floor_skeleton_reads_what_it_must():
    pytest.importorskip("triton")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "latency_floor_gpu.py"
    spec = importlib.util.spec_from_file_location("latency_floor_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.smoke()
