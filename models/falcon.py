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

from ._layouts import fused_layout
from .spec import Family

FUSED = ("grouped", "num_attention_heads", "hidden_size/num_attention_heads")
# the key/value widths depend on the layout (one head under multi-query): taken from the graph
COMPONENTS = fused_layout(
    "h", "self_attention", "query_key_value", "dense", "act", "ffn_hidden_size|hidden_size*4", FUSED, kv_dim=None
)

FAMILY = Family(
    name="falcon",
    prefixes={
        "FalconModel": "",
        "FalconForCausalLM": "transformer.",
        "FalconForSequenceClassification": "transformer.",
    },
    components=COMPONENTS,
    n_layers="num_hidden_layers",
)
