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


def frontier(gm, at, heavy=None):
    """Heavy tensor values computed before node index ``at`` and used at or after it (graph order)."""
    order = node_order(gm)
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
                raise SliceError(
                    f"boundary at node #{at}: the non-tensor value {n.name!r} depends on the model's parameters "
                    "and is used after the boundary; the graph cannot be cut there"
                )
            out.append(n.name)
    return out


def boundary_after(gm, node_name):
    """The boundary right after ``node_name``."""
    return node_order(gm)[node_name] + 1


def segment(gm, start=None, stop=None, prefix="fxv_in_"):
    """``gm`` restricted to ``[start, stop)``.

    Returns ``(segment_gm, input_names, output_names)``: ``input_names`` are the heavy frontier
    at ``start`` (the segment's placeholders are ``prefix + name``, after the original
    placeholders, which stay so that light values can be recomputed); ``output_names`` the
    heavy frontier at ``stop`` (the segment returns a tuple of them) or None when ``stop`` is
    None (the segment returns the graph's own outputs).
    """
    heavy = heavy_nodes(gm)
    ins = frontier(gm, start, heavy) if start else []
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
        node.replace_all_uses_with(ph)
        repl[name] = ph
    out_node = next(n for n in graph.nodes if n.op == "output")
    if outs is not None:
        out_node.args = (tuple(repl.get(o, by_name[o]) for o in outs),)
        # everything at or after ``stop`` goes, impure or not
        for n in reversed(list(graph.nodes)):
            if n.op != "output" and order.get(n.name, -1) >= stop and not n.users:
                graph.erase_node(n)
    graph.eliminate_dead_code()
    if start:
        left = [n.name for n in graph.nodes
                if n.op not in ("placeholder", "get_attr") and n.name in heavy and order.get(n.name, start) < start]
        if left:
            raise SliceError(f"segment from node #{start}: {left[:5]} before the cut are still needed (impure ops?)")
    if outs is not None:
        left = [n.name for n in graph.nodes if n.op not in ("placeholder", "output") and order.get(n.name, -1) >= stop]
        if left:
            raise SliceError(f"segment to node #{stop}: nodes {left[:5]} after the cut are still alive")
    new.delete_all_unused_submodules()
    graph.lint()
    new.recompile()
    return new, ins, outs
