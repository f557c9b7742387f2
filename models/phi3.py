"""Phi-3 (Phi3Model, Phi3ForCausalLM, Phi3ForSequenceClassification): the Llama layout with fused
projections.

``self_attn.qkv_proj`` computes [q | k | v] in one output, split by sizes: the query heads
(``num_attention_heads x head_dim``), then the key heads and the value heads (``num_key_value_heads x
head_dim`` each, GQA): the "sizes" layout. ``mlp.gate_up_proj`` computes [gate | up];
``mlp_activation`` is ``activation_fn(gate)`` (the activation module's output), as Llama's ``act_fn``.
"""
from . import Component, Family

_C = Component
_ATT = "layers.{layer}.self_attn"
_QKV = f"{_ATT}.qkv_proj"
_HEAD = "head_dim|hidden_size/num_attention_heads"
FUSED = ("sizes", "num_attention_heads", _HEAD)

COMPONENTS = {
    "block_input": _C("layers.{layer}", "input", dim="hidden_size"),
    "block_output": _C("layers.{layer}", "output", dim="hidden_size"),
    "mlp_activation": _C("layers.{layer}.mlp.activation_fn", "output", dim="intermediate_size"),
    "mlp_output": _C("layers.{layer}.mlp", "output", dim="hidden_size"),
    "mlp_input": _C("layers.{layer}.mlp", "input", dim="hidden_size"),
    "attention_value_output": _C(f"{_ATT}.o_proj", "input", dim="hidden_size"),
    "head_attention_value_output": _C(f"{_ATT}.o_proj", "input", heads="num_attention_heads", dim=_HEAD),
    "attention_weight": _C(_ATT, "output", dim="max_position_embeddings", pattern="attention_probs", needs="eager"),
    "attention_output": _C(_ATT, "output", dim="hidden_size"),
    "attention_input": _C(_ATT, "input", dim="hidden_size"),
    "query_output": _C(_QKV, "output", split3=0, fused=FUSED, dim="hidden_size"),
    "key_output": _C(_QKV, "output", split3=1, fused=FUSED, dim="kv_dim"),
    "value_output": _C(_QKV, "output", split3=2, fused=FUSED, dim="kv_dim"),
    "head_query_output": _C(_QKV, "output", split3=0, fused=FUSED, heads="layout", dim=_HEAD),
    "head_key_output": _C(_QKV, "output", split3=1, fused=FUSED, heads="layout", dim=_HEAD),
    "head_value_output": _C(_QKV, "output", split3=2, fused=FUSED, heads="layout", dim=_HEAD),
}

FAMILY = Family(
    name="phi3",
    prefixes={"Phi3Model": "", "Phi3ForCausalLM": "model.", "Phi3ForSequenceClassification": "model."},
    components=COMPONENTS,
    n_layers="num_hidden_layers",
)
