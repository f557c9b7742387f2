"""``benchmarks/gpu.py`` (issue 26, item 5), smoke-run in a fresh process: on the CPU with ``--quick`` (fp32 and
bf16, the GPU run's code path on the CPU), and on CUDA where a GPU is present (skipped without one). The script's
own checks hold its rows to a float32 CPU run of the same workload and its steered generation to HF ``generate``
with the same steering as a forward hook (token-identical); here the run must exit 0 (every check passed, no
section timed out or raised) and print one table row per workload and dtype, each with a time for fxvene and for
the plain HF baseline. No assertion is made on speed."""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("sweep", "patch", "das", "generate")


def _run(*args):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--quick", "--timeout", "300", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("| ")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    assert cells[0][:3] == ["section", "dtype", "workload"] and set(cells[1]) == {"---"}, r.stdout
    return cells[0], cells[2:]


def _check_rows(header, rows, checks):
    col = {name: i for i, name in enumerate(header)}
    assert [(r[0], r[1]) for r in rows] == [(s, d) for s in SECTIONS for d in checks], rows
    for r in rows:
        assert len(r) == len(header), r
        assert r[col["check"]] == checks[r[1]], r
        for name in ("fxvene", "plain HF"):
            assert r[col[name]].endswith((" ms", " s")), r
        assert float(r[col["fx / plain"]]) > 0, r


def test_gpu_benchmark_quick_on_cpu():
    header, rows = _run("--device", "cpu", "--threads", "1")
    _check_rows(header, rows, {"fp32": "reference", "bf16": "ok"})  # the CPU float32 run is the reference


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_benchmark_quick_on_cuda():
    header, rows = _run("--device", "cuda")
    _check_rows(header, rows, {"bf16": "ok", "fp32": "ok"})
