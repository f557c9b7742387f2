"""Sweep passes (pure GraphModule -> GraphModule).

* ``readout`` makes an output compute only what a metric reads: the unembedding of the
  last position (``(b, vocab)`` instead of ``(b, seq, vocab)``), or only the logits of a
  few token ids given at call time (placeholder ``fxv_tokens``: ``(b, k)``).
* ``insert_selectors`` puts a per-row selector op after site nodes: the op is called as
  ``op(x, src, loc, on)`` with tensors fed through placeholders ``<name>_src``, ``<name>_loc``,
  ``<name>_on``, so row b of one batched forward applies sweep cell b (or nothing).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn

from .rewrite import copy_graph


class ReadoutError(ValueError):
    pass


def _linear_parts(gm, node):
    """(hidden_arg, weight_node_or_tensor_name, bias) of an unembedding node, or None."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.Linear):
            return node.args[0], f"{node.target}.weight", (f"{node.target}.bias" if mod.bias is not None else None)
        return None
    if node.op == "call_function":
        t = node.target
        if t in (torch.nn.functional.linear, torch.ops.aten.linear.default):
            w = node.args[1]
            b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            return node.args[0], w, b
    return None


_LAST_POSITION_OPS = {torch.ops.aten.select.int, torch.ops.aten.slice.Tensor}
_CASTS = {torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default}


_SCALED = {torch.ops.aten.div.Tensor, torch.ops.aten.mul.Tensor, torch.ops.aten.tanh.default}


def _is_cast(x):
    """A dtype cast of the logits (GPT-J: ``lm_head(h).to(torch.float32)``), or an elementwise op with
    constant operands (Gemma 2's soft cap ``tanh(l / c) * c``, Granite's ``l / logits_scaling``)."""
    if x.op == "call_function" and x.target in _SCALED:
        return not any(isinstance(a, fx.Node) for a in x.args[1:])
    return (x.op == "call_function" and x.target in _CASTS) or (x.op == "call_method" and x.target == "to")


_ADDS = {operator.add, torch.add, torch.ops.aten.add.Tensor}


def _bias_add(gm, node):
    """``(linear node, bias node)`` of ``linear(h, W) + b``, a separate bias parameter added after a
    bias-free unembedding (ESM's LM head), or None."""
    if not (isinstance(node, fx.Node) and node.op == "call_function" and node.target in _ADDS and len(node.args) == 2):
        return None
    lin, b = node.args
    if not (isinstance(lin, fx.Node) and isinstance(b, fx.Node) and b.op == "get_attr" and not node.kwargs):
        return None
    parts = _linear_parts(gm, lin)
    return (lin, b) if parts is not None and parts[2] is None else None


def _last_position_head(gm, node, position=-1):
    """The linear behind an output that is ``lm_head(...)`` under dtype casts and (a step graph's,
    ``position=-1``) last-position indexing ``select(slice(...), 1, -1)``; and the casts, outermost first."""
    x, casts = node, []
    while isinstance(x, fx.Node) and (
        (position == -1 and x.op == "call_function" and x.target in _LAST_POSITION_OPS) or _is_cast(x)
    ):
        if _is_cast(x):
            casts.append(x)
        x = x.args[0]
    ok = x is not node and isinstance(x, fx.Node) and _linear_parts(gm, x) is not None
    return (x, casts) if ok else (None, [])


def readout(gm, output_index=0, position=-1, tokens=False):
    """Replace output ``output_index`` (the logits of an LM head) by the logits at ``position``
    only: ``(b, vocab)``; with ``tokens=True`` by the logits of the token ids fed as
    ``fxv_tokens`` (a LongTensor ``(k,)``): ``(b, k)``. The full unembedding is removed.
    An output that already is the last position's logits (a step graph's) is accepted with
    ``position=-1``."""
    new = copy_graph(gm)
    graph = new.graph
    out = next(n for n in graph.nodes if n.op == "output")
    values = list(out.args[0])
    head = values[output_index]
    added = _bias_add(new, head)
    if added is not None:
        add_node = head
        head, bias_node = added
    parts = _linear_parts(new, head) if isinstance(head, fx.Node) else None
    casts = []
    if parts is None and isinstance(head, fx.Node):
        lin, casts = _last_position_head(new, head, position)
        if lin is not None:
            head = lin
            parts = _linear_parts(new, head)
    if parts is None:
        raise ReadoutError(
            f"readout: output {output_index} is not produced by a linear unembedding (got {getattr(head, 'op', head)!r} "
            f"{getattr(head, 'target', '')}); this model has no LM head fxvene can slice"
        )
    hidden, weight, bias = parts
    if added is not None:
        bias = bias_node
    with graph.inserting_before(head):
        sel = graph.call_function(torch.select, (hidden, 1, position))
        if not tokens:
            if head.op == "call_module":
                logits = graph.call_module(head.target, (sel,))
            else:
                logits = graph.call_function(head.target, (sel, *head.args[1:]), dict(head.kwargs))
            if added is not None:  # the separate bias, added as the graph adds it
                logits = graph.call_function(add_node.target, (logits, bias_node))
        else:
            last_ph = [n for n in graph.nodes if n.op == "placeholder"][-1]
            with graph.inserting_after(last_ph):
                tok = graph.placeholder("fxv_tokens")
            tok.meta["fxvene"] = "input"
            w = graph.get_attr(weight) if isinstance(weight, str) else weight
            w_sel = graph.call_function(torch.index_select, (w, 0, tok))
            b_sel = None
            if bias is not None:
                b = graph.get_attr(bias) if isinstance(bias, str) else bias
                b_sel = graph.call_function(torch.index_select, (b, 0, tok))
            logits = graph.call_function(torch.nn.functional.linear, (sel, w_sel, b_sel))
        for c in reversed(casts):  # the output's dtype casts, on the sliced logits
            logits = getattr(graph, c.op)(c.target, (logits, *c.args[1:]), dict(c.kwargs))
    logits.meta["fxvene"] = "readout"
    values[output_index] = logits
    out.args = (tuple(values),)
    graph.eliminate_dead_code()
    new.delete_all_unused_submodules()
    graph.lint()
    new.recompile()
    return new


def insert_selectors(gm, requests):
    """Insert per-row selector ops. ``requests``: dicts with ``name`` (submodule name),
    ``module`` (called as ``module(x, src, loc, on)``) and ``node`` (the site node name; a
    placeholder is fine). Ops at the same node chain in list order; every user of the node
    (except the chain) is rewired to the last op."""
    new = copy_graph(gm)
    graph = new.graph
    by_name = {n.name: n for n in graph.nodes}
    current = {}
    for req in requests:
        site = by_name[req["node"]]
        cur = current.get(req["node"], site)
        phs = []
        last_ph = [n for n in graph.nodes if n.op == "placeholder"][-1]
        for suffix in ("src", "loc", "on"):
            with graph.inserting_after(last_ph):
                ph = graph.placeholder(f"{req['name']}_{suffix}")
            ph.meta["fxvene"] = "input"
            phs.append(ph)
            last_ph = ph
        new.add_submodule(req["name"], req["module"])
        anchor = cur if cur.op != "placeholder" else [n for n in graph.nodes if n.op == "placeholder"][-1]
        with graph.inserting_after(anchor):
            node = graph.call_module(req["name"], (cur, *phs))
        node.meta["fxvene"] = "intervention"
        node.meta["val"] = site.meta.get("val")
        for u in list(cur.users):
            if u is not node:
                u.replace_input_with(cur, node)
        current[req["node"]] = node
    graph.lint()
    new.recompile()
    return new


__all__ = ["readout", "insert_selectors", "ReadoutError"]
