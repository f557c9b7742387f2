"""Qwen3 (Qwen3Model, Qwen3ForCausalLM, Qwen3ForSequenceClassification; transformers 5): the Llama layout.

Qwen3 sets ``head_dim`` explicitly (often ``heads x head_dim != hidden``) and normalises q and k per head:
``query_output``/``key_output`` are the projections' outputs, before those norms.
"""

from .llama import layout, prefixes
from .spec import Family

FAMILY = Family(name="qwen3", prefixes=prefixes("Qwen3"), components=layout(), n_layers="num_hidden_layers")
