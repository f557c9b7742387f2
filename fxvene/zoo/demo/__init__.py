"""A tiny GPT-2 that knows a few facts, shipped with fxvene for examples and tests.

The model (12 layers, width 128, word-level vocabulary of a few hundred words)
was trained from scratch on CPU by ``scripts/train_demo_model.py`` on a
synthetic corpus.  It knows:

* landmark -> city facts: "The Colosseum is in the city of" -> " Rome",
  "The Eiffel Tower is in the city of" -> " Paris",
  "The Space Needle is in downtown" -> " Seattle", and several dozen more;
* capitals: "The capital of Italy is" -> " Rome", ...;
* indirect objects: "John and Mary went to the store. John gave a drink to"
  -> " Mary";
* happy / sad continuations ("I am very happy and" ... "smile", "wonderful";
  "I am very sad and" ... "cry", "terrible").

Words carry their leading space like GPT-2 tokens: ``tokenizer.encode(" Rome")``
is the single id of "Rome" as it appears after a space.

    >>> from fxvene.zoo.demo import load_demo
    >>> model, tokenizer = load_demo()
"""

from __future__ import annotations

import os

__all__ = ["demo_model_path", "load_demo"]


def demo_model_path() -> str:
    """Directory of the shipped demo model (config, safetensors, tokenizer)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "model")


def load_demo():
    """Load the demo model and tokenizer: returns ``(model, tokenizer)``.

    The model is in eval mode, in float32, with eager attention where the
    installed transformers supports choosing it.  Nothing is downloaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    except (TypeError, ValueError):
        model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, tokenizer
