"""pyvene's model helpers, exported at top level: each returns ``(config, tokenizer, model)``.

The Hugging Face helpers take a hub name or a local directory (``name``) and ``cache_dir``, with
pyvene 0.1.8's defaults. With ``FXVENE_MODELS_DIR`` set, a hub name is first looked up there as a
local checkpoint (``$FXVENE_MODELS_DIR/gpt2``, ``$FXVENE_MODELS_DIR/roneneldan/TinyStories-33M``), so
code that names hub models runs offline unchanged. fxvene loads the tokenizer from ``name`` too (pyvene fetches some from fixed
hub repositories, e.g. ``"gpt2"``), so a local checkpoint needs no network. GPT-2 helpers switch the
config to eager attention, as pyvene does (its ``attention_weight`` component needs it).

The toy-model helpers build fxvene's implementations of pyvene's MLP and GRU
(``fxvene.zoo.toy_models``) from a config; ``tokenizer_name`` optionally loads a tokenizer.
"""

from __future__ import annotations

import torch

from fxvene.graph.progress import progress
from fxvene.zoo.toy_models import (
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    MLPConfig,
    MLPForClassification,
)

__all__ = [
    "create_gpt2",
    "create_gpt2_lm",
    "create_gpt_neo",
    "create_gpt_neox",
    "create_llama",
    "create_olmo",
    "create_gru",
    "create_gru_lm",
    "create_gru_classifier",
    "create_mlp_classifier",
    "GRUConfig",
    "MLPConfig",
]


def _check_name(name, what="name"):
    """``name`` as a string, or its local copy under ``$FXVENE_MODELS_DIR`` when there is one."""
    import os

    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"{what} must be a hub model name or a local directory (str), got {type(name).__name__}")
    name = str(name)
    root = os.environ.get("FXVENE_MODELS_DIR")
    if root and not os.path.isdir(name):
        if not os.path.isdir(root):
            raise ValueError(f"FXVENE_MODELS_DIR must be a directory of local checkpoints, got {root!r}")
        local = os.path.join(root, name)
        if os.path.isdir(local):
            return local
    return name


def _tokenizer(name, cache_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, cache_dir=cache_dir)


def _dtype_kwargs(dtype):
    """``torch_dtype=`` on transformers 4, ``dtype=`` on 5 (where ``torch_dtype`` is deprecated)."""
    if dtype is None:
        return {}
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _eager(config):
    if hasattr(config, "_attn_implementation"):
        config._attn_implementation = "eager"
    return config


def _pretrained(cls, name, config, cache_dir, **kwargs):
    with progress(f"loading {cls.__name__} from {name}"):
        return cls.from_pretrained(name, config=config, cache_dir=cache_dir, **kwargs)


# ------------------------------------------------------------------------------ Hugging Face models


def create_gpt2(name="gpt2", cache_dir=None):
    """A ``GPT2Model`` (no LM head) with eager attention, its config and tokenizer."""
    from transformers import GPT2Config, GPT2Model

    name = _check_name(name)
    config = _eager(GPT2Config.from_pretrained(name, cache_dir=cache_dir))
    tokenizer = _tokenizer(name, cache_dir)
    model = _pretrained(GPT2Model, name, config, cache_dir)
    return config, tokenizer, model


def create_gpt2_lm(name="gpt2", config=None, cache_dir=None):
    """A ``GPT2LMHeadModel`` with eager attention: pretrained from ``name``, or with random weights
    from ``config`` when one is given (the tokenizer still comes from ``name``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    name = _check_name(name)
    tokenizer = _tokenizer(name, cache_dir)
    if config is None:
        config = _eager(GPT2Config.from_pretrained(name, cache_dir=cache_dir))
        model = _pretrained(GPT2LMHeadModel, name, config, cache_dir)
    else:
        model = GPT2LMHeadModel(_eager(config))
    return config, tokenizer, model


def _create_hf(config_cls, model_cls, name, cache_dir):
    """``(config, tokenizer, model)`` pretrained from ``name`` with the given config and model classes."""
    name = _check_name(name)
    config = config_cls.from_pretrained(name, cache_dir=cache_dir)
    tokenizer = _tokenizer(name, cache_dir)
    model = _pretrained(model_cls, name, config, cache_dir)
    return config, tokenizer, model


def create_gpt_neo(name="roneneldan/TinyStories-33M", cache_dir=None):
    """A ``GPTNeoForCausalLM`` (pyvene's default is TinyStories-33M), its config and tokenizer."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    return _create_hf(GPTNeoConfig, GPTNeoForCausalLM, name, cache_dir)


def create_gpt_neox(name="EleutherAI/pythia-70m", cache_dir=None):
    """A ``GPTNeoXForCausalLM`` (pyvene's default is Pythia-70M), its config and tokenizer."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return _create_hf(GPTNeoXConfig, GPTNeoXForCausalLM, name, cache_dir)


def create_llama(name="sharpbai/alpaca-7b-merged", cache_dir=None, dtype=torch.bfloat16, config=None):
    """A ``LlamaForCausalLM``: pretrained from ``name`` in ``dtype`` (bfloat16 by default, as in
    pyvene), or with random weights from ``config`` when one is given."""
    from transformers import LlamaConfig, LlamaForCausalLM

    name = _check_name(name)
    if config is None:
        config = LlamaConfig.from_pretrained(name, cache_dir=cache_dir)
        model = _pretrained(LlamaForCausalLM, name, config, cache_dir, **_dtype_kwargs(dtype))
    else:
        model = LlamaForCausalLM(config)
    tokenizer = _tokenizer(name, cache_dir)
    return config, tokenizer, model


def create_olmo(name="allenai/OLMo-7B-0424-hf", cache_dir=None, dtype=torch.bfloat16, config=None, revision="main"):
    """An OLMo causal LM (``AutoModelForCausalLM``): pretrained from ``name`` at ``revision`` in
    ``dtype``, or with random weights from ``config`` when one is given."""
    from transformers import AutoConfig, AutoModelForCausalLM

    name = _check_name(name)
    if config is None:
        config = AutoConfig.from_pretrained(name, cache_dir=cache_dir, revision=revision)
        model = _pretrained(AutoModelForCausalLM, name, config, cache_dir, revision=revision, **_dtype_kwargs(dtype))
    else:
        model = AutoModelForCausalLM.from_config(config)
    tokenizer = _tokenizer(name, cache_dir)
    return config, tokenizer, model


# ------------------------------------------------------------------------------ pyvene's toy models


def _toy(cls, config, config_cls, tokenizer_name, cache_dir, helper):
    if not isinstance(config, config_cls):
        raise TypeError(f"{helper}: config must be a {config_cls.__name__}, got {type(config).__name__}")
    tokenizer = None
    if tokenizer_name is not None:
        tokenizer = _tokenizer(_check_name(tokenizer_name, "tokenizer_name"), cache_dir)
    return config, tokenizer, cls(config)


def create_mlp_classifier(config, tokenizer_name=None, cache_dir=None):
    """pyvene's MLP classifier (``fxvene.zoo.toy_models.MLPForClassification``) from an ``MLPConfig``."""
    return _toy(MLPForClassification, config, MLPConfig, tokenizer_name, cache_dir, "create_mlp_classifier")


def create_gru(config, tokenizer_name=None, cache_dir=None):
    """pyvene's bare GRU (``fxvene.zoo.toy_models.GRUModel``) from a ``GRUConfig``."""
    return _toy(GRUModel, config, GRUConfig, tokenizer_name, cache_dir, "create_gru")


def create_gru_lm(config, tokenizer_name=None, cache_dir=None):
    """pyvene's GRU language model (``fxvene.zoo.toy_models.GRULMHeadModel``) from a ``GRUConfig``."""
    return _toy(GRULMHeadModel, config, GRUConfig, tokenizer_name, cache_dir, "create_gru_lm")


def create_gru_classifier(config, tokenizer_name=None, cache_dir=None):
    """pyvene's GRU classifier (``fxvene.zoo.toy_models.GRUForClassification``) from a ``GRUConfig``."""
    return _toy(GRUForClassification, config, GRUConfig, tokenizer_name, cache_dir, "create_gru_classifier")
