"""Every example runs (smoke, ``--quick``) on the shipped demo model and prints what its goal promises."""

import os
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize(
    "script", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))
)
def test_example_runs(script, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    args = [sys.executable, os.path.join(EXAMPLES, script), "--quick"]
    if script == "tutorial2_causal_tracing.py":
        args += ["--out", str(tmp_path / "ct.png")]
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for phrase in CASES.get(script, []):
        assert phrase in r.stdout, (phrase, r.stdout[-3000:])
    if script == "tutorial2_causal_tracing.py":
        assert (tmp_path / "ct.png").stat().st_size > 10_000


def test_main_job_writes_the_heatmap(tmp_path):
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
