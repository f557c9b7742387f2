"""Granite (GraniteModel, GraniteForCausalLM): the Llama layout. Granite's multipliers act outside the
components: ``attention_output``/``mlp_output`` are the sublayers' outputs before ``residual_multiplier``,
``block_output`` the layer's output. (transformers has no Granite sequence classifier.)
"""

from .llama import layout, prefixes
from .spec import Family

FAMILY = Family(name="granite", prefixes=prefixes("Granite"), components=layout(), n_layers="num_hidden_layers")
