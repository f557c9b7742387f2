"""Mixtral (MixtralModel, MixtralForCausalLM, MixtralForSequenceClassification): the Llama layout with a
sparse mixture-of-experts block in place of the MLP.

``mlp_input``/``mlp_output`` are the MoE block's input and output (the sum of the routed experts'
outputs, weighted). There is no single activation module, so no ``mlp_activation``; the router and the
experts are string components: ``model.layers[0].block_sparse_moe.gate.output`` (router logits) and
``model.layers[0].block_sparse_moe.experts[3].output`` (one expert, on the tokens routed to it) on
transformers 4; on transformers 5 the block is ``mlp`` and the experts are one fused module,
``model.layers[0].mlp.experts.output``.
"""

from importlib.metadata import distribution, version

from .llama import layout, prefixes
from .spec import Family


def _moe_name():
    """``block_sparse_moe`` where the installed transformers' Mixtral layer has it (4.47), else ``mlp``; read
    from the source file without importing transformers (the CLI's argument checks stay light)."""
    try:
        src = distribution("transformers").locate_file("transformers/models/mixtral/modeling_mixtral.py").read_text()
    except Exception:  # noqa: BLE001 - an unusual install: decide by the line
        return "block_sparse_moe" if int(version("transformers").split(".")[0]) < 5 else "mlp"
    return "block_sparse_moe" if "self.block_sparse_moe" in src else "mlp"


MOE = _moe_name()

FAMILY = Family(
    name="mixtral",
    prefixes=prefixes("Mixtral"),
    components=layout(mlp=MOE, activation=False),
    n_layers="num_hidden_layers",
)
