"""Phi-3 (Phi3Model, Phi3ForCausalLM, Phi3ForSequenceClassification): the Llama layout with fused
projections.

``self_attn.qkv_proj`` computes [q | k | v] in one output, split by sizes: the query heads
(``num_attention_heads x head_dim``), then the key heads and the value heads (``num_key_value_heads x
head_dim`` each, GQA): the "sizes" layout. ``mlp.gate_up_proj`` computes [gate | up];
``mlp_activation`` is ``activation_fn(gate)`` (the activation module's output), as Llama's ``act_fn``.
"""

from ._layouts import fused_layout
from .spec import Family

FUSED = ("sizes", "num_attention_heads", "head_dim|hidden_size/num_attention_heads")
COMPONENTS = fused_layout(
    "layers", "self_attn", "qkv_proj", "o_proj", "activation_fn", "intermediate_size", FUSED, kv_dim="kv_dim"
)

FAMILY = Family(
    name="phi3",
    prefixes={"Phi3Model": "", "Phi3ForCausalLM": "model.", "Phi3ForSequenceClassification": "model."},
    components=COMPONENTS,
    n_layers="num_hidden_layers",
)
