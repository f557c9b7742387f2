"""``python -m fxvene``: the main job. Causal tracing (ROME) on the GPT-2 shipped with fxvene,
written to ``causal_trace.png`` — fxvene working within a minute of installing it, offline."""
from __future__ import annotations

import argparse
import sys
import time


def _subject_positions(tokenizer, prompt, subject):
    ids = tokenizer(prompt)["input_ids"]
    sub = tokenizer(" " + subject)["input_ids"] if not prompt.startswith(subject) else tokenizer(subject)["input_ids"]
    for i in range(len(ids) - len(sub) + 1):
        if ids[i:i + len(sub)] == sub:
            return list(range(i, i + len(sub)))
    raise ValueError(f"subject {subject!r} is not a token span of the prompt {prompt!r}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fxvene", description=__doc__)
    p.add_argument("--model", default=None, help="local model directory (default: the shipped demo model)")
    p.add_argument("--prompt", default="The Space Needle is in downtown")
    p.add_argument("--subject", default="Space Needle")
    p.add_argument("--target", default=" Seattle")
    p.add_argument("--samples", type=int, default=10, help="noise samples per cell")
    p.add_argument("--out", default="causal_trace.png")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fxvene.demo import demo_model_path
    from fxvene.sweep import causal_trace, plot_causal_trace

    path = args.model or demo_model_path()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    try:  # eager attention: transformers 4.x's fx tracer mis-traces sdpa GPT-2 (fxvene then falls back to export)
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    except (TypeError, ValueError):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
    inputs = tok(args.prompt, return_tensors="pt")
    subject = _subject_positions(tok, args.prompt, args.subject)
    target = tok(args.target)["input_ids"][0]
    with torch.no_grad():
        res = causal_trace(model, inputs, subject, target, n_samples=args.samples)
    tokens = [tok.decode([i]).strip() or repr(tok.decode([i])) for i in inputs["input_ids"][0].tolist()]
    print(f"model: {path}")
    print(f"prompt: {args.prompt!r}  subject: {args.subject!r} (positions {subject})  target: {args.target!r}")
    print(f"P(target) clean {res.clean_prob:.4f}   subject corrupted {res.corrupted_prob:.4f}")
    for s, stream in enumerate(res.streams):
        flat = res.probs[s]
        pos, layer = divmod(int(flat.argmax()), flat.shape[1])
        print(f"{stream:>17}: strongest restore at token {tokens[res.positions[pos]]!r} layer "
              f"{res.layers[layer]} (P={float(flat.max()):.4f})")
    plot_causal_trace(res, tokens=tokens, path=args.out, title=args.prompt)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
