"""Mixtral (MixtralModel, MixtralForCausalLM, MixtralForSequenceClassification): the Llama layout with a
sparse mixture-of-experts block in place of the MLP.

``mlp_input``/``mlp_output`` are the MoE block's input and output (the sum of the routed experts'
outputs, weighted). There is no single activation module, so no ``mlp_activation``; the router and the
experts are string components: ``model.layers[0].block_sparse_moe.gate.output`` (router logits) and
``model.layers[0].block_sparse_moe.experts[3].output`` (one expert, on the tokens routed to it) on
transformers 4; on transformers 5 the block is ``mlp`` and the experts are one fused module,
``model.layers[0].mlp.experts.output``.
"""
from importlib.metadata import version

from . import Family
from .llama import layout, prefixes

# the installed line, read without importing transformers (the CLI's argument checks stay light)
MOE = "block_sparse_moe" if int(version("transformers").split(".")[0]) < 5 else "mlp"

FAMILY = Family(
    name="mixtral", prefixes=prefixes("Mixtral"), components=layout(mlp=MOE, activation=False),
    n_layers="num_hidden_layers",
)
