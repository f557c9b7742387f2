"""Where is each component? Site rows and component maps of a traced model.

* ``component_table`` lists every component of a model's family (``fxvene.models``)
  at every layer (or one layer) with the node it resolves to. A component that does not
  resolve to exactly one node is listed with its candidates and the error.
* ``row_from_site`` / ``error_row`` make the ``SiteInfo`` rows that an
  IntervenableModel's site listing (``fxvene.api.views.sites``) is made of.
* ``format_table`` prints either as a plain text table.

Shapes come from the traced graph's metadata (``node.meta["val"]``, filled by shape
propagation on a small example input when the model was traced: batch 2, sequence 8).
Both frontends print concrete sizes on that input (``torch.export`` keeps batch and
sequence symbolic in the graph; their example values are printed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from fxvene.graph.errors import known
from fxvene.graph.sites import resolve_site
from fxvene.models import config_value, family_for
from fxvene.passes.locate import PATTERNS, LocateError, module_input, module_output

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
    """The shape of the view units are gathered from (fxvene.graph.sites.site_view), from the node's shape."""
    if shape is None or (split3 is None and n_heads is None):
        return shape
    *lead, last = shape
    if split3 is not None:
        from fxvene.graph.sites import slot_width

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


def dtype_name(val):
    dt = getattr(val, "dtype", None)
    return str(dt).replace("torch.", "") if dt is not None else None


# ---------------------------------------------------------------------------------- rows


def row_from_site(site, traced, **extra):
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
        dtype=dtype_name(node.meta.get("val")),
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
    from fxvene.graph.model_io import construction_inputs

    return tuple(construction_inputs(model))


def error_row(component, layer, traced, err, candidates, module=None, port=None, **extra):
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

    Returns a list of ``SiteInfo``, components in the family spec's order, layers ascending.
    Rows that did not resolve have ``error`` set and ``candidates`` listing the nodes found.
    """
    from fxvene.graph.tracing import trace

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    fam, prefix = family_for(model)
    if fam is None:
        raise ValueError(
            f"model: {type(model).__name__} has no component map in fxvene.models; pass a class "
            "`fxvene components --list` names"
        )
    n_layers = int(config_value(model.config, fam.n_layers))
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
            names = list(fam.components)
            raise ValueError(f"components: unknown {unknown} for {type(model).__name__}; {known(unknown[0], names)}")
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
                rows.append(error_row(comp, li, traced, e, cands, module=path, port=spec.port))
                continue
            rows.append(row_from_site(site, traced))
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
    """A plain text table of ``SiteInfo`` rows; unresolved rows get a footnote with candidates."""
    rows = list(rows)
    if columns is None:
        columns = SITE_COLUMNS if any(r.key is not None for r in rows) else TABLE_COLUMNS
    valid = {f.name for f in fields(SiteInfo)}
    bad = [c for c in columns if c not in valid]
    if bad:
        raise ValueError(f"columns: unknown {bad}; {known(bad[0], sorted(valid))}")
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
    n_layers = config_value(model.config, fam.n_layers) if fam is not None else None
    parts = [type(model).__name__]
    if fam is not None:
        parts.append(f"family {fam.name}, {n_layers} layers")
    if traced is not None:
        parts.append(f"frontend {traced.frontend}, {len(traced.gm.graph.nodes)} nodes")
    return " | ".join(parts)


__all__ = [
    "SiteInfo",
    "component_table",
    "format_table",
    "node_shape",
    "view_shape",
    "fmt_shape",
    "describe",
    "default_signature",
]
