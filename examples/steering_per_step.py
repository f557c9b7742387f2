"""Steering during generation, per step: what pyvene 0.1.8 cannot express (its issues #15 and #193).

pyvene's ``generate`` either steers every decode step at the new token (the default; the prompt is
never touched, so the first generated token comes out unsteered) or only the prompt
(``intervene_on_prompt=True`` with locations). fxvene keeps those semantics and adds:

* ``intervene_on="all"``: the prompt (at ``unit_locations``, or every prompt position) **and** every
  generated token, in one call;
* ``intervene_on="decode"`` / ``"prompt"``: one side only, explicitly;
* ``decode_steps=[...]``: only the chosen decode steps (step k reads the k-th generated token).

Decoding uses a KV cache: each new token is one single-token forward of the rewritten graph.

    python examples/steering_per_step.py           # the shipped demo model if built, else a tiny random GPT-2
    python examples/steering_per_step.py --quick   # fewer tokens
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import fxvene as pv


def load():
    from fxvene.zoo.demo import demo_model_path, load_demo

    if os.path.exists(os.path.join(demo_model_path(), "config.json")):
        model, tok = load_demo()
        return model, tok, "demo model"
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=100, n_positions=128)
    return GPT2LMHeadModel(cfg).eval(), None, "tiny random GPT-2 (no demo model built)"


def encode(tok, text, vocab):
    if tok is not None:
        return tok(text, return_tensors="pt")
    g = torch.Generator().manual_seed(sum(map(ord, text)))
    ids = torch.randint(1, vocab, (1, 5), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def show(tok, ids, prompt_len):
    new = ids[0, prompt_len:]
    return repr(tok.decode(new)) if tok is not None else str(new.tolist())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scale", type=float, default=50.0, help="multiplier of the (mean) happy-sad direction")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, tok, what = load()
    n_layer = model.config.n_layer
    layer = n_layer // 2
    vocab = model.config.vocab_size
    print(f"model: {what}; steering layer {layer} mlp_output")

    # 1. a steering direction: mean mlp_output on a happy prompt minus on a sad one (seed tutorial 6)
    collector = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(layer=layer, component="mlp_output", intervention_type=pv.CollectIntervention)
            ]
        ),
        model,
    )
    _, happy = collector(base=encode(tok, "I am very happy and", vocab))
    _, sad = collector(base=encode(tok, "I am very sad and", vocab))
    direction = happy[0].mean(dim=1) - sad[0].mean(dim=1)  # (1, d)
    steer = direction[0] * args.scale  # the mean over 5 positions dilutes it; it needs a large factor

    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(layer=layer, component="mlp_output", intervention_type=pv.AdditionIntervention)
            ]
        ),
        model,
    )
    inputs = encode(tok, "Today I feel", vocab)
    S = inputs["input_ids"].shape[1]
    kw = dict(max_new_tokens=6 if args.quick else 12, do_sample=False)
    if tok is not None:
        kw["pad_token_id"] = tok.pad_token_id

    runs = [
        ("no steering", dict(source_representations=torch.zeros_like(steer))),
        ("pyvene default: every decode step, not the prompt", dict(source_representations=steer)),
        ("prompt only (all prompt positions)", dict(source_representations=steer, intervene_on="prompt")),
        ("fxvene: prompt AND every generated token", dict(source_representations=steer, intervene_on="all")),
        (
            "fxvene: prompt's last position and decode steps 0-2 only",
            dict(
                source_representations=steer, intervene_on="all", unit_locations={"base": S - 1}, decode_steps=[0, 1, 2]
            ),
        ),
    ]
    for name, extra in runs:
        _, out = im.generate(inputs, **extra, **kw)
        print(f"  {name:<58} -> {show(tok, out, S)}")

    # 2. collection during decoding: one tensor per forward the collector acts on
    (_, acts), out = collector.generate(inputs, intervene_on="all", **kw)
    print(
        f"collected {len(acts)} tensors: prompt {tuple(acts[0].shape)}, then "
        f"{len(acts) - 1} x {tuple(acts[1].shape)} (one per decode step)"
    )
    # how far each generated token's layer-{layer} MLP output points along the happy-sad direction
    unit = direction[0] / direction[0].norm()
    proj = [float(a[0, -1] @ unit) for a in acts]
    print("projection on the happy-sad direction per forward:", " ".join(f"{p:+.2f}" for p in proj))
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
