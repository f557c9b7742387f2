"""Weights kept outside the graph, and graphs that span several devices.

A model dispatched by accelerate (``device_map=...``, ``offload_folder=...``, ``dispatch_model``,
``cpu_offload``) keeps its offloaded parameters on the ``meta`` device; the real values sit in a
weights map (CPU memory or a folder on disk) that accelerate's hooks read around each module call.
The rewritten graph does that reading itself, as graph nodes:

* ``load_offloaded`` turns every read of an offloaded weight (a ``get_attr`` node, or a leaf
  module call of HF's fx tracer) into a call of a small loader module placed right before the first
  node that uses it. fx's generated code drops a value after its last use, so each weight lives on
  the device only between its first and last use.
* ``plan_devices`` says on which device each node runs: the execution device of the innermost
  module it belongs to, the main device (where the inputs go) for the rest.
  ``place_on_devices`` inserts the ``.to(device)`` moves that plan needs: every value moves to
  the device of the node that uses it.

Both are plain functions of a GraphModule and data (a dict of weights, a dict of devices); they
import nothing of accelerate.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn

ROOT = "fxvene_offload"  # the GraphModule attribute that holds the loader modules


class OffloadedWeight(nn.Module):
    """Reads one weight from ``weights_map`` (any mapping: accelerate's OffloadedWeightsLoader or a
    prefixed view of it) onto ``device`` in ``dtype``; no arguments, a fresh tensor per call."""

    def __init__(self, weights_map, key, device, dtype):
        super().__init__()
        self.weights_map, self.key = weights_map, key
        self.device, self.dtype = torch.device(device), dtype

    def forward(self):
        return self.weights_map[self.key].to(device=self.device, dtype=self.dtype)

    def __deepcopy__(self, memo):  # the weights map is shared, never copied
        return OffloadedWeight(self.weights_map, self.key, self.device, self.dtype)

    def extra_repr(self):
        return f"{self.key!r} -> {self.device}"


class OffloadedCall(nn.Module):
    """A leaf module call (HF's fx tracer keeps ``nn.Linear``, ``nn.LayerNorm`` ... as module calls)
    whose parameters are offloaded: loads them, runs the module's own forward with them, and lets
    them go."""

    def __init__(self, module, loaders):
        super().__init__()
        bare = copy.copy(module)  # the module without accelerate's wrapped forward
        bare.__dict__ = {k: v for k, v in module.__dict__.items() if k not in ("forward", "_hf_hook", "_old_forward")}
        bare._parameters = dict(module._parameters)
        self.inner = bare
        self.names = tuple(loaders)
        self.loaders = nn.ModuleList(loaders.values())

    def forward(self, *args, **kwargs):
        values = {n: load() for n, load in zip(self.names, self.loaders)}
        return torch.func.functional_call(self.inner, values, args, kwargs)


def _flat(name):
    return "".join(c if c.isalnum() else "_" for c in name)


def load_offloaded(gm: fx.GraphModule, weights: dict, names: dict | None = None) -> fx.GraphModule:
    """Replace the reads of offloaded weights in ``gm`` by loads right before their first use.

    ``weights``: ``{parameter path: (weights_map, key, device, dtype)}`` (paths as in the model);
    ``names``: ``{get_attr target: parameter path}`` where the graph's attribute names are not the
    model's (the KV-cache step graphs' flat names). Edits ``gm`` in place and returns it."""
    if not weights:
        return gm
    names = names or {}
    graph = gm.graph
    holder = getattr(gm, ROOT, None)
    if holder is None:
        holder = nn.Module()
        gm.add_module(ROOT, holder)
    dropped = []
    for n in list(graph.nodes):
        if n.op == "get_attr":
            path = names.get(str(n.target), str(n.target))
            if path not in weights or not n.users:
                continue
            wm, key, device, dtype = weights[path]
            slot = _flat(str(n.target))
            holder.add_module(slot, OffloadedWeight(wm, key, device, dtype))
            first = min(n.users, key=_order(graph))
            with graph.inserting_before(first):
                load = graph.call_module(f"{ROOT}.{slot}", ())
            load.meta = dict(n.meta)
            load.meta["fxvene"] = "offloaded_weight"
            n.replace_all_uses_with(load)
            graph.erase_node(n)
            dropped.append(str(n.target))
        elif n.op == "call_module":
            prefix = str(n.target) + "."
            mine = {
                p[len(prefix) :]: w for p, w in weights.items() if p.startswith(prefix) and "." not in p[len(prefix) :]
            }
            if not mine:
                continue
            mod = gm.get_submodule(str(n.target))
            loaders = {k: OffloadedWeight(*w) for k, w in mine.items()}
            parent, _, leaf = str(n.target).rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, OffloadedCall(mod, loaders))
    for target in dropped:  # the meta-device placeholders of the offloaded weights
        parent, _, leaf = target.rpartition(".")
        try:
            owner = gm.get_submodule(parent) if parent else gm
        except AttributeError:
            continue
        if any(n.op == "get_attr" and n.target == target for n in graph.nodes):
            continue
        for store in (owner._parameters, owner._buffers):
            store.pop(leaf, None)
        owner.__dict__.pop(leaf, None)
    graph.lint()
    gm.recompile()
    return gm


def _order(graph):
    pos = {n: i for i, n in enumerate(graph.nodes)}
    return pos.__getitem__


def device_of(path: str, devices: dict, default):
    """The device of module ``path``: that of its longest prefix in ``devices``, else ``default``."""
    path = str(path)
    while True:
        if path in devices:
            return torch.device(_device(devices[path]))
        if not path:
            return torch.device(_device(default))
        path = path.rpartition(".")[0]


def _device(d):
    return f"cuda:{d}" if isinstance(d, int) else d


def _module_path(n):
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    v = list(stack.values())[-1]
    return str(v[0] if isinstance(v, tuple) else v)


def plan_devices(gm: fx.GraphModule, devices: dict, default) -> dict:
    """``{node name: torch.device}``: where each node of ``gm`` runs, for a model whose modules run
    on ``devices`` (``{module path: device}``, as ``hf_device_map`` or accelerate's hooks give it;
    an int is a CUDA index). A module call or weight read runs on its module's device, any other op
    on the device of the innermost module it was traced in; inputs, outputs and ops outside every
    module on ``default``. Loader nodes run where their weight goes."""
    plan = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and str(n.target).startswith(ROOT + "."):
            plan[n.name] = torch.device(gm.get_submodule(str(n.target)).device)
        elif n.op in ("call_module", "get_attr"):
            path = str(n.target) if n.op == "call_module" else str(n.target).rpartition(".")[0]
            plan[n.name] = device_of(path, devices, default)
        elif n.op in ("call_function", "call_method"):
            path = _module_path(n)
            plan[n.name] = device_of(path, devices, default) if path is not None else torch.device(_device(default))
        else:
            plan[n.name] = torch.device(_device(default))
    return plan


def place_on_devices(gm: fx.GraphModule, plan: dict) -> fx.GraphModule:
    """Insert a ``.to(device)`` before each use of a tensor on another device than the node that
    uses it (one move per value and device), following ``plan`` (``plan_devices``). A graph on
    one device is returned unchanged."""
    if len({d for d in plan.values()}) <= 1:
        return gm
    graph = gm.graph
    moved = {}
    for n in list(graph.nodes):
        if n.op in ("placeholder", "get_attr") or n.name not in plan:
            continue
        want = plan[n.name]
        for a in list(n.all_input_nodes):
            if a.name not in plan or plan[a.name] == want or not _is_tensor(a):
                continue
            key = (a, want)
            if key not in moved:
                with graph.inserting_before(n):
                    moved[key] = graph.call_method("to", (a, str(want)))
                moved[key].meta = dict(a.meta, fxvene="device_move")
            n.replace_input_with(a, moved[key])
    graph.lint()
    gm.recompile()
    return gm


def _is_tensor(n):
    val = n.meta.get("val", n.meta.get("tensor_meta"))
    if val is None:
        return n.op in ("get_attr", "call_module")
    return isinstance(val, torch.Tensor) or hasattr(val, "shape")


def retarget_meta(gm: fx.GraphModule, plan: dict) -> fx.GraphModule:
    """A graph traced on the meta device carries ``device=meta`` in its factory and ``to`` calls
    (``arange``, ``zeros``, ``to(device)``): point each at the device its node runs on (``plan``)."""
    meta = torch.device("meta")

    def swap(value, device):
        if isinstance(value, torch.device) and value == meta:
            return device
        if isinstance(value, str) and value == "meta":
            return str(device)
        return value

    changed = False
    for n in gm.graph.nodes:
        if n.name not in plan or n.op not in ("call_function", "call_method"):
            continue
        dev = plan[n.name]
        args = fx.node.map_aggregate(n.args, lambda v, d=dev: swap(v, d))
        kwargs = fx.node.map_aggregate(n.kwargs, lambda v, d=dev: swap(v, d))
        if args != n.args or kwargs != n.kwargs:
            n.args, n.kwargs, changed = args, kwargs, True
    if changed:
        gm.recompile()
    return gm
