"""fxvene on a GPU (issue 26, item 5): sweep, patching, DAS step and steered generation, bf16 with SDPA.

    python benchmarks/gpu.py                      # CUDA, GPT-2-small shape (12 x 768, vocab 50257)
    python benchmarks/gpu.py --quick              # 2 x 128, vocab 1000, fewer repetitions and rows
    python benchmarks/gpu.py --device cpu --quick # the same workloads on the CPU (the CI smoke run)

Each workload runs in bf16 and in fp32 (TF32 off on CUDA), next to the plain HF forward or generate it
costs more than (and nnsight's best form of the sweep where nnsight is installed). One markdown table,
one row per workload and dtype, printed as each row finishes. Times are medians of interleaved calls
after a warm-up; peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the peak resident set
(``VmHWM``, reset before each measured call) on the CPU, weights included. Each row checks fxvene's
output against the same workload run by fxvene in float32 on the CPU (the reference): the top-1 token
(rows whose reference top-two gap is under the tolerance are near ties and not held to it) and the
largest |dp|: bf16 within 2e-2, fp32 on CUDA within 1e-4. A section past ``--timeout`` seconds prints
``timeout`` and the script goes on; the exit status is 1 when a check failed, a section raised or ran
out of time.

The model is a GPT-2 built from its config with seeded random weights (no network), eager dropout off,
``attn_implementation="sdpa"``. A random model's next-token distribution is nearly uniform (every p is
about 1/vocab, which would make |dp| say nothing), so the final layer norm's gain is raised until the
logits have a standard deviation of about 2 (``LOGIT_STD``). Only torch and transformers APIs present in
torch 2.11 / transformers 5.17 (and the CI lines) are used.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import signal
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import timeit  # noqa: E402  (median per call, interleaved, after a warm-up: one copy)

SECTIONS = ("sweep", "patch", "das", "generate")
LOGIT_STD = 2.0
TOL = {"bf16": 2e-2, "fp32": 1e-4}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
COLUMNS = (
    "section|dtype|workload|fxvene|plain HF|fx / plain|nnsight|nnsight / fx|peak MiB fx|peak MiB plain|top-1 vs ref|"
    "max abs dp vs ref|check"
).split("|")


class SectionTimeout(BaseException):
    """Raised by the per-section alarm (a BaseException, so that no ``except Exception`` on the way swallows it)."""


@contextlib.contextmanager
def deadline(seconds):
    """Raise SectionTimeout in the main thread after ``seconds`` (SIGALRM; no limit where it is missing)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise SectionTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------------------------- setup


def shape_of(quick):
    """Model shape and workload sizes."""
    if quick:
        return dict(
            n_layer=2, n_embd=128, n_head=4, vocab=1000, patch_batch=4, das_batch=8, gen_batch=4, new_tokens=8, reps=1
        )
    return dict(
        n_layer=12, n_embd=768, n_head=12, vocab=50257, patch_batch=8, das_batch=32, gen_batch=8, new_tokens=32, reps=5
    )


def build_model(shape):
    """The seeded random GPT-2 in float32 on the CPU (the reference); its weights are frozen."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=shape["n_layer"],
        n_embd=shape["n_embd"],
        n_head=shape["n_head"],
        vocab_size=shape["vocab"],
        bos_token_id=shape["vocab"] - 1,
        eos_token_id=shape["vocab"] - 1,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    cfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(cfg).eval().requires_grad_(False)
    gain = LOGIT_STD / (cfg.initializer_range * math.sqrt(cfg.n_embd))
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(gain)
    return model


def ids(b, s, seed, vocab):
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def peak_mib(fn, dev):
    """Peak memory (MiB) during one call of ``fn``: CUDA's allocator peak, or the process's peak RSS."""
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        sync(dev)
        return torch.cuda.max_memory_allocated(dev) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux)
    except OSError:
        return None
    fn()
    return _vm_hwm_mib()


# ---------------------------------------------------------------------------------------------- checks


def agreement(probs, ref, tol):
    """(top-1 text, max |dp|, ok) of ``probs`` against ``ref`` (rows x vocab, float32 on the CPU);
    a row whose reference top-two gap is under ``tol`` is a near tie and may disagree on top-1."""
    probs, ref = probs.float().cpu(), ref.float().cpu()
    dp = (probs - ref).abs().max().item()
    top2 = ref.topk(2, -1).values
    tie = (top2[:, 0] - top2[:, 1]) < tol
    same = probs.argmax(-1) == ref.argmax(-1)
    ok_top = bool((same | tie).all())
    n_tie = int((tie & ~same).sum())
    text = f"{int(same.sum())}/{len(same)}" + (f" ({n_tie} near ties)" if n_tie else "")
    return text, dp, ok_top and dp <= tol


# ---------------------------------------------------------------------------------------------- workloads
# Each returns {"times": {...}, "mem": {...}, "probs": rows x vocab (or None), "extra": {...}, "note": str}.
# ``timed=False`` (the CPU float32 reference on a CUDA run) computes only the outputs.


def sweep(model, dev, sh, timed, ctx):
    """ROME causal tracing of block_output (L layers x 10 positions, one noise sample, 4 subject tokens)
    against B, one plain batched forward of the same L*10 rows with full logits."""
    from fxvene.sweeps.core import PYVENE_NOISE_LEVEL, trace_noise, window_layers
    from fxvene.sweeps.sweep import causal_trace

    L, vocab = model.config.n_layer, model.config.vocab_size
    prompt = {"input_ids": ids(1, 10, 3, vocab).to(dev)}
    subj, target = [0, 1, 2, 3], ctx["target"]
    kw = dict(noise_level=PYVENE_NOISE_LEVEL, n_samples=1, streams="block_output", progress=False)
    res = causal_trace(model, prompt, subj, target, **kw)
    grid = torch.cat([torch.tensor([res.clean_prob, res.corrupted_prob]), res.probs.flatten().float().cpu()])
    with torch.no_grad():
        clean = model(**prompt, use_cache=False).logits[:, -1].float().softmax(-1)
    out = {"probs": clean, "extra": {"grid": grid}, "times": {}, "mem": {}}
    out["note"] = f"{L}x10 cells, B = plain forward of {10 * L} rows (full logits); dp over p(target) cells"
    if not timed:
        return out
    big = prompt["input_ids"].expand(10 * L, 10)

    def plain():
        with torch.no_grad():
            model(input_ids=big, use_cache=False)

    fns = {"fx": lambda: causal_trace(model, prompt, subj, target, **kw), "plain": plain}
    if ctx["nnsight"]:
        try:
            import nnsight_bench as nb

            nnm = nb._wrap(model)
            noise = (trace_noise(1, 4, model.config.n_embd)[0].float() * PYVENE_NOISE_LEVEL).to(dev)
            cells = [("block_output", l, p) for p in range(10) for l in range(L)]

            def window_fn(l):
                return window_layers(l, 10, L)

            def nn_call():
                with torch.no_grad():
                    nb.causal_trace(nnm, prompt["input_ids"], subj, target, noise, cells, window_fn, L)

            nn_call()  # an nnsight that cannot run it fails here, outside the timing
            fns["nn"] = nn_call
        except Exception as e:  # noqa: BLE001 - nnsight is optional; its failure is reported, not fatal
            out["note"] += f"; nnsight failed: {type(e).__name__}"
    out["times"] = timeit(fns, sh["reps"], dev)
    out["mem"] = {"fx": peak_mib(fns["fx"], dev), "plain": peak_mib(plain, dev)}
    return out


def patch(model, dev, sh, timed, ctx):
    """One Vanilla patch of block_output at the middle layer (position 3 of 16, batch b, source inputs)
    against the plain forwards of the source and the base it needs."""
    import fxvene as pv

    L, vocab, b = model.config.n_layer, model.config.vocab_size, sh["patch_batch"]
    base, src = {"input_ids": ids(b, 16, 1, vocab).to(dev)}, {"input_ids": ids(b, 16, 2, vocab).to(dev)}
    iv = pv.IntervenableModel(pv.RepresentationConfig(L // 2, "block_output"), model)

    def fx():
        with torch.no_grad():
            return iv(base, [src], unit_locations={"sources->base": 3})[1]

    def plain():
        with torch.no_grad():
            model(**src, use_cache=False)
            model(**base, use_cache=False)

    out = {"probs": fx().logits[:, -1].float().softmax(-1), "extra": {}, "times": {}, "mem": {}}
    out["note"] = f"batch {b} x 16, layer {L // 2}; plain = source + base forwards"
    if timed:
        out["times"] = timeit({"fx": fx, "plain": plain}, 3 * sh["reps"], dev)
        out["mem"] = {"fx": peak_mib(fx, dev), "plain": peak_mib(plain, dev)}
    return out


def das(model, dev, sh, timed, ctx):
    """One Boundless DAS training step (BoundlessRotatedSpaceIntervention at the middle layer's
    block_output, last position, Adam) against a plain source forward plus a base forward and backward
    to the input embeddings. The rotation starts from the reference's initial state."""
    import fxvene as pv

    L, vocab, b = model.config.n_layer, model.config.vocab_size, sh["das_batch"]
    base, src = {"input_ids": ids(b, 16, 5, vocab).to(dev)}, {"input_ids": ids(b, 16, 6, vocab).to(dev)}
    labels = ids(b, 1, 7, vocab)[:, 0].to(dev)
    torch.manual_seed(1)
    cfg = pv.IntervenableConfig(
        [pv.RepresentationConfig(L // 2, "block_output")], intervention_types=pv.BoundlessRotatedSpaceIntervention
    )
    iv = pv.IntervenableModel(cfg, model)
    inter = next(iter(iv.interventions.values()))
    inter = inter[0] if isinstance(inter, tuple) else inter
    if ctx.get("das_init") is None:
        ctx["das_init"] = {k: v.detach().cpu().clone() for k, v in inter.state_dict().items()}
    else:
        inter.load_state_dict(ctx["das_init"])
    opt = torch.optim.Adam([p for p in inter.parameters() if p.requires_grad], lr=1e-3)

    def fx_forward():
        return iv(base, [src], unit_locations={"sources->base": 15})[1].logits[:, -1]

    def fx():
        loss = torch.nn.functional.cross_entropy(fx_forward().float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()

    def plain():
        with torch.no_grad():
            model(**src, use_cache=False)
        emb = model.transformer.wte(base["input_ids"]).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb, use_cache=False).logits[:, -1]
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()

    with torch.no_grad():
        probs = fx_forward().float().softmax(-1)  # before any step: the shared initial rotation
    out = {"probs": probs, "extra": {}, "times": {}, "mem": {}}
    out["note"] = f"batch {b} x 16, layer {L // 2}, rotation {model.config.n_embd}^2; checked before the first step"
    if timed:
        out["times"] = timeit({"fx": fx, "plain": plain}, sh["reps"], dev)
        out["mem"] = {"fx": peak_mib(fx, dev), "plain": peak_mib(plain, dev)}
    return out


def generate(model, dev, sh, timed, ctx):
    """Steered greedy generation (AdditionIntervention at the middle layer's mlp_output on every decode
    step, pyvene's default) against HF generate with the same steering as a forward hook, and plain HF
    generate. Checked per decode step up to the first step where the tokens part from the reference's."""
    import fxvene as pv

    L, vocab, b, n = model.config.n_layer, model.config.vocab_size, sh["gen_batch"], sh["new_tokens"]
    prompt_ids = ids(b, 16, 11, vocab)
    mask = torch.ones_like(prompt_ids)
    mask[1:, :4] = 0  # left padding on all rows but the first
    base = {"input_ids": prompt_ids.to(dev), "attention_mask": mask.to(dev)}
    vec = (torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(12)) * 0.5).to(dev, model.dtype)
    kw = dict(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    iv = pv.IntervenableModel(
        {"layer": L // 2, "component": "mlp_output", "intervention_type": pv.AdditionIntervention}, model
    )
    mlp = model.transformer.h[L // 2].mlp

    def fx(**more):
        return iv.generate(base, source_representations=vec, **kw, **more)[1]

    def hooked():
        calls = [0]

        def hook(mod, args, output):
            calls[0] += 1
            return output + vec if calls[0] > 1 else None  # decode forwards only

        h = mlp.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return model.generate(**base, **kw)
        finally:
            h.remove()

    def plain():
        with torch.no_grad():
            return model.generate(**base, **kw)

    got = fx(output_scores=True, return_dict_in_generate=True)
    steps = torch.stack([s.float().softmax(-1).cpu() for s in got.scores], 1)  # b x n x vocab
    tokens = got.sequences[:, 16:].cpu()
    out = {"probs": None, "extra": {"steps": steps, "tokens": tokens}, "times": {}, "mem": {}}
    same_hf = torch.equal(hooked().cpu(), got.sequences.cpu())
    out["note"] = f"batch {b}, prompt 16, {n} new tokens; tokens = HF+hook: {same_hf}"
    out["ok"] = same_hf
    if timed:
        out["times"] = timeit({"fx": fx, "plain": hooked, "hf": plain}, sh["reps"], dev)
        out["mem"] = {"fx": peak_mib(fx, dev), "plain": peak_mib(hooked, dev)}
        out["note"] += f"; plain HF generate without hook {out['times']['hf'] * 1e3:.1f} ms"
    return out


WORKLOADS = {"sweep": sweep, "patch": patch, "das": das, "generate": generate}
LABELS = {
    "sweep": "causal_trace block_output vs batched forward",
    "patch": "Vanilla patch forward vs plain forwards",
    "das": "Boundless DAS train step vs plain fwd+bwd",
    "generate": "steered generate vs HF generate + hook",
}


def compare(name, got, ref, tol):
    """(top-1 text, max |dp|, ok) of a workload's outputs against the reference's."""
    if name == "generate":
        steps, rsteps = got["extra"]["steps"], ref["extra"]["steps"]
        toks, rtoks = got["extra"]["tokens"], ref["extra"]["tokens"]
        rows, rrows = [], []
        for i in range(toks.shape[0]):  # each row's steps up to and including its first disagreement
            differ = (toks[i] != rtoks[i]).nonzero()
            k = int(differ[0]) + 1 if len(differ) else toks.shape[1]
            rows.append(steps[i, :k])
            rrows.append(rsteps[i, :k])
        top, dp, ok = agreement(torch.cat(rows), torch.cat(rrows), tol)
        return top, dp, ok and got.get("ok", True)
    top, dp, ok = agreement(got["probs"], ref["probs"], tol)
    if "grid" in got["extra"]:
        dp = max(dp, (got["extra"]["grid"] - ref["extra"]["grid"]).abs().max().item())
        ok = ok and dp <= tol
    return top, dp, ok


# ---------------------------------------------------------------------------------------------- table


def fmt_t(t):
    return "-" if t is None else (f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s")


def fmt_r(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"


def fmt_m(m):
    return "-" if m is None else f"{m:.0f}"


def emit(cells):
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def row_cells(name, dtype, out, check):
    t, m = out["times"], out["mem"]
    fx, pl, nn = t.get("fx"), t.get("plain"), t.get("nn")
    top, dp, status = check
    return [
        name,
        dtype,
        f"{LABELS[name]} ({out['note']})",
        fmt_t(fx),
        fmt_t(pl),
        fmt_r(fx, pl),
        fmt_t(nn),
        fmt_r(nn, fx),
        fmt_m(m.get("fx")),
        fmt_m(m.get("plain")),
        top,
        "-" if dp is None else f"{dp:.1e}",
        status,
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="2 x 128 model, vocab 1000, fewer rows and repetitions")
    ap.add_argument("--dtypes", default="bf16,fp32", help="comma-separated, of bf16 and fp32")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per section (default 60 quick, 300)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 2 quick, 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    args = ap.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    sections = [s for s in args.sections.split(",") if s]
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"--dtypes: expected names among {sorted(DTYPES)}, got {d!r}")
    for s in sections:
        if s not in SECTIONS:
            raise ValueError(f"--sections: expected names among {list(SECTIONS)}, got {s!r}")
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here (use --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    sdpa = ""
    if dev.type == "cuda":  # fp32 means fp32: no TF32 in matrix products or convolutions
        torch.set_float32_matmul_precision("highest")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32 = False
        kernels = ("flash", "mem_efficient", "cudnn", "math")
        on = [k for k in kernels if getattr(torch.backends.cuda, f"{k}_sdp_enabled", lambda: False)()]
        sdpa = f" (SDPA kernels enabled: {', '.join(on)})"
    sh = shape_of(args.quick)
    if args.reps:
        sh["reps"] = args.reps
    timeout = args.timeout if args.timeout is not None else (60 if args.quick else 300)
    try:
        import nnsight

        nn_text = f"nnsight {nnsight.__version__}"
    except Exception:  # noqa: BLE001 - optional
        nnsight, nn_text = None, "nnsight not installed"
    import transformers

    _preimport()
    ref_model = build_model(sh)
    with torch.no_grad():
        clean = ref_model(input_ids=ids(1, 10, 3, ref_model.config.vocab_size), use_cache=False).logits[0, -1]
    ctx = {"target": int(clean.argmax()), "nnsight": nnsight is not None}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{name}; torch {torch.__version__}, transformers {transformers.__version__}, Python "
        f"{sys.version.split()[0]}; {nn_text}; GPT-2 {sh['n_layer']} x {sh['n_embd']}, vocab "
        f"{ref_model.config.vocab_size}, random weights (seed 0, logit std ~{LOGIT_STD}), attention "
        f"{ref_model.config._attn_implementation}{sdpa}; median of {sh['reps']} (patch: {3 * sh['reps']}) after a "
        f"warm-up; reference: fxvene in float32 on the CPU; section timeout {timeout:.0f} s"
        f"{'; --quick' if args.quick else ''}",
        flush=True,
    )
    print(flush=True)
    emit(COLUMNS)
    emit(["---"] * len(COLUMNS))
    failed = False
    # the CPU float32 run is the reference: on the CPU it is also the fp32 row, so it runs first
    order = sorted(dtypes, key=lambda d: d != "fp32") if dev.type == "cpu" else dtypes
    models = {}
    for sec in sections:
        fn = WORKLOADS[sec]
        ref = None
        t_sec = time.perf_counter()
        try:
            with deadline(timeout):
                if dev.type == "cuda" or "fp32" not in order:
                    ref = fn(ref_model, torch.device("cpu"), sh, False, ctx)
                for d in order:
                    if d not in models:
                        models[d] = ref_model if (dev.type == "cpu" and d == "fp32") else _on(ref_model, dev, d)
                    out = fn(models[d], dev, sh, True, ctx)
                    if ref is None:  # CPU fp32: this run is the reference
                        ref, check = out, ("ref", None, "reference")
                    else:
                        top, dp, ok = compare(sec, out, ref, TOL[d])
                        check = (top, dp, "ok" if ok else f"FAIL (tol {TOL[d]:.0e})")
                        failed |= not ok
                    emit(row_cells(sec, d, out, check))
        except SectionTimeout:
            failed = True
            emit(
                [sec, "-", f"{LABELS[sec]}: timeout after {time.perf_counter() - t_sec:.0f} s"]
                + ["-"] * 9
                + ["timeout"]
            )
        except Exception as e:  # noqa: BLE001 - one section's failure is a row of the table; the others go on
            failed = True
            msg = f"{type(e).__name__}: {e}".replace("|", "/").replace("\n", " ")[:200]
            emit([sec, "-", f"{LABELS[sec]}: error {msg}"] + ["-"] * 9 + ["error"])
        print(f"gpu.py: section {sec} took {time.perf_counter() - t_sec:.1f} s", file=sys.stderr, flush=True)
    return 1 if failed else 0


def _preimport():
    """Import what the sections import lazily, before any alarm is set: an alarm that lands inside an import
    leaves a half-initialised module behind (networkx then refuses to register its algorithms again)."""
    import networkx  # noqa: F401
    import torch.export  # noqa: F401
    import torch.fx.experimental.symbolic_shapes  # noqa: F401

    import fxvene as pv
    import fxvene.api.generation  # noqa: F401
    import fxvene.sweeps.sweep  # noqa: F401

    for name in ("IntervenableModel", "BoundlessRotatedSpaceIntervention", "AdditionIntervention"):
        getattr(pv, name)


def _on(model, dev, d):
    """A copy of the reference model on ``dev`` in dtype ``d``."""
    return copy.deepcopy(model).to(device=dev, dtype=DTYPES[d])


if __name__ == "__main__":
    sys.exit(main())
