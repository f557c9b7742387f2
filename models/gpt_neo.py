"""GPT-Neo (GPTNeoModel, GPTNeoForCausalLM, GPTNeoForSequenceClassification): pyvene 0.1.8's map, with
the attention paths fixed.

GPT-Neo's ``attn`` is a wrapper (``GPTNeoAttention``) around the self-attention module ``attn.attention``
that holds ``q_proj``/``k_proj``/``v_proj``/``out_proj``. pyvene 0.1.8 maps the projections to
``h[i].attn.q_proj`` etc., paths that do not exist (its q/k/v and attention-value components fail); here
they point at ``attn.attention``. ``attention_output`` is the wrapper's output, as in pyvene. Local
(windowed) and global layers alternate (``attention_types``); both have the same components.
"""
from . import Component, Family

_C = Component
_ATT = "h.{layer}.attn.attention"
_HEAD = "hidden_size/num_heads"

COMPONENTS = {
    "block_input": _C("h.{layer}", "input", dim="hidden_size"),
    "block_output": _C("h.{layer}", "output", dim="hidden_size"),
    "mlp_activation": _C("h.{layer}.mlp.act", "output", dim="intermediate_size|hidden_size*4"),
    "mlp_output": _C("h.{layer}.mlp", "output", dim="hidden_size"),
    "mlp_input": _C("h.{layer}.mlp", "input", dim="hidden_size"),
    "attention_value_output": _C(f"{_ATT}.out_proj", "input", dim="hidden_size"),
    "head_attention_value_output": _C(f"{_ATT}.out_proj", "input", heads="num_heads", dim=_HEAD),
    "attention_weight": _C(_ATT, "output", dim="max_position_embeddings", pattern="attention_probs", needs="eager"),
    "attention_output": _C("h.{layer}.attn", "output", dim="hidden_size"),
    "attention_input": _C("h.{layer}.attn", "input", dim="hidden_size"),
    "query_output": _C(f"{_ATT}.q_proj", "output", dim="hidden_size"),
    "key_output": _C(f"{_ATT}.k_proj", "output", dim="hidden_size"),
    "value_output": _C(f"{_ATT}.v_proj", "output", dim="hidden_size"),
    "head_query_output": _C(f"{_ATT}.q_proj", "output", heads="num_heads", dim=_HEAD),
    "head_key_output": _C(f"{_ATT}.k_proj", "output", heads="num_heads", dim=_HEAD),
    "head_value_output": _C(f"{_ATT}.v_proj", "output", heads="num_heads", dim=_HEAD),
}

FAMILY = Family(
    name="gpt_neo",
    prefixes={"GPTNeoModel": "", "GPTNeoForCausalLM": "transformer.", "GPTNeoForSequenceClassification": "transformer."},
    components=COMPONENTS,
    n_layers="num_layers",
)
