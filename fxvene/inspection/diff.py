"""Graph diffs: what a rewrite changed between the traced model graph and a rewritten graph.

``diff`` compares two GraphModules by node name (the rewrite passes copy the graph,
so every original node keeps its name) and returns a ``GraphDiff``:

* ``added``: nodes only in the rewritten graph (intervention and collect nodes, the new
  placeholders that carry sources and unit locations, expose/gather nodes);
* ``removed``: nodes only in the traced graph (dropped by truncation);
* ``rewired``: nodes in both whose inputs changed (a user that now reads the intervention
  node instead of the site node; the output node when outputs were added or dropped).

A diff renders as (a) text in the style of a unified diff over a per-node listing
(``GraphDiff.text``; ``GraphDiff.code_diff`` diffs ``gm.code`` itself), (b) Graphviz
DOT text with changed nodes highlighted and nodes grouped by module
(``GraphDiff.to_dot``; ``render_dot`` calls the ``dot`` program if installed), and
(c) a networkx ``DiGraph`` with ``status`` attributes on nodes and edges
(``GraphDiff.to_networkx``).

The graphs an IntervenableModel runs (the intervened base forward, or a truncated source run)
come from ``fxvene.api.views.rewritten_graph``; ``IntervenableModel.graph_diff`` diffs them.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx

from fxvene.passes.locate import module_paths

ADDED, REMOVED, REWIRED, UNCHANGED = "added", "removed", "rewired", "unchanged"
COLORS = {ADDED: "#b6e3a8", REMOVED: "#f4a9a8", REWIRED: "#ffc87a", UNCHANGED: "#ffffff"}
EDGE_COLORS = {ADDED: "#2e8b2e", REMOVED: "#c0392b", UNCHANGED: "#9a9a9a"}


# ---------------------------------------------------------------------------------- node text


def _target_str(node):
    t = node.target
    if node.op in ("call_module", "get_attr", "call_method", "placeholder", "output"):
        return str(t)
    if isinstance(t, torch._ops.OpOverload) or isinstance(t, torch._ops.OpOverloadPacket):
        return str(t)  # aten.add.Tensor
    try:
        name = fx.node._get_qualified_name(t)
    except Exception:  # noqa: BLE001
        name = getattr(t, "__name__", str(t))
    return name.replace("_operator.", "operator.")


def _fmt_arg(a, depth=0):
    if isinstance(a, fx.Node):
        return a.name
    if isinstance(a, (tuple, list)):
        inner = ", ".join(_fmt_arg(x, depth + 1) for x in a)
        if isinstance(a, tuple):
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        return f"[{inner}]"
    if isinstance(a, dict):
        return "{" + ", ".join(f"{k}: {_fmt_arg(v, depth + 1)}" for k, v in a.items()) + "}"
    r = repr(a)
    return r if len(r) <= 40 else r[:37] + "..."


def _call_args(node):
    parts = [_fmt_arg(a) for a in node.args]
    parts += [f"{k}={_fmt_arg(v)}" for k, v in node.kwargs.items()]
    return ", ".join(parts)


def _paths(node):
    # export (transformers 5) tags some graph-level nodes "_empty_nn_module_stack_from_metadata_hook"
    return [p for p in module_paths(node) if p and not p.startswith("_")]


def node_module(node):
    """The innermost module path of ``node`` ('' for graph-level nodes and inserted nodes; for the
    stack of a time-step site (unit ``t``), the module of the steps it stacks)."""
    paths = _paths(node)
    if not paths and node.meta.get("fxvene") == "time_steps" and node.all_input_nodes:
        paths = _paths(node.all_input_nodes[0])
    return paths[-1] if paths else ""


def _fxvene_info(node, gm):
    """For nodes the rewrite passes inserted: (kind, description)."""
    kind = node.meta.get("fxvene")
    if kind is None:
        return None, ""
    if node.op != "call_module":
        return kind, f"fxvene {kind}"
    try:
        mod = gm.get_submodule(node.target)
    except AttributeError:
        return kind, f"fxvene {kind}"
    site = getattr(mod, "site", None)
    where = f" at {site.component} L{site.layer} {site.port} of {site.path}" if site is not None else ""
    iv = getattr(mod, "intervention", None)
    what = f" {type(iv).__name__}" if iv is not None else ""
    return kind, f"fxvene {kind}{what}{where}"


def node_line(node, gm=None):
    """One readable line per node: ``name = target(args)  # module path``."""
    gm = gm if gm is not None else node.graph.owning_module
    if node.op == "placeholder":
        body = f"{node.name} = input {node.target!r}"
    elif node.op == "output":
        body = f"return {_fmt_arg(node.args[0])}"
    elif node.op == "get_attr":
        body = f"{node.name} = self.{node.target}"
    elif node.op == "call_module":
        body = f"{node.name} = self.{node.target}({_call_args(node)})"
    elif node.op == "call_method":
        recv, *rest = node.args
        args = ", ".join([_fmt_arg(a) for a in rest] + [f"{k}={_fmt_arg(v)}" for k, v in node.kwargs.items()])
        body = f"{node.name} = {_fmt_arg(recv)}.{node.target}({args})"
    else:
        body = f"{node.name} = {_target_str(node)}({_call_args(node)})"
    kind, desc = _fxvene_info(node, gm)
    note = desc if kind is not None else node_module(node)
    return f"{body}  # {note}" if note else body


def node_listing(gm):
    """The per-node listing ``GraphDiff.text`` diffs: one ``node_line`` per node."""
    return [node_line(n, gm) for n in gm.graph.nodes]


# ---------------------------------------------------------------------------------- the diff


def _inputs(node):
    return tuple(a.name for a in node.all_input_nodes)


def _edges(gm):
    return {(a.name, n.name) for n in gm.graph.nodes for a in n.all_input_nodes}


@dataclass
class GraphDiff:
    """What changed from ``old`` (the traced graph) to ``new`` (a rewritten graph)."""

    old: fx.GraphModule
    new: fx.GraphModule
    added: list = field(default_factory=list)  # node names only in new, in new's order
    removed: list = field(default_factory=list)  # node names only in old, in old's order
    rewired: dict = field(default_factory=dict)  # name -> (old input names, new input names)
    edges_added: set = field(default_factory=set)
    edges_removed: set = field(default_factory=set)
    title: str = ""
    old_label: str = "traced"
    new_label: str = "rewritten"

    def __post_init__(self):
        self._old_nodes = {n.name: n for n in self.old.graph.nodes}
        self._new_nodes = {n.name: n for n in self.new.graph.nodes}
        self._added_set = set(self.added)
        self._removed_set = set(self.removed)

    # -------------------------------------------------------------- queries

    def status(self, name):
        """added / removed / rewired / unchanged."""
        if name in self._added_set:
            return ADDED
        if name in self._removed_set:
            return REMOVED
        if name in self.rewired:
            return REWIRED
        return UNCHANGED

    def added_by_kind(self):
        """Added node names grouped by their ``meta['fxvene']`` kind (intervention, collect, expose, input)."""
        out = {}
        new_nodes = self._new_nodes
        for name in self.added:
            kind = new_nodes[name].meta.get("fxvene") or new_nodes[name].op
            out.setdefault(kind, []).append(name)
        return out

    @property
    def outputs_added(self):
        """Values the rewritten graph returns that the traced graph did not."""
        old_out = _output_values(self.old)
        return [v for v in _output_values(self.new) if v not in old_out]

    @property
    def outputs_removed(self):
        new_out = _output_values(self.new)
        return [v for v in _output_values(self.old) if v not in new_out]

    @property
    def sites(self):
        """Original nodes that an added node reads (the intervention / collection sites)."""
        new_nodes = self._new_nodes
        old = self._old_nodes
        out = []
        for name in self.added:
            for a in new_nodes[name].all_input_nodes:
                if a.name in old and a.op != "placeholder" and a.name not in out:
                    out.append(a.name)
        return out

    def changed(self):
        """Every node name whose status is not unchanged."""
        return list(self.added) + list(self.removed) + list(self.rewired)

    # -------------------------------------------------------------- renderings

    def summary(self):
        kinds = self.added_by_kind()
        kinds_s = ", ".join(f"{len(v)} {k}" for k, v in kinds.items())
        lines = []
        if self.title:
            lines.append(self.title)
        lines.append(
            f"nodes: {len(self.old.graph.nodes)} -> {len(self.new.graph.nodes)}  "
            f"(+{len(self.added)} added{': ' + kinds_s if kinds_s else ''}; "
            f"-{len(self.removed)} removed; ~{len(self.rewired)} rewired)"
        )
        if self.sites:
            lines.append("sites: " + ", ".join(f"{s} ({node_module(self._old_nodes[s]) or '-'})" for s in self.sites))
        rew = [n for n in self.rewired if self._new_nodes[n].op != "output"]
        if rew:
            lines.append("rewired users: " + ", ".join(rew))
        if self.outputs_added:
            lines.append("outputs added: " + ", ".join(self.outputs_added))
        if self.outputs_removed:
            lines.append(
                f"outputs removed: {len(self.outputs_removed)} ({', '.join(self.outputs_removed[:6])}"
                + (", ..." if len(self.outputs_removed) > 6 else "")
                + ")"
            )
        if self.removed:
            mods = []
            for name in self.removed:
                m = node_module(self._old_nodes[name]) or "(graph)"
                top = ".".join(m.split(".")[:3])
                if top not in mods:
                    mods.append(top)
            lines.append("removed from: " + ", ".join(mods[:12]) + (", ..." if len(mods) > 12 else ""))
        return "\n".join(lines)

    def text(self, context=3, max_run=None):
        """A unified diff of the per-node listings (see ``node_line``).

        ``context``: unchanged lines around each change. ``max_run``: shorten runs of more
        than this many consecutive added/removed lines (a truncated source graph removes
        hundreds of nodes) to their first and last few lines and a count.
        """
        if not isinstance(context, int) or context < 0:
            raise ValueError(f"context must be a non-negative int, got {context!r}")
        if max_run is not None and (not isinstance(max_run, int) or max_run < 4):
            raise ValueError(f"max_run must be None or an int >= 4, got {max_run!r}")
        a = node_listing(self.old)
        b = node_listing(self.new)
        lines = list(difflib.unified_diff(a, b, fromfile=self.old_label, tofile=self.new_label, n=context, lineterm=""))
        if max_run is not None:
            lines = _collapse_runs(lines, max_run)
        return "\n".join(lines)

    def code_diff(self, context=3):
        """A unified diff of the two GraphModules' generated Python code (``gm.code``)."""
        a = self.old.code.splitlines()
        b = self.new.code.splitlines()
        return "\n".join(
            difflib.unified_diff(a, b, fromfile=self.old_label, tofile=self.new_label, n=context, lineterm="")
        )

    def to_networkx(self):
        """The union of both graphs as a DiGraph.

        Node attributes: ``op``, ``target``, ``module`` (innermost module path), ``status``
        (added/removed/rewired/unchanged), ``fxvene`` (the kind of an inserted node or None),
        ``site`` (an original node an added node reads), ``shape``, ``in_old``, ``in_new``.
        Edge attributes: ``status`` (added/removed/unchanged).
        """
        g = nx.DiGraph(title=self.title)
        old_nodes, new_nodes = self._old_nodes, self._new_nodes
        sites = set(self.sites)
        for name in _union_order(self.old, self.new):
            n = new_nodes.get(name) or old_nodes[name]
            g.add_node(
                name,
                op=n.op,
                target=_target_str(n),
                module=node_module(n),
                status=self.status(name),
                fxvene=n.meta.get("fxvene"),
                site=name in sites,
                shape=_shape_str(n),
                in_old=name in old_nodes,
                in_new=name in new_nodes,
            )
        for e in _edges(self.old) | _edges(self.new):
            st = ADDED if e in self.edges_added else REMOVED if e in self.edges_removed else UNCHANGED
            g.add_edge(*e, status=st)
        return g

    def to_dot(
        self, neighbourhood=None, cluster_depth=3, title=None, max_label=48, legend=True, collapse_removed=False
    ):
        """Graphviz DOT text: added nodes green, removed red, rewired orange; nodes grouped by module.

        ``neighbourhood``: keep only nodes within this many (undirected) hops of a changed node
        (None: the whole graph). ``cluster_depth``: how many module levels nest as clusters
        (``transformer`` > ``transformer.h.3`` > ``transformer.h.3.attn`` for 3). ``legend``: add a
        small cluster explaining the colours. ``collapse_removed``: draw the removed nodes of each
        module cluster as one node ("N removed nodes"), which keeps truncated source graphs readable.
        """
        if neighbourhood is not None and (not isinstance(neighbourhood, int) or neighbourhood < 0):
            raise ValueError(f"neighbourhood must be None or a non-negative int, got {neighbourhood!r}")
        if not isinstance(cluster_depth, int) or cluster_depth < 0:
            raise ValueError(f"cluster_depth must be a non-negative int, got {cluster_depth!r}")
        g = self.to_networkx()
        keep = list(g.nodes)
        if neighbourhood is not None:
            seeds = set(self.changed()) | set(self.sites)
            und = g.to_undirected(as_view=True)
            near = set()
            for s in seeds:
                near |= set(nx.single_source_shortest_path_length(und, s, cutoff=neighbourhood))
            keep = [n for n in g.nodes if n in near]
        keep_set = set(keep)
        old_nodes, new_nodes = self._old_nodes, self._new_nodes

        def stack_of(name):
            n = new_nodes.get(name) or old_nodes[name]
            if n.meta.get("fxvene") in ("intervention", "collect", "expose") and n.all_input_nodes:
                n = n.all_input_nodes[0]  # sit next to the site it acts on
                n = old_nodes.get(n.name, n)
            return _paths(n)[:cluster_depth]

        # removed nodes drawn as one node per module cluster
        rep, n_rep = {}, {}
        if collapse_removed:
            for name in keep:
                if g.nodes[name]["status"] == REMOVED:
                    stack = stack_of(name)
                    r = f"removed::{stack[-1] if stack else ''}"
                    rep[name] = r
                    n_rep[r] = n_rep.get(r, 0) + 1

        # cluster tree: path -> (children paths, member node names)
        children, members, roots, top = {}, {}, [], []
        placed = set()
        for orig in keep:
            name = rep.get(orig, orig)  # a removed-group node sits where its first member would
            if name in placed:
                continue
            placed.add(name)
            stack = stack_of(orig)
            if not stack:
                top.append(name)
                continue
            if stack[0] not in roots:
                roots.append(stack[0])
            for parent, child in zip(stack, stack[1:]):
                children.setdefault(parent, [])
                if child not in children[parent]:
                    children[parent].append(child)
            members.setdefault(stack[-1], []).append(name)

        title = self.title if title is None else title
        out = ["digraph fxvene_diff {"]
        out.append(
            '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, newrank=true'
            + (f', label="{_esc(title)}", labelloc=t' if title else "")
            + "];"
        )
        out.append('  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=9, fillcolor="#ffffff"];')
        out.append('  edge [color="#9a9a9a", arrowsize=0.6];')
        counter = [0]

        def emit_node(name, indent):
            if name in n_rep:
                where = name.split("::", 1)[1] or "graph"
                out.append(
                    f'{indent}"{_esc(name)}" [label="{n_rep[name]} removed node{"s" if n_rep[name] != 1 else ""}\\n({_esc(where)})", '
                    f'fillcolor="{COLORS[REMOVED]}", style="rounded,filled,dashed"];'
                )
                return
            d = g.nodes[name]
            node = new_nodes.get(name) or old_nodes[name]
            kind, desc = _fxvene_info(node, self.new)
            second = d["target"]
            if kind == "input":
                second = "fxvene input"
            elif kind is not None:
                second = desc.replace("fxvene ", "", 1).split(" at ")[0] + f" @ {node.all_input_nodes[0].name}"
            label = f"{_esc(name)}\\n{_esc(_short(second, max_label))}"
            if d["shape"]:
                label += f"\\n{_esc(d['shape'])}"
            attrs = [f'label="{label}"', f'fillcolor="{COLORS[d["status"]]}"']
            tip = desc if kind is not None else (d["module"] or d["op"])
            attrs.append(f'tooltip="{_esc(tip)}"')
            if d["status"] == REMOVED:
                attrs.append('style="rounded,filled,dashed"')
            if d["site"]:
                attrs.append('penwidth=2.5, color="#1f5fbf"')
            if d["fxvene"] == "input" or d["op"] in ("placeholder", "output"):
                attrs.append("shape=ellipse")
            out.append(f'{indent}"{_esc(name)}" [{", ".join(attrs)}];')

        def emit_cluster(path, indent):
            counter[0] += 1
            out.append(f"{indent}subgraph cluster_{counter[0]} {{")
            out.append(f'{indent}  label="{_esc(path)}"; style="rounded"; color="#b0b0b0"; fontsize=10;')
            for name in members.get(path, []):
                emit_node(name, indent + "  ")
            for child in children.get(path, []):
                emit_cluster(child, indent + "  ")
            out.append(f"{indent}}}")

        if legend:
            out.append("  subgraph cluster_legend {")
            out.append('    label="legend"; style="rounded"; color="#b0b0b0"; fontsize=10;')
            for st in (ADDED, REMOVED, REWIRED):
                out.append(f'    "legend_{st}" [label="{st}", fillcolor="{COLORS[st]}"];')
            out.append('    "legend_site" [label="site", penwidth=2.5, color="#1f5fbf"];')
            out.append("  }")
        for name in top:
            emit_node(name, "  ")
        for root in roots:
            emit_cluster(root, "  ")
        edges = {}
        rank = {ADDED: 2, REMOVED: 1, UNCHANGED: 0}
        for a, b, d in g.edges(data=True):
            if a not in keep_set or b not in keep_set:
                continue
            a, b = rep.get(a, a), rep.get(b, b)
            if a == b:
                continue
            st = d["status"]
            if (a, b) not in edges or rank[st] > rank[edges[(a, b)]]:
                edges[(a, b)] = st
        for (a, b), st in edges.items():
            attrs = ""
            if st == ADDED:
                attrs = f' [color="{EDGE_COLORS[ADDED]}", penwidth=1.6]'
            elif st == REMOVED:
                attrs = f' [color="{EDGE_COLORS[REMOVED]}", style=dashed]'
            out.append(f'  "{_esc(a)}" -> "{_esc(b)}"{attrs};')
        out.append("}")
        return "\n".join(out) + "\n"

    def write_dot(self, path, **kwargs):
        text = self.to_dot(**kwargs)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def __str__(self):
        return self.summary()

    def __repr__(self):
        return f"<GraphDiff {self.title or 'graphs'}: +{len(self.added)} -{len(self.removed)} ~{len(self.rewired)}>"


def _output_values(gm):
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return [a.name for a in out.all_input_nodes]


def _union_order(old, new):
    """Node names of both graphs: new's order, with removed nodes placed after their old predecessor."""
    new_names = [n.name for n in new.graph.nodes]
    in_new = set(new_names)
    after = {}
    prev = None
    for n in old.graph.nodes:
        if n.name not in in_new:
            after.setdefault(prev, []).append(n.name)
        else:
            prev = n.name
    order = list(after.get(None, []))
    for name in new_names:
        order.append(name)
        order.extend(after.get(name, []))
    return order


def _shape_str(node):
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        dims = []
        for d in val.shape:
            try:
                dims.append(str(int(d)))
            except Exception:  # noqa: BLE001
                dims.append(str(d))
        return "(" + ", ".join(dims) + ")"
    return ""


def _esc(s):
    return str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _short(s, n):
    return s if len(s) <= n else s[: n - 3] + "..."


def _collapse_runs(lines, max_run):
    out, i = [], 0
    keep = 2
    while i < len(lines):
        line = lines[i]
        sign = line[:1]
        if sign in "+-" and not line.startswith(("+++", "---")):
            j = i
            while j < len(lines) and lines[j][:1] == sign and not lines[j].startswith(("+++", "---")):
                j += 1
            run = lines[i:j]
            if len(run) > max_run:
                what = "added" if sign == "+" else "removed"
                hidden = run[keep:-keep]
                mods = []
                for h in hidden:
                    if "  # " in h:
                        m = ".".join(h.rsplit("  # ", 1)[1].split(".")[:3])
                        if m and m not in mods:
                            mods.append(m)
                where = f" in {', '.join(mods[:8])}{', ...' if len(mods) > 8 else ''}" if mods else ""
                out.extend(run[:keep])
                out.append(f"{sign} ... {len(hidden)} more {what} lines{where} ...")
                out.extend(run[-keep:])
            else:
                out.extend(run)
            i = j
        else:
            out.append(line)
            i += 1
    return out


def diff(old, new, title="", old_label="traced", new_label="rewritten"):
    """Compare two GraphModules by node name; see ``GraphDiff``."""
    for name, gm in (("old", old), ("new", new)):
        if not isinstance(gm, fx.GraphModule):
            raise TypeError(f"{name} must be a torch.fx.GraphModule, got {type(gm).__name__}")
    old_nodes = {n.name: n for n in old.graph.nodes}
    new_nodes = {n.name: n for n in new.graph.nodes}
    added = [n for n in new_nodes if n not in old_nodes]
    removed = [n for n in old_nodes if n not in new_nodes]
    rewired = {}
    for name, n in new_nodes.items():
        o = old_nodes.get(name)
        if o is None:
            continue
        if _inputs(o) != _inputs(n) or o.op != n.op or (o.op != "output" and o.target != n.target):
            rewired[name] = (_inputs(o), _inputs(n))
    eo, en = _edges(old), _edges(new)
    return GraphDiff(
        old=old,
        new=new,
        added=added,
        removed=removed,
        rewired=rewired,
        edges_added=en - eo,
        edges_removed=eo - en,
        title=title,
        old_label=old_label,
        new_label=new_label,
    )


def dot_available():
    return shutil.which("dot") is not None


def render_dot(dot_text, path, fmt=None):
    """Render DOT text to ``path`` with Graphviz's ``dot`` (format from the extension unless ``fmt``)."""
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(
            "rendering needs Graphviz's 'dot' program, which is not installed (the DOT text needs nothing)"
        )
    fmt = fmt or os.path.splitext(path)[1].lstrip(".") or "svg"
    res = subprocess.run([exe, f"-T{fmt}", "-o", path], input=dot_text.encode(), capture_output=True)
    if res.returncode != 0:
        msg = res.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"dot failed: {msg[0] if msg else res.returncode}")
    return path


# ---------------------------------------------------------------------------------- intervenable side

DEFAULT_SIGNATURE = ("input_ids", "attention_mask")


__all__ = [
    "GraphDiff",
    "diff",
    "render_dot",
    "dot_available",
    "node_line",
    "node_listing",
    "node_module",
]
