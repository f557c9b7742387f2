"""A causal trace on pipeline stages (``pv.pipeline_model`` under torchrun) next to the same trace in one
process: time, weight bytes each rank holds and peak resident memory per rank.

The model is a random GPT-2 (default 12 layers x 768, vocabulary 2,000, so that blocks are most of the
weights; ``--quick``: 4 x 256), saved once with ``save_pretrained``. Each row runs in fresh processes: one
process for K = 1 (``from_pretrained`` of the whole model), ``torchrun --nproc_per_node=K`` with gloo for
K = 2 and 4 (each rank loads its own stage). The workload is ``causal_trace`` of block_output over every
layer x ``--prompt-len`` positions, one noise sample, full-length rows (``prefix=False``: sweeps on stages
run without the causal prefix, so the one-process row does too), eager; its time is the median of
``--reps`` calls after a warm-up (the first call, which traces the graph, is shown apart). Every rank
checks its result against rank 0's; the one-process result is the reference printed with the table
(max |dp| over the grid).

Usage:
  python benchmarks/pipeline.py [--quick] [--ks 1,2,4] [--reps 3] [--prompt-len 10]
  python benchmarks/pipeline.py --child DIR OUT.json ...   one row's process (under torchrun for K > 1)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def build(path, quick):
    """Save the seeded random GPT-2 into ``path`` (once); returns its weight bytes."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    layers, width = (4, 256) if quick else (12, 768)
    cfg = GPT2Config(
        n_layer=layers,
        n_embd=width,
        n_head=width // 64,
        vocab_size=2000,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
    )
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def workload(pv, model, prompt_len):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2000, (1, prompt_len), generator=g)
    base = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    kw = dict(streams=("block_output",), subject_positions=[1, 2], target_token=3, n_samples=1)
    return pv.causal_trace(model, base, prefix=False, progress=False, **kw)


def child(path, out, k, reps, prompt_len):
    """One row's process (one rank of K): load, warm up (trace), time ``reps`` calls, write the rank's JSON."""
    import torch

    import fxvene as pv

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    t0 = time.perf_counter()
    if k == 1:
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
    else:
        model = pv.pipeline_model(path, k, attn_implementation="eager")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = workload(pv, model, prompt_len)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = workload(pv, model, prompt_len)
        times.append(time.perf_counter() - t0)
    held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()) if t.device.type != "meta")
    info = {
        "rank": rank,
        "load_s": load_s,
        "first_s": first_s,
        "median_s": sorted(times)[len(times) // 2],
        "held": held,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "probs": res.probs.double().flatten().tolist(),
    }
    with open(f"{out}.rank{rank}", "w") as f:
        json.dump(info, f)


def run_row(path, k, args, tmp):
    out = os.path.join(tmp, f"k{k}.json")
    argv = [os.path.abspath(__file__), "--child", path, out, "--k", str(k), "--reps", str(args.reps)]
    argv += ["--prompt-len", str(args.prompt_len)]
    if k == 1:
        cmd = [sys.executable, *argv]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}", *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"K={k} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    ranks = []
    for rank in range(k):
        with open(f"{out}.rank{rank}") as f:
            ranks.append(json.load(f))
    return ranks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 layers x 256 instead of 12 x 768")
    ap.add_argument("--ks", default="1,2,4", help="stage counts, comma-separated (1: one process)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per row")
    ap.add_argument("--child", nargs=2, metavar=("DIR", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], args.k, args.reps, args.prompt_len)
    ks = [int(x) for x in args.ks.split(",") if x]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model")
        weights = build(path, args.quick)
        print(
            f"causal_trace, block_output, L layers x {args.prompt_len} positions, 1 noise sample, prefix=False; "
            f"weights {weights / 2**20:.0f} MiB fp32; median of {args.reps} after a warm-up; 1 thread per process",
            flush=True,
        )
        print("| K | trace (median) | first call | max weights held by a rank | max peak RSS of a rank | max abs dp |")
        print("|---|---|---|---|---|---|", flush=True)
        ref = None
        for k in ks:
            ranks = run_row(path, k, args, tmp)
            probs = ranks[0]["probs"]
            if ref is None:
                ref = probs
            dp = max(abs(a - b) for r in ranks for a, b in zip(r["probs"], ref))
            print(
                f"| {k} | {max(r['median_s'] for r in ranks):.2f} s | {max(r['first_s'] for r in ranks):.1f} s | "
                f"{max(r['held'] for r in ranks) / 2**20:.0f} MiB | {max(r['peak_rss'] for r in ranks) / 2**20:.0f} MiB"
                f" | {dp:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
