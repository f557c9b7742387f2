"""Seed tutorial 5 — collecting activations without modifying them.

Collects layer 5's block output and layer 10's attention output (the seed's config), prints their
shapes, and checks them against the model's own ``output_hidden_states`` and that the model's
output is unchanged.
"""

import torch
from _common import load, n_layers, parser

import fxvene as pv


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    model, tok = load(args.model)
    L = n_layers(model)
    config = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=min(5, L - 1), component="block_output", intervention_type=pv.CollectIntervention
            ),
            pv.RepresentationConfig(
                layer=min(10, L - 1), component="attention_output", intervention_type=pv.CollectIntervention
            ),
        ]
    )
    intervenable = pv.IntervenableModel(config, model)
    inputs = tok("Hello world", return_tensors="pt")
    with torch.no_grad():
        _, collected = intervenable(base=inputs)
        layer5_output, layer10_attn = collected[0], collected[1]
        print(f"Layer 5 block output shape: {layer5_output.shape}")
        print(f"Layer 10 attention output shape: {layer10_attn.shape}")
        hs = model(**inputs, output_hidden_states=True).hidden_states[min(5, L - 1) + 1]
        print(f"equals the model's own hidden state: {torch.allclose(layer5_output, hs, atol=1e-5)}")
        # pyvene's layout: ((original_output, collected), ...), here collecting the last token only
        (orig, per_pos), _ = intervenable(base=inputs, unit_locations={"base": 1}, output_original_output=True)
        print(f"last-token collect shapes: {[tuple(t.shape) for t in per_pos]}")
        print(f"model output unchanged: {torch.allclose(orig.logits, model(**inputs).logits, atol=1e-5)}")


if __name__ == "__main__":
    main()
