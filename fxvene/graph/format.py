"""fxvene's own pickle-free format for a finished fx graph (the graph cache's step graphs).

A graph is stored as plain JSON data: its nodes in order (op, name, target, args, kwargs), the
module stack of each node, the shape of each value (sizes and strides as integers, or a symbolic
size's expression as text with its value on the trace's example; dtype, device), and where every
attribute comes from: a tensor of the live model (named by its path; nothing of the model is
copied) or a small constant the trace created (returned separately, to be stored as safetensors).

Loading builds the ``torch.fx.Graph`` directly: no ``torch.export`` deserialiser, no shape
environment, no sympy, no Python code evaluated or unpickled. Call targets resolve only to
registered operators (``torch.ops.<ns>``) or to whitelisted functions (``operator``, ``math``,
``torch.sym_*``). Shape metadata (``node.meta["val"]``) becomes ``ShapeRecord`` tensors whose
sizes are ints and ``SymDim`` (what fxvene's passes read of export's fake tensors: rank,
dtype, device, which sizes are symbolic and which are the same), one per distinct shape.

Submodules that are bodies of higher-order operators (export's ``wrap_with_autocast`` around
Llama's rotary tables) are stored the same way, nested. ``dump`` raises ``Unsupported``
for a graph this format does not cover (call_module / call_method nodes, other targets, custom
objects, large tensors that are not the model's); the cache then keeps torch's own serialisation.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx

VERSION = 1


class Unsupported(ValueError):
    """The graph holds something this format does not store."""


# ------------------------------------------------------------------------------------- shapes


class SymDim:
    """A symbolic size of a loaded graph's value (what a fresh export's ``torch.SymInt`` is in its
    metadata): prints as its expression (``s70``, ``s63 + s70``), ``int()`` gives its value on the
    example the graph was traced at. Two sizes are equal when their expressions are. Metadata
    only: no arithmetic."""

    __slots__ = ("expr", "hint")

    def __init__(self, expr, hint):
        self.expr, self.hint = expr, hint

    def __str__(self):
        return self.expr

    __repr__ = __str__

    def __int__(self):
        return self.hint

    def __eq__(self, other):
        return isinstance(other, SymDim) and other.expr == self.expr

    def __hash__(self):
        return hash(self.expr)


class ShapeRecord(torch.Tensor):
    """``node.meta["val"]`` of a loaded graph: a tensor without storage that has the value's dtype,
    device and rank, and whose ``shape`` / ``size()`` / ``stride()`` hold ints and ``SymDim``
    (symbolic sizes). It stands for the value in metadata, as export's fake tensors do, at a
    fraction of their cost (no shape environment, no torch.export machinery); computing with it
    raises."""

    @staticmethod
    def __new__(cls, sizes, strides, dtype, device):
        hint = [int(d) for d in sizes]
        out = torch.Tensor._make_wrapper_subclass(
            cls, hint, strides=[int(d) for d in strides], dtype=dtype, device=device
        )
        out._fxv_sizes, out._fxv_strides = tuple(sizes), tuple(strides)
        return out

    @property
    def shape(self):
        return self._fxv_sizes

    def size(self, dim=None):
        return self._fxv_sizes if dim is None else self._fxv_sizes[dim]

    def stride(self, dim=None):
        return self._fxv_strides if dim is None else self._fxv_strides[dim]

    def __repr__(self):
        return f"ShapeRecord(size={self._fxv_sizes}, dtype={self.dtype})"

    def __deepcopy__(self, memo):  # immutable metadata (a deep-copied graph shares it)
        return self

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise TypeError(f"{func}: a ShapeRecord is shape metadata of a loaded graph, not a value")

    __torch_function__ = torch._C._disabled_torch_function_impl


def _dump_dim(d):
    if isinstance(d, torch.SymInt):
        node = d.node
        expr = getattr(node, "expr", None)
        if expr is not None and expr.is_Integer:
            return int(expr)
        hint = node.hint if getattr(node, "hint", None) is not None else None
        if hint is None:
            raise Unsupported(f"symbolic size {d} without a value on the example")
        return {"e": str(d), "h": int(hint)}
    if isinstance(d, int) and not isinstance(d, bool):
        return int(d)
    raise Unsupported(f"size {d!r}")


def _dump_val(v):
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return {
            "t": [
                [_dump_dim(d) for d in v.shape],
                [_dump_dim(d) for d in v.stride()],
                str(v.dtype).replace("torch.", ""),
                str(v.device),
            ]
        }
    if isinstance(v, (torch.SymInt, int)) and not isinstance(v, bool):
        return {"i": _dump_dim(v)}
    if isinstance(v, tuple):
        return {"s": [_dump_val(x) for x in v]}
    if isinstance(v, list):
        return {"l": [_dump_val(x) for x in v]}
    raise Unsupported(f"value metadata of type {type(v).__name__}")


class _Shapes:
    """Loaded metadata values, one object per distinct size and per distinct tensor record."""

    def __init__(self):
        self.dims, self.tensors = {}, {}

    def dim(self, d):
        if isinstance(d, bool):
            raise ValueError("a boolean size")
        if isinstance(d, int):
            return d
        expr, hint = d["e"], d["h"]
        if not isinstance(expr, str) or isinstance(hint, bool) or not isinstance(hint, int):
            raise ValueError(f"unexpected symbolic size {d!r}")
        out = self.dims.get(expr)
        if out is None:
            out = self.dims[expr] = SymDim(expr, hint)
        return out

    def val(self, v):
        if v is None:
            return None
        if "t" in v:
            key = repr(v["t"])
            out = self.tensors.get(key)
            if out is None:
                sizes, strides, dtype, device = v["t"]
                dt = getattr(torch, dtype, None)
                if not isinstance(dt, torch.dtype):
                    raise ValueError(f"unknown dtype {dtype!r}")
                out = self.tensors[key] = ShapeRecord(
                    [self.dim(d) for d in sizes], [self.dim(d) for d in strides], dt, torch.device(device)
                )
            return out
        if "i" in v:
            return self.dim(v["i"])
        if "l" in v:
            return [self.val(x) for x in v["l"]]
        return tuple(self.val(x) for x in v["s"])


# ---------------------------------------------------------------------------------- arguments

_ENUMS = {"dtype": torch.dtype, "layout": torch.layout, "memory_format": torch.memory_format}


def _dump_arg(a):
    if isinstance(a, fx.Node):
        return {"n": a.name}
    if a is None or isinstance(a, (bool, str)):
        return a
    if isinstance(a, int):
        return a
    if isinstance(a, float):
        return a if math.isfinite(a) else {"f": repr(a)}
    if isinstance(a, torch.device):
        return {"device": str(a)}
    for tag, cls in _ENUMS.items():
        if isinstance(a, cls):
            return {tag: str(a).replace("torch.", "")}
    if isinstance(a, tuple):
        return {"tuple": [_dump_arg(x) for x in a]}
    if isinstance(a, list):
        return [_dump_arg(x) for x in a]
    if isinstance(a, dict) and all(isinstance(k, str) for k in a):
        return {"dict": {k: _dump_arg(v) for k, v in a.items()}}
    if isinstance(a, slice):
        return {"slice": [_dump_arg(a.start), _dump_arg(a.stop), _dump_arg(a.step)]}
    raise Unsupported(f"argument of type {type(a).__name__}")


def _load_arg(a, env):
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    if isinstance(a, list):
        return [_load_arg(x, env) for x in a]
    if not isinstance(a, dict) or len(a) != 1:
        raise ValueError(f"unexpected argument {a!r}")
    ((tag, v),) = a.items()
    if tag == "n":
        return env[v]
    if tag == "tuple":
        return tuple(_load_arg(x, env) for x in v)
    if tag == "dict":
        return {k: _load_arg(x, env) for k, x in v.items()}
    if tag == "slice":
        return slice(*(_load_arg(x, env) for x in v))
    if tag == "f":
        if v not in ("inf", "-inf", "nan"):
            raise ValueError(f"unexpected float {v!r}")
        return float(v)
    if tag == "device":
        return torch.device(v)
    if tag in _ENUMS:
        out = getattr(torch, v, None)
        if not isinstance(out, _ENUMS[tag]):
            raise ValueError(f"unknown {tag} {v!r}")
        return out
    raise ValueError(f"unexpected argument tag {tag!r}")


# ------------------------------------------------------------------------------------ targets


def _dump_target(t):
    if isinstance(t, torch._ops.OpOverload):
        ns, name = t._schema.name.split("::")
        return {"op": [ns, name, t._overloadname or "default"]}
    if isinstance(t, torch._ops.HigherOrderOperator):  # e.g. export's wrap_with_autocast around rotary tables
        if getattr(torch.ops.higher_order, t.__name__, None) is not t:
            raise Unsupported(f"higher-order operator {t!r}")
        return {"hop": t.__name__}
    name = getattr(t, "__name__", "")
    for mod in (operator, math):
        if name and getattr(mod, name, None) is t:
            return {"py": [mod.__name__, name]}
    if name.startswith("sym_") and getattr(torch, name, None) is t:
        return {"py": ["torch", name]}
    raise Unsupported(f"call target {t!r}")


def _load_target(d):
    if not isinstance(d, dict) or len(d) != 1:
        raise ValueError(f"unexpected call target {d!r}")
    ((tag, v),) = d.items()
    if tag == "op":
        ns, name, overload = v
        packet = getattr(getattr(torch.ops, ns), name)
        op = getattr(packet, overload)
        if not isinstance(op, torch._ops.OpOverload):
            raise ValueError(f"{ns}::{name}.{overload} is not an operator")
        return op
    if tag == "hop":
        op = getattr(torch.ops.higher_order, v)
        if not isinstance(op, torch._ops.HigherOrderOperator):
            raise ValueError(f"{v!r} is not a higher-order operator")
        return op
    if tag == "py":
        mod, name = v
        if mod == "torch" and name.startswith("sym_"):
            return getattr(torch, name)
        if mod in ("operator", "math") and not name.startswith("_"):
            return getattr({"operator": operator, "math": math}[mod], name)
    raise ValueError(f"unexpected call target {d!r}")


# ---------------------------------------------------------------------------------- dump/load


def dump(gm, sources, live, params):
    """``(doc, constants)``: the JSON document of ``gm`` and the constant tensors it needs.

    ``sources``: attribute name -> the name of the tensor in ``live`` it aliases (or any other
    name for a constant the trace created); ``live``: the model's named tensors; ``params``: the
    attribute names that are weights (for the slice passes)."""
    consts = {}
    doc = _dump_graph(gm, sources, live, params, consts, "")
    doc["version"] = VERSION
    return doc, consts


def _dump_graph(gm, sources, live, params, consts, prefix):
    graph = gm.graph
    if type(graph._codegen) is not fx.graph.CodeGen:
        raise Unsupported("a graph with its own code generator")
    nodes, attrs = [], {}
    for n in graph.nodes:
        rec = {"op": n.op, "name": n.name}
        if n.op == "call_function":
            rec["target"] = _dump_target(n.target)
        elif n.op in ("placeholder", "output"):
            rec["target"] = str(n.target)
        elif n.op == "get_attr":
            flat = str(n.target)
            rec["target"] = flat
            if flat not in attrs:
                attrs[flat] = _dump_attr(gm, flat, sources, live, params, consts, prefix)
        else:
            raise Unsupported(f"{n.op} node {n.name}")
        rec["args"] = _dump_arg(n.args)
        rec["kwargs"] = _dump_arg(n.kwargs)["dict"]
        if n.type is not None:
            raise Unsupported(f"node {n.name} has a type annotation")
        if n.meta.get("val") is not None:
            rec["val"] = _dump_val(n.meta["val"])
        stack = n.meta.get("nn_module_stack")
        if stack is not None:
            rec["stack"] = [
                [str(k), str(p), c if isinstance(c, str) else f"{c.__module__}.{c.__qualname__}"]
                for k, (p, c) in stack.items()
            ]
        mark = n.meta.get("fxvene")
        if isinstance(mark, str):
            rec["fxvene"] = mark
        nodes.append(rec)
    return {"nodes": nodes, "attrs": attrs}


def _dump_attr(gm, flat, sources, live, params, consts, prefix):
    val = getattr(gm, flat)
    if isinstance(val, fx.GraphModule):  # the body of a higher-order operator
        return {"graph": _dump_graph(val, {}, live, set(), consts, prefix + flat + ".")}
    if not isinstance(val, torch.Tensor):
        raise Unsupported(f"attribute {flat} is a {type(val).__name__}")
    src = sources.get(flat)
    ref = live.get(src) if src is not None else None
    if ref is not None and ref.data_ptr() == val.data_ptr() and ref.shape == val.shape and ref.dtype == val.dtype:
        return {"model": src, "param": flat in params}
    if val.numel() > 65536:
        raise Unsupported(f"attribute {flat} is a large tensor that is not the model's")
    consts[prefix + flat] = val.detach().cpu().contiguous()
    return {"constant": prefix + flat, "param": flat in params}


def load(doc, constants, live, class_name):
    """The GraphModule of ``doc`` with ``live``'s tensors (and ``constants``) attached; raises
    ValueError / KeyError / TypeError on anything unexpected."""
    if doc.get("version") != VERSION:
        raise ValueError(f"graph format version {doc.get('version')!r}, expected {VERSION}")
    return _load_graph(doc, constants, live, class_name, _Shapes())


def _load_graph(doc, constants, live, class_name, shapes):
    root, params, sources = {}, set(), {}
    for flat, a in doc["attrs"].items():
        if not isinstance(flat, str) or not flat.isidentifier():
            raise ValueError(f"unexpected attribute name {flat!r}")
        if "model" in a:
            root[flat] = live[a["model"]].detach()
            sources[flat] = a["model"]
        elif "graph" in a:
            root[flat] = _load_graph(a["graph"], constants, live, "GraphModule", shapes)
        else:
            root[flat] = constants[a["constant"]]
        if a.get("param"):
            params.add(flat)
    graph = fx.Graph()
    env = {}
    ops = ("placeholder", "get_attr", "call_function", "output")
    for rec in doc["nodes"]:
        op = rec["op"]
        if op not in ops:
            raise ValueError(f"unexpected node op {op!r}")
        target = _load_target(rec["target"]) if op == "call_function" else rec["target"]
        if op == "get_attr" and target not in root:
            raise ValueError(f"get_attr of an unknown attribute {target!r}")
        if not isinstance(target, str) and op != "call_function":
            raise ValueError(f"unexpected {op} target {target!r}")
        args = _load_arg(rec["args"], env)
        kwargs = _load_arg({"dict": rec["kwargs"]}, env)
        node = graph.create_node(op, target, tuple(args) if isinstance(args, list) else args, kwargs, name=rec["name"])
        if node.name != rec["name"]:
            raise ValueError(f"node name {rec['name']!r} came back as {node.name!r}")
        if rec.get("val") is not None:
            node.meta["val"] = shapes.val(rec["val"])
        if "stack" in rec:
            node.meta["nn_module_stack"] = {k: (p, c) for k, p, c in rec["stack"]}
        if "fxvene" in rec:
            node.meta["fxvene"] = rec["fxvene"]
        env[node.name] = node
    graph.lint()
    gm = fx.GraphModule(root, graph, class_name=class_name)
    gm.meta["fxvene_param_attrs"] = frozenset(params)
    gm.meta["fxvene_attr_sources"] = sources
    return gm
