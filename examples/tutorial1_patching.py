"""Seed tutorial 1 — activation patching: swap activations between two prompts to test causal
relationships.

The seed code patches *every* position of layer 8 with no ``unit_locations``; that needs the two
prompts to have the same number of tokens (they do under GPT-2's BPE, not under the demo model's
word-level tokenizer, where fxvene raises a clear error instead of patching garbage), and it
replaces the whole residual stream, so the base simply becomes the source. To show *where* the
fact lives, this script patches one position at a time, at every layer: the subject's last token
("Tower" -> "Colosseum") and the last token ("of" -> "of").
"""

import torch
from _common import load, n_layers, parser

import fxvene as pv


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    model, tok = load(args.model)
    base = tok("The Colosseum is in the city of", return_tensors="pt")
    source = tok("The Eiffel Tower is in the city of", return_tensors="pt")
    rome, paris = tok.encode(" Rome")[0], tok.encode(" Paris")[0]
    nb, ns = base["input_ids"].shape[1], source["input_ids"].shape[1]
    # the subject's last token: "Colosseum" ends at position nb - 6, "Tower" at ns - 6
    subject = (ns - 6, nb - 6)
    last = (ns - 1, nb - 1)

    def probs(out):
        p = torch.softmax(out.logits[0, -1], -1)
        return p[rome].item(), p[paris].item()

    with torch.no_grad():
        clean = probs(model(**base))
        print(f"base   'The Colosseum ... of':  P(Rome) {clean[0]:.4f}  P(Paris) {clean[1]:.4f}")
        print(f"{'layer':>5} | {'patch subject token':^27} | {'patch last token':^27}")
        print(f"{'':>5} | {'P(Rome)':>12} {'P(Paris)':>12}  | {'P(Rome)':>12} {'P(Paris)':>12}")
        layers = range(n_layers(model)) if not args.quick else range(0, n_layers(model), 4)
        rows = []
        for layer in layers:
            config = pv.IntervenableConfig(
                representations=[
                    pv.RepresentationConfig(
                        layer=layer, component="block_output", intervention_type=pv.VanillaIntervention
                    )
                ]
            )
            intervenable = pv.IntervenableModel(config, model)
            row = []
            for loc in (subject, last):
                _, out = intervenable(base=base, sources=[source], unit_locations={"sources->base": loc})
                row.append(probs(out))
            rows.append(row)
            print(f"{layer:>5} | {row[0][0]:>12.4f} {row[0][1]:>12.4f}  | {row[1][0]:>12.4f} {row[1][1]:>12.4f}")
    # a layer counts when patching either position alone makes Paris more likely than Rome
    moved = [l for l, r in zip(layers, rows) if any(p_paris > p_rome for p_rome, p_paris in r)]
    print(f"\nlayers where patching moves the prediction from Rome to Paris: {moved}")
    return rows


if __name__ == "__main__":
    main()
