"""What an IntervenableModel's calls look like, without running them: its site table (``sites``,
``print_sites``) and the rewritten graphs a call runs (``rewritten_graph``, ``intervenable_diff``).

The tables and diffs themselves are ``fxvene.inspection``'s; this module reads the model's plan.
"""

from __future__ import annotations

import sys

from fxvene.inspection.diff import diff
from fxvene.inspection.tables import (
    SiteInfo,
    default_signature,
    describe,
    dtype_name,
    error_row,
    format_table,
    node_shape,
    row_from_site,
)


def sites(intervenable, signature=None):
    """The sites of ``intervenable``: one ``SiteInfo`` per intervention key, in key order.

    ``signature`` names the model inputs of the call the graph is traced for (default: the inputs
    the model was built with, ``default_signature``). A time-step site (unit ``t``) lists
    step 0's node in ``node``, every step's in ``steps`` and the stacked steps' shape
    ``(batch, steps, dim)``.
    """
    from fxvene.interventions import SkipIntervention

    if not hasattr(intervenable, "representations") or not hasattr(intervenable, "sorted_keys"):
        raise TypeError(f"intervenable must be an fxvene IntervenableModel, got {type(intervenable).__name__}")
    if signature is None:
        signature = default_signature(intervenable.model)
    traced = intervenable._traced(tuple(signature))
    rows = []
    for key in intervenable.sorted_keys:
        rep = intervenable.representations[key]
        iv = intervenable.interventions[key]
        extra = dict(unit=rep.unit, key=key, intervention=type(iv).__name__)
        try:
            if rep.unit == "t":
                rows.append(step_row(intervenable, traced, **extra))
                continue
            site = intervenable._site(traced, key)
        except ValueError as e:
            rows.append(error_row(rep.component, rep.layer, traced, e, (), **extra))
            continue
        if isinstance(iv, SkipIntervention) or key in getattr(intervenable, "_source_axes", {}):
            src = intervenable._site(traced, key, source_side=True)  # Skip, or a source read elsewhere
            if src.node != site.node:
                extra["source_node"] = src.node
        rows.append(row_from_site(site, traced, **extra))
    return rows


def step_row(intervenable, traced, **extra):
    """The row of a unit ``t`` site: step 0's node, every step's node, the stacked steps' shape."""
    from fxvene.graph import time_steps

    rep = intervenable.representations[extra["key"]]
    step_site = time_steps.resolve(traced, intervenable.model, rep.component, rep.layer)
    site = step_site.site
    by_name = {n.name: n for n in traced.gm.graph.nodes}
    shape = node_shape(by_name[step_site.nodes[0]])
    if shape is not None:
        shape = (shape[0], len(step_site.nodes), *shape[1:])
    return SiteInfo(
        component=site.component,
        layer=site.layer,
        node=site.node,
        module=site.path,
        port=site.port,
        shape=shape,
        dtype=dtype_name(by_name[site.node].meta.get("val")),
        frontend=traced.frontend,
        view=shape,
        dim=site.dim,
        steps=tuple(step_site.nodes),
        **extra,
    )


def print_sites(intervenable, file=None, signature=None):
    """Print the site listing of ``intervenable`` (to ``file``, default stdout)."""
    if signature is None:
        signature = default_signature(intervenable.model)
    rows = sites(intervenable, signature=signature)
    traced = intervenable._traced(tuple(signature))
    file = sys.stdout if file is None else file
    print(describe(intervenable.model, traced), file=file)
    print(format_table(rows), file=file)
    return rows


def _keys_arg(intervenable, keys, what):
    if keys is None:
        return None
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    bad = [k for k in keys if k not in intervenable.representations]
    if bad:
        raise ValueError(f"{what}: unknown intervention keys {bad}; keys: {intervenable.sorted_keys}")
    return [k for k in intervenable.sorted_keys if k in keys]


def default_plan(intervenable):
    """(active, collect) of a call that gives every group a source: what ``forward`` would build."""
    from fxvene.interventions import CollectIntervention

    collect = [k for k in intervenable.sorted_keys if isinstance(intervenable.interventions[k], CollectIntervention)]
    rest = [k for k in intervenable.sorted_keys if k not in collect]
    groups = list(intervenable._groups.values())
    if intervenable.mode == "serial" and len(groups) > 1:
        # serial: earlier groups act on the next group's source run; only the last group's
        # source-reading interventions (and source-less ones) act on the base
        last = set(groups[-1])
        rest = [k for k in rest if k in last or not intervenable._needs_source(k)]
    return rest, collect


def rewritten_graph(intervenable, plan="base", group=0, signature=None, active=None, collect=None):
    """The rewritten GraphModule ``intervenable`` runs for a call, without running it.

    ``plan="base"``: the intervened base forward; by default every intervention is active (as
    in a call that gives every group a source) and Collect interventions collect; ``active`` /
    ``collect`` (intervention keys) pick a subset. ``plan="source"``: the truncated source run
    of source group ``group`` (an index into the groups, in config order). Returns
    ``(traced, gm)``: the TracedGraph the rewrite started from and the rewritten GraphModule.
    ``signature``: the model inputs of the call (default: those the model was built with,
    ``fxvene.inspection.tables.default_signature``).
    """
    from fxvene.inspection.tables import default_signature
    from fxvene.interventions import CollectIntervention

    sig = tuple(default_signature(intervenable.model) if signature is None else signature)
    if plan == "base":
        d_active, d_collect = default_plan(intervenable)
        act = _keys_arg(intervenable, active, "active")
        col = _keys_arg(intervenable, collect, "collect")
        act = d_active if act is None else act
        col = d_collect if col is None else col
        for k in col:
            if not isinstance(intervenable.interventions[k], CollectIntervention):
                raise ValueError(f"collect: {k!r} is not a CollectIntervention")
        for k in act:
            if isinstance(intervenable.interventions[k], CollectIntervention):
                raise ValueError(f"active: {k!r} is a CollectIntervention; pass it in collect")
        return intervenable._base_graph(sig, tuple(act), tuple(col))
    if plan == "source":
        groups = list(intervenable._groups.values())
        if not isinstance(group, int) or isinstance(group, bool) or not 0 <= group < len(groups):
            raise ValueError(f"group must be an int in [0, {len(groups)}), got {group!r}")
        keys = [k for k in groups[group] if intervenable._reads_source(k)]
        if not keys:
            raise ValueError(f"group {group}: no intervention in it reads a source, so it has no source run")
        prior = tuple(groups[group - 1]) if intervenable.mode == "serial" and group > 0 else ()
        return intervenable._source_graph(sig, tuple(keys), prior)
    raise ValueError(f"plan must be 'base' or 'source', got {plan!r}")


def intervenable_diff(intervenable, plan="base", group=0, signature=None, active=None, collect=None):
    """``GraphDiff`` between the traced model graph and ``rewritten_graph``'s graph."""
    traced, gm = rewritten_graph(intervenable, plan, group, signature, active, collect)
    if plan == "base":
        title = f"{type(intervenable.model).__name__} ({traced.frontend}): intervened base forward"
        label = "intervened"
    else:
        title = f"{type(intervenable.model).__name__} ({traced.frontend}): source run of group {group} (truncated)"
        label = f"source[{group}]"
    return diff(traced.gm, gm, title=title, old_label=f"traced ({traced.frontend})", new_label=label)


__all__ = ["sites", "print_sites", "default_plan", "rewritten_graph", "intervenable_diff"]
