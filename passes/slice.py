"""Slice passes: cut a traced GraphModule into segments between *boundaries*.

A boundary is a position in the graph's node order. The *frontier* at a boundary is the set
of values computed before it and used at or after it. Its *heavy* part (tensors that depend
on a model parameter: the residual stream, an MLP activation, ...) is what a later run must
be given to start there; its *light* part (attention masks, rotary tables, sizes: functions
of the input ids / attention mask alone) is cheap and recomputed inside the segment.

:func:`segment` turns ``[start, stop)`` into a GraphModule whose heavy inputs at ``start``
are placeholders named ``fxv_in_<node>`` and whose outputs are the heavy frontier at
``stop`` (or the graph's outputs when ``stop`` is None). Everything before ``start`` that
only fed the heavy inputs is removed. This is how a sweep starts rows at the first layer they
change (layer-start reuse): the corrupted/base run's values at that boundary are cached and
fed in, and blocks below it are never recomputed.

Pure functions: the input GraphModule is not modified.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .rewrite import _copy


class SliceError(ValueError):
    """A graph cannot be cut where asked (an impure op keeps the cut part alive, ...)."""


def node_order(gm):
    return {n.name: i for i, n in enumerate(gm.graph.nodes)}


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
    (sizes read off heavy tensors), which :func:`segment` recomputes from shape stand-ins."""
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


def _drop_before(graph, order, start, heavy):
    """Erase every node before ``start`` the rest of the graph does not need, impure or not,
    keeping light in-place edits (mask fills) of values that are still needed."""
    nodes = list(graph.nodes)
    needed = set()

    def close(n):
        stack = [n]
        while stack:
            m = stack.pop()
            if m in needed:
                continue
            needed.add(m)
            stack.extend(m.all_input_nodes)

    for n in nodes:
        if n.op == "output" or (n.op != "placeholder" and order.get(n.name, start) >= start):
            close(n)
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if n in needed or n.op in ("placeholder", "get_attr") or order.get(n.name, start) >= start:
                continue
            if n.is_impure() and n.name not in heavy and any(a in needed for a in _view_bases(n.all_input_nodes)):
                close(n)
                changed = True
    for n in reversed(nodes):
        if n not in needed and n.op not in ("placeholder", "output") and order.get(n.name, start) < start:
            graph.erase_node(n)


def segment(gm, start=None, stop=None, prefix="fxv_in_"):
    """``gm`` restricted to ``[start, stop)``.

    Returns ``(segment_gm, input_names, output_names)``: ``input_names`` are the heavy frontier
    at ``start`` (the segment's placeholders are ``prefix + name``, after the original
    placeholders, which stay so that light values can be recomputed); ``output_names`` the
    heavy frontier at ``stop`` (the segment returns a tuple of them) or None when ``stop`` is
    None (the segment returns the graph's own outputs).
    """
    heavy = heavy_nodes(gm)
    ins, shape_vals = frontier(gm, start, heavy, with_shapes=True) if start else ([], [])
    outs = frontier(gm, stop, heavy) if stop is not None else None
    new = _copy(gm)
    graph = new.graph
    by_name = {n.name: n for n in graph.nodes}
    order = node_order(new)
    last_ph = None
    for n in graph.nodes:
        if n.op == "placeholder":
            last_ph = n
    repl = {}
    for name in ins:
        node = by_name[name]
        with graph.inserting_after(last_ph):
            ph = graph.placeholder(prefix + name)
        ph.meta = {k: v for k, v in node.meta.items() if k in ("val", "tensor_meta")}
        ph.meta["fxvene"] = "input"
        last_ph = ph
        # only the uses at or after the cut read the placeholder; what mutated the value before
        # the cut (in-place mask edits) is already in the cached value
        node.replace_all_uses_with(ph, delete_user_cb=lambda u: u.op == "output" or order.get(u.name, start) >= start)
        repl[name] = ph
    # sizes read off heavy tensors before the cut (GPT-2's ``input_shape + (hidden.size(-1),)``):
    # the shape query is pointed at a stand-in placeholder ``fxv_shape_<tensor>`` (fed with a
    # zero-stride tensor of the right shape at run time), so nothing heavy is recomputed
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
            ph_name = "fxv_shape_" + t.name
            if ph_name not in by_name:
                with graph.inserting_after(last_ph):
                    ph = graph.placeholder(ph_name)
                ph.meta = {k: v for k, v in t.meta.items() if k in ("val", "tensor_meta")}
                ph.meta["fxvene"] = "input"
                last_ph = ph
                by_name[ph_name] = ph
                shape_ins.append(t.name)
            n.replace_input_with(t, by_name[ph_name])
            continue
        for a in n.all_input_nodes:
            if a.name in heavy and a.op not in ("get_attr", "placeholder"):
                if _is_tensor(a) and _shape_query(n) is None:
                    raise SliceError(f"segment from node #{start}: the size {n.name!r} needs the tensor {a.name!r}")
                todo.append(a)
    out_node = next(n for n in graph.nodes if n.op == "output")
    if outs is not None:
        out_node.args = (tuple(repl.get(o, by_name[o]) for o in outs),)
        # everything at or after ``stop`` goes, impure or not
        for n in reversed(list(graph.nodes)):
            if n.op != "output" and order.get(n.name, -1) >= stop and not n.users:
                graph.erase_node(n)
    if start:
        _drop_before(graph, order, start, heavy)
    graph.eliminate_dead_code()
    if start:
        left = [n.name for n in graph.nodes
                if n.op not in ("placeholder", "get_attr") and n.name in heavy and _is_tensor(n)
                and order.get(n.name, start) < start]
        if left:
            raise SliceError(f"segment from node #{start}: {left[:5]} before the cut are still needed (impure ops?)")
    if outs is not None:
        left = [n.name for n in graph.nodes if n.op not in ("placeholder", "output") and order.get(n.name, -1) >= stop]
        if left:
            raise SliceError(f"segment to node #{stop}: nodes {left[:5]} after the cut are still alive")
    new.delete_all_unused_submodules()
    graph.lint()
    new.recompile()
    new.meta["fxvene_shape_inputs"] = shape_ins
    return new, ins, outs
