"""pyvene's GRU (fxvene.zoo.toy_models.GRUModel / GRUForClassification / GRULMHeadModel): pyvene 0.1.8's
map. Each cell runs once per time step, so these components take ``unit="t"`` (fxvene/graph/time_steps.py):
time step t is the cell's t-th call. The ``{reset,update,new}_{x2h,h2h}_output`` components are thirds
of the fused ``x2h``/``h2h`` outputs (reset, update, new gates in that order), on every head
(pyvene drops the split on the LM head; fxvene does not)."""

from .spec import Component, Family

_C = Component
COMPONENTS = {
    "cell_input": _C("cells.{layer}", "input", dim="h_dim"),
    "cell_output": _C("cells.{layer}", "output", dim="h_dim"),
    "reset_gate_input": _C("cells.{layer}.reset_act", "input", dim="h_dim"),
    "update_gate_input": _C("cells.{layer}.update_act", "input", dim="h_dim"),
    "new_gate_input": _C("cells.{layer}.new_act", "input", dim="h_dim"),
    "reset_gate_output": _C("cells.{layer}.reset_act", "output", dim="h_dim"),
    "update_gate_output": _C("cells.{layer}.update_act", "output", dim="h_dim"),
    "new_gate_output": _C("cells.{layer}.new_act", "output", dim="h_dim"),
    "x2h_output": _C("cells.{layer}.x2h", "output", dim="h_dim*3"),
    "h2h_output": _C("cells.{layer}.h2h", "output", dim="h_dim*3"),
}
for _slot, _gate in enumerate(("reset", "update", "new")):
    for _lin in ("x2h", "h2h"):
        COMPONENTS[f"{_gate}_{_lin}_output"] = _C(f"cells.{{layer}}.{_lin}", "output", split3=_slot, dim="h_dim")

FAMILY = Family(
    name="gru",
    prefixes={"GRUModel": "", "GRUForClassification": "gru.", "GRULMHeadModel": "gru."},
    components=COMPONENTS,
    n_layers="n_layer",
)
