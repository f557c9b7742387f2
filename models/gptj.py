"""GPT-J (GPTJModel, GPTJForCausalLM, GPTJForSequenceClassification): GPT-2-style ``h.{i}`` blocks with
separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` in ``attn`` and ``fc_in``/``act``/``fc_out`` in
``mlp``. Attention and MLP run in parallel on the same ``ln_1`` output, so ``mlp_input`` and
``attention_input`` are the same tensor (two sites). q/k are read before the rotary embedding.
"""
from . import Component, Family

_C = Component
_ATT = "h.{layer}.attn"
_HEAD = "n_embd/n_head"

COMPONENTS = {
    "block_input": _C("h.{layer}", "input", dim="n_embd"),
    "block_output": _C("h.{layer}", "output", dim="n_embd"),
    "mlp_activation": _C("h.{layer}.mlp.act", "output", dim="n_inner|n_embd*4"),
    "mlp_output": _C("h.{layer}.mlp", "output", dim="n_embd"),
    "mlp_input": _C("h.{layer}.mlp", "input", dim="n_embd"),
    "attention_value_output": _C(f"{_ATT}.out_proj", "input", dim="n_embd"),
    "head_attention_value_output": _C(f"{_ATT}.out_proj", "input", heads="n_head", dim=_HEAD),
    "attention_weight": _C(_ATT, "output", dim="n_positions", pattern="attention_probs", needs="eager"),
    "attention_output": _C(_ATT, "output", dim="n_embd"),
    "attention_input": _C(_ATT, "input", dim="n_embd"),
    "query_output": _C(f"{_ATT}.q_proj", "output", dim="n_embd"),
    "key_output": _C(f"{_ATT}.k_proj", "output", dim="n_embd"),
    "value_output": _C(f"{_ATT}.v_proj", "output", dim="n_embd"),
    "head_query_output": _C(f"{_ATT}.q_proj", "output", heads="n_head", dim=_HEAD),
    "head_key_output": _C(f"{_ATT}.k_proj", "output", heads="n_head", dim=_HEAD),
    "head_value_output": _C(f"{_ATT}.v_proj", "output", heads="n_head", dim=_HEAD),
}

FAMILY = Family(
    name="gptj",
    prefixes={"GPTJModel": "", "GPTJForCausalLM": "transformer.", "GPTJForSequenceClassification": "transformer."},
    components=COMPONENTS,
    n_layers="n_layer",
)
