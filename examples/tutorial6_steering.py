"""Seed tutorial 6 — generation with interventions: steer generated text with a happy − sad
direction.

The seed code collects the direction but never passes it: its bare
``intervenable.generate(inputs, ...)`` with an AdditionIntervention has no source, which fxvene
reports as a clear error (printed below). Here the direction is passed as
``source_representations`` and added at every forward of the generation (prompt and each new
token); the same prompt is generated with and without steering (same sampling seed).

Two changes from the seed make the effect visible on the small demo model: the direction is
taken at the emotion word's position (the seed's mean over all positions is mostly the shared
words, so it is short), and it is added to the residual stream (``block_output``) — on this
model a direction added to one layer's MLP output moves the next-token distribution much less.
"""

import torch
from _common import load, parser

import fxvene as pv


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--scale", type=float, default=2.0, help="multiplier of the steering direction")
    p.add_argument("--component", default="block_output", help="where to steer (the seed uses mlp_output)")
    args = p.parse_args(argv)
    model, tok = load(args.model)
    layer = min(6, model.config.num_hidden_layers - 1)

    # 1. the happy - sad direction (the seed's collection, read at the emotion word)
    config = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=layer, component=args.component, intervention_type=pv.CollectIntervention)
        ]
    )
    collector = pv.IntervenableModel(config, model)
    happy, sad = tok("I am very happy and", return_tensors="pt"), tok("I am very sad and", return_tensors="pt")
    word = happy["input_ids"].shape[1] - 2  # the position of "happy" / "sad"
    with torch.no_grad():
        _, happy_acts = collector(base=happy)
        _, sad_acts = collector(base=sad)
    steering_direction = happy_acts[0][:, word] - sad_acts[0][:, word]
    print(f"direction: {args.component} of layer {layer} at the emotion word, norm {steering_direction.norm():.3f}")

    # 2. steering during generation
    config = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=layer, component=args.component, intervention_type=pv.AdditionIntervention)
        ]
    )
    intervenable = pv.IntervenableModel(config, model)
    inputs = tok("Today I feel", return_tensors="pt")
    try:
        intervenable.generate(inputs, max_new_tokens=20, do_sample=True, temperature=0.7)
    except ValueError as e:
        print(f"the seed's call without a source: ValueError: {e}")

    n = 8 if args.quick else 20
    # greedy decoding, so the only difference between the lines is the steering
    for name, scale in (("unsteered", 0.0), ("happy - sad", args.scale), ("sad - happy", -args.scale)):
        _, out = intervenable.generate(
            inputs,
            source_representations=scale * steering_direction,
            intervene_on_prompt=True,
            unit_locations=None,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
        print(f"{name:>12}: {tok.decode(out[0], skip_special_tokens=True)}")


if __name__ == "__main__":
    main()
