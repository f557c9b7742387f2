"""Slice passes: cut a traced GraphModule into segments between *boundaries*.

A boundary is a position in the graph's node order. The *frontier* at a boundary is the set
of values computed before it and used at or after it. Its *heavy* part (tensors that depend
on a model parameter: the residual stream, an MLP activation, ...) is what a later run must
be given to start there; its *light* part (attention masks, rotary tables, sizes: functions
of the input ids / attention mask alone) is cheap and recomputed inside the segment.

``segment`` turns ``[start, stop)`` into a GraphModule whose heavy inputs at ``start``
are placeholders named ``fxv_in_<node>`` and whose outputs are the heavy frontier at
``stop`` (or the graph's outputs when ``stop`` is None). Everything before ``start`` that
only fed the heavy inputs is removed. This is how a sweep starts rows at the first layer they
change (layer-start reuse): the corrupted/base run's values at that boundary are cached and
fed in, and blocks below it are never recomputed.

Pure functions: the input GraphModule is not modified.
"""

from __future__ import annotations

import copy
import operator
import weakref

import torch
import torch.fx as fx

from .rewrite import _LazyGraphModule


class SliceError(ValueError):
    """A graph cannot be cut where asked (an impure op keeps the cut part alive, ...)."""


def node_order(gm):
    """``{node name: index}`` in graph order (computed once per graph state; do not modify it)."""
    graph = gm.graph
    state = _state(graph)
    hit = _ORDERS.get(gm)
    if hit is not None and hit[0] == state:
        return hit[1]
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    _ORDERS[gm] = (state, order)
    return order


def _state(graph):
    """What changes when a pass edits ``graph`` (a sweep cuts one graph dozens of times; each cut asks
    for the node order and the heavy values)."""
    return id(graph), len(graph.nodes), id(graph._root.prev), id(graph._root.next)


_ORDERS = weakref.WeakKeyDictionary()


def heavy_nodes(gm):
    """Names of the nodes whose value depends (transitively) on a parameter of ``gm``."""
    params = {name for name, _ in gm.named_parameters(remove_duplicate=False)}
    # graphs that hold their weights as plain attributes name them (generation's step graphs)
    params |= set(getattr(gm, "meta", {}).get("fxvene_param_attrs", ()))
    heavy = set()
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            if n.target in params:
                heavy.add(n.name)
            continue
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            if any(True for _ in mod.parameters()):
                heavy.add(n.name)
                continue
        if any(a.name in heavy for a in n.all_input_nodes):
            heavy.add(n.name)
    return heavy


def _is_tensor(n):
    return isinstance(n.meta.get("val"), torch.Tensor)


def frontier(gm, at, heavy=None, with_shapes=False):
    """Heavy tensor values computed before node index ``at`` and used at or after it (graph order).

    With ``with_shapes=True`` also returns the heavy *non-tensor* values crossing the boundary
    (sizes read off heavy tensors), which ``segment`` recomputes from shape stand-ins."""
    order = node_order(gm)
    shapes = []
    heavy = heavy_nodes(gm) if heavy is None else heavy
    out = []
    for n in gm.graph.nodes:
        i = order[n.name]
        if i >= at:
            break
        if n.op in ("placeholder", "get_attr") or n.name not in heavy:
            continue
        if any(order[u.name] >= at for u in n.users):
            if not _is_tensor(n):
                shapes.append(n.name)
                continue
            out.append(n.name)
    return (out, shapes) if with_shapes else out


_SHAPE_METHODS = {"size", "dim"}


def _shape_query(n):
    """The tensor argument of a node that reads only a tensor's shape, else None."""
    if n.op == "call_method" and n.target in _SHAPE_METHODS:
        return n.args[0]
    if n.op == "call_function":
        if n.target is getattr and len(n.args) > 1 and n.args[1] in ("shape", "ndim", "dtype", "device"):
            return n.args[0]
        if n.target in (torch.ops.aten.sym_size.int, torch.ops.aten.sym_size.default):
            return n.args[0]
    return None


def boundary_after(gm, node_name):
    """The boundary right after ``node_name``."""
    return node_order(gm)[node_name] + 1


_VIEW_METHODS = {"view", "expand", "transpose", "permute", "unsqueeze", "squeeze", "narrow", "select", "t"}


def _is_view(n):
    if n.op == "call_function":
        return bool(getattr(n.target, "is_view", False)) or n.target is operator.getitem
    return n.op == "call_method" and n.target in _VIEW_METHODS


def _view_bases(nodes):
    """``nodes`` and every tensor they are views of (an in-place fill of ``mask[..., :n]`` mutates ``mask``)."""
    out = []
    for n in nodes:
        while isinstance(n, fx.Node):
            out.append(n)
            n = n.args[0] if _is_view(n) and n.args else None
    return out


def segment(gm, start=None, stop=None, prefix="fxv_in_"):
    """``gm`` restricted to ``[start, stop)``.

    Returns ``(segment_gm, input_names, output_names)``: ``input_names`` are the heavy frontier
    at ``start`` (the segment's placeholders are ``prefix + name``, after the original
    placeholders, which stay so that light values can be recomputed); ``output_names`` the
    heavy frontier at ``stop`` (the segment returns a tuple of them) or None when ``stop`` is
    None (the segment returns the graph's own outputs).

    Only the nodes the segment keeps are copied (a sweep cuts a 12-layer graph into dozens of
    segments: copying the whole graph for each and erasing most of it cost seconds).
    """
    heavy, order = _analysis(gm)
    ins, shape_vals = frontier(gm, start, heavy, with_shapes=True) if start else ([], [])
    outs = frontier(gm, stop, heavy) if stop is not None else None
    nodes = list(gm.graph.nodes)
    by_name = {n.name: n for n in nodes}
    cut_ins = set(ins)

    # sizes read off heavy tensors before the cut (GPT-2's ``input_shape + (hidden.size(-1),)``):
    # the shape query reads a stand-in placeholder ``fxv_shape_<tensor>`` instead (fed with a
    # zero-stride tensor of the right shape at run time), so nothing heavy is recomputed
    shape_of = {}  # shape-query node -> the heavy tensor it reads (replaced by its stand-in)
    shape_ins = []
    todo = [by_name[v] for v in shape_vals]
    seen = set()
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        t = _shape_query(n)
        if t is not None and isinstance(t, fx.Node) and t.name in heavy and t.op != "placeholder":
            if t.name not in shape_ins:
                shape_ins.append(t.name)
            shape_of[n.name] = t.name
            continue
        for a in n.all_input_nodes:
            if a.name in heavy and a.op not in ("get_attr", "placeholder"):
                if _is_tensor(a) and _shape_query(n) is None:
                    raise SliceError(f"segment from node #{start}: the size {n.name!r} needs the tensor {a.name!r}")
                todo.append(a)

    def source(user, value):
        """The segment's placeholder ``user`` reads instead of ``value`` (a cut value at or after the
        cut, a shape stand-in for a shape query), or None."""
        if value.name in cut_ins and (user.op == "output" or order[user.name] >= start):
            return cut_ph[value.name]
        if shape_of.get(user.name) == value.name:
            return shape_ph[value.name]
        return None

    def inputs(n):
        return [
            a
            for a in n.all_input_nodes
            if not (
                (a.name in cut_ins and (n.op == "output" or order[n.name] >= start)) or shape_of.get(n.name) == a.name
            )
        ]

    out_node = nodes[-1]
    keep = _kept(
        nodes,
        order,
        start,
        stop,
        heavy,
        inputs,
        out_node if outs is None else None,
        [by_name[o] for o in outs if o not in cut_ins] if outs is not None else (),
    )

    graph = fx.Graph()
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    env, cut_ph, shape_ph = {}, {}, {}

    def add_inputs():
        for names, pre, phs in ((ins, prefix, cut_ph), (shape_ins, "fxv_shape_", shape_ph)):
            for name in names:
                ph = graph.placeholder(pre + name)
                ph.meta = {k: v for k, v in by_name[name].meta.items() if k in ("val", "tensor_meta")}
                ph.meta["fxvene"] = "input"
                phs[name] = ph

    last_ph = max((i for i, n in enumerate(nodes) if n.op == "placeholder"), default=-1)
    if last_ph < 0:
        add_inputs()
    for i, n in enumerate(nodes[:-1]):
        if n.name in keep:
            env[n.name] = graph.node_copy(n, lambda a, _n=n: source(_n, a) or env[a.name])
        if i == last_ph:
            add_inputs()
    if outs is not None:
        result = graph.output(tuple(cut_ph[o] if o in cut_ins else env[o] for o in outs), type_expr=out_node.type)
        result.meta = copy.copy(out_node.meta)
    else:
        graph.node_copy(out_node, lambda a: source(out_node, a) or env[a.name])
    new = _LazyGraphModule(gm, graph, class_name=type(gm).__name__)
    new.meta = dict(getattr(gm, "meta", {}))
    graph.eliminate_dead_code()  # after the module exists: call_module purity reads the owning module
    if start:
        left = [
            n.name
            for n in graph.nodes
            if n.op not in ("placeholder", "get_attr")
            and n.name in heavy
            and _is_tensor(n)
            and order.get(n.name, start) < start
        ]
        if left:
            raise SliceError(f"segment from node #{start}: {left[:5]} before the cut are still needed (impure ops?)")
    new.delete_all_unused_submodules()
    graph.lint()
    new.recompile()
    new.meta["fxvene_shape_inputs"] = shape_ins
    return new, ins, outs


def _kept(nodes, order, start, stop, heavy, inputs, out_node, out_values):
    """Names of the original nodes a segment copies (dead ones among them are removed afterwards):
    the placeholders; every node in ``[start, stop)``; before ``start`` only what those nodes (and
    the outputs) need, plus light in-place edits (mask fills) of values still needed."""
    keep = {n.name for n in nodes if n.op == "placeholder"}
    inside = [
        n
        for n in nodes
        if n.op not in ("placeholder", "output")
        and (not start or order[n.name] >= start)
        and (stop is None or order[n.name] < stop)
    ]
    keep.update(n.name for n in inside)
    if not start:
        return keep
    needed = set()

    def close(n):
        stack = [n]
        while stack:
            m = stack.pop()
            if m.name in needed:
                continue
            needed.add(m.name)
            stack.extend(inputs(m))

    for n in inside:
        close(n)
    if out_node is not None:
        close(out_node)
    for n in out_values:
        close(n)
    before = [n for n in nodes if n.op not in ("placeholder", "get_attr", "output") and order[n.name] < start]
    changed = True
    while changed:
        changed = False
        for n in before:
            if n.name in needed or n.name in heavy or not n.is_impure():
                continue
            if any(a.name in needed for a in _view_bases(inputs(n))):
                close(n)
                changed = True
    keep.update(n for n in needed if n in order)
    return keep


_ANALYSES = weakref.WeakKeyDictionary()


def _analysis(gm):
    """``(heavy node names, node order)`` of ``gm``, computed once per graph state (a sweep cuts one
    graph into dozens of segments)."""
    state = _state(gm.graph)
    hit = _ANALYSES.get(gm)
    if hit is not None and hit[0] == state:
        return hit[1], hit[2]
    heavy, order = heavy_nodes(gm), node_order(gm)
    _ANALYSES[gm] = (state, heavy, order)
    return heavy, order
