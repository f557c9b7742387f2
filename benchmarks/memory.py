"""Peak memory of a dataset causal trace under a memory budget, next to the plain batched forward of
the same rows.

A causal trace of P prompts of S tokens with n noise samples runs R = P x 3 streams x S x L layers
x n rows. The naive way is one batched forward of R rows (``model(input_ids)`` with R x S tokens):
its peak grows with R (the logits alone are R x S x vocabulary floats). The sweep keeps its peak near
the budget: prompts per batch and rows per chunk come from ``memory_budget``
(:func:`fxvene.sweeps.datasets.plan_memory`), each chunk's readout is reduced to p(target) at once.

Each row is a fresh process. After the model is loaded and a small warm-up has run (the sweep: one
prompt, one sample, so the graph is traced and the engine built; the forward: 4 rows), freed heap is
handed back (``malloc_trim``), the peak is reset and the workload runs; the table shows its peak
above the memory in use before it (CPU: the kernel's peak resident set,
``/proc/self/clear_refs`` + ``VmHWM``; CUDA: ``torch.cuda.max_memory_allocated``).

Usage:
  python benchmarks/memory.py [--quick] [--model demo|gpt2-small-shape] [--prompts 4] [--samples 10]
                              [--budgets default,256MB,64MB] [--device cpu|cuda]
  --quick: 1 prompt, 2 samples, budgets default and 16MB (checks that the rows run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROMPT = {"prompt": "The Space Needle is in downtown", "subject": "Space Needle", "target": " Seattle"}


def _rss():
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) * 1024
    return 0


def _hwm():
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) * 1024
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


def _model(name, device):
    sys.path.insert(0, ROOT)
    import fxvene as pv

    if name == "demo":
        model, tok = pv.load_demo()
    else:
        from fxvene.cli.app import builtin_model

        model = builtin_model(name)
        _, tok = pv.load_demo()
    return model.to(device), tok


def child(args):
    import torch

    import fxvene as pv

    device = torch.device(args.device)
    model, tok = _model(args.model, device)
    records = [dict(PROMPT) for _ in range(args.prompts)]
    ids = tok(PROMPT["prompt"])["input_ids"]
    tgt = tok(PROMPT["target"])["input_ids"][0]
    if args.model != "demo":  # random weights: the target is whatever the model predicts
        records = [{"input_ids": ids, "subject_positions": [1, 2], "target_token": tgt} for _ in range(args.prompts)]
    S, L = len(ids), model.config.num_hidden_layers
    rows = args.prompts * 3 * S * L * args.samples
    budget = None if args.budget == "default" else args.budget

    def sweep(recs=records, n=args.samples):
        return pv.causal_trace(
            model, recs, tokenizer=tok, n_samples=n, only_correct=False, memory_budget=budget, progress=False
        )

    def forward():
        x = torch.tensor([ids], device=device).expand(rows, S).contiguous()
        with torch.no_grad():
            return model(input_ids=x, use_cache=False).logits[:, -1].softmax(-1)[:, tgt].mean()

    work = sweep if args.case == "sweep" else forward
    plan = None
    if args.case == "sweep":  # warm-up on one prompt, one sample: tracing, the engine (the same graph segments)
        sweep(records[:1], 1)
    else:
        with torch.no_grad():  # warm-up on a few rows
            model(input_ids=torch.tensor([ids], device=device).expand(4, S), use_cache=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        import ctypes
        import gc

        gc.collect()
        try:  # hand freed heap back to the system, so the peak below counts what the workload allocates
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        if not _reset_peak():
            raise SystemExit("cannot reset the peak resident set (/proc/self/clear_refs); Linux only")
        before = _rss()
    t0 = time.perf_counter()
    out = work()
    if args.case == "sweep":
        plan = out.memory
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _hwm() - before
    dt = time.perf_counter() - t0
    print("RESULT " + json.dumps({"peak": peak, "seconds": dt, "rows": rows, "plan": plan}))


def run_row(case, budget, args):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--case",
        case,
        "--budget",
        budget,
        "--model",
        args.model,
        "--prompts",
        str(args.prompts),
        "--samples",
        str(args.samples),
        "--device",
        args.device,
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _mb(n):
    return f"{n / 2**20:,.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", choices=("sweep", "forward"), default="sweep", help=argparse.SUPPRESS)
    p.add_argument("--budget", default="default", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="1 prompt, 2 samples, two budgets: checks that the rows run")
    p.add_argument("--model", default="demo", help="demo (default) or a built-in random model: gpt2-small-shape")
    p.add_argument(
        "--prompts", type=int, default=4, help="prompts (copies of one fact; one batch when the budget allows)"
    )
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--budgets", default="default,256MB,64MB", help="comma-separated memory budgets")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.prompts, args.samples, args.budgets = 1, 2, "default,16MB"
    fwd = run_row("forward", "default", args)
    rows = [(b, run_row("sweep", b, args)) for b in args.budgets.split(",")]
    print(
        f"peak memory above the loaded model ({args.device}; {args.model}; {args.prompts} prompt(s) x 3 streams x "
        f"all positions x all layers x {args.samples} samples = {fwd['rows']} rows)"
        f"{' (--quick: not a measurement)' if args.quick else ''}"
    )
    print(f"{'workload':<34} {'budget':>10} {'prompts/batch':>13} {'rows/chunk':>10} {'peak MiB':>10} {'seconds':>8}")
    print(
        f"{'plain batched forward, all rows':<34} {'-':>10} {'-':>13} {fwd['rows']:>10} {_mb(fwd['peak']):>10} "
        f"{fwd['seconds']:>8.2f}"
    )
    for b, r in rows:
        pl = r["plan"]
        label = f"{_mb(pl['budget'])} MiB" if b == "default" else b
        print(
            f"{'dataset causal trace':<34} {label:>10} {pl['batch_prompts']:>13} {pl['max_rows']:>10} "
            f"{_mb(r['peak']):>10} {r['seconds']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
