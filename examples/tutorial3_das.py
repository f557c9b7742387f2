"""Seed tutorial 3 (trainable interventions, DAS), in a version that learns.

The tutorial as written intervenes with the base itself as the source ("self-intervention"): a
low-rank rotated swap of a representation with itself is the identity, so the gradient is exactly
zero and nothing is learned (tests/test_trainable.py runs it as written). Here the sources are
real counterfactuals: the base "The capital of Italy is" gets, at the country token, a learned
low-rank subspace of the residual stream from "The capital of France is", and is trained to
predict what the model predicts for the source (" Paris"), read out among the capitals' tokens.
Interchange intervention accuracy (IIA) on held-out country pairs measures whether the subspace
carries "which country".

Model: the demo GPT-2 shipped in ``fxvene/zoo/demo/model`` (12 layers, width 128, knows capitals)
when present, else a 12-layer GPT-2 (width 64) with a word-level tokenizer, both built here and
trained for a few seconds on the capital facts (a random-weight GPT-2 answers every prompt alike,
so there would be no counterfactual behaviour to align).

    python examples/tutorial3_das.py            # full run
    python examples/tutorial3_das.py --quick    # CI smoke test (< 60 s)
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import time

import torch

import fxvene as pv

COUNTRIES = [
    ("Italy", "Rome"),
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("England", "London"),
    ("Spain", "Madrid"),
    ("Greece", "Athens"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("Japan", "Tokyo"),
    ("Turkey", "Ankara"),
    ("Egypt", "Cairo"),
    ("Portugal", "Lisbon"),
    ("Belgium", "Brussels"),
    ("Denmark", "Copenhagen"),
    ("Austria", "Vienna"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Poland", "Warsaw"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Ireland", "Dublin"),
    ("Hungary", "Budapest"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Finland", "Helsinki"),
]
TEMPLATE = "The capital of {} is"


def fallback_gpt2(max_steps=200):
    """A 12-layer GPT-2 (width 64) with a word-level tokenizer (no download), trained here for a few
    seconds on the capital facts: a random-weight GPT-2 answers every prompt the same way, which
    leaves no counterfactual behaviour to align."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    texts = [TEMPLATE.format(k) + " " + c for k, c in COUNTRIES]
    vocab = {"<|endoftext|>": 0}
    for t in texts:
        for piece, _ in pre.pre_tokenize_str(t):
            vocab.setdefault(piece, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=12, n_embd=64, n_head=4, vocab_size=len(vocab), n_positions=32, bos_token_id=0, eos_token_id=0
    )
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg)
    ids = tokenizer([TEMPLATE.format(k) for k, _ in COUNTRIES], return_tensors="pt")["input_ids"]
    answers = torch.tensor([vocab["Ġ" + c.split()[0]] for _, c in COUNTRIES])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(max_steps):  # noqa: B007 - the count is reported after the loop
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, -1], answers)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    return (
        model.eval(),
        tokenizer,
        f"a 12-layer GPT-2 (width 64) trained here for {step + 1} steps on the capital facts",
    )


def load_model():
    from fxvene.zoo.demo import demo_model_path, load_demo

    if os.path.isfile(os.path.join(demo_model_path(), "config.json")):
        model, tokenizer = load_demo()
        return model, tokenizer, "the fxvene demo GPT-2 (12 layers, width 128)"
    return fallback_gpt2()


def encode(tokenizer, prompts):
    enc = tokenizer(prompts, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes for a CI smoke test (< 60 s)")
    ap.add_argument("--rank", type=int, default=8, help="low_rank_dimension of the learned subspace")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # small tensors: more threads only add latency
    steps, batch = (60, 16) if args.quick else (300, 32)
    t0 = time.time()

    model, tokenizer, what = load_model()
    print(f"model: {what}")
    # countries that are one token, so that every prompt has the country at the same position
    countries = [(k, c) for k, c in COUNTRIES if len(tokenizer.encode(" " + k)) == 1]
    pos = len(tokenizer.encode(TEMPLATE.split(" {}")[0]))  # index of the country token
    prompts = {k: TEMPLATE.format(k) for k, _ in countries}
    # the answer is read out among the capitals' (first) tokens
    cities = torch.tensor([tokenizer.encode(" " + c)[0] for _, c in countries])
    with torch.no_grad():
        logits = model(**encode(tokenizer, list(prompts.values()))).logits[:, -1, cities]
    pred = {k: int(i) for k, i in zip(prompts, logits.argmax(-1))}  # index into `cities`
    correct = sum(pred[k] == i for i, k in enumerate(prompts))
    print(
        f"{len(countries)} countries; among their capitals the model picks the right one for {correct}, "
        f"and {len(set(pred.values()))} different ones in all"
    )

    rng = random.Random(args.seed)
    pairs = [p for p in itertools.permutations(prompts, 2)]
    rng.shuffle(pairs)
    test, train = pairs[: len(pairs) // 4], pairs[len(pairs) // 4 :]

    def batch_of(ps):
        base = encode(tokenizer, [prompts[b] for b, _ in ps])
        src = encode(tokenizer, [prompts[s] for _, s in ps])
        return base, src, torch.tensor([pred[s] for _, s in ps])  # the source's own answer

    def run(intervenable, ps):
        base, src, y = batch_of(ps)
        _, out = intervenable(base, [src], {"sources->base": pos})
        return out.logits[:, -1, cities], y

    @torch.no_grad()
    def iia(intervenable, ps):
        logits, y = run(intervenable, ps)
        return (logits.argmax(-1) == y).float().mean().item()

    # 1. where does the country token carry the answer? full (Vanilla) patching per layer
    n_layer = model.config.n_layer
    scores = []
    for layer in range(n_layer):
        vanilla = pv.IntervenableModel(
            pv.IntervenableConfig(
                representations=[
                    pv.RepresentationConfig(
                        layer=layer, component="block_input", intervention_type=pv.VanillaIntervention
                    )
                ]
            ),
            model,
        )
        scores.append(iia(vanilla, test))
    print(
        "Vanilla patching of the country token (block_input), IIA per layer: "
        + " ".join(f"{i}:{s:.2f}" for i, s in enumerate(scores))
    )
    layer = max(range(n_layer), key=lambda i: (scores[i] >= max(scores) - 0.05, i))  # deepest near-best layer

    # 2. DAS: a rank-r subspace at that layer (tutorial 3's config, with real counterfactual sources)
    torch.manual_seed(args.seed)
    config = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=layer,
                component="block_input",
                intervention_type=pv.LowRankRotatedSpaceIntervention,
                low_rank_dimension=args.rank,
            )
        ]
    )
    intervenable = pv.IntervenableModel(config, model)
    optimizer = torch.optim.Adam(intervenable.get_trainable_parameters(), lr=1e-2)
    print(
        f"DAS at layer {layer}, rank {args.rank} ({intervenable.count_parameters()} trainable parameters): "
        f"held-out IIA before training {iia(intervenable, test):.2f}"
    )
    for step in range(steps):
        ps = rng.sample(train, batch)
        with torch.nn.utils.parametrize.cached():
            logits, y = run(intervenable, ps)
            loss = torch.nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
        optimizer.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.4f}  batch IIA {(logits.argmax(-1) == y).float().mean():.2f}")
    print(f"held-out IIA after training: {iia(intervenable, test):.2f} on {len(test)} country pairs")

    # 3. the tutorial's example: Italy with France's country subspace
    if "Italy" in prompts and "France" in prompts:
        with torch.no_grad():
            logits, _ = run(intervenable, [("Italy", "France")])
        p = torch.softmax(logits[0], -1)  # over the capitals
        names = [c for _, c in countries]
        top = names[int(p.argmax())]
        print(
            f"'{prompts['Italy']}' with France's subspace: P(Paris)={p[names.index('Paris')]:.3f}  "
            f"P(Rome)={p[names.index('Rome')]:.3f} (among the capitals; top: {top}; "
            f"the model's answer for France: {names[pred['France']]})"
        )
    key = f"layer.{layer}.comp.block_input.unit.pos.nunit.1#0"  # the tutorial's (pre-0.1.7) key
    rotation = intervenable.interventions[key][0]
    print(f"Learned rotation shape: {tuple(rotation.rotate_layer.weight.shape)}; total {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
