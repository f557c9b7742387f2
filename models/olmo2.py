"""OLMo 2 (Olmo2Model, Olmo2ForCausalLM; Olmo2ForSequenceClassification on transformers 5): the Llama layout.

OLMo 2 normalises *after* attention and MLP (no input norm) and has q/k norms over the whole projection:
``query_output``/``key_output`` are ``q_proj``/``k_proj`` outputs before those norms, ``attention_output``
and ``mlp_output`` the sublayers' outputs before their post-norms, ``block_output`` the layer's output.
"""

from .llama import layout, prefixes
from .spec import Family

FAMILY = Family(name="olmo2", prefixes=prefixes("Olmo2"), components=layout(), n_layers="num_hidden_layers")
