"""Falcon (FalconModel, FalconForCausalLM, FalconForSequenceClassification).

One fused projection, ``self_attention.query_key_value``, computes q, k and v, in one of three
layouts chosen by the config; all three are the "grouped" layout (per key/value group: the group's
query heads, then its key head, then its value head) with a group count read off the output width:

- ``new_decoder_architecture=True`` (Falcon 40B/180B): ``num_kv_heads`` groups;
- ``multi_query=True`` (the default config, Falcon 7B): one group, i.e. [all queries | k | v];
- neither: one group per head, i.e. each head's [q | k | v] (as GPT-NeoX).

``head_key_output``/``head_value_output`` have as many heads as there are key/value groups (one for
multi-query). q/k are read before the rotary embedding. ``attention_weight`` needs eager attention and
the rotary (non-ALiBi) variant.
"""
from . import Component, Family

_C = Component
_ATT = "h.{layer}.self_attention"
_QKV = f"{_ATT}.query_key_value"
_HEAD = "hidden_size/num_attention_heads"
FUSED = ("grouped", "num_attention_heads", _HEAD)

COMPONENTS = {
    "block_input": _C("h.{layer}", "input", dim="hidden_size"),
    "block_output": _C("h.{layer}", "output", dim="hidden_size"),
    "mlp_activation": _C("h.{layer}.mlp.act", "output", dim="ffn_hidden_size|hidden_size*4"),
    "mlp_output": _C("h.{layer}.mlp", "output", dim="hidden_size"),
    "mlp_input": _C("h.{layer}.mlp", "input", dim="hidden_size"),
    "attention_value_output": _C(f"{_ATT}.dense", "input", dim="hidden_size"),
    "head_attention_value_output": _C(f"{_ATT}.dense", "input", heads="num_attention_heads", dim=_HEAD),
    "attention_weight": _C(_ATT, "output", dim="max_position_embeddings", pattern="attention_probs", needs="eager"),
    "attention_output": _C(_ATT, "output", dim="hidden_size"),
    "attention_input": _C(_ATT, "input", dim="hidden_size"),
    "query_output": _C(_QKV, "output", split3=0, fused=FUSED, dim="hidden_size"),
    # the key/value widths depend on the layout (one head under multi-query): taken from the graph
    "key_output": _C(_QKV, "output", split3=1, fused=FUSED),
    "value_output": _C(_QKV, "output", split3=2, fused=FUSED),
    "head_query_output": _C(_QKV, "output", split3=0, fused=FUSED, heads="layout", dim=_HEAD),
    "head_key_output": _C(_QKV, "output", split3=1, fused=FUSED, heads="layout", dim=_HEAD),
    "head_value_output": _C(_QKV, "output", split3=2, fused=FUSED, heads="layout", dim=_HEAD),
}

FAMILY = Family(
    name="falcon",
    prefixes={"FalconModel": "", "FalconForCausalLM": "transformer.", "FalconForSequenceClassification": "transformer."},
    components=COMPONENTS,
    n_layers="num_hidden_layers",
)
