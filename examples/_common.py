"""Shared by the examples: load the shipped demo model (default) or any local / hub model."""

import argparse


def parser(doc):
    p = argparse.ArgumentParser(description=doc)
    p.add_argument(
        "--model", default=None, help="a local model directory or hub name (default: fxvene's shipped demo GPT-2)"
    )
    p.add_argument("--quick", action="store_true", help="a reduced run (for CI smoke tests)")
    return p


def load(model_name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fxvene.zoo.demo import demo_model_path

    path = model_name or demo_model_path()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    try:
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    except (TypeError, ValueError):
        model = AutoModelForCausalLM.from_pretrained(path)
    return model.eval(), tok


def n_layers(model):
    c = model.config
    return getattr(c, "n_layer", None) or c.num_hidden_layers
