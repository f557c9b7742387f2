"""What every verb of the command line shares: its error type and the models it runs on (a local directory
or a built-in name)."""

from __future__ import annotations

import functools
import os

BUILTINS = {
    "gpt2-tiny": "GPT-2, 4 layers, width 24, 4 heads, vocabulary 50 (random weights)",
    "llama-tiny": "Llama, 3 layers, width 32, 4 heads, 2 key/value heads (GQA), vocabulary 50 (random weights)",
    "gpt2-small-shape": "GPT-2 small's shape: 12 layers, width 768, 12 heads, vocabulary 50257 (random weights)",
    "demo": "the demo GPT-2 shipped with fxvene (fxvene/zoo/demo/model)",
}
TRACERS = ("auto", "hf_fx", "export")
# what the checks need to know of a random-weight built-in without building it: (class, layers)
BUILTIN_SHAPES = {
    "gpt2-tiny": ("GPT2LMHeadModel", 4),
    "llama-tiny": ("LlamaForCausalLM", 3),
    "gpt2-small-shape": ("GPT2LMHeadModel", 12),
}


class CLIError(Exception):
    """An error reported as one line, without a traceback."""


# ---------------------------------------------------------------------------------- models


def _gpt2_config(**kw):
    from transformers import GPT2Config

    cfg = GPT2Config(attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **kw)
    cfg._attn_implementation = "eager"  # attention_weight needs eager attention
    return cfg


def builtin_config(name):
    """The config of a random-weight built-in model (``demo`` has none: it is loaded from disk)."""
    if name == "gpt2-tiny":
        return _gpt2_config(
            n_layer=4, n_embd=24, n_head=4, vocab_size=50, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    if name == "gpt2-small-shape":
        return _gpt2_config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    if name == "llama-tiny":
        from transformers import LlamaConfig

        return LlamaConfig(
            num_hidden_layers=3,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            vocab_size=50,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    raise CLIError(f"unknown built-in model {name!r}; built-ins: {', '.join(BUILTINS)}")


@functools.lru_cache(maxsize=2)
def builtin_model(name):
    """Build a built-in model by name (random weights, seed 0, except ``demo``); cached per process."""
    if name == "demo":
        from fxvene.zoo.demo import demo_model_path

        path = demo_model_path()
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise CLIError(f"built-in model 'demo': the demo model is not installed (no config.json in {path})")
        from transformers import AutoModelForCausalLM

        # the model pv.load_demo() gives Python code (eager attention): the same graph
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, attn_implementation="eager").eval()
    import torch
    from transformers import AutoModelForCausalLM

    cfg = builtin_config(name)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def load_model_dir(path):
    """``AutoModelForCausalLM.from_pretrained(path)``, offline: the model a user's Python code loads
    (same attention implementation, so the same frontend and graph)."""
    from transformers import AutoModelForCausalLM

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CLIError(f"model directory {path!r} has no config.json")
    cls = _saved_encoder_decoder_class(path) or _saved_encoder_class(path) or AutoModelForCausalLM
    return cls.from_pretrained(path, local_files_only=True).eval()


def _saved_encoder_decoder_class(path):
    """The class an encoder-decoder directory was saved from (``config.json``'s ``architectures``), else None:
    ``AutoModelForCausalLM`` would load only the decoder of a BART or Whisper checkpoint."""
    import json

    import transformers

    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    names = cfg.get("architectures") or []
    if not cfg.get("is_encoder_decoder") or not names:
        return None
    return getattr(transformers, names[0], None)


def _saved_encoder_class(path):
    """The class a bidirectional encoder directory (BERT, RoBERTa, ESM: a family with ``causal=False``) was
    saved from, else None: ``AutoModelForCausalLM`` would load BERT as a decoder and has no ESM class."""
    import json

    import transformers

    from fxvene.models import families

    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        names = json.load(f).get("architectures") or []
    encoders = {n for fam in families() if not fam.causal for n in fam.prefixes}
    return getattr(transformers, names[0], None) if names and names[0] in encoders else None


def load_model(spec):
    """A model from a local directory or a built-in name."""
    if os.path.isdir(spec):
        return load_model_dir(spec)
    if spec in BUILTINS:
        return builtin_model(spec)
    raise CLIError(f"model {spec!r} is neither a local model directory nor a built-in name ({', '.join(BUILTINS)})")
