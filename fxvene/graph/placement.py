"""Where a model's graph would run over several devices, planned without any weight.

``placement_plan`` exports the model on the meta device (no weight is read: the model itself
may live on the meta device) and applies the rule fxvene's dispatched graphs follow
(``fxvene.passes.offload.plan_devices``): each node runs on the device of the innermost module
it belongs to, a value moves to the device of the node that uses it, and an intervention lives on
the device of its site.
"""

from __future__ import annotations

from fxvene.graph.model_io import construction_inputs, split_inputs
from fxvene.graph.offload import device_of, execution_devices, to_meta, tracing_view
from fxvene.graph.sites import resolve_site
from fxvene.graph.tracing import TracedGraph, _example_inputs, _export_program, _reference_output, _trace_export
from fxvene.passes.offload import plan_devices


def placement_plan(model, device_map, sites=(), input_names=None):
    """``{"nodes": {node name: device}, "sites": {(component, layer): device}}`` for ``model`` run
    with its modules on ``device_map`` (``{module path: device}``, as ``hf_device_map`` writes it; an
    int is a CUDA index; ``"cpu"`` and ``"disk"`` modules run on the main device, as accelerate runs
    them). ``sites``: ``(component, layer)`` pairs, the places of interventions; each
    gets the device of its site's node. Inputs and outputs go on the device of the input embeddings."""
    if not isinstance(device_map, dict) or not device_map:
        raise TypeError(
            f"device_map must be a non-empty dict of module path -> device, got {type(device_map).__name__}"
        )
    names = tuple(input_names or construction_inputs(model))
    taken, _ = split_inputs(model, names)
    with tracing_view(model, meta=True, force=True):
        example = to_meta(_example_inputs(model, taken))
        cls, keys, _ = _reference_output(model, example)
        gm = _trace_export(model, taken, example, keys, ep=_export_program(model, taken, example))
    traced = TracedGraph(gm=gm, frontend="export", input_names=taken, output_keys=keys, output_cls=cls)
    device_map = execution_devices(device_map)
    emb = model.get_input_embeddings()
    path = next((n for n, m in model.named_modules() if m is emb), "")
    nodes = plan_devices(gm, device_map, device_of(path, device_map, next(iter(device_map.values()))))
    where = {}
    for component, layer in sites:
        where[(component, layer)] = nodes[resolve_site(traced, model, component, layer).node]
    return {"nodes": nodes, "sites": where}
