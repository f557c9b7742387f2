"""Inference-time intervention (ITI; Li et al. 2023) on the demo model: steer a few attention heads
along probe directions for a concept the model knows, happy vs sad, at every generated token.

1. Collect every head's output (the input of the attention output projection, split into heads)
   at the last token of happy and sad sentences, with ``CollectIntervention`` at
   ``attention_value_output`` of every layer (one forward per batch).
2. Train a logistic-regression probe per head on a training split; print the held-out accuracy map
   (layer x head; held-out sentences use mood words the probes never saw) and keep the top-K heads
   (ties in accuracy broken by the held-out cross-entropy).
3. Each kept head's direction is its mass-mean shift (mean happy - mean sad output, unit length);
   its scale is the standard deviation of the head's outputs along that direction. The shift
   ``alpha * std * direction`` is written into the head's columns of a vector of the layer's width,
   and ``AdditionIntervention`` at ``attention_value_output`` of that layer adds it, through
   ``IntervenableModel.generate(..., intervene_on="all", unit_locations=None)``: at every prompt
   position and every generated token, decoding with a KV cache (one single-token forward of the
   rewritten graph per new token). No hook code: it is a config of fxvene interventions.
4. Print greedy generations before, steered towards happy (+alpha) and towards sad (-alpha).
"""

import random

import torch
from _common import load, n_layers, parser

import fxvene as pv

HAPPY = ["happy", "glad", "cheerful", "joyful", "delighted"]
SAD = ["sad", "unhappy", "gloomy", "miserable", "upset"]
# the probes read the token after the mood word, never the word itself
TEMPLATES = [
    "I am very {w} and",
    "Today I feel {w} and",
    "She is very {w} and",
    "He is very {w} and",
    "We are very {w} and",
    "They are very {w} and",
    "I am {w} because",
    "Today I feel {w}. I",
    "I am so {w} and",
    "She is {w} because",
]
PROMPTS = ["Today I feel", "I am very", "She is very", "They are"]


def dataset(seed=0, held_out_words=2):
    """Happy (label 1) and sad (label 0) sentences. The held-out split uses mood words the probes
    never saw in training (``held_out_words`` of each list), so a probe must read the mood, not the word."""
    rng = random.Random(seed)
    train, test = [], []
    for words, label in ((HAPPY, 1), (SAD, 0)):
        words = list(words)
        rng.shuffle(words)
        for i, w in enumerate(words):
            (test if i < held_out_words else train).extend((t.format(w=w), label) for t in TEMPLATES)
    return train, test


def head_outputs(model, tok, texts, L, H):
    """(n, L, H, head_dim): every head's output at the last token of each text."""
    config = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=l, component="attention_value_output", intervention_type=pv.CollectIntervention
            )
            for l in range(L)
        ]
    )
    collect = pv.IntervenableModel(config, model)
    rows = [None] * len(texts)
    by_len = {}
    for i, text in enumerate(texts):  # texts of one length in one batch: no padding to worry about
        by_len.setdefault(len(tok(text)["input_ids"]), []).append(i)
    for n, idx in by_len.items():
        inputs = tok([texts[i] for i in idx], return_tensors="pt")
        with torch.no_grad():
            _, got = collect(base=inputs, unit_locations={"base": n - 1})
        got = torch.stack([g.reshape(len(idx), -1) for g in got], 1)  # (batch, L, D)
        for j, i in enumerate(idx):
            rows[i] = got[j]
    return torch.stack(rows).reshape(len(texts), L, H, -1)


def train_probes(x, y, steps=300, lr=0.05):
    """One logistic-regression probe per head, trained together: x (n, L, H, d), y (n,)."""
    n, L, H, d = x.shape
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = torch.zeros(L, H, d, requires_grad=True)
    b = torch.zeros(L, H, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    target = y.float()[:, None, None].expand(n, L, H)
    for _ in range(steps):
        opt.zero_grad()
        logits = (z * w).sum(-1) + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + 1e-3 * (w**2).sum() / (L * H)
        loss.backward()
        opt.step()
    return lambda xs: (((xs - mu) / sd) * w.detach()).sum(-1) + b.detach()  # logits (n, L, H)


def probe_heads(model, tok, steps=300):
    """Every head's probe: (held-out accuracy (L, H), held-out cross-entropy (L, H), head outputs of
    all sentences (n, L, H, d), labels (n,), train size, held-out size)."""
    L, H = n_layers(model), model.config.num_attention_heads
    train, test = dataset()
    x_tr = head_outputs(model, tok, [t for t, _ in train], L, H)
    x_te = head_outputs(model, tok, [t for t, _ in test], L, H)
    y_tr = torch.tensor([lab for _, lab in train])
    y_te = torch.tensor([lab for _, lab in test])
    probe = train_probes(x_tr, y_tr, steps=steps)
    logits = probe(x_te)
    target = y_te[:, None, None].float().expand_as(logits)
    acc = ((logits > 0) == target.bool()).float().mean(0)  # (L, H) held-out accuracy
    # held-out cross-entropy breaks the ties between heads of equal accuracy (many reach 1.00)
    xent = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(0)
    return acc, xent, torch.cat([x_tr, x_te]), torch.cat([y_tr, y_te]).bool(), len(train), len(test)


def top_heads(acc, xent, k):
    L, H = acc.shape
    order = sorted(range(L * H), key=lambda i: (-float(acc.flatten()[i]), float(xent.flatten()[i])))[:k]
    return [(i // H, i % H) for i in order]


def shift_vectors(x, y, chosen, n_heads):
    """{layer: vector of the layer's attention width}: ``std * direction`` in each chosen head's columns
    (direction: the mass-mean shift, mean happy - mean sad output, unit length; std: of the head's
    outputs along it)."""
    d = x.shape[-1]
    shift = {l: torch.zeros(n_heads * d) for l in sorted({l for l, _ in chosen})}
    for l, h in chosen:
        direction = x[y, l, h].mean(0) - x[~y, l, h].mean(0)
        direction = direction / direction.norm()
        std = (x[:, l, h] @ direction).std()
        shift[l][h * d : (h + 1) * d] = std * direction
    return shift


def steering_model(model, layers):
    """An AdditionIntervention at ``attention_value_output`` of each layer (the heads' outputs, before
    the output projection): the shift is the source representation."""
    config = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=l, component="attention_value_output", intervention_type=pv.AdditionIntervention
            )
            for l in layers
        ]
    )
    return pv.IntervenableModel(config, model)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--top-k", type=int, default=8, help="heads to steer")
    p.add_argument("--alpha", type=float, default=5.0, help="shift, in standard deviations along the direction")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per generation (default 12; 6 with --quick)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model, tok = load(args.model)
    L, H = n_layers(model), model.config.num_attention_heads
    acc, xent, x, y, n_train, n_test = probe_heads(model, tok, steps=150 if args.quick else 300)
    print(
        f"probe accuracy on {n_test} held-out sentences (mood words unseen in training; train {n_train}), "
        "happy vs sad, per head:"
    )
    print("layer  " + "  ".join(f"head {h}" for h in range(H)))
    for layer in range(L):
        print(f"{layer:>5}  " + "  ".join(f"{a:6.2f}" for a in acc[layer].tolist()))
    chosen = top_heads(acc, xent, args.top_k)
    print(
        f"top-{args.top_k} heads (held-out accuracy, then held-out cross-entropy): "
        + ", ".join(f"L{l}H{h} ({acc[l, h]:.2f}, {xent[l, h]:.3f})" for l, h in chosen)
    )
    shift = shift_vectors(x, y, chosen, H)
    layers = sorted(shift)
    steer = steering_model(model, layers)
    n_new = args.tokens or (6 if args.quick else 12)

    def generate(prompt, alpha):
        inputs = tok(prompt, return_tensors="pt")
        if alpha == 0:
            out = model.generate(**inputs, max_new_tokens=n_new, do_sample=False, pad_token_id=tok.eos_token_id)
        else:
            _, out = steer.generate(
                inputs,
                source_representations=[alpha * shift[l] for l in layers],
                intervene_on="all",
                unit_locations=None,
                max_new_tokens=n_new,
                do_sample=False,
            )
        return tok.decode(out[0], skip_special_tokens=True)

    print(
        f"\ngenerations (greedy, {n_new} new tokens; steering {len(chosen)} heads by +-{args.alpha:g} std at every "
        "position and every generated token, KV cache):"
    )
    for prompt in PROMPTS[:2] if args.quick else PROMPTS:
        print(f"  before:        {generate(prompt, 0)}")
        print(f"  ITI +{args.alpha:g} (happy): {generate(prompt, args.alpha)}")
        print(f"  ITI -{args.alpha:g} (sad):   {generate(prompt, -args.alpha)}")


if __name__ == "__main__":
    main()
