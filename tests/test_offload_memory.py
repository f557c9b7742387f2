"""Bounded memory of sweeps over an offloaded model (issue 22, item 2), in a fresh process: a GPT-2-small-shape
random model (12 layers x 768, ~500 MB of fp32 weights) with half its blocks on disk. During a causal trace
the growth of anonymous resident memory (``RssAnon``) stays under the model's weight bytes, and each offloaded
weight is read from accelerate's ``OffloadedWeightsLoader`` once for the clean run plus once per batch of rows
(``max_rows``), counted by wrapping its ``__getitem__``. ``benchmarks/offload.py --child`` does the work (the
same code as the benchmark's table), so the numbers here are those of a plain process, not of pytest's.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("accelerate")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES, PROMPT_LEN, MAX_ROWS = 2, 6, 48  # 2 x 6 positions x 12 layers = 144 rows: 3 batches of 48


def test_causal_trace_over_half_disk_gpt2_small_stays_under_the_weight_bytes(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "offload.py"), "--child", "trace", str(tmp_path / "m")]
    cmd += ["--samples", str(SAMPLES), "--prompt-len", str(PROMPT_LEN), "--max-rows", str(MAX_ROWS), "--no-prefix"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["weight_bytes"] > 450e6 and out["offloaded_tensors"] == 6 * 12  # 6 blocks of 12 tensors on disk
    assert out["rows"] == SAMPLES * PROMPT_LEN * 12
    # tracing, the trace-time check and the engine's build never hold all weights; neither does the sweep
    assert out["build_peak_growth"] < out["weight_bytes"], out
    assert out["peak_growth"] < out["weight_bytes"], out
    batches = -(-out["rows"] // MAX_ROWS)
    assert out["max_loads_per_tensor"] == 1 + batches, out  # the clean run, then once per batch of rows
    assert out["loads"] <= out["offloaded_tensors"] * (1 + batches)
