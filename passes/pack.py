"""Packing pass: let one batch row of a chunk step graph hold several sweep rows.

A sweep row that patches position ``p`` recomputes only positions ``p ..`` over the base run's
cached keys/values of ``0 .. p-1`` (the causal prefix). Rows of different lengths waste nothing
when several are laid end to end in one batch row (a *lane*): every lane attends over its base
example's cached keys/values (all positions) and over its own tokens, and an extra mask, fed at run
time, keeps each token to its own row (the cached positions before the row's start, and the row's
own tokens up to itself).

``pack_attention`` adds that mask to every attention of a segment of the chunk step graph: the
scores entering a softmax get ``+ fxv_pack_add`` (float, 0 or the dtype's minimum), an explicit
``scaled_dot_product_attention`` mask is combined with it (``& fxv_pack_keep`` for a boolean mask,
``+ fxv_pack_add`` for a float one). The graph's own mask stays: fed an all-ones attention mask it
is the causal mask of the lane (every token sees the cache and the lane's tokens up to itself),
which the extra mask only narrows.

A segment is packable when every attention in it is found: as many softmax/SDPA ops as there are
pairs of past keys/values concatenated with the new ones. Anything else raises ``PackError``
(the engine then keeps one group per start position).

Pure function: the input GraphModule is not modified.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .rewrite import copy_graph

_SOFTMAX = {torch.ops.aten.softmax.int, torch.ops.aten._softmax.default, torch.softmax, torch.nn.functional.softmax}
_SDPA = {torch.ops.aten.scaled_dot_product_attention.default, torch.nn.functional.scaled_dot_product_attention}
_CAT = {torch.ops.aten.cat.default, torch.cat}


class PackError(ValueError):
    """A segment's attention cannot be given the packing mask."""


def _past_cats(graph):
    """The ``cat([past_i, new], -2)`` nodes: one per cached key or value read in the graph."""
    out = []
    for n in graph.nodes:
        if n.op == "call_function" and n.target in _CAT and n.args and isinstance(n.args[0], (list, tuple)):
            first = n.args[0][0] if n.args[0] else None
            if isinstance(first, fx.Node) and first.op == "placeholder" and first.target.startswith("past_"):
                out.append(n)
    return out


def pack_attention(gm):
    """``gm`` (a segment of a chunk step graph) with the packing mask added to each attention, or
    ``gm`` unchanged when it has no attention. Returns ``(new_gm, used)``: ``used`` the set of mask
    placeholders the graph reads (``fxv_pack_add`` and/or ``fxv_pack_keep``)."""
    new = copy_graph(gm)
    graph = new.graph
    cats = _past_cats(graph)
    cores = [n for n in graph.nodes if n.op == "call_function" and (n.target in _SOFTMAX or n.target in _SDPA)]
    if not cats and not cores:
        return gm, set()
    if len(cats) != 2 * len(cores):
        raise PackError(f"{len(cats)} cached keys/values are read by {len(cores)} attention ops")
    phs = [n for n in graph.nodes if n.op == "placeholder"]
    made = {}

    def mask(name):
        if name not in made:
            with graph.inserting_after(phs[-1]):
                made[name] = graph.placeholder(name)
            made[name].meta["fxvene"] = "input"
        return made[name]

    for n in cores:
        if n.target in _SOFTMAX:
            x = n.args[0]
            with graph.inserting_before(n):
                y = graph.call_function(torch.ops.aten.add.Tensor, (x, mask("fxv_pack_add")))
            y.meta = dict(x.meta) if isinstance(x, fx.Node) else {}
            n.replace_input_with(x, y)
            continue
        m = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
        causal = n.args[5] if len(n.args) > 5 else n.kwargs.get("is_causal", False)
        if not isinstance(m, fx.Node) or causal:
            raise PackError(f"{n.name}: scaled_dot_product_attention without an explicit mask")
        val = m.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise PackError(f"{n.name}: the attention mask has no dtype metadata")
        with graph.inserting_before(n):
            if val.dtype == torch.bool:
                y = graph.call_function(torch.ops.aten.logical_and.default, (m, mask("fxv_pack_keep")))
            else:
                y = graph.call_function(torch.ops.aten.add.Tensor, (m, mask("fxv_pack_add")))
        if len(n.args) > 3:
            args = list(n.args)
            args[3] = y
            n.args = tuple(args)
        else:
            n.kwargs = {**n.kwargs, "attn_mask": y}
    graph.lint()
    new.recompile()
    return new, set(made)


__all__ = ["pack_attention", "PackError"]
