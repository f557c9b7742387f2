"""Shared by the trace-facts command-line tests: a facts file for the built-in gpt2-tiny, the
arguments, and a comparison of two run directories. ``ARGS`` fixes torch's thread count
(``--threads 1``): the runs a test compares, in the pytest process or in a subprocess or under
torchrun, are then bit for bit equal on any CPU (another count may change the last bits: the CPU's
matrix-product kernel, and so its order of summation, can depend on it)."""

import json
import os
import random

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
    "--model",
    "gpt2-tiny",
    "--all",
    "--samples",
    "2",
    "--window",
    "2",
    "--no-plot",
    "--no-progress",
    "--noise",
    "0.5",
    "--threads",
    "1",
]


def write_facts(path, n=8, seed=0):
    """``n`` token records for gpt2-tiny (vocabulary 50), lengths 5-7, and two malformed lines (3 and 6)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = rng.choice([5, 6, 7])
        s0 = rng.randrange(0, k - 2)
        lines.append(
            json.dumps(
                {
                    "input_ids": [rng.randrange(1, 50) for _ in range(k)],
                    "subject_positions": list(range(s0, s0 + rng.choice([1, 2]))),
                    "target_token": rng.randrange(50),
                }
            )
        )
    lines.insert(2, json.dumps({"input_ids": [1, 2, 3], "subject_positions": [1]}))
    lines.insert(5, "{not json")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def prompt_files(run):
    d = os.path.join(run, "prompts")
    return sorted(f for f in os.listdir(d) if not f.startswith("."))


def assert_same_runs(a, b, ignore=()):
    """Every prompt's probabilities bit for bit and its JSON record equal (``ignore``: JSON keys)."""
    from safetensors.torch import load_file

    fa, fb = prompt_files(a), prompt_files(b)
    assert fa == fb and fa
    for name in fa:
        pa, pb = os.path.join(a, "prompts", name), os.path.join(b, "prompts", name)
        if name.endswith(".safetensors"):
            assert torch.equal(load_file(pa)["probs"], load_file(pb)["probs"]), name
        else:
            ja, jb = json.load(open(pa)), json.load(open(pb))
            for k in ignore:
                ja.pop(k, None), jb.pop(k, None)
            assert ja == jb, name
    sa, sb = json.load(open(os.path.join(a, "summary.json"))), json.load(open(os.path.join(b, "summary.json")))
    assert sa["summary"] == sb["summary"] and sa["malformed"] == sb["malformed"]
