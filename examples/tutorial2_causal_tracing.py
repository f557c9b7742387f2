"""Seed tutorial 2 — causal tracing (ROME): locate where a factual association is stored by
corrupting the subject and restoring clean activations.

The seed code builds one IntervenableModel per layer with Noise at block_input(0) and a Vanilla
restore at block_output(L), with no ``unit_locations``: the noise then covers every token (not
just the subject) and the restore replaces *every* position, so each layer restores the whole
clean run and the sweep shows nothing. This script first runs that loop as written (fxvene runs
it; each layer gives the clean probability), then does causal tracing properly with
``fxvene.causal_trace``: noise on the subject tokens only (3 x the embedding std, several
samples), the clean state restored at every (layer, position) — block_output, and windows of
layers for mlp_activation and attention_output — as batched rows of a sliced graph. It draws the
three heatmaps to ``causal_trace.png``.
"""

import numpy as np
import torch
from _common import load, n_layers, parser

import fxvene as pv


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--out", default="causal_trace.png")
    args = p.parse_args(argv)
    model, tok = load(args.model)
    L = n_layers(model)
    clean_prompt = "The Space Needle is in downtown"
    clean_inputs = tok(clean_prompt, return_tensors="pt")
    seattle = tok.encode(" Seattle")[0]
    with torch.no_grad():
        clean_prob = torch.softmax(model(**clean_inputs).logits[0, -1], -1)[seattle].item()
    print(f"Clean P(Seattle): {clean_prob:.4f}")

    # --- the seed loop, as written (whole-sequence noise and restore)
    results = []
    for restore_layer in range(L if not args.quick else 2):
        config = pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(layer=0, component="block_input", intervention_type=pv.NoiseIntervention),
                pv.RepresentationConfig(
                    layer=restore_layer, component="block_output", intervention_type=pv.VanillaIntervention
                ),
            ]
        )
        intervenable = pv.IntervenableModel(config, model)
        with torch.no_grad():
            _, outputs = intervenable(base=clean_inputs, sources=[clean_inputs])
        results.append(torch.softmax(outputs.logits[0, -1], -1)[seattle].item())
    print(f"seed loop (restores every position): {np.round(results, 4).tolist()}")

    # --- causal tracing done properly
    ids = clean_inputs["input_ids"][0].tolist()
    subject = tok(" Space Needle")["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i : i + len(subject)] == subject)
    subject_positions = list(range(start, start + len(subject)))
    with torch.no_grad():
        res = pv.causal_trace(model, clean_inputs, subject_positions, seattle, n_samples=3 if args.quick else 10)
    res.decode(tok)  # token strings for the summary, the records and the figure
    print(res)  # clean / corrupted p(Seattle), the axes, the strongest restore per stream
    for s, stream in enumerate(res.streams):
        best = res.probs[s].max(dim=1).values
        print(
            f"{stream:>17}: best restore per token "
            + ", ".join(f"{res.token_label(p)}={v:.2f}" for p, v in zip(res.positions, best.tolist()))
        )
    critical = np.argsort(res.probs[0, subject_positions[-1]].numpy())[-5:]
    print(f"most critical layers at the last subject token (block_output): {sorted(critical.tolist())}")
    print(
        "the five strongest MLP restores:",
        [(r["token"], r["layer"], round(r["prob"], 3)) for r in res.top(5, stream="mlp_activation")],
    )
    pv.plot_causal_trace(res, tokenizer=tok, path=args.out)  # ROME's three panels, labelled
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
