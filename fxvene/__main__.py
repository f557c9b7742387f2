"""``python -m fxvene``: the main job. Causal tracing (ROME) on the GPT-2 shipped with fxvene,
written to ``causal_trace.png`` — fxvene working within a minute of installing it, offline."""

from __future__ import annotations

import argparse
import os
import sys
import time

PLOT_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _subject_positions(tokenizer, prompt, subject):
    ids = tokenizer(prompt)["input_ids"]
    sub = tokenizer(" " + subject)["input_ids"] if not prompt.startswith(subject) else tokenizer(subject)["input_ids"]
    for i in range(len(ids) - len(sub) + 1):
        if ids[i : i + len(sub)] == sub:
            return list(range(i, i + len(sub)))
    raise ValueError(f"--subject {subject!r} is not a token span of --prompt {prompt!r}")


def _check(p, args):
    """Argument errors, before torch, transformers or the model load."""
    if args.model is not None and not os.path.isfile(os.path.join(args.model, "config.json")):
        p.error(f"--model {args.model!r} is not a model directory (no config.json there)")
    if args.samples < 1:
        p.error(f"--samples must be >= 1, got {args.samples}")
    if args.window < 1:
        p.error(f"--window must be >= 1, got {args.window}")
    if args.subject not in args.prompt:
        p.error(f"--subject {args.subject!r} does not occur in --prompt {args.prompt!r}")
    if not args.target.strip():
        p.error("--target must be a word (e.g. ' Seattle', with its leading space)")
    ext = os.path.splitext(args.out)[1].lower()
    if ext not in PLOT_FORMATS:
        p.error(f"--out {args.out!r}: expected a file ending in {', '.join(PLOT_FORMATS)}")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        p.error(f"--out {args.out!r}: directory {parent!r} does not exist")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        p.error("the figure needs matplotlib: pip install matplotlib (or fxvene[plots])")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "trace-facts":  # the fxvene command's dataset trace (torchrun -m fxvene trace-facts ...)
        from fxvene.cli.app import main as cli_main

        return cli_main(argv)
    p = argparse.ArgumentParser(prog="python -m fxvene", description=__doc__)
    p.add_argument("--model", default=None, help="local model directory (default: the shipped demo model)")
    p.add_argument("--prompt", default="The Space Needle is in downtown")
    p.add_argument("--subject", default="Space Needle")
    p.add_argument("--target", default=" Seattle", help="the answer whose probability is traced (its first token)")
    p.add_argument("--samples", type=int, default=10, help="noise samples per cell (default 10)")
    p.add_argument("--window", type=int, default=10, help="layers restored together for MLP and attention (default 10)")
    p.add_argument("--out", default="causal_trace.png", help="the figure (.png, .pdf, .svg)")
    args = p.parse_args(argv)
    _check(p, args)

    t0 = time.perf_counter()
    print("loading torch, transformers and the model ...", flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fxvene.sweeps.results import plot_causal_trace
    from fxvene.sweeps.sweep import causal_trace
    from fxvene.zoo.demo import demo_model_path

    path = args.model or demo_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    inputs = tok(args.prompt, return_tensors="pt")
    try:
        subject = _subject_positions(tok, args.prompt, args.subject)
    except ValueError as e:
        p.error(str(e))
    target_ids = tok(args.target)["input_ids"]
    target = target_ids[0]
    # as Python code gets it: the demo as pv.load_demo() loads it (eager attention), a directory as
    # from_pretrained(path) does; so this shows the graph and numbers the user's own code gets
    eager = {"attn_implementation": "eager"} if args.model is None else {}
    model = AutoModelForCausalLM.from_pretrained(path, **eager).eval()
    print(f"model: {path}")
    print(
        f"prompt: {args.prompt!r}  subject: {args.subject!r} (positions {subject})  target: {args.target!r}"
        + (f" (its first token {tok.decode([target])!r} of {len(target_ids)})" if len(target_ids) > 1 else "")
    )
    print(f"causal tracing: {args.samples} noise samples per cell (the first call traces the model) ...", flush=True)
    with torch.no_grad():
        res = causal_trace(model, inputs, subject, target, n_samples=args.samples, window=args.window)
    res.decode(tok)
    print(f"P(target) clean {res.clean_prob:.4f}, subject corrupted {res.corrupted_prob:.4f}")
    print(res)
    print("strongest restore at a subject token:")
    for stream in res.streams:
        r = max((r for r in res.top(res.probs[0].numel(), stream=stream) if r["subject"]), key=lambda r: r["prob"])
        print(f"  {stream:>16}: token {r['token']!r}, layer {r['layer']} (p = {r['prob']:.4f})")
    plot_causal_trace(res, tokenizer=tok, path=args.out)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
