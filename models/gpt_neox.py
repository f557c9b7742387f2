"""GPT-NeoX / Pythia (GPTNeoXModel, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification).

pyvene 0.1.8's map (blocks, MLP, attention input/output, the input of ``attention.dense``), plus the
q/k/v components pyvene leaves out. GPT-NeoX computes q, k and v with one fused projection,
``attention.query_key_value``, whose output is laid out *per head*: head h's query, key and value are
columns ``[3h*d, 3h*d+d)``, ``[3h*d+d, 3h*d+2d)``, ``[3h*d+2d, 3h*d+3d)`` (d = head dim), i.e. the
"grouped" layout with one group per head. ``query_output`` is every head's query in head order
(batch, seq, heads*d), before the rotary embedding, and ``head_query_output`` splits it by head.
Parallel residual (``use_parallel_residual``) or not, the components are the same module ports.
"""
from . import Component, Family

_C = Component
_ATT = "layers.{layer}.attention"
_QKV = f"{_ATT}.query_key_value"
_HEAD = "hidden_size/num_attention_heads"
FUSED = ("grouped", "num_attention_heads", _HEAD)

COMPONENTS = {
    "block_input": _C("layers.{layer}", "input", dim="hidden_size"),
    "block_output": _C("layers.{layer}", "output", dim="hidden_size"),
    "mlp_activation": _C("layers.{layer}.mlp.act", "output", dim="intermediate_size|hidden_size*4"),
    "mlp_output": _C("layers.{layer}.mlp", "output", dim="hidden_size"),
    "mlp_input": _C("layers.{layer}.mlp", "input", dim="hidden_size"),
    "attention_value_output": _C(f"{_ATT}.dense", "input", dim="hidden_size"),
    "head_attention_value_output": _C(f"{_ATT}.dense", "input", heads="num_attention_heads", dim=_HEAD),
    "attention_weight": _C(_ATT, "output", dim="max_position_embeddings", pattern="attention_probs", needs="eager"),
    "attention_output": _C(_ATT, "output", dim="hidden_size"),
    "attention_input": _C(_ATT, "input", dim="hidden_size"),
    "query_output": _C(_QKV, "output", split3=0, fused=FUSED, dim="hidden_size"),
    "key_output": _C(_QKV, "output", split3=1, fused=FUSED, dim="hidden_size"),
    "value_output": _C(_QKV, "output", split3=2, fused=FUSED, dim="hidden_size"),
    "head_query_output": _C(_QKV, "output", split3=0, fused=FUSED, heads="layout", dim=_HEAD),
    "head_key_output": _C(_QKV, "output", split3=1, fused=FUSED, heads="layout", dim=_HEAD),
    "head_value_output": _C(_QKV, "output", split3=2, fused=FUSED, heads="layout", dim=_HEAD),
}

FAMILY = Family(
    name="gpt_neox",
    prefixes={"GPTNeoXModel": "", "GPTNeoXForCausalLM": "gpt_neox.", "GPTNeoXForSequenceClassification": "gpt_neox."},
    components=COMPONENTS,
    n_layers="num_hidden_layers",
)
