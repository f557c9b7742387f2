"""GPT-Neo (GPTNeoModel, GPTNeoForCausalLM, GPTNeoForSequenceClassification): pyvene 0.1.8's map, with
the attention paths fixed.

GPT-Neo's ``attn`` is a wrapper (``GPTNeoAttention``) around the self-attention module ``attn.attention``
that holds ``q_proj``/``k_proj``/``v_proj``/``out_proj``. pyvene 0.1.8 maps the projections to
``h[i].attn.q_proj`` etc., paths that do not exist (its q/k/v and attention-value components fail); here
they point at ``attn.attention``. ``attention_output`` is the wrapper's output, as in pyvene. Local
(windowed) and global layers alternate (``attention_types``); both have the same components.
"""

from ._layouts import separate_layout
from .spec import Family

COMPONENTS = separate_layout(
    "h.{layer}.attn.attention",
    "h.{layer}.attn",
    "out_proj",
    hidden="hidden_size",
    heads="num_heads",
    head="hidden_size/num_heads",
    act_dim="intermediate_size|hidden_size*4",
    positions="max_position_embeddings",
)

FAMILY = Family(
    name="gpt_neo",
    prefixes={
        "GPTNeoModel": "",
        "GPTNeoForCausalLM": "transformer.",
        "GPTNeoForSequenceClassification": "transformer.",
    },
    components=COMPONENTS,
    n_layers="num_layers",
)
