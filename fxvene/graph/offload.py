"""Models dispatched by accelerate: what tracing needs to know of them, and the graph they run.

A model loaded with ``device_map=...`` (with or without ``offload_folder``), or put together with
``accelerate.dispatch_model`` / ``cpu_offload``, carries an ``AlignDevicesHook`` on its modules: the
hook moves each module's inputs to its execution device and, for offloaded modules, loads the
weights (kept on the ``meta`` device) from a weights map before the call and drops them after.

fxvene traces such a model on its *structure* (the hooks bypassed; for torch.export every weight
and input on the ``meta`` device, so no weight is read), then gives the graph the live tensors and
lets ``fxvene.passes.offload`` do the hooks' work inside the graph: each offloaded weight is
loaded just before its first use and freed after its last, and every value moves to the device of
the module that uses it. Models without hooks pass through every function here unchanged.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from fxvene.passes.offload import device_of, load_offloaded, place_on_devices, plan_devices, retarget_meta


def _hooks(module):
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def is_dispatched(model):
    """True when accelerate's hooks are on ``model`` or any of its modules."""
    return any(_hooks(m) for m in model.modules())


def module_devices(model):
    """``{module path: execution device}`` of the modules that accelerate's hooks place."""
    out = {}
    for name, m in model.named_modules():
        for h in _hooks(m):
            dev = getattr(h, "execution_device", None)
            if dev is not None:
                out[name] = dev
    return out


def main_device(model):
    """Where a call's inputs go: the device of the input embeddings (their execution device when
    dispatched), else of the first parameter not on the meta device."""
    devices = module_devices(model)
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    if emb is not None and devices:
        path = next((n for n, m in model.named_modules() if m is emb), None)
        if path is not None:
            return device_of(path, devices, _first_device(model))
    if devices and "" in devices:
        return torch.device(devices[""] if not isinstance(devices[""], int) else f"cuda:{devices['']}")
    return _first_device(model)


def execution_devices(device_map):
    """``{module path: device}`` where each module of ``device_map`` (``hf_device_map``'s form) *runs*:
    accelerate runs a module mapped to ``"cpu"`` or ``"disk"`` on the main device (the first
    accelerator in the map, else the CPU), loading its weights there around each call."""
    accel = [d for d in device_map.values() if d not in ("cpu", "disk")]
    main = accel[0] if accel else "cpu"
    return {k: (main if d in ("cpu", "disk") else d) for k, d in device_map.items()}


def site_device(gm, model, node):
    """The device the node named ``node`` of ``model``'s graph ``gm`` runs on, and so the device of an
    intervention at that site; ``None`` for a model without accelerate's hooks (nothing moves)."""
    if not is_dispatched(model):
        return None
    return plan_devices(gm, module_devices(model), main_device(model)).get(node, main_device(model))


def _first_device(model):
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def offloaded_weights(model):
    """``{path: (weights_map, key, device, dtype)}`` of every tensor of ``model`` that accelerate
    keeps on the meta device and loads from a weights map around its module's call."""
    out = {}
    for name, m in model.named_modules():
        for h in _hooks(m):
            wm = getattr(h, "weights_map", None)
            if not getattr(h, "offload", False) or wm is None:
                continue
            deep = bool(getattr(h, "place_submodules", False))
            tensors = list(m.named_parameters(recurse=deep))
            if getattr(h, "offload_buffers", False):
                tensors += list(m.named_buffers(recurse=deep))
            for rel, t in tensors:
                if t.device.type != "meta":
                    continue
                path = f"{name}.{rel}" if name else rel
                out.setdefault(path, (wm, rel, h.execution_device, t.dtype))
    return out


@contextlib.contextmanager
def tracing_view(model, meta=False, force=False):
    """Trace ``model`` on its structure: accelerate's wrapped forwards are set aside (the tracer sees
    the modules' own code), and with ``meta=True`` every parameter and buffer is a meta-device
    stand-in (torch.export then reads no weight, and devices agree). All comes back afterwards.
    Does nothing for a model without hooks (unless ``force``)."""
    if not force and not is_dispatched(model):
        yield False
        return
    forwards = {m: m.__dict__.pop("forward") for m in model.modules() if _hooks(m) and "forward" in m.__dict__}
    swapped = []
    try:
        if meta:
            memo = {}
            for m in model.modules():
                for store in (m._parameters, m._buffers):
                    for k, t in list(store.items()):
                        if t is None:
                            continue
                        if id(t) not in memo:
                            stand_in = t.detach().to("meta")
                            if isinstance(t, nn.Parameter):
                                stand_in = nn.Parameter(stand_in, requires_grad=t.requires_grad)
                            memo[id(t)] = stand_in
                        swapped.append((store, k, t))
                        store[k] = memo[id(t)]
        yield True
    finally:
        for store, k, t in reversed(swapped):
            store[k] = t
        for m, f in forwards.items():
            m.forward = f


def to_meta(value):
    """``value`` (a tensor, or a list/tuple/dict of them) on the meta device."""
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, (list, tuple)):
        return type(value)(to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: to_meta(v) for k, v in value.items()}
    return value


def live_root(gm, graph, model, prefix=""):
    """``{target: object}`` for the attributes ``graph`` reads: the model's own tensors and modules
    (under ``prefix`` in the graph's names), the traced module's (``gm``) for what the trace made."""
    root = {}
    for n in graph.nodes:
        if n.op not in ("get_attr", "call_module"):
            continue
        target = str(n.target)
        obj = _resolve(model, target[len(prefix) :] if target.startswith(prefix) else None)
        if obj is None:
            obj = _resolve(gm, target)
        root[target] = obj
    return root


def _resolve(root, path):
    if path is None:
        return None
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def finish(gm, model, names=None):
    """The graph ``gm`` of a dispatched ``model`` made runnable: offloaded weights loaded where they
    are used (``names``: graph attribute -> model path, where they differ) and values moved to the
    device of each module. Returns ``gm`` itself for a model without hooks."""
    if not is_dispatched(model):
        return gm
    gm = load_offloaded(gm, offloaded_weights(model), names)
    plan = plan_devices(gm, module_devices(model), main_device(model))
    return place_on_devices(retarget_meta(gm, plan), plan)


def rebind(gm, model, prefix=""):
    """Point the weights ``gm`` reads (``get_attr``, under ``prefix`` in the model) back at the live
    tensors of ``model``: an export on meta stand-ins returns a module holding those stand-ins.
    Edits ``gm`` in place; nothing happens for a model without hooks."""
    if not is_dispatched(model):
        return gm
    for target, obj in live_root(gm, gm.graph, model, prefix).items():
        parent, _, leaf = target.rpartition(".")
        owner = gm.get_submodule(parent) if parent else gm
        if isinstance(obj, torch.Tensor):
            if leaf in owner._parameters:
                owner._parameters[leaf] = obj
            elif leaf in owner._buffers:
                owner._buffers[leaf] = obj
            else:
                setattr(owner, leaf, obj)
    return gm
