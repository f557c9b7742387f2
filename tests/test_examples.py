"""Every example runs (smoke, ``--quick``) on the shipped demo model and prints what its goal promises.

The examples run inside the test process, as ``python examples/X.py --quick`` would run them (``__main__``,
``sys.argv``, the examples folder on ``sys.path``, an empty working directory): a fresh interpreter per example
would only add its start-up (torch, transformers) to CI time. The random generators and torch's thread count
are put back afterwards, so the tests after them see what they would have seen. What a fresh process is needed
for, the main job (``python -m fxvene``), still runs as one."""

import os
import random
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

CASES = {
    "tutorial1_patching.py": ["layers where patching moves the prediction from Rome to Paris: [", "P(Paris)"],
    "tutorial2_causal_tracing.py": ["Clean P(Seattle)", "wrote "],
    "tutorial3_das.py": [],
    "tutorial4_positions.py": ["patch positions [0, 2]: layer-5 states changed at [0, 2]", "unchanged: True"],
    "tutorial5_collect.py": [
        "Layer 5 block output shape: torch.Size([1, 2, 128])",
        "equals the model's own hidden state: True",
    ],
    "tutorial6_steering.py": ["needs a source", "happy - sad: Today I feel"],
    "das_hierarchical_equality.py": [],
    "steering_per_step.py": [],
    "sae_features.py": ["trained an SAE of 512 features", "lowers log p(target) more than 5 random: True"],
}


def run_example(path, args, monkeypatch):
    """Run the script at ``path`` as ``__main__`` with ``args``, as its own command line would; the global
    state a script may change (random generators, torch's thread count, the examples' helper module) is
    restored afterwards."""
    monkeypatch.setattr(sys, "argv", [path, *args])
    monkeypatch.syspath_prepend(os.path.dirname(path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state(), torch.get_num_threads()
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])
        torch.set_num_threads(saved[3])
        sys.modules.pop("_common", None)


@pytest.mark.parametrize(
    "script", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))
)
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--quick"]
    if script == "tutorial2_causal_tracing.py":
        args += ["--out", str(tmp_path / "ct.png")]
    run_example(os.path.join(EXAMPLES, script), args, monkeypatch)
    out = capsys.readouterr().out
    for phrase in CASES.get(script, []):
        assert phrase in out, (phrase, out[-3000:])
    if script == "tutorial2_causal_tracing.py":
        assert (tmp_path / "ct.png").stat().st_size > 10_000


def test_main_job_writes_the_heatmap(tmp_path):
    """The README's main job, as CI and a user start it: a fresh ``python -m fxvene`` process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    r = subprocess.run(
        [sys.executable, "-m", "fxvene", "--samples", "2", "--out", str(tmp_path / "ct.png")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "P(target) clean" in r.stdout and (tmp_path / "ct.png").stat().st_size > 10_000
