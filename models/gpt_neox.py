"""GPT-NeoX / Pythia (GPTNeoXModel, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification).

pyvene 0.1.8's map (blocks, MLP, attention input/output, the input of ``attention.dense``), plus the
q/k/v components pyvene leaves out. GPT-NeoX computes q, k and v with one fused projection,
``attention.query_key_value``, whose output is laid out *per head*: head h's query, key and value are
columns ``[3h*d, 3h*d+d)``, ``[3h*d+d, 3h*d+2d)``, ``[3h*d+2d, 3h*d+3d)`` (d = head dim), i.e. the
"grouped" layout with one group per head. ``query_output`` is every head's query in head order
(batch, seq, heads*d), before the rotary embedding, and ``head_query_output`` splits it by head.
Parallel residual (``use_parallel_residual``) or not, the components are the same module ports.
"""

from ._layouts import fused_layout
from .spec import Family

FUSED = ("grouped", "num_attention_heads", "hidden_size/num_attention_heads")
COMPONENTS = fused_layout(
    "layers", "attention", "query_key_value", "dense", "act", "intermediate_size|hidden_size*4", FUSED
)

FAMILY = Family(
    name="gpt_neox",
    prefixes={"GPTNeoXModel": "", "GPTNeoXForCausalLM": "gpt_neox.", "GPTNeoXForSequenceClassification": "gpt_neox."},
    components=COMPONENTS,
    n_layers="num_hidden_layers",
)
