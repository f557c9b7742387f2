"""GPT-J (GPTJModel, GPTJForCausalLM, GPTJForSequenceClassification): GPT-2-style ``h.{i}`` blocks with
separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` in ``attn`` and ``fc_in``/``act``/``fc_out`` in
``mlp``. Attention and MLP run in parallel on the same ``ln_1`` output, so ``mlp_input`` and
``attention_input`` are the same tensor (two sites). q/k are read before the rotary embedding.
"""

from ._layouts import separate_layout
from .spec import Family

COMPONENTS = separate_layout(
    "h.{layer}.attn",
    "h.{layer}.attn",
    "out_proj",
    hidden="n_embd",
    heads="n_head",
    head="n_embd/n_head",
    act_dim="n_inner|n_embd*4",
    positions="n_positions",
)

FAMILY = Family(
    name="gptj",
    prefixes={"GPTJModel": "", "GPTJForCausalLM": "transformer.", "GPTJForSequenceClassification": "transformer."},
    components=COMPONENTS,
    n_layers="n_layer",
)
