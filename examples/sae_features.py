"""Sparse-autoencoder features of the demo model: train a small SAE on its residual stream, find the
features that fire on the facts' subjects, and ablate them.

1. Draw text from the demo model's own training corpus (``fxvene.zoo.demo.corpus``) and collect the
   residual stream entering layer ``LAYER`` (``blocks.LAYER.hook_resid_pre``) at every token, with a
   ``CollectIntervention``.
2. Train a ReLU SAE (reconstruction + L1) on those vectors for a few hundred Adam steps (seconds on a
   CPU) and write it in SAELens's format (``cfg.json`` + ``sae_weights.safetensors``).
3. Load it with ``pv.load_sae`` and read its features on the subject tokens of the shipped facts
   (``sae.collect()``); the features with the largest mean activation there are the subject features.
4. Splice the SAE (with its error term) and ablate the top 5 subject features, then 5 random
   features (seeded), at the subject positions; compare the mean drop of log p(target). ``--out``
   writes a bar chart of the drop per fact.
"""

import json
import os
import random
import tempfile

import torch
from _common import load, parser
from safetensors.torch import save_file

import fxvene as pv
from fxvene.zoo.demo import demo_model_path
from fxvene.zoo.demo.corpus import fact_docs, sample_doc

LAYER, D_SAE, TOP = 4, 512, 5


def collect_residual(model, tok, texts):
    im = pv.IntervenableModel(
        pv.RepresentationConfig(component=f"blocks.{LAYER}.hook_resid_pre", intervention=pv.CollectIntervention()),
        model,
    )
    rows = []
    with torch.no_grad():
        for text in texts:
            (_, got), _ = im({"input_ids": tok(text, return_tensors="pt")["input_ids"]})
            rows.append(got[0][0])
    return torch.cat(rows)


def train_sae(acts, steps, seed=0):
    torch.manual_seed(seed)
    d = acts.shape[1]
    W_enc = torch.nn.Parameter(torch.randn(d, D_SAE) / d**0.5)
    W_dec = torch.nn.Parameter(W_enc.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(D_SAE))
    b_dec = torch.nn.Parameter(acts.mean(0).clone())
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=3e-3)
    scale = acts.norm(dim=-1).mean()
    for _ in range(steps):
        x = acts[torch.randint(0, len(acts), (512,))]
        f = torch.relu((x - b_dec) @ W_enc + b_enc)
        loss = ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean() / scale**2 + 3e-3 * (f * W_dec.norm(dim=-1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}, float(loss.detach())


def write_saelens(weights, directory):
    os.makedirs(directory, exist_ok=True)
    save_file(
        {k: v.detach().contiguous() for k, v in weights.items()}, os.path.join(directory, "sae_weights.safetensors")
    )
    d_in = weights["W_enc"].shape[0]
    cfg = {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": D_SAE,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {
            "hook_name": f"blocks.{LAYER}.hook_resid_pre",
            "model_name": "fxvene-demo",
            "model_class_name": "GPT2LMHeadModel",  # trained on the HF model: no TransformerLens centring
        },
    }
    with open(os.path.join(directory, "cfg.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def subject_positions(tok, prompt, subject):
    ids = tok(prompt)["input_ids"]
    start = prompt.index(subject)
    n_before = len(tok(prompt[:start].rstrip())["input_ids"]) if prompt[:start].strip() else 0
    n_subj = len(tok(prompt[: start + len(subject)])["input_ids"]) - n_before
    return ids, list(range(n_before, n_before + n_subj))


def main():
    p = parser(__doc__)
    p.add_argument("--out", default=None, help="write a bar chart of the log p(target) drops here (PNG)")
    p.add_argument("--sae-dir", default=None, help="write the SAE here (default: a temporary directory)")
    opts = p.parse_args()
    model, tok = load(opts.model)
    rng = random.Random(0)
    facts = fact_docs()
    texts = [sample_doc(rng, facts) for _ in range(120 if opts.quick else 400)]
    acts = collect_residual(model, tok, texts)
    weights, loss = train_sae(acts, 200 if opts.quick else 600)
    sae_dir = opts.sae_dir or tempfile.mkdtemp(prefix="fxvene-sae-")
    write_saelens(weights, sae_dir)
    print(f"trained an SAE of {D_SAE} features on {len(acts)} residual vectors (loss {loss:.3f}); wrote {sae_dir}")

    sae = pv.load_sae(sae_dir)
    with open(os.path.join(os.path.dirname(demo_model_path()), "facts.jsonl")) as f:
        records = [json.loads(line) for line in f][: 8 if opts.quick else 16]
    collect = pv.IntervenableModel(pv.RepresentationConfig(component=None, intervention=sae.collect()), model)
    prompts = []
    mean = torch.zeros(D_SAE)
    for r in records:
        ids, pos = subject_positions(tok, r["prompt"], r["subject"])
        target = tok(r["target"])["input_ids"][0]
        with torch.no_grad():
            (_, got), _ = collect({"input_ids": torch.tensor([ids])}, unit_locations={"base": [[pos]]})
        mean += got[0][0].mean(0) / len(records)
        prompts.append((torch.tensor([ids]), pos, target))
    top = mean.topk(TOP).indices.tolist()
    rand = random.Random(1).sample([f for f in range(D_SAE) if f not in top], TOP)
    print(f"top {TOP} subject features at layer {LAYER}: {top}")

    splice = pv.IntervenableModel(pv.RepresentationConfig(component=None, intervention=sae), model)

    def log_p_target(ids, pos, target, features):
        sae.set_edit(None if features is None else "ablate", features=features)
        with torch.no_grad():
            _, out = splice({"input_ids": ids}, unit_locations={"base": [[pos]]})
        return float(out.logits[0, -1].log_softmax(-1)[target])

    drops = {"top": [], "random": []}
    for ids, pos, target in prompts:
        clean = log_p_target(ids, pos, target, None)
        drops["top"].append(clean - log_p_target(ids, pos, target, top))
        drops["random"].append(clean - log_p_target(ids, pos, target, rand))
    mean_top, mean_rand = (sum(v) / len(v) for v in drops.values())
    print(f"mean log p(target) drop: top {TOP} features {mean_top:.3f}, {TOP} random features {mean_rand:.3f}")
    print(f"ablating the top {TOP} lowers log p(target) more than {TOP} random: {mean_top > mean_rand}")
    if opts.out:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        xs = range(len(prompts))
        ax.bar([x - 0.2 for x in xs], drops["top"], 0.4, label=f"top {TOP} subject features")
        ax.bar([x + 0.2 for x in xs], drops["random"], 0.4, label=f"{TOP} random features")
        ax.set_xticks(list(xs), [r["subject"] for r in records], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("drop of log p(target)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(opts.out, dpi=120)
        print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
