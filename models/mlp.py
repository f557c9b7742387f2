"""pyvene's MLP (fxvene.zoo.toy_models.MLPModel / MLPForClassification): pyvene 0.1.8's map, every
component ``h_dim`` wide. The model takes ``inputs_embeds`` (or ``input_ids`` with ``include_emb``)."""

from .spec import Component, Family

_C = Component
COMPONENTS = {
    "block_input": _C("h.{layer}", "input", dim="h_dim"),
    "block_output": _C("h.{layer}", "output", dim="h_dim"),
    "mlp_activation": _C("h.{layer}.act", "output", dim="h_dim"),
}

FAMILY = Family(
    name="mlp",
    prefixes={"MLPModel": "", "MLPForClassification": "mlp."},
    components=COMPONENTS,
    n_layers="n_layer",
)
