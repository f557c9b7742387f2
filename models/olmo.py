"""OLMo (OlmoModel, OlmoForCausalLM; OlmoForSequenceClassification on transformers 5): the Llama layout,
as pyvene 0.1.8's map. With ``clip_qkv`` the q/k/v components are the projections' outputs before the clamp.
"""

from .llama import layout, prefixes
from .spec import Family

FAMILY = Family(name="olmo", prefixes=prefixes("Olmo"), components=layout(), n_layers="num_hidden_layers")
