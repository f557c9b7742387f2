"""Seed tutorial 4 — position-specific intervention: intervene at chosen token positions only.

Patches the first name (position 0), then both names (positions 0 and 2) of "Alice and Bob went to
the store" into "John and Mary went to the store", and checks that only what should change does:
the layer-5 hidden states differ from the clean run exactly at the patched positions at that layer,
positions before the first patched one keep their logits, and the indirect-object prediction of
the continuation follows the patched names.
"""

import torch
from _common import load, parser

import fxvene as pv


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    model, tok = load(args.model)
    base = tok("John and Mary went to the store. John gave a drink to", return_tensors="pt")
    source = tok("Alice and Bob went to the store. Alice gave a drink to", return_tensors="pt")
    layer = 5 if model.config.num_hidden_layers > 5 else model.config.num_hidden_layers - 1

    config = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=layer,
                component="block_output",
                intervention_type=pv.VanillaIntervention,
                unit="pos",
                max_number_of_units=1,
            ),
            pv.RepresentationConfig(layer=layer, component="block_output", intervention_type=pv.CollectIntervention),
        ]
    )
    intervenable = pv.IntervenableModel(config, model)
    with torch.no_grad():
        clean_h = model(**base, output_hidden_states=True).hidden_states[layer + 1]
        clean_logits = model(**base).logits
        for positions in ([0], [0, 2], [2]):
            loc = [positions]  # one example: its list of positions
            (_, collected), out = intervenable(
                base=base, sources=[source, None], unit_locations={"sources->base": ([loc, None], [loc, None])}
            )
            changed = (collected[0][0] - clean_h[0]).abs().amax(-1) > 1e-6
            same_before = torch.allclose(out.logits[0, : min(positions)], clean_logits[0, : min(positions)], atol=1e-5)
            nxt = tok.decode([int(out.logits[0, -1].argmax())])
            print(
                f"patch positions {positions}: layer-{layer} states changed at {changed.nonzero().flatten().tolist()}; "
                f"logits before position {min(positions)} unchanged: {same_before}; next token: {nxt!r}"
            )
        print(f"clean next token: {tok.decode([int(clean_logits[0, -1].argmax())])!r}")


if __name__ == "__main__":
    main()
