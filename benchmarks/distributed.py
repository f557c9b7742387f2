"""Throughput of dataset causal tracing: K processes (torchrun, one thread each) against one process
with two threads.

Rows (each in fresh processes; the model is loaded and the sweep engine built and warmed on one
prompt before the clock starts, on every rank):

  1 proc x 1 thread     python benchmarks/distributed.py --child --threads 1
  1 proc x 2 threads    python benchmarks/distributed.py --child --threads 2
  K procs x 1 thread    python -m torch.distributed.run --standalone --nproc_per_node=K \
                            benchmarks/distributed.py --child --threads 1

The clocked part is ``pv.causal_trace(model, facts, tokenizer=tok, ...)`` over the facts (the demo's
``fxvene/zoo/demo/facts.jsonl`` by default), between two barriers, so a K-process row includes the
gather of the results on rank 0. Every row also reports how far its per-prompt probabilities are from
the K-process row's: the one-thread rows must agree bit for bit (a sharded run computes what a single
process computes); the two-thread row may differ by float rounding (threaded matmuls).

Usage:
  python benchmarks/distributed.py [--quick] [--procs 1,2] [--samples 10] [--model DIR] [--facts FILE]
  --quick: the first 4 facts, 2 noise samples (a correctness run, not a measurement)

Numbers depend on the machine being quiet (two processes each with one thread need two free cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(args):
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, ROOT)
    import fxvene as pv
    from fxvene.sweeps import distributed
    from fxvene.sweeps.facts import load_facts

    ctx = distributed.context()
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
        tok = AutoTokenizer.from_pretrained(args.model)
    else:
        model, tok = pv.load_demo()
    if ctx is not None and torch.cuda.is_available():
        model = model.to(distributed.device())
    from fxvene.sweeps.facts import demo_facts_path

    facts_path = args.facts or demo_facts_path()
    facts, _ = load_facts(facts_path, tok)
    facts = facts[: args.limit] if args.limit else facts
    records = [f.record for f in facts]
    opts = dict(n_samples=args.samples, window=args.window, progress=False)
    # warm-up on every rank: trace the model, build and run the sweep engine once (one prompt, one process)
    f0 = facts[0]
    pv.causal_trace(
        model,
        {"input_ids": torch.tensor([f0.input_ids], device=next(model.parameters()).device)},
        f0.subject_positions,
        f0.target_token,
        **opts,
    )
    distributed.barrier(ctx)
    t0 = time.perf_counter()
    res = pv.causal_trace(model, records, tokenizer=tok, **opts)
    distributed.barrier(ctx)
    dt = time.perf_counter() - t0
    if res is not None:
        h = hashlib.sha256()
        for r in res:
            h.update(r.probs.contiguous().numpy().tobytes())
        from safetensors.torch import save_file

        save_file({str(i): r.probs.contiguous() for i, r in enumerate(res)}, args.dump)
        print(
            "RESULT "
            + json.dumps(
                {
                    "prompts": len(res),
                    "seconds": dt,
                    "skipped": res.n_skipped,
                    "digest": h.hexdigest()[:16],
                    "batch_prompts": res.memory["batch_prompts"],
                }
            )
        )
    distributed.close(ctx)


def run_row(procs, threads, args):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    dump = os.path.join(args.tmp, f"probs-{procs}x{threads}.safetensors")
    tail = [
        "--dump",
        dump,
        "--child",
        "--threads",
        str(threads),
        "--samples",
        str(args.samples),
        "--window",
        str(args.window),
        "--limit",
        str(args.limit),
    ]
    if args.model:
        tail += ["--model", args.model]
    if args.facts:
        tail += ["--facts", args.facts]
    if procs == 1:
        cmd = [sys.executable, os.path.abspath(__file__), *tail]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            os.path.abspath(__file__),
            *tail,
        ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    out.update(procs=procs, threads=threads, wall=wall, dump=dump)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="4 facts, 2 samples: checks that the rows run and agree")
    p.add_argument("--procs", default="1,2", help="process counts of the torchrun rows (default 1,2)")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--limit", type=int, default=0, help="only the first N facts (0: all)")
    p.add_argument("--model", default=None, help="a model directory with its tokenizer (default: the demo)")
    p.add_argument("--facts", default=None, help="a JSONL file of facts (default: fxvene/zoo/demo/facts.jsonl)")
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.limit, args.samples = args.limit or 4, 2
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        rows = [run_row(1, 2, args)]
        for k in [int(x) for x in args.procs.split(",")]:
            rows.append(run_row(k, 1, args))
        from safetensors.torch import load_file

        probs = {(r["procs"], r["threads"]): load_file(r["dump"]) for r in rows}
    base = next((r for r in rows if r["procs"] == 1 and r["threads"] == 1), None)
    print(
        f"dataset causal tracing: {rows[0]['prompts']} prompts, {args.samples} samples, window {args.window}"
        f"{' (--quick: not a measurement)' if args.quick else ''}"
    )
    ref = probs[(rows[1]["procs"], 1)]
    print(
        f"{'processes':>9} {'threads':>7} {'sweep s':>8} {'prompts/s':>9} {'vs 1x1':>7} {'process wall s':>14}  "
        f"max |diff| vs {rows[1]['procs']}x1"
    )
    for r in sorted(rows, key=lambda r: (r["procs"], r["threads"])):
        tput = r["prompts"] / r["seconds"]
        rel = f"{tput / (base['prompts'] / base['seconds']):.2f}x" if base else "-"
        got = probs[(r["procs"], r["threads"])]
        diff = max(float((got[k] - ref[k]).abs().max()) for k in ref)
        print(
            f"{r['procs']:>9} {r['threads']:>7} {r['seconds']:>8.2f} {tput:>9.3f} {rel:>7} {r['wall']:>14.1f}  "
            f"{diff:.3g}"
        )
    same = len({r["digest"] for r in rows if r["threads"] == 1}) == 1
    print("one-thread rows (1 and K processes) bit for bit identical: " + ("yes" if same else "NO"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
