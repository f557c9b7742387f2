"""fxvene benchmarks (issue 4): one command, one markdown table.

    python benchmarks/run.py [--quick] [--threads 2] [--compile] [--out table.md]

GPT-2-small shape (12 layers, 768 wide, 50257 vocab, random weights, eager attention), fp32,
CPU. Workloads:
  (a) one Vanilla patch at block_output, batch 8, 16 tokens (and the same with
      source_representations: one intervened forward vs one plain forward);
  (b) ROME causal tracing, 10-token prompt, 4 subject tokens, 12 layers x 10 positions x
      3 streams (window 10), pyvene's noise (one sample);
  (c) Collect block_output of all 12 layers, 32 prompts of 16 tokens;
  (d) one LowRankRotatedSpace (rank 64) DAS training step, batch 32, 16 tokens;
  (e) a 12 x 16 layer x position block_output patching sweep (16 tokens).
Every ratio is measured in the same run. pyvene's loops over sweep cells are timed on a
subset of cells and extrapolated (the table says so). ``--quick`` uses a 6-layer model and
fewer repetitions (same widths). nnsight (optional; benchmarks/nnsight_bench.py) is timed on
(b) and (e) in its fastest idiomatic form when it is installed.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))


def _best(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def _model(n_layer, **shape):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    extra = {}
    if shape:
        extra = dict(n_embd=shape["n_embd"], n_head=shape["n_head"], vocab_size=shape["vocab"])
    cfg = GPT2Config(n_layer=n_layer, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **extra)
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg).eval()


def _ids(b, s, seed):
    return torch.randint(0, 50257, (b, s), generator=torch.Generator().manual_seed(seed))


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def _nnsight():
    try:
        import nnsight  # noqa: F401

        return True
    except Exception:
        return False


def _trace_rows(model, label, L, reps, has_nn, pyvene, vocab):
    """ROME-style tracing of the block_output stream only: L layers x 10 positions, one noise
    sample (pyvene's), 4 subject tokens; B = one plain batched forward of the same L*10 rows with
    full logits; nnsight's best form (one trace: clean invoke + patched rows, logits_to_keep=1)."""
    from fxvene.sweeps.core import PYVENE_NOISE_LEVEL, trace_noise
    from fxvene.sweeps.sweep import causal_trace

    prompt = {"input_ids": torch.randint(0, vocab, (1, 10), generator=torch.Generator().manual_seed(3))}
    subj, target = [0, 1, 2, 3], 7 % vocab
    n = 10 * L
    kw = dict(noise_level=PYVENE_NOISE_LEVEL, n_samples=1, streams="block_output", progress=False)
    causal_trace(model, prompt, subj, target, **kw)  # first call: tracing, slicing, cost calibration
    big = prompt["input_ids"].expand(n, 10)

    def plain():
        with torch.no_grad():
            model(input_ids=big, use_cache=False)

    t_B = _best(plain, reps)
    t_fx = _best(lambda: causal_trace(model, prompt, subj, target, **kw), reps)
    t_np = _best(lambda: causal_trace(model, prompt, subj, target, prefix=False, **kw), reps)
    from fxvene.sweeps.engine import SweepEngine

    SweepEngine.pack = False  # the causal prefix in start-position groups (the path before packing)
    try:
        t_grp = _best(lambda: causal_trace(model, prompt, subj, target, **kw), reps)
    finally:
        SweepEngine.pack = True
    t_B = min(t_B, _best(plain, reps))  # B again, after: the ratio is taken within one stretch of the run

    def py_cell(layer, pos):
        reps_ = [pyvene.RepresentationConfig(0, "block_input"), pyvene.RepresentationConfig(layer, "block_output")]
        c = pyvene.IntervenableConfig(
            representations=reps_, intervention_types=[pyvene.NoiseIntervention, pyvene.VanillaIntervention]
        )
        iv = pyvene.IntervenableModel(c, model)
        with torch.no_grad():
            iv(prompt, [None, prompt], {"sources->base": ([None, [[pos]]], [[[0, 1, 2, 3]], [[pos]]])})

    sample = [(l, p) for l in sorted({0, L // 3, (2 * L) // 3, L - 1}) for p in (0, 5, 9)]
    t0 = time.perf_counter()
    for l, p in sample:
        py_cell(l, p)
    t_py = (time.perf_counter() - t0) / len(sample) * n
    t_nn = None
    if has_nn:
        import nnsight_bench as nb

        from fxvene.sweeps.core import window_layers

        nnm = nb._wrap(model)
        cells = [("block_output", l, p) for p in range(10) for l in range(L)]
        d = model.config.n_embd
        noise = trace_noise(1, 4, d)[0].float() * PYVENE_NOISE_LEVEL
        with torch.no_grad():
            t_nn = _best(
                lambda: nb.causal_trace(
                    nnm, prompt["input_ids"], subj, target, noise, cells, lambda l: window_layers(l, 10, L), L
                ),
                reps,
            )
    cfg = model.config
    return (
        f"{label} causal tracing, block_output only, {L} layers x 10 positions, 1 sample, 4 subject tokens "
        f"({cfg.n_layer}x{cfg.n_embd}, vocab {cfg.vocab_size})",
        t_fx,
        None,
        t_py,
        t_nn,
        t_B,
        f"B = plain batched forward of {n} rows x 10 tokens, full logits; fxvene packs the rows in lanes "
        f"(causal prefix, one call per segment); with start-position groups instead {t_grp / t_B:.2f} B, "
        f"without the causal prefix {t_np / t_B:.2f} B; pyvene: {len(sample)} cells timed, extrapolated",
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6-layer model, fewer repetitions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd IntervenableModel (a, c)")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument(
        "--sweeps-only",
        action="store_true",
        help="only the causal-tracing rows (b), (b1), (b2), (b3) (issue 11's side-by-side workloads)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import pyvene
    import transformers

    import fxvene as pv
    from fxvene.sweeps.sweep import patching_sweep

    L = 6 if args.quick else 12
    reps = 1 if args.quick else 2
    model = _model(L)
    rows = []  # (workload, column -> value, note)
    nn_note = "not timed (not installed: pip would replace torch/transformers; see docs/benchmarks.md)"
    has_nn = _nnsight()

    def plain(ids, full=True):
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits

    if args.sweeps_only:
        return _finish(
            args, _sweep_rows(args, model, L, reps, has_nn, pyvene, []), L, has_nn, nn_note, pyvene, transformers
        )
    # ---------------------------------------------------------------- (a) one Vanilla patch
    base, src = {"input_ids": _ids(8, 16, 1)}, {"input_ids": _ids(8, 16, 2)}
    mid = L // 2
    cfg = pv.RepresentationConfig(mid, "block_output")
    fx_iv = pv.IntervenableModel(cfg, model)
    py_iv = pyvene.IntervenableModel(
        pyvene.IntervenableConfig([pyvene.RepresentationConfig(mid, "block_output")]), model
    )
    with torch.no_grad():
        t_fx = _best(lambda: fx_iv(base, [src], unit_locations={"sources->base": 3}), 3 * reps)
        t_py = _best(lambda: py_iv(base, [src], unit_locations={"sources->base": 3}), 3 * reps)
        t_floor = _best(lambda: (plain(src["input_ids"]), plain(base["input_ids"])), 3 * reps)
        rep = torch.randn(8, 1, 768)
        t_fx1 = _best(lambda: fx_iv(base, source_representations=rep, unit_locations={"base": 3}), 3 * reps)
        t_plain1 = _best(lambda: plain(base["input_ids"]), 3 * reps)
    t_fxc = t_fxc1 = None
    if args.compile:
        cfx = pv.IntervenableModel(cfg, model, compile=True)
        with torch.no_grad():
            t0 = time.perf_counter()
            cfx(base, [src], unit_locations={"sources->base": 3})
            cfx(base, source_representations=rep, unit_locations={"base": 3})
            comp_s = time.perf_counter() - t0
            t_fxc = _best(lambda: cfx(base, [src], unit_locations={"sources->base": 3}), 3 * reps)
            t_fxc1 = _best(lambda: cfx(base, source_representations=rep, unit_locations={"base": 3}), 3 * reps)
            cplain = torch.compile(model, dynamic=True)
            cplain(input_ids=base["input_ids"], use_cache=False)
            t_cplain1 = _best(lambda: cplain(input_ids=base["input_ids"], use_cache=False), 3 * reps)
    rows.append(
        (
            "(a) Vanilla patch, b=8, 16 tok (2 forwards)",
            t_fx,
            t_fxc,
            t_py,
            None,
            t_floor,
            "floor: plain source + base forward" + (f"; compile took {comp_s:.0f} s" if args.compile else ""),
        )
    )
    rows.append(
        (
            "(a') same with source_representations (1 forward)",
            t_fx1,
            t_fxc1,
            None,
            None,
            t_plain1,
            "floor: one plain forward" + (f"; compiled plain forward {t_cplain1 * 1e3:.1f} ms" if args.compile else ""),
        )
    )

    _log("a done", rows[-2][1:6], rows[-1][1:6])
    _sweep_rows(args, model, L, reps, has_nn, pyvene, rows)
    # ---------------------------------------------------------------- (c) collect 12 layers
    many = {"input_ids": _ids(32, 16, 4)}
    ccfg = [pv.RepresentationConfig(l, "block_output", intervention_type=pv.CollectIntervention) for l in range(L)]
    fx_c = pv.IntervenableModel(ccfg, model)
    pcfg = pyvene.IntervenableConfig(
        [pyvene.RepresentationConfig(l, "block_output") for l in range(L)],
        intervention_types=pyvene.CollectIntervention,
    )
    py_c = pyvene.IntervenableModel(pcfg, model)
    with torch.no_grad():
        t_fx = _best(lambda: fx_c(many, unit_locations=None), reps)
        t_py = _best(lambda: py_c(many, unit_locations=None), reps)
        t_floor = _best(lambda: plain(many["input_ids"]), reps)
    t_fxc = None
    if args.compile:
        cc = pv.IntervenableModel(ccfg, model, compile=True)
        with torch.no_grad():
            cc(many, unit_locations=None)
            t_fxc = _best(lambda: cc(many, unit_locations=None), reps)
    rows.append((f"(c) Collect block_output x{L}, 32x16", t_fx, t_fxc, t_py, None, t_floor, "floor: one plain forward"))

    _log("c done", rows[-1][1:6])
    # ---------------------------------------------------------------- (d) DAS step
    b32, s32 = {"input_ids": _ids(32, 16, 5)}, {"input_ids": _ids(32, 16, 6)}
    labels = _ids(32, 16, 7)

    def das_step(lib):
        rep = lib.RepresentationConfig(mid, "block_output", low_rank_dimension=64)
        cfg_ = lib.IntervenableConfig([rep], intervention_types=lib.LowRankRotatedSpaceIntervention)
        iv = lib.IntervenableModel(cfg_, model)
        opt = torch.optim.Adam(
            [p for iv_ in iv.interventions.values() for p in (iv_[0] if isinstance(iv_, tuple) else iv_).parameters()],
            lr=1e-3,
        )

        def step():
            _, out = iv(b32, [s32], unit_locations={"sources->base": 15})
            loss = torch.nn.functional.cross_entropy(out.logits[:, -1], labels[:, -1])
            loss.backward()
            opt.step()
            opt.zero_grad()

        return step

    t_fx = _best(das_step(pv), reps)
    t_py = _best(das_step(pyvene), reps)

    def floor_step():
        with torch.no_grad():
            model(input_ids=s32["input_ids"], use_cache=False)
        emb = model.transformer.wte(b32["input_ids"]).detach().requires_grad_(True)
        out = model(inputs_embeds=emb, use_cache=False)
        torch.nn.functional.cross_entropy(out.logits[:, -1], labels[:, -1]).backward()

    t_floor = _best(floor_step, reps)
    rows.append(
        (
            "(d) LowRankRotatedSpace r=64 DAS step, b=32",
            t_fx,
            None,
            t_py,
            None,
            t_floor,
            "floor: plain source forward + base forward/backward",
        )
    )

    _log("d done", rows[-1][1:6])
    # ---------------------------------------------------------------- (e) 12 x 16 sweep
    target = 7312
    sample_layers = sorted({0, L // 3, (2 * L) // 3, L - 1})
    eb, es = {"input_ids": _ids(1, 16, 8)}, {"input_ids": _ids(1, 16, 9)}
    n_e = L * 16
    t_fx = _best(lambda: patching_sweep(model, eb, es, "block_output", tokens=[target], progress=False), reps)
    t_np = _best(
        lambda: patching_sweep(model, eb, es, "block_output", tokens=[target], progress=False, prefix=False), reps
    )

    def py_e(l, p):
        iv = pyvene.IntervenableModel(
            pyvene.IntervenableConfig([pyvene.RepresentationConfig(l, "block_output")]), model
        )
        with torch.no_grad():
            _, out = iv(eb, [es], unit_locations={"sources->base": p})
        return out.logits[0, -1, target]

    cells = [(l, p) for l in sample_layers for p in (0, 7, 15)]
    t0 = time.perf_counter()
    for l, p in cells:
        py_e(l, p)
    t_py = (time.perf_counter() - t0) / len(cells) * n_e
    t_B = _best(lambda: plain(eb["input_ids"].expand(n_e, 16)), reps)
    t_nn = None
    if has_nn:
        import nnsight_bench as nb

        nnm = nb._wrap(model)
        cells_e = [(l, p) for l in range(L) for p in range(16)]
        with torch.no_grad():
            t_nn = _best(lambda: nb.patching_sweep(nnm, eb["input_ids"], es["input_ids"], cells_e, target), reps)
    rows.append(
        (
            f"(e) patching sweep {L}x16, block_output",
            t_fx,
            None,
            t_py,
            t_nn,
            t_B,
            f"pyvene: {len(cells)} cells timed, extrapolated; floor B = plain batched forward of {n_e} rows; "
            f"fxvene without the causal prefix {t_np:.2f} s",
        )
    )

    return _finish(args, rows, L, has_nn, nn_note, pyvene, transformers)


def _sweep_rows(args, model, L, reps, has_nn, pyvene, rows):
    """(b) and issue 11's side-by-side tracing rows: (b1) block_output only on this model, (b2) the
    same on a tiny GPT-2 (12 x 64, vocab 1000: per-call overhead shows), (b3) three streams with
    the default 10 noise samples (as the README's example)."""
    from fxvene.sweeps.core import PYVENE_NOISE_LEVEL, window_layers
    from fxvene.sweeps.sweep import causal_trace

    def plain(ids):
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits

    # ---------------------------------------------------------------- (b) causal tracing
    prompt = {"input_ids": _ids(1, 10, 3)}
    subj, target = [0, 1, 2, 3], 7312
    streams = ("block_output", "mlp_activation", "attention_output")
    n_cells = len(streams) * 10 * L
    t0 = time.perf_counter()
    causal_trace(model, prompt, subj, target, noise_level=PYVENE_NOISE_LEVEL, n_samples=1, progress=False)
    t_first = time.perf_counter() - t0
    t_fx = _best(
        lambda: causal_trace(model, prompt, subj, target, noise_level=PYVENE_NOISE_LEVEL, n_samples=1, progress=False),
        reps,
    )
    t_np = _best(
        lambda: causal_trace(
            model, prompt, subj, target, noise_level=PYVENE_NOISE_LEVEL, n_samples=1, progress=False, prefix=False
        ),
        reps,
    )

    def py_cell(stream, layer, pos):
        lays = [layer] if stream == "block_output" else window_layers(layer, 10, L)
        reps_ = [pyvene.RepresentationConfig(0, "block_input")] + [pyvene.RepresentationConfig(i, stream) for i in lays]
        c = pyvene.IntervenableConfig(
            representations=reps_,
            intervention_types=[pyvene.NoiseIntervention] + [pyvene.VanillaIntervention] * len(lays),
        )
        iv = pyvene.IntervenableModel(c, model)
        n = len(lays)
        with torch.no_grad():
            _, out = iv(
                prompt,
                [None] + [prompt] * n,
                {"sources->base": ([None] + [[[pos]]] * n, [[[0, 1, 2, 3]]] + [[[pos]]] * n)},
            )
        return torch.softmax(out.logits[0, -1], -1)[target].item()

    sample_layers = sorted({0, L // 3, (2 * L) // 3, L - 1})
    sample_pos = [0, 5, 9]
    per_stream = []
    for st in streams:
        t0 = time.perf_counter()
        for l in sample_layers:
            for p in sample_pos:
                py_cell(st, l, p)
        per_stream.append((time.perf_counter() - t0) / (len(sample_layers) * len(sample_pos)))
    t_py = sum(per_stream) * 10 * L
    big = _ids(1, 10, 3).expand(n_cells, 10)
    t_B = _best(lambda: plain(big), reps)
    t_nn = None
    if has_nn:
        import nnsight_bench as nb

        from fxvene.sweeps.core import trace_noise

        nnm = nb._wrap(model)
        cells_b = [(st, l, p) for st in streams for p in range(10) for l in range(L)]
        noise_b = trace_noise(1, 4, 768)[0].float() * PYVENE_NOISE_LEVEL
        with torch.no_grad():
            t_nn = _best(
                lambda: nb.causal_trace(
                    nnm, prompt["input_ids"], subj, target, noise_b, cells_b, lambda l: window_layers(l, 10, L), L
                ),
                reps,
            )
    rows.append(
        (
            f"(b) causal tracing, {L}x10x3 cells",
            t_fx,
            None,
            t_py,
            t_nn,
            t_B,
            f"pyvene: {len(sample_layers) * len(sample_pos)} cells/stream timed, x{10 * L // (len(sample_layers) * len(sample_pos))} "
            f"extrapolated; floor B = plain batched forward of {n_cells} rows with full logits; "
            f"fxvene first call (tracing + slicing) {t_first:.1f} s; fxvene without the causal prefix {t_np:.2f} s",
        )
    )

    _log("b done", rows[-1][1:6])

    rows.append(_trace_rows(model, "(b1)", L, reps, has_nn, pyvene, model.config.vocab_size))
    _log("b1 done", rows[-1][1:6])
    tiny = _model(12, n_embd=64, n_head=4, vocab=1000)
    rows.append(_trace_rows(tiny, "(b2) tiny GPT-2", 12, max(reps, 5), has_nn, pyvene, 1000))
    _log("b2 done", rows[-1][1:6])
    # (b3): 3 streams x L layers x 10 positions x 10 samples = 3600 rows (window 10, default noise)
    t_fx10 = _best(lambda: causal_trace(model, prompt, subj, target, n_samples=10, progress=False), 1)
    rows.append(
        (
            f"(b3) causal tracing, {L}x10x3 cells, 10 noise samples (the default; {n_cells * 10} rows)",
            t_fx10,
            None,
            t_py * 10,
            None,
            t_B * 10,
            f"floor = 10 x (b)'s B (plain batched forward of {n_cells * 10} rows, full logits); pyvene: (b)'s "
            "extrapolation x 10",
        )
    )
    _log("b3 done", rows[-1][1:6])
    return rows


def _finish(args, rows, L, has_nn, nn_note, pyvene, transformers):
    # ---------------------------------------------------------------- table
    def fmt(t):
        return "-" if t is None else (f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s")

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.2f}"

    lines = [
        f"Machine: {_cpu_name()}, {args.threads} threads "
        f"(os.cpu_count={__import__('os').cpu_count()}), Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, pyvene {getattr(pyvene, '__version__', '0.1.8')}; "
        f"GPT-2 shape {L} layers x 768, fp32, random weights{' (--quick)' if args.quick else ''}. "
        f"nnsight: {__import__('nnsight').__version__ + ' (one trace: clean invoke + patched rows, logits_to_keep=1)' if has_nn else nn_note}.",
        "",
        "| workload | fxvene eager | fxvene compiled | pyvene 0.1.8 | nnsight | plain HF floor | fxvene / floor | pyvene / fxvene | nnsight / fxvene | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, fx, fxc, py, nns, floor, note in rows:
        lines.append(
            f"| {name} | {fmt(fx)} | {fmt(fxc)} | {fmt(py)} | {fmt(nns)} | {fmt(floor)} | "
            f"{ratio(fx, floor)} | {ratio(py, fx)} | {ratio(nns, fx)} | {note} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return rows


if __name__ == "__main__":
    main()
