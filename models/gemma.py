"""Gemma (GemmaModel, GemmaForCausalLM, GemmaForSequenceClassification): the Llama layout.

pyvene 0.1.8 maps Gemma with the same module ports. Its widths assume ``heads x head_dim == hidden``
(false for Gemma 7B: 16 x 256 = 4096, hidden 3072); here q/o widths are ``heads x head_dim`` and
k/v widths ``kv_heads x head_dim``.
"""

from .llama import layout, prefixes
from .spec import Family

FAMILY = Family(name="gemma", prefixes=prefixes("Gemma"), components=layout(), n_layers="num_hidden_layers")
