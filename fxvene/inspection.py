"""Where is each component? Site listings and component maps of a traced model.

* :func:`sites` lists the sites of an :class:`~fxvene.IntervenableModel`: for every
  intervention key, the component, layer, unit, the fx node it resolved to, the module
  path, the port, the node's shape and dtype and the tracing frontend.
* :func:`component_table` lists every component of a model's family (``fxvene.models``)
  at every layer (or one layer) with the node it resolves to. A component that does not
  resolve to exactly one node is listed with its candidates and the error.
* :func:`format_table` prints either as a plain text table.

Shapes come from the traced graph's metadata (``node.meta["val"]``, filled by shape
propagation on a small example input when the model was traced: batch 2, sequence 8).
Both frontends print concrete sizes on that input (``torch.export`` keeps batch and
sequence symbolic in the graph; their example values are printed).

This module is named ``inspection`` so that it does not shadow the standard library's
``inspect``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields

import torch

from fxvene.models import family_for
from fxvene.passes.locate import PATTERNS, LocateError, module_input, module_output
from fxvene.sites import resolve_site

DEFAULT_SIGNATURE = ("input_ids", "attention_mask")


@dataclass
class SiteInfo:
    """One row of a site listing or a component table."""

    component: str
    layer: int | None
    node: str | None  # fx node name in the traced graph (None when unresolved)
    module: str | None  # module path (the region the component lives in)
    port: str | None  # "input" | "output"
    shape: tuple | None  # the node's value shape (ints, or "b"/"s" for symbolic batch/sequence)
    dtype: str | None
    frontend: str
    view: tuple | None = None  # the tensor units are taken from: a fused-QKV third and/or heads (b, H, s, dh)
    n_heads: int | None = None
    dim: int | None = None  # pyvene's per-unit embed_dim
    unit: str | None = None
    key: str | None = None  # intervention key (site listings only)
    intervention: str | None = None  # intervention class name (site listings only)
    source_node: str | None = None  # the node a source run reads, where it differs (SkipIntervention)
    candidates: tuple = ()  # node names, when the component resolved to zero or several nodes
    error: str | None = None
    steps: tuple = ()  # unit "t": the node of each time step (``node`` is step 0's; ``shape`` the stacked steps')

    @property
    def ok(self):
        return self.error is None

    def as_dict(self):
        return asdict(self)


# ---------------------------------------------------------------------------------- shapes


def _fmt_dim(d):
    if isinstance(d, int):
        return d
    try:
        return int(d)  # a symbolic dim (export): its value on the example input
    except Exception:  # noqa: BLE001 - no hint: print the expression
        return str(d)


def node_shape(node):
    """``node``'s value shape on the example input (a tuple of ints), or None if not a tensor."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(_fmt_dim(d) for d in val.shape)


def _div(d, k):
    if isinstance(d, int):
        return d // k
    return f"{d}/{k}"


def view_shape(shape, split3, n_heads, fused=None):
    """The shape of the view units are gathered from (fxvene.sites.site_view), from the node's shape."""
    if shape is None or (split3 is None and n_heads is None):
        return shape
    *lead, last = shape
    if split3 is not None:
        from fxvene.sites import slot_width

        last = slot_width(fused, last) if fused is not None and isinstance(last, int) else _div(last, 3)
    if n_heads is None:
        return (*lead, last)
    if len(lead) != 2:
        return None
    b, s = lead
    return (b, n_heads, s, _div(last, n_heads))


def fmt_shape(shape):
    if shape is None:
        return "-"
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _dtype(val):
    dt = getattr(val, "dtype", None)
    return str(dt).replace("torch.", "") if dt is not None else None


# ---------------------------------------------------------------------------------- rows


def _row_from_site(site, traced, **extra):
    by_name = {n.name: n for n in traced.gm.graph.nodes}
    node = by_name[site.node]
    shape = node_shape(node)
    return SiteInfo(
        component=site.component,
        layer=site.layer,
        node=site.node,
        module=site.path,
        port=site.port,
        shape=shape,
        dtype=_dtype(node.meta.get("val")),
        frontend=traced.frontend,
        view=view_shape(shape, site.split3, site.n_heads, site.fused),
        n_heads=site.n_heads,
        dim=site.dim,
        **extra,
    )


def _locate_candidates(gm, spec, path, port):
    """Re-run the locate step alone to get the structured candidates of a failed resolution."""
    try:
        if spec is not None and spec.pattern is not None:
            PATTERNS[spec.pattern](gm, path)
        elif port == "output":
            module_output(gm, path)
        else:
            module_input(gm, path)
    except LocateError as e:
        return e.candidates
    except Exception:  # noqa: BLE001 - a path that is not even a module: no candidates
        return ()
    return ()


def default_signature(model):
    """The inputs a listing traces with when none are given: those the IntervenableModel was built
    with (``input_ids`` + ``attention_mask`` for a language model, ``inputs_embeds`` for pyvene's
    MLP and GRU, plus ``decoder_input_ids`` for T5)."""
    from fxvene.model_io import construction_inputs

    return tuple(construction_inputs(model))


def _step_row(intervenable, traced, **extra):
    """The row of a unit ``t`` site: step 0's node, every step's node, the stacked steps' shape."""
    from fxvene import time_steps

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
        dtype=_dtype(by_name[site.node].meta.get("val")),
        frontend=traced.frontend,
        view=shape,
        dim=site.dim,
        steps=tuple(step_site.nodes),
        **extra,
    )


def sites(intervenable, signature=None):
    """The sites of ``intervenable``: one :class:`SiteInfo` per intervention key, in key order.

    ``signature`` names the model inputs of the call the graph is traced for (default: the inputs
    the model was built with, :func:`default_signature`). A time-step site (unit ``t``) lists
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
                rows.append(_step_row(intervenable, traced, **extra))
                continue
            site = intervenable._site(traced, key)
        except ValueError as e:
            rows.append(_error_row(rep.component, rep.layer, traced, e, (), **extra))
            continue
        if isinstance(iv, SkipIntervention) or key in getattr(intervenable, "_source_axes", {}):
            src = intervenable._site(traced, key, source_side=True)  # Skip, or a source read elsewhere
            if src.node != site.node:
                extra["source_node"] = src.node
        rows.append(_row_from_site(site, traced, **extra))
    return rows


def _error_row(component, layer, traced, err, candidates, module=None, port=None, **extra):
    return SiteInfo(
        component=component,
        layer=layer,
        node=None,
        module=module,
        port=port,
        shape=None,
        dtype=None,
        frontend=traced.frontend,
        candidates=tuple(candidates),
        error=str(err).split("\n")[0],
        **extra,
    )


def component_table(model, tracer="auto", layer=None, components=None, signature=None):
    """Every component of ``model``'s family at every layer (or at ``layer``), resolved in its traced graph.

    Returns a list of :class:`SiteInfo`, components in the family spec's order, layers ascending.
    Rows that did not resolve have ``error`` set and ``candidates`` listing the nodes found.
    """
    from fxvene.tracing import trace

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    fam, prefix = family_for(model)
    if fam is None:
        from fxvene.models import supported_model_types

        raise ValueError(
            f"model: {type(model).__name__} has no component map in fxvene.models "
            f"(supported: {', '.join(supported_model_types())})"
        )
    n_layers = int(getattr(model.config, fam.n_layers))
    if layer is None:
        layers = list(range(n_layers))
    else:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int or None, got {type(layer).__name__}")
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range for {type(model).__name__} with {n_layers} layers")
        layers = [layer]
    if components is None:
        components = list(fam.components)
    else:
        unknown = [c for c in components if c not in fam.components]
        if unknown:
            raise ValueError(f"components: unknown {unknown} for {type(model).__name__}; known: {list(fam.components)}")
    if signature is None:
        signature = default_signature(model)
    traced = trace(model, tuple(signature), tracer=tracer)
    rows = []
    for comp in components:
        spec = fam.components[comp]
        for li in layers:
            try:
                site = resolve_site(traced, model, comp, li)
            except ValueError as e:
                path = prefix + spec.module.format(layer=li)
                cands = _locate_candidates(traced.gm, spec, path, spec.port)
                rows.append(_error_row(comp, li, traced, e, cands, module=path, port=spec.port))
                continue
            rows.append(_row_from_site(site, traced))
    return rows


# ---------------------------------------------------------------------------------- printing

SITE_COLUMNS = (
    "key",
    "component",
    "layer",
    "unit",
    "intervention",
    "node",
    "module",
    "port",
    "shape",
    "view",
    "dtype",
    "frontend",
)
TABLE_COLUMNS = ("component", "layer", "node", "module", "port", "shape", "view", "dtype")


def _cell(row, col):
    v = getattr(row, col)
    if col in ("shape", "view"):
        return fmt_shape(v) if v is not None else "-"
    if col == "node" and v is None:
        return "UNRESOLVED"
    if col == "node" and len(row.steps) > 1:
        return f"{v} .. {row.steps[-1]} ({len(row.steps)} steps)"
    if v is None:
        return "-"
    return str(v)


def format_table(rows, columns=None, notes=True):
    """A plain text table of :class:`SiteInfo` rows; unresolved rows get a footnote with candidates."""
    rows = list(rows)
    if columns is None:
        columns = SITE_COLUMNS if any(r.key is not None for r in rows) else TABLE_COLUMNS
    valid = {f.name for f in fields(SiteInfo)}
    bad = [c for c in columns if c not in valid]
    if bad:
        raise ValueError(f"columns: unknown {bad}; known: {sorted(valid)}")
    cells = [[_cell(r, c) for c in columns] for r in rows]
    footnotes = []
    for r, line in zip(rows, cells):
        if r.error is not None:
            footnotes.append(r)
            line.append(f"[{len(footnotes)}]")
        elif r.source_node is not None:
            line.append(f"source side: {r.source_node}")
        else:
            line.append("")
    header = [c for c in columns] + [""]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *cells)]
    out = []

    def emit(vals):
        out.append("  ".join(str(v).ljust(w) for v, w in zip(vals, widths)).rstrip())

    emit(header)
    emit(["-" * w for w in widths])
    for line in cells:
        emit(line)
    if notes and footnotes:
        out.append("")
        for i, r in enumerate(footnotes, 1):
            cand = ", ".join(r.candidates) if r.candidates else "none"
            out.append(f"[{i}] {r.component} layer {r.layer}: {r.error} (candidates: {cand})")
    return "\n".join(out)


def describe(model, traced=None):
    """One header line: the model class, family, layers and frontend."""
    fam, _ = family_for(model)
    n_layers = getattr(model.config, fam.n_layers, None) if fam is not None else None
    parts = [type(model).__name__]
    if fam is not None:
        parts.append(f"family {fam.name}, {n_layers} layers")
    if traced is not None:
        parts.append(f"frontend {traced.frontend}, {len(traced.gm.graph.nodes)} nodes")
    return " | ".join(parts)


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


__all__ = [
    "SiteInfo",
    "sites",
    "component_table",
    "format_table",
    "print_sites",
    "node_shape",
    "view_shape",
    "fmt_shape",
    "describe",
    "default_signature",
]
