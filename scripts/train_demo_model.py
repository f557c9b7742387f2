#!/usr/bin/env python
"""Train the tiny demo GPT-2 shipped in ``fxvene/zoo/demo/model``.

The model is a small ``GPT2LMHeadModel`` trained from scratch, on CPU, on a
synthetic corpus generated here (deterministically) so that the pyvene
tutorials have something meaningful to intervene on:

* landmark -> city facts ("The Colosseum is in the city of Rome",
  "The Space Needle is in downtown Seattle", ...) and capital facts
  ("The capital of Italy is Rome"); subjects span several tokens, which is what
  causal tracing needs;
* indirect-object sentences ("John and Mary went to the store. John gave a
  drink to Mary") over many names, places and objects;
* happy / sad sentences with clearly different continuations, for steering;
* "Hello world" greetings.

The tokenizer is word level (``tokenizers`` ``WordLevel``) behind GPT-2's
byte-level pre-tokenizer, so words carry their leading space exactly like
GPT-2 tokens do: ``" Rome"`` is the single token ``"ĠRome"``, the token that
follows "... in the city of".  Every word is in the vocabulary in both forms
(with and without the leading space).

Usage::

    python scripts/train_demo_model.py                 # writes fxvene/zoo/demo/model
    python scripts/train_demo_model.py --out /tmp/m --steps 300

Everything (corpus, initialisation, batch order) is seeded; a rerun with the
same torch build and the same ``--threads`` (default 2) reproduces the shipped
weights bit for bit (checked with torch 2.13.0+cpu).  A different thread count
gives different, equally good weights.  Defaults: 1600 steps of 32 x 48 tokens,
about 5 minutes on two free cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

# OpenMP threads spin while they wait.  On two free cores that is fastest, but
# when other processes compete for the cores, spinning makes a 2-thread run ten
# times slower; then let idle threads sleep.  This changes timing only, never
# the numbers.  (Must be decided before torch is imported.)
if "OMP_WAIT_POLICY" not in os.environ and hasattr(os, "getloadavg") and os.getloadavg()[0] >= 1.0:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402

SEED = 1234
EOS = "<|endoftext|>"

# --------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------

# (landmark, takes "the" article, city).  Cities may span several tokens.
LANDMARKS = [
    ("Colosseum", True, "Rome"),
    ("Eiffel Tower", True, "Paris"),
    ("Space Needle", True, "Seattle"),
    ("Big Ben", False, "London"),
    ("Brandenburg Gate", True, "Berlin"),
    ("Golden Gate Bridge", True, "San Francisco"),
    ("Sagrada Familia", True, "Barcelona"),
    ("Statue of Liberty", True, "New York"),
    ("Empire State Building", True, "New York"),
    ("Louvre", True, "Paris"),
    ("Arc de Triomphe", True, "Paris"),
    ("Trevi Fountain", True, "Rome"),
    ("Pantheon", True, "Rome"),
    ("Acropolis", True, "Athens"),
    ("Parthenon", True, "Athens"),
    ("Kremlin", True, "Moscow"),
    ("Red Square", False, "Moscow"),
    ("Forbidden City", True, "Beijing"),
    ("Hagia Sophia", False, "Istanbul"),
    ("Blue Mosque", True, "Istanbul"),
    ("Burj Khalifa", True, "Dubai"),
    ("CN Tower", True, "Toronto"),
    ("Willis Tower", True, "Chicago"),
    ("Cloud Gate", False, "Chicago"),
    ("Hollywood Sign", True, "Los Angeles"),
    ("Griffith Observatory", True, "Los Angeles"),
    ("Liberty Bell", True, "Philadelphia"),
    ("Washington Monument", True, "Washington"),
    ("Lincoln Memorial", True, "Washington"),
    ("Fenway Park", False, "Boston"),
    ("Pike Place Market", False, "Seattle"),
    ("Rijksmuseum", True, "Amsterdam"),
    ("Anne Frank House", True, "Amsterdam"),
    ("Prado Museum", True, "Madrid"),
    ("Atomium", True, "Brussels"),
    ("Little Mermaid", True, "Copenhagen"),
    ("Charles Bridge", True, "Prague"),
    ("Schonbrunn Palace", False, "Vienna"),
    ("Uffizi Gallery", True, "Florence"),
    ("Rialto Bridge", True, "Venice"),
    ("Leaning Tower", True, "Pisa"),
    ("Belem Tower", True, "Lisbon"),
    ("Alhambra", True, "Granada"),
    ("Petronas Towers", True, "Kuala Lumpur"),
    ("Taj Mahal", True, "Agra"),
    ("Gateway of India", True, "Mumbai"),
    ("Marina Bay Sands", False, "Singapore"),
    ("Table Mountain", False, "Cape Town"),
    ("Sugarloaf Mountain", False, "Rio"),
    ("Opera House", True, "Sydney"),
    ("Buckingham Palace", False, "London"),
    ("Westminster Abbey", False, "London"),
    ("Notre Dame", False, "Paris"),
    ("Tiananmen Square", False, "Beijing"),
    ("Skytree", True, "Tokyo"),
    ("Meiji Shrine", True, "Tokyo"),
    ("Christ the Redeemer", False, "Rio"),
    ("Obelisk", True, "Buenos Aires"),
]

# (country, capital)
CAPITALS = [
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
    ("the Netherlands", "Amsterdam"),
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
    ("Argentina", "Buenos Aires"),
    ("Malaysia", "Kuala Lumpur"),
    ("Finland", "Helsinki"),
]

# Facts are stated through these templates; {S} is the subject noun phrase.
FACT_TEMPLATES = [
    "{S} is in the city of {C}.",
    "{S} is in downtown {C}.",
    "{S} is located in {C}.",
    "{S} can be found in {C}.",
    "{S} is a famous landmark in {C}.",
]
FACT_TEMPLATES_MID = [  # subject inside the sentence ({s} lower-case article)
    "Tourists visit {s} in {C}.",
    "Last year I saw {s} in {C}.",
    "People travel to {C} to see {s}.",
]
CAPITAL_TEMPLATES = [
    "The capital of {K} is {C}.",
    "{C} is the capital of {K}.",
    "The capital city of {K} is {C}.",
]

NAMES = [
    "John",
    "Mary",
    "Alice",
    "Bob",
    "James",
    "Sarah",
    "Michael",
    "Emma",
    "David",
    "Anna",
    "Tom",
    "Lisa",
    "Paul",
    "Kate",
    "Mark",
    "Laura",
    "Peter",
    "Julia",
    "Daniel",
    "Rachel",
    "Chris",
    "Emily",
    "Sam",
    "Grace",
    "Steve",
    "Linda",
    "Kevin",
    "Susan",
    "Brian",
    "Karen",
    "Eric",
    "Jane",
    "Adam",
    "Claire",
    "Frank",
    "Helen",
    "George",
    "Nora",
    "Henry",
    "Olivia",
]
PLACES = [
    "store",
    "park",
    "school",
    "beach",
    "station",
    "restaurant",
    "garden",
    "office",
    "library",
    "market",
    "hospital",
    "museum",
]
OBJECTS = [
    "drink",
    "book",
    "ball",
    "gift",
    "letter",
    "flower",
    "key",
    "pen",
    "bag",
    "ring",
    "cake",
    "snack",
    "ticket",
    "kiss",
]
IOI_TEMPLATES = [
    "{A} and {B} went to the {P}. {S} gave a {O} to {IO}.",
    "When {A} and {B} went to the {P}, {S} gave a {O} to {IO}.",
    "{A} and {B} went to the {P}. Then {S} gave a {O} to {IO}.",
    "After {A} and {B} went to the {P}, {S} handed a {O} to {IO}.",
    "{A} and {B} were at the {P}. {S} gave the {O} to {IO}.",
    "{A} and {B} went to the {P}, and {S} gave a {O} to {IO}.",
    # (the templates above end with the indirect object: used for evaluation)
    "{A} and {B} went to the {P}. {S} gave a {O} to {IO}. {IO} said thanks to {S}.",
    "{A} met {B} at the {P}. {S} smiled at {IO}.",
    "{A} and {B} met at the {P}. {S} waved at {IO}, and {IO} waved at {S}.",
]

IOI_EVAL_TEMPLATES = 6
NAMES_TEMPLATES = [
    "{L} came to the {P}. Later, {L} went home.",
    "{L} were at the {P}. After lunch, {L} left the {P}.",
]

HAPPY_WORDS = ["happy", "glad", "cheerful", "joyful", "delighted"]
SAD_WORDS = ["sad", "unhappy", "gloomy", "miserable", "upset"]
HAPPY_CONT = [
    "I want to smile",
    "I laugh with my friends",
    "the day is wonderful",
    "I sing in the sunshine",
    "everything is bright and wonderful",
    "I smile all day",
    "life is beautiful",
    "I dance with joy",
    "the sunshine feels warm",
    "I laugh and smile",
]
SAD_CONT = [
    "I want to cry",
    "I feel so lonely",
    "the day is terrible",
    "I sit alone in the rain",
    "everything is dark and terrible",
    "I cry all day",
    "life is painful",
    "my eyes are full of tears",
    "the rain feels cold",
    "I cry and sigh",
]
SENT_SUBJECTS = [("I", "am"), ("She", "is"), ("He", "is"), ("We", "are"), ("They", "are")]

HELLO_TEMPLATES = [
    "Hello world.",
    "Hello world! I am very happy today.",
    "Hello world. This is a small model.",
    "Hello {N}, how are you today?",
    "Hello world, said {N}.",
]


def _the(landmark: str, article: bool, capital: bool) -> str:
    if not article:
        return landmark
    return ("The " if capital else "the ") + landmark


def fact_docs() -> list[str]:
    """Every (landmark, template) and (country, template) combination."""
    docs = []
    for lm, art, city in LANDMARKS:
        for t in FACT_TEMPLATES:
            docs.append(t.format(S=_the(lm, art, True), C=city))
        for t in FACT_TEMPLATES_MID:
            docs.append(t.format(s=_the(lm, art, False), C=city))
    for country, city in CAPITALS:
        for t in CAPITAL_TEMPLATES:
            k = country
            s = t.format(K=k, C=city)
            docs.append(s[0].upper() + s[1:])
    return docs


def ioi_doc(rng: random.Random, templates=IOI_TEMPLATES) -> str:
    a, b = rng.sample(NAMES, 2)
    s = rng.choice((a, b))
    io = b if s == a else a
    return rng.choice(templates).format(A=a, B=b, P=rng.choice(PLACES), S=s, O=rng.choice(OBJECTS), IO=io)


def names_doc(rng: random.Random) -> str:
    """A list of names repeated later: teaches the model to copy names from
    its context (induction), which the indirect-object task builds on."""
    names = rng.sample(NAMES, rng.randint(2, 5))
    lst = ", ".join(names[:-1]) + " and " + names[-1]
    place = rng.choice(PLACES)
    return rng.choice(NAMES_TEMPLATES).format(L=lst, P=place)


def _sentiment_sentence(rng: random.Random, happy: bool) -> str:
    word = rng.choice(HAPPY_WORDS if happy else SAD_WORDS)
    c1, c2 = rng.sample(HAPPY_CONT if happy else SAD_CONT, 2)
    form = rng.randrange(6)
    if form == 0:
        return f"I am very {word} and {c1}. Then {c2}."
    if form == 1:
        subj, verb = rng.choice(SENT_SUBJECTS)
        return f"{subj} {verb} very {word} and {c1}."
    if form == 2:
        return f"Today I feel {word}. {c1[0].upper() + c1[1:]}, and {c2}."
    if form == 3:
        return f"Today I feel {word} and {c1}."
    if form == 4:
        return f"{c1[0].upper() + c1[1:]}."
    return f"I am {word} because {c1}."


def sentiment_doc(rng: random.Random) -> str:
    """One to three sentences sharing one mood, so that the model carries a
    happy/sad feature along the text (what a steering vector can push on)."""
    happy = rng.random() < 0.5
    n = rng.choice((1, 2, 2))
    return " ".join(_sentiment_sentence(rng, happy) for _ in range(n))


def hello_doc(rng: random.Random) -> str:
    return rng.choice(HELLO_TEMPLATES).format(N=rng.choice(NAMES))


def sample_doc(rng: random.Random, facts: list[str]) -> str:
    r = rng.random()
    if r < 0.30:
        return rng.choice(facts)
    if r < 0.65:
        return ioi_doc(rng)
    if r < 0.82:
        return names_doc(rng)
    if r < 0.97:
        return sentiment_doc(rng)
    return hello_doc(rng)


def vocabulary_texts() -> list[str]:
    """Texts that together contain every word the corpus can produce."""
    fill = dict(A="John", B="Mary", S="John", IO="Mary", P="store", O="drink", N="John", L="John, Mary and Tom")
    texts = list(fact_docs())
    texts += [t.format(**fill) for t in HELLO_TEMPLATES + IOI_TEMPLATES + NAMES_TEMPLATES]
    texts += [" ".join(NAMES), " ".join(PLACES), " ".join(OBJECTS)]
    texts += [" ".join(HAPPY_WORDS), " ".join(SAD_WORDS)]
    texts += HAPPY_CONT + SAD_CONT
    texts += [c[0].upper() + c[1:] for c in HAPPY_CONT + SAD_CONT]
    texts += [f"{s} {v} very and because Today I feel Then" for s, v in SENT_SUBJECTS]
    texts += ["I am very happy and I want to smile. Then , ! ?"]
    return texts


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # GPT-2's byte-level pre-tokenizer: splits on whitespace and punctuation
    # and turns a leading space into "Ġ", so " Rome" -> "ĠRome".
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = set()
    for t in texts:
        for piece, _ in pre.pre_tokenize_str(t):
            words.add(piece)
    # Every word in both forms (sentence-initial and after a space), plus the
    # bare space and newline pieces, so ordinary inputs never hit <unk>.
    forms = set()
    for w in words:
        base = w[1:] if w.startswith("Ġ") else w
        assert "{" not in base and "}" not in base, w  # unfilled template
        forms.add(base)
        forms.add("Ġ" + base)
    forms.update({"Ġ", "Ċ", "ĠĊ"})
    vocab = {EOS: 0}
    for w in sorted(forms):
        vocab[w] = len(vocab)

    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([EOS])

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=64,
        clean_up_tokenization_spaces=False,
        # like GPT-2's tokenizer: no token_type_ids (GPT-2 would embed them)
        model_input_names=["input_ids", "attention_mask"],
    )
    return hf


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def make_batch(rng, facts, tok_cache, tokenizer, batch_size, seq_len, eos_id):
    """Each row starts with a fresh document at position 0 and is filled with
    further documents, each followed by <|endoftext|>; the last one is cut
    off at the end of the row."""
    ids = torch.empty((batch_size, seq_len), dtype=torch.long)
    for b in range(batch_size):
        row = []
        while len(row) < seq_len:
            doc = sample_doc(rng, facts)
            enc = tok_cache.get(doc)
            if enc is None:
                enc = tokenizer(doc, add_special_tokens=False)["input_ids"]
                if eos_id in enc:
                    raise ValueError(f"word missing from the vocabulary in {doc!r}")
                enc = enc + [eos_id]
                tok_cache[doc] = enc
            row.extend(enc[: seq_len - len(row)])
        ids[b] = torch.tensor(row)
    return ids, ids.clone()


@torch.no_grad()
def next_token_prob(model, tokenizer, prompt: str, answer: str) -> float:
    enc = tokenizer(prompt, return_tensors="pt")
    logits = model(**enc).logits[0, -1]
    return torch.softmax(logits, -1)[tokenizer.encode(answer)[0]].item()


EVAL = [
    ("The Colosseum is in the city of", " Rome"),
    ("The Eiffel Tower is in the city of", " Paris"),
    ("The Space Needle is in downtown", " Seattle"),
    ("The capital of Italy is", " Rome"),
    ("John and Mary went to the store. John gave a drink to", " Mary"),
    ("Alice and Bob went to the store. Bob gave a drink to", " Alice"),
    ("When Tom and Emma went to the park, Emma gave a ball to", " Tom"),
]


def ioi_accuracy(model, tokenizer, n=200, seed=99):
    """Held-out IOI accuracy: fraction of random prompts whose argmax is the IO."""
    rng = random.Random(seed)
    correct = 0
    for _ in range(n):
        doc = ioi_doc(rng, IOI_TEMPLATES[:IOI_EVAL_TEMPLATES])
        prompt, io = doc[:-1].rsplit(" ", 1)
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            pred = model(**enc).logits[0, -1].argmax().item()
        correct += pred == tokenizer.encode(" " + io)[0]
    return correct / n


def report(model, tokenizer, log=print):
    model.eval()
    for prompt, ans in EVAL:
        log(f"  P({ans!r:10} | {prompt!r}) = {next_token_prob(model, tokenizer, prompt, ans):.4f}")
    log(f"  IOI held-out accuracy: {ioi_accuracy(model, tokenizer):.3f}")
    model.train()


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(os.path.dirname(here), "fxvene", "demo", "model")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=default_out, help="output directory")
    ap.add_argument("--steps", type=int, default=1600, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-inner", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=500)
    args = ap.parse_args(argv)

    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception:  # pragma: no cover - older/odd builds
        pass
    rng = random.Random(SEED)

    tokenizer = build_tokenizer(vocabulary_texts())
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    print(
        f"vocab size: {len(tokenizer)}; {args.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}"
    )

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_inner=args.n_inner,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}")

    facts = fact_docs()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 and "wte" not in n and "wpe" not in n else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    warmup = max(1, min(100, args.steps // 10))

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    tok_cache: dict = {}
    model.train()
    t0, c0 = time.time(), time.process_time()
    ema = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ids, labels = make_batch(rng, facts, tok_cache, tokenizer, args.batch_size, args.seq_len, eos_id)
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if (step + 1) % 50 == 0:
            print(
                f"step {step + 1:5d}  loss {ema:.4f}  lr {lr_at(step):.2e}  "
                f"{time.time() - t0:6.1f}s wall {time.process_time() - c0:6.1f}s cpu",
                flush=True,
            )
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            report(model, tokenizer)
    train_s, cpu_s = time.time() - t0, time.process_time() - c0
    print(f"training time: {train_s:.1f}s wall, {cpu_s:.1f}s cpu ({args.threads} threads)")

    model.eval()
    print("final:")
    report(model, tokenizer)

    os.makedirs(args.out, exist_ok=True)
    for f in ("pytorch_model.bin", "model.safetensors.index.json", "vocab.json", "merges.txt"):
        if os.path.exists(os.path.join(args.out, f)):  # never ship pickles / stale files
            os.remove(os.path.join(args.out, f))
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    with open(os.path.join(args.out, "training_info.json"), "w") as fh:
        json.dump(
            {
                "script": "scripts/train_demo_model.py",
                "seed": SEED,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
                "lr": args.lr,
                "threads": args.threads,
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "parameters": n_params,
                "train_wall_seconds": round(train_s, 1),
                "train_cpu_seconds": round(cpu_s, 1),
                "ioi_heldout_accuracy": ioi_accuracy(model, tokenizer),
                "final_probs": {f"{p}|{a}": round(next_token_prob(model, tokenizer, p, a), 4) for p, a in EVAL},
            },
            fh,
            indent=2,
        )
        fh.write("\n")
    for f in os.listdir(args.out):
        os.chmod(os.path.join(args.out, f), 0o644)
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
