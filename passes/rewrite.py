"""Rewrite passes: each takes a GraphModule and returns a new one (the input is not modified).

* ``insert_interventions`` puts a ``call_module`` node after a site node and rewires
  its users to the new value; per-call data (source slices, unit locations) arrive as new
  placeholders, so the rewritten graph is reusable across calls.
* ``expose`` adds site values (through an optional gather module) as extra outputs.
* ``truncate`` keeps only the outputs asked for and removes everything they do not need.

A *site* here is ``(node_name, port, region_path)``: the node found by ``locate``; for an
``input`` port only the users inside ``region_path`` are rewired (a forward pre-hook changes
only what the module sees), for an ``output`` port every user is.
"""

from __future__ import annotations

import copy

import torch.fx as fx

from .locate import module_paths, normalize_path

try:
    from torch.fx._lazy_graph_module import _LazyGraphModule
except ImportError:  # an older torch: plain GraphModules
    _LazyGraphModule = fx.GraphModule


def copy_graph(gm):
    # graph_copy copies node meta shallowly: deep-copying export's symbolic FakeTensor metadata
    # costs seconds per graph on a 12-layer model
    graph = fx.Graph()
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    # lazy: the Python code is generated when the module first runs, not for every intermediate copy
    # of a pass pipeline (codegen of a 12-layer graph is tens of ms; sweeps copy it ~80 times)
    new = _LazyGraphModule(gm, graph, class_name=type(gm).__name__)
    new.meta = dict(getattr(gm, "meta", {}))
    return new


def _last_placeholder(graph):
    last = None
    for n in graph.nodes:
        if n.op == "placeholder":
            last = n
    return last


def _nodes_by_name(graph):
    return {n.name: n for n in graph.nodes}


def _in_region(node, path):
    return path in module_paths(node)


def _hook_order(requests, users, index):
    """``requests`` as ``(list index, request)`` pairs, in the order pyvene's hooks would fire where
    several share a node (one tensor under several names): output hooks first, the innermost module's
    first (it returns first), then input pre-hooks in call order, an outer module's before an inner
    one's; requests of one hook keep list order. Nodes are independent, so only the order within a
    node matters."""

    def key(item):
        j, req = item
        region = normalize_path(req.get("region") or "")
        depth = region.count(".") + 1 if region else 0
        if req.get("port") != "input":
            return (0, -depth, j)
        called = min((index[u] for u in users[req["node"]] if _in_region(u, region)), default=len(index))
        return (1, called, depth, j)

    return sorted(enumerate(requests), key=key)


def insert_interventions(gm, requests):
    """Insert one ``call_module`` node per request.

    ``requests`` is a list of dicts with keys ``name`` (submodule name to register),
    ``module`` (an nn.Module called as ``module(x, *inputs)``), ``node`` (site node name),
    ``port`` ("input"/"output"), ``region`` (module path) and ``inputs`` (placeholder names
    for per-call data). A request with ``collect=True`` is a tap: its node's value is appended
    to the outputs (in list order) and no user is rewired.

    Requests at one node (several names of one tensor: block ``L``'s output and block ``L+1``'s
    input) act in the order pyvene's hooks fire (``_hook_order``), each on the value the
    earlier ones left, as pyvene's in-place writes do: a tap reads the value before every write
    that comes after it, whatever names they use. A write reaches the node's users in its scope
    (every user for an ``output`` port, those inside ``region`` for an ``input`` port), except those
    its optional ``keep`` lists by node name.
    """
    new = copy_graph(gm)
    graph = new.graph
    by_name = _nodes_by_name(graph)
    for req in requests:  # placeholders in list order: the call signature does not depend on hook order
        for ph_name in req.get("inputs", ()):
            if ph_name in by_name:
                continue
            with graph.inserting_after(_last_placeholder(graph)):
                ph = graph.placeholder(ph_name, default_value=None)
            ph.meta["fxvene"] = "input"
            by_name[ph_name] = ph
    # the graph's own users of each site, before anything is inserted (taps and ops are never rewired)
    users = {name: list(by_name[name].users) for name in {req["node"] for req in requests}}
    index = {n: i for i, n in enumerate(graph.nodes)}
    reads = {}  # (site node, user) -> the value that user reads now
    taps = {}
    for j, req in _hook_order(requests, users, index):
        site = by_name[req["node"]]
        region = normalize_path(req["region"]) if req["port"] == "input" else None
        keep = set(req.get("keep", ()))  # users this write must not reach (a tap listed before it, elsewhere)
        # an input-port write stays in its module, but the step stack of a time-step site (fxvene's own
        # node, which getters and Collects of that site read) sees it, as pyvene's in-place pre-hook does
        scope = [
            u
            for u in users[req["node"]]
            if (region is None or _in_region(u, region) or u.meta.get("fxvene") == "time_steps") and u.name not in keep
        ]
        cur = reads.get((site, scope[0]), site) if scope else site
        phs = [by_name[ph_name] for ph_name in req.get("inputs", ())]
        new.add_submodule(req["name"], req["module"])
        # a site that is a model input (inputs_embeds): after every placeholder, the per-call ones included
        with graph.inserting_after(cur if cur.op != "placeholder" else _last_placeholder(graph)):
            node = graph.call_module(req["name"], (cur, *phs))
        node.meta["nn_module_stack"] = {}
        if req.get("collect"):
            # a read-only tap: sees the writes before it at this node, changes nothing
            node.meta["fxvene"] = "collect"
            taps[j] = node
            continue
        node.meta["fxvene"] = "intervention"
        node.meta["val"] = site.meta.get("val")
        for u in scope:
            u.replace_input_with(reads.get((site, u), site), node)
            reads[(site, u)] = node
    if taps:
        out = next(n for n in graph.nodes if n.op == "output")
        out.args = (tuple(out.args[0]) + tuple(taps[j] for j in sorted(taps)),)
    graph.lint()
    new.recompile()
    return new


def expose(gm, requests):
    """Append values to the graph's output tuple.

    ``requests``: list of dicts with ``node`` (site node name), optional ``module`` + ``name``
    (a gather applied to the value, called as ``module(x, *inputs)``), optional ``inputs``
    (placeholder names). Returns the new GraphModule; new outputs follow the old ones, in order.
    """
    new = copy_graph(gm)
    graph = new.graph
    by_name = _nodes_by_name(graph)
    out = next(n for n in graph.nodes if n.op == "output")
    values = list(out.args[0])
    for req in requests:
        val = by_name[req["node"]]
        if req.get("module") is not None:
            phs = []
            for ph_name in req.get("inputs", ()):
                if ph_name not in by_name:
                    with graph.inserting_after(_last_placeholder(graph)):
                        by_name[ph_name] = graph.placeholder(ph_name, default_value=None)
                    by_name[ph_name].meta["fxvene"] = "input"
                phs.append(by_name[ph_name])
            new.add_submodule(req["name"], req["module"])
            # right after the value: a later in-place op on it (Falcon: ``mlp_output += ...``) must not show
            anchor = val if val.op != "placeholder" else _last_placeholder(graph)
            with graph.inserting_after(anchor):
                val = graph.call_module(req["name"], (val, *phs))
            val.meta["fxvene"] = "expose"
        values.append(val)
    out.args = (tuple(values),)
    graph.lint()
    new.recompile()
    return new


def _impure(node):
    """Side effects DCE must keep: in-place ops, asserts. Ops fx flags only as *random*
    (eval-mode dropout, scaled_dot_product_attention with dropout_p=0) are pure in these graphs."""
    return node.is_impure(impure_random=False)


def truncate(gm, keep):
    """Keep only the outputs at indices ``keep`` and drop every node they do not need."""
    new = copy_graph(gm)
    graph = new.graph
    out = next(n for n in graph.nodes if n.op == "output")
    values = list(out.args[0])
    out.args = (tuple(values[i] for i in keep),)
    graph.eliminate_dead_code(is_impure_node=_impure)
    # placeholders stay (the call signature is stable); unused submodules are dropped
    new.delete_all_unused_submodules()
    graph.lint()
    new.recompile()
    return new
