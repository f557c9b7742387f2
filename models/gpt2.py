"""GPT-2 family (GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification): pyvene 0.1.8's map."""

from .spec import Component, Family

_C = Component
COMPONENTS = {
    "block_input": _C("h.{layer}", "input", dim="n_embd"),
    "block_output": _C("h.{layer}", "output", dim="n_embd"),
    "mlp_activation": _C("h.{layer}.mlp.act", "output", dim="n_inner|n_embd*4"),
    "mlp_output": _C("h.{layer}.mlp", "output", dim="n_embd"),
    "mlp_input": _C("h.{layer}.mlp", "input", dim="n_embd"),
    "attention_value_output": _C("h.{layer}.attn.c_proj", "input", dim="n_embd"),
    "head_attention_value_output": _C("h.{layer}.attn.c_proj", "input", heads="n_head", dim="n_embd/n_head"),
    # pyvene hooks the input of attn_dropout; transformers 5 calls dropout functionally, so the
    # site is found structurally: softmax -> (casts, dropout)* -> matmul with V, inside attn
    "attention_weight": _C(
        "h.{layer}.attn", "output", dim="max_position_embeddings", pattern="attention_probs", needs="eager"
    ),
    "attention_output": _C("h.{layer}.attn.resid_dropout", "output", dim="n_embd"),
    "attention_input": _C("h.{layer}.attn", "input", dim="n_embd"),
    "query_output": _C("h.{layer}.attn.c_attn", "output", split3=0, dim="n_embd"),
    "key_output": _C("h.{layer}.attn.c_attn", "output", split3=1, dim="n_embd"),
    "value_output": _C("h.{layer}.attn.c_attn", "output", split3=2, dim="n_embd"),
    "head_query_output": _C("h.{layer}.attn.c_attn", "output", split3=0, heads="n_head", dim="n_embd/n_head"),
    "head_key_output": _C("h.{layer}.attn.c_attn", "output", split3=1, heads="n_head", dim="n_embd/n_head"),
    "head_value_output": _C("h.{layer}.attn.c_attn", "output", split3=2, heads="n_head", dim="n_embd/n_head"),
}

FAMILY = Family(
    name="gpt2",
    prefixes={
        "GPT2Model": "",
        "GPT2LMHeadModel": "transformer.",
        "GPT2ForSequenceClassification": "transformer.",
    },
    components=COMPONENTS,
    n_layers="n_layer",
)
