"""Llama family (also Mistral and Qwen2, which share the HF code layout): pyvene 0.1.8's map,
with the GQA dimensions of k/v fixed (pyvene HEAD 68fe7b8)."""
from . import Component, Family

_C = Component
COMPONENTS = {
    "block_input": _C("layers.{layer}", "input", dim="hidden_size"),
    "block_output": _C("layers.{layer}", "output", dim="hidden_size"),
    "mlp_activation": _C("layers.{layer}.mlp.act_fn", "output", dim="intermediate_size"),
    "mlp_output": _C("layers.{layer}.mlp", "output", dim="hidden_size"),
    "mlp_input": _C("layers.{layer}.mlp", "input", dim="hidden_size"),
    "attention_value_output": _C("layers.{layer}.self_attn.o_proj", "input", dim="hidden_size"),
    "head_attention_value_output": _C(
        "layers.{layer}.self_attn.o_proj", "input", heads="num_attention_heads", dim="head_dim|hidden_size/num_attention_heads"
    ),
    "attention_output": _C("layers.{layer}.self_attn", "output", dim="hidden_size"),
    "attention_input": _C("layers.{layer}.self_attn", "input", dim="hidden_size"),
    "query_output": _C("layers.{layer}.self_attn.q_proj", "output", dim="hidden_size"),
    "key_output": _C("layers.{layer}.self_attn.k_proj", "output", dim="kv_dim"),
    "value_output": _C("layers.{layer}.self_attn.v_proj", "output", dim="kv_dim"),
    "head_query_output": _C(
        "layers.{layer}.self_attn.q_proj", "output", heads="num_attention_heads", dim="head_dim|hidden_size/num_attention_heads"
    ),
    "head_key_output": _C(
        "layers.{layer}.self_attn.k_proj", "output", heads="num_key_value_heads", dim="head_dim|hidden_size/num_attention_heads"
    ),
    "head_value_output": _C(
        "layers.{layer}.self_attn.v_proj", "output", heads="num_key_value_heads", dim="head_dim|hidden_size/num_attention_heads"
    ),
}

_PREFIXES = {}
for _fam in ("Llama", "Mistral", "Qwen2"):
    _PREFIXES[f"{_fam}Model"] = ""
    _PREFIXES[f"{_fam}ForCausalLM"] = "model."
    _PREFIXES[f"{_fam}ForSequenceClassification"] = "model."

FAMILY = Family(name="llama", prefixes=_PREFIXES, components=COMPONENTS, n_layers="num_hidden_layers")
