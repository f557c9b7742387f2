"""A model with half its blocks on disk (accelerate's ``device_map`` + ``offload_folder``): time, weight
loads and peak memory of a plain dispatched forward, one patched forward and a causal trace.

The model is a GPT-2-small-shape random model (12 layers x 768, ~500 MB of fp32 weights; ``--quick``: 4
layers x 256), saved once with ``save_pretrained`` and loaded with blocks 0..L/2-1, the embeddings, the
final norm and the head on ``"cpu"`` and the other blocks on ``"disk"``. Each workload runs in a fresh
process (``--child``) that loads the model, wraps accelerate's ``OffloadedWeightsLoader.__getitem__`` to
count weight loads, and samples ``RssAnon`` (anonymous resident memory, /proc/self/status) every 2 ms
while the workload runs; the table shows the peak growth above the loaded model. The sweep's weight loads
are split into building the engine (tracing and the trace-time check, once per model) and running it.

nnsight on the same dispatched model: nnsight is not installed in this project's environments, so that
column is skipped (the script says so); ``benchmarks/nnsight_bench.py`` times nnsight where it is.

Usage:
  python benchmarks/offload.py [--quick] [--samples 3] [--prompt-len 8] [--json out.json]
  python benchmarks/offload.py --child WORKLOAD DIR [--no-prefix] [--max-rows N]
      one workload in this process, one JSON line out (builds the model into DIR if it has none);
      tests/test_offload_memory.py runs it
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOADS = ("forward", "patched", "trace")


def rss_anon():
    """Anonymous resident memory of this process, in bytes."""
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("RssAnon:"):
                return int(ln.split()[1]) * 1024
    return 0


class PeakSampler:
    """Samples ``rss_anon()`` in a thread between ``start()`` and ``stop()``; ``peak`` is the largest."""

    def __init__(self, every=0.002):
        self.every, self.peak, self._on = every, 0, False

    def _run(self):
        while self._on:
            self.peak = max(self.peak, rss_anon())
            time.sleep(self.every)

    def __enter__(self):
        self.start = self.peak = rss_anon()
        self._on = True
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._on = False
        self._t.join()
        self.peak = max(self.peak, rss_anon())


def build(path, n_layer=12, n_embd=768, n_head=12, vocab=50257, seed=0):
    """Save a random GPT-2 of this shape to ``path`` (weights drawn without HF's slow init)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=256)
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                p.fill_(1.0)
            else:
                p.uniform_(-0.035, 0.035, generator=g)  # std 0.02, faster to draw than a Gaussian
        for b in model.buffers():
            if b.dtype == torch.bool:  # GPT-2's causal mask buffer (older transformers)
                b.copy_(torch.tril(torch.ones_like(b)))
    model.tie_weights()
    model.save_pretrained(path)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def device_map(n_layer):
    """Blocks of the first half, embeddings, final norm and head on the CPU; the second half on disk."""
    dmap = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}
    for i in range(n_layer):
        dmap[f"transformer.h.{i}"] = "cpu" if i < n_layer // 2 else "disk"
    return dmap


def child(workload, path, samples=3, prompt_len=8, prefix="auto", max_rows=None):
    """Load the offloaded model and run ``workload``: a dict of seconds, weight loads and memory (the
    model is built into ``path`` first when it has none)."""
    sys.path.insert(0, ROOT)
    import torch
    from accelerate.utils import offload
    from transformers import AutoConfig, AutoModelForCausalLM

    import fxvene as pv
    from fxvene.graph.offload import offloaded_weights

    loads = []
    original = offload.OffloadedWeightsLoader.__getitem__

    def counting(self, key):
        loads.append(key)
        return original(self, key)

    offload.OffloadedWeightsLoader.__getitem__ = counting
    if not os.path.isfile(os.path.join(path, "config.json")):
        build(path)
        gc.collect()
    n_layer = AutoConfig.from_pretrained(path).n_layer
    model = AutoModelForCausalLM.from_pretrained(
        path, device_map=device_map(n_layer), offload_folder=os.path.join(path, "offload"), attn_implementation="eager"
    ).eval()
    out = {
        "workload": workload,
        "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "offloaded_tensors": len(offloaded_weights(model)),
    }
    vocab = model.config.vocab_size
    ids = {"input_ids": torch.randint(1, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0))}
    src = {"input_ids": torch.randint(1, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(1))}
    if workload == "forward":
        run = lambda: model(**ids)  # noqa: E731
    elif workload == "patched":
        rep = pv.RepresentationConfig(layer=n_layer - 1, component="block_output")  # a block on disk
        t = time.perf_counter()
        im = pv.IntervenableModel(pv.IntervenableConfig(representations=[rep]), model)
        run = lambda: im(base=ids, sources=[src], unit_locations={"sources->base": 3})  # noqa: E731
    else:
        kw = dict(subject_positions=[1, 2], target_token=7, n_samples=samples, streams=("block_output",))
        kw.update(prefix=prefix, max_rows=max_rows)
        t = time.perf_counter()
        run = lambda: pv.causal_trace(model, ids, progress=False, **kw)  # noqa: E731
    with torch.no_grad():
        if workload != "forward":  # the first call builds the graph (and the sweep engine): counted apart
            loads.clear()
            with PeakSampler() as s:
                run()
            out["build_seconds"], out["build_loads"] = time.perf_counter() - t, len(loads)
            out["build_peak_growth"] = s.peak - s.start
        loads.clear()
        with PeakSampler() as s:
            t = time.perf_counter()
            res = run()
            out["seconds"] = time.perf_counter() - t
    if workload == "trace":
        out["rows"] = int(res.probs.numel()) * samples
    out["loads"] = len(loads)
    out["max_loads_per_tensor"] = max((loads.count(k) for k in set(loads)), default=0)
    out["peak_growth"] = s.peak - s.start
    return out


def _mib(b):
    return f"{b / 2**20:.0f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 4 x 256 model, 2 samples: checks that it runs")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--no-prefix", action="store_true", help="full-length sweep rows (no causal-prefix reuse)")
    p.add_argument("--max-rows", type=int, default=None, help="rows per batch of the causal trace")
    p.add_argument("--child", nargs=2, metavar=("WORKLOAD", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        prefix = False if args.no_prefix else "auto"
        print(json.dumps(child(args.child[0], args.child[1], args.samples, args.prompt_len, prefix, args.max_rows)))
        return 0
    shape = dict(n_layer=4, n_embd=256, n_head=4) if args.quick else {}
    samples = 2 if args.quick else args.samples
    with tempfile.TemporaryDirectory() as d:
        build(d, **shape)
        rows = []
        for w in WORKLOADS:
            cmd = [sys.executable, __file__, "--child", w, d, "--samples", str(samples)]
            cmd += ["--prompt-len", str(args.prompt_len)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(
        f"half the blocks on disk: {_mib(r0['weight_bytes'])} MiB of weights, {r0['offloaded_tensors']} offloaded "
        f"tensors; prompt of {args.prompt_len} tokens{' (--quick: not a measurement)' if args.quick else ''}"
    )
    print(f"{'workload':<40} {'seconds':>8} {'build s':>8} {'loads':>6} {'max/tensor':>10} {'peak +MiB':>10}")
    names = {
        "forward": "plain dispatched forward (accelerate)",
        "patched": "one patched forward (Vanilla, disk block)",
        "trace": f"causal trace ({rows[2].get('rows', '?')} rows)",
    }
    for r in rows:
        print(
            f"{names[r['workload']]:<40} {r['seconds']:>8.2f} {r.get('build_seconds', 0):>8.1f} {r['loads']:>6} "
            f"{r['max_loads_per_tensor']:>10} {_mib(r['peak_growth']):>10}"
        )
    print("nnsight: not importable here, column skipped (see benchmarks/nnsight_bench.py)")
    try:
        import nnsight  # noqa: F401

        print("nnsight is importable: its dispatched run is not written yet")
    except ImportError:
        pass
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
