"""Data-parallel dataset sweeps on torch.distributed: the shard is a partition, and two CPU ranks
launched by torchrun (gloo) give, bit for bit, the per-prompt files of one process."""

import json
import os
import subprocess
import sys

from _facts_cli import ARGS, ROOT, assert_same_runs, write_facts

from fxvene.cli import app as cli
from fxvene.sweeps.datasets import plan_batches
from fxvene.sweeps.distributed import Context, gather, shard
from fxvene.sweeps.facts import load_facts


def test_shard_is_a_balanced_partition(tmp_path):
    facts, bad = load_facts(write_facts(tmp_path / "f.jsonl", n=23, seed=3))
    assert len(facts) == 23 and len(bad) == 2
    batches = plan_batches(facts, 3)
    for world in (1, 2, 3, 5):
        parts = [shard(batches, Context(r, world, "gloo", False)) for r in range(world)]
        got = sorted(f.index for p in parts for b in p for f in b)
        assert got == sorted(f.index for f in facts)  # every prompt once
        work = [sum(len(b) * b[0].n_tokens ** 2 for b in p) for p in parts]
        biggest = max(len(b) * b[0].n_tokens ** 2 for b in batches)
        assert max(work) - min(work) <= biggest  # greedy: no rank ahead by more than one batch
    assert shard(batches, None) is batches and gather({1: "x"}, None) == {1: "x"}


def test_torchrun_two_cpu_ranks_equal_one_process(tmp_path):
    facts = write_facts(tmp_path / "facts.jsonl", n=6, seed=1)
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    args = [*ARGS, "--batch-prompts", "1", "--prefix", "off"]  # full-length rows: no KV-cache export to load (faster)
    assert cli.main(["trace-facts", facts, "--out", single, *args]) == 0
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU ranks, gloo
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "fxvene",
            "trace-facts",
            facts,
            "--out",
            multi,
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("FactsTraceResult") == 1  # rank 0 alone reports
    assert_same_runs(single, multi, ignore=("rank",))
    ranks = [
        json.load(open(os.path.join(multi, "prompts", n)))["rank"]
        for n in os.listdir(os.path.join(multi, "prompts"))
        if n.endswith(".json")
    ]
    assert sorted(set(ranks)) == [0, 1] and len(ranks) == 6  # both ranks traced prompts
