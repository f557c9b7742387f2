"""Path-patching pass (pure GraphModule -> GraphModule): rewire the edges into chosen receivers.

``rewire`` replaces the value a site node gives to its users by another value fed at call
time (placeholder ``<name>_value``), through a splice op ``module(x, value)`` that chooses which
units come from ``value`` (e.g. one head's query columns) and which stay ``x``. For an ``input``
port only the users inside ``region`` read the spliced value (the receiver module's input edge);
for an ``output`` port every user does. Nothing else changes: every other edge still carries the
original value, which is what ``fxvene.inspection.diff.diff`` shows as the rewired users.

Path patching (``fxvene.methods.path_patching``) uses it twice: to freeze every attention output to the
base run (senders from the source run) in the run that computes the receivers' inputs, and to feed
those inputs to the receivers only, in the final run.
"""

from __future__ import annotations

from .locate import module_paths, normalize_path
from .rewrite import _last_placeholder, copy_graph


def rewire(gm, requests):
    """``requests``: dicts with ``name`` (submodule name), ``module`` (the splice, called as
    ``module(x, value)``), ``node`` (the site node name), ``port`` (``"input"``/``"output"``) and
    ``region`` (the receiving module's path, for input ports). Requests at the same node chain in
    list order. The placeholder of request ``name`` is ``<name>_value``. Returns a new GraphModule."""
    new = copy_graph(gm)
    graph = new.graph
    by_name = {n.name: n for n in graph.nodes}
    current = {}
    for req in requests:
        site = by_name[req["node"]]
        cur = current.get(req["node"], site)
        with graph.inserting_after(_last_placeholder(graph)):
            ph = graph.placeholder(f"{req['name']}_value", default_value=None)
        ph.meta["fxvene"] = "input"
        new.add_submodule(req["name"], req["module"])
        anchor = cur if cur.op != "placeholder" else _last_placeholder(graph)
        with graph.inserting_after(anchor):
            node = graph.call_module(req["name"], (cur, ph))
        node.meta["fxvene"] = "path"
        node.meta["nn_module_stack"] = {}
        node.meta["val"] = site.meta.get("val")
        region = normalize_path(req["region"]) if req.get("port") == "input" else None
        for u in list(cur.users):
            if u is node or (region is not None and region not in module_paths(u)):
                continue
            u.replace_input_with(cur, node)
        current[req["node"]] = node
    graph.lint()
    new.recompile()
    return new


__all__ = ["rewire"]
