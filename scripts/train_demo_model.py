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

# The corpus lives in the package (fxvene/zoo/demo/corpus.py), so examples can draw text from it.
from fxvene.zoo.demo.corpus import (  # noqa: E402
    IOI_EVAL_TEMPLATES,
    IOI_TEMPLATES,
    fact_docs,
    ioi_doc,
    sample_doc,
    vocabulary_texts,
)

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
