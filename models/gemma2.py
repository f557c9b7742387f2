"""Gemma 2 (Gemma2Model, Gemma2ForCausalLM, Gemma2ForSequenceClassification): the Llama layout.

The extra norms (pre/post feed-forward, post-attention applied to the attention output) are inside
the block: ``attention_output`` is ``self_attn``'s output before its post-norm, ``mlp_output`` the MLP's
output before its post-norm, ``block_output`` the decoder layer's output (the residual stream), as in
pyvene 0.1.8's map. Sliding-window layers alternate with global ones; the KV-cache graphs keep every
layer's full keys/values and the masks apply the window.
"""

from .llama import layout, prefixes
from .spec import Family

FAMILY = Family(name="gemma2", prefixes=prefixes("Gemma2"), components=layout(), n_layers="num_hidden_layers")
