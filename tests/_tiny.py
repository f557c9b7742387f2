"""Tiny random-weight configs for every decoder family the tests cover: one place for sizes.

``make_tiny("gemma2")`` builds a ``...ForCausalLM`` (``head="seq_cls"`` a sequence classifier,
``head="base"`` the bare model) with 2 layers, hidden 32, 4 heads (2 key/value heads where the
family has GQA), vocab 64, dropout off, seeded. ``AVAILABLE`` lists the families this transformers
line has (Gemma 3 and Qwen3 are 5.x only).
Not every head exists for every family on every line (e.g. OLMo and Granite have no sequence
classifier): ``make_tiny`` raises ValueError for those, as transformers does.
"""

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

COMMON = dict(vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=2)
LLAMA_LIKE = dict(
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
)
TINY = {
    "gpt2": dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0),
    "llama": LLAMA_LIKE,
    "mistral": dict(LLAMA_LIKE, sliding_window=4),
    "qwen2": LLAMA_LIKE,
    "qwen3": dict(LLAMA_LIKE, head_dim=8),
    "gemma": dict(LLAMA_LIKE, head_dim=8, hidden_activation="gelu_pytorch_tanh"),
    "gemma2": dict(LLAMA_LIKE, head_dim=8, sliding_window=4, query_pre_attn_scalar=8),
    "gemma3_text": dict(LLAMA_LIKE, head_dim=8, sliding_window=4, query_pre_attn_scalar=8),
    "olmo": LLAMA_LIKE,
    "olmo2": LLAMA_LIKE,
    "granite": LLAMA_LIKE,
    "phi3": dict(LLAMA_LIKE, pad_token_id=2),
    "mixtral": dict(LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        LLAMA_LIKE,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=48,
    ),
    "gpt_neo": dict(
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=4,
        max_position_embeddings=64,
        embed_dropout=0.0,
        attention_dropout=0.0,
        resid_dropout=0.0,
    ),
    "gpt_neox": dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        rotary_pct=0.25,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    ),
    "gptj": dict(
        n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_positions=64, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0
    ),
    "falcon": dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        max_position_embeddings=64,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    ),
}


def _available():
    out = []
    for model_type in TINY:
        try:
            AutoConfig.for_model(model_type)
        except (KeyError, ValueError):
            continue
        out.append(model_type)
    return out


AVAILABLE = _available()

_HEADS = {"causal_lm": AutoModelForCausalLM, "seq_cls": AutoModelForSequenceClassification, "base": AutoModel}


def tiny_config(model_type, attn="eager", **overrides):
    cfg = AutoConfig.for_model(model_type, **{**COMMON, **TINY[model_type], **overrides})
    cfg._attn_implementation = attn
    return cfg


def make_tiny(model_type, head="causal_lm", seed=0, attn="eager", **overrides):
    """A seeded tiny model of ``model_type`` with random weights, in eval mode."""
    torch.manual_seed(seed)
    cfg = tiny_config(model_type, attn=attn, **overrides)
    return _HEADS[head].from_config(cfg, attn_implementation=attn).eval()
