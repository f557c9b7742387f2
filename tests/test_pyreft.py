"""pyreft 0.1.0 on fxvene: its README flow (LoReFT on a tiny GPT-2 and a tiny Llama) with
``import pyvene`` resolving to fxvene gives pyvene's numbers.

Each library runs in its own interpreter (tests/_pyreft_flow.py; pyreft binds ``pyvene`` when it is
imported), both at once. Compared: the trainable-parameter line, the parameter names HF Trainer
groups weight decay by (``weight_decay=0.06``), every training loss, the trained rotation, greedy
``generate(..., early_stopping=True)``, and ``save`` + ``ReftModel.load`` (pyreft's own
intervention class, resolved because pyreft imported it; its ``load_state_dict`` returns None).
Skipped where pyreft (installed ``--no-deps``), datasets, accelerate or pyvene are missing.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

MISSING = [m for m in ("pyreft", "datasets", "accelerate", "pyvene") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"not installed: {MISSING} (pip install '.[reft]' and pip install --no-deps pyreft==0.1.0 pyvene==0.1.8)",
)
FLOW = os.path.join(os.path.dirname(__file__), "_pyreft_flow.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pyreft")
    procs = {}
    for lib in ("pyvene", "fxvene"):
        out = d / f"{lib}.json"
        procs[lib] = (
            subprocess.Popen(
                [sys.executable, FLOW, lib, str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ),
            out,
        )
    res = {}
    for lib, (p, out) in procs.items():
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"{lib} run failed:\n{log[-4000:]}"
        res[lib] = json.loads(out.read_text())
    return res


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_pyreft_readme_flow_gives_pyvenes_numbers(runs, family):
    ref, got = runs["pyvene"][family], runs["fxvene"][family]
    hidden = {"gpt2": 24, "llama": 32}[family]  # LoReFT rank 2: R (h x 2), W (2 x h) and its bias
    assert got["printed"] == ref["printed"]
    assert f"trainable intervention params: {2 * hidden * 2 + 2}" in got["printed"]
    assert got["names"] == ref["names"]
    assert got["decayed"] == ref["decayed"]  # pyvene's names keep the rotation out of weight decay
    assert len(got["losses"]) == 4
    assert got["losses"] == pytest.approx(ref["losses"], rel=1e-6, abs=1e-7)
    assert got["rotation"] == pytest.approx(ref["rotation"], rel=1e-5, abs=1e-6)
    assert got["gram_error"] < 1e-4  # still orthonormal after training with weight decay
    assert got["generation"] == ref["generation"]
    assert len(got["generation"]) > got["prompt_length"]
    assert got["loaded_type"] == ref["loaded_type"] == "ReftModel"
    assert got["loaded_rotation"] == got["rotation"]  # the saved rotation comes back exactly
    assert got["loaded_generation"] == ref["loaded_generation"]
