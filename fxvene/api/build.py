"""Building an IntervenableModel's interventions: keys (pyvene 0.1.8's and the pre-0.1.7 dotted
ones), the key-indexed intervention dict, and the checks of a representation that reads its
source at another site (``source_layer`` / ``source_component``, fxvene extension).

Split from ``fxvene.api.intervenable`` (which re-exports every name here).
"""

from __future__ import annotations

import torch.nn as nn

from fxvene.api import unit_checks as U
from fxvene.api.configuration import EXTENSION_FIELDS
from fxvene.graph.errors import clip
from fxvene.graph.sites import place_component, resolve_site


class _LegacyHandle:
    """Stands in for the hook handle of pyvene <= 0.1.6's ``(intervention, handle)`` pairs."""

    def remove(self):
        return None


class InterventionDict(nn.ModuleDict):
    """``nn.ModuleDict`` with pyvene 0.1.8 keys; the dotted pre-0.1.7 key
    (``layer.6.comp.block_output.unit.pos.nunit.1#0``) returns the legacy ``(intervention, handle)`` pair."""

    def __getitem__(self, key):
        if isinstance(key, str) and key not in self._modules and "." in key:
            legacy = getattr(self, "_legacy", {})
            if key in legacy:
                return (self._modules[legacy[key]], _LegacyHandle())
        return super().__getitem__(key)

    def __contains__(self, key):
        return key in self._modules or key in getattr(self, "_legacy", {})


def _representation_key(rep, counter):
    unit = rep.unit.replace(".", "_")
    if isinstance(rep.component, str) and "." in rep.component:
        base = f"comp_{rep.component.replace('.', '_')}_unit_{unit}_nunit_{rep.max_number_of_units}"
        legacy = f"comp.{rep.component}.unit.{rep.unit}.nunit.{rep.max_number_of_units}"
    else:
        base = f"layer_{rep.layer}_comp_{rep.component}_unit_{unit}_nunit_{rep.max_number_of_units}"
        legacy = f"layer.{rep.layer}.comp.{rep.component}.unit.{rep.unit}.nunit.{rep.max_number_of_units}"
    k = counter.get(base, 0)
    counter[base] = k + 1
    return f"{base}#{k}", f"{legacy}#{k}"


_UNITS = ("pos", "h", "h.pos", "t")


def placed(rep, model, i):
    """``rep`` with TransformerLens hook names (``component``, ``source_component``) replaced by the
    sites they mean in ``model``'s family; the config keeps the names as written."""
    comp, layer = place_component(model, rep.component, rep.layer)
    rep = rep._replace(component=comp, layer=layer)
    src = rep.source_component
    if isinstance(src, str):
        where, at = place_component(model, src, rep.source_layer)
        if where != src:
            if rep.source_layer not in (None, at):
                raise ValueError(
                    f"representations[{i}].source_component {src!r} names layer {at} but source_layer="
                    f"{rep.source_layer!r}; give source_layer={at} or None"
                )
            rep = rep._replace(source_component=where, source_layer=at)
    return rep


# ------------------------------------------------------------------ patching from a different site


def _source_where(rep):
    """``(component, layer)`` the source run is read at: ``source_component`` / ``source_layer``
    where given (fxvene extension), else the representation's own."""
    comp = rep.component if rep.source_component is None else rep.source_component
    layer = rep.layer if rep.source_layer is None else rep.source_layer
    return comp, layer


def _reads_elsewhere(rep):
    return _source_where(rep) != (rep.component, rep.layer)


def _cross_site(traced, model, rep, i, site, axes):
    """The source ``Site`` of a representation that reads its source at another site (None
    where it reads the site it writes); refuses a site that does not exist or whose units are
    not as wide as the target's."""
    for field in EXTENSION_FIELDS:
        v = getattr(rep, field)
        if field == "source_layer" and v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise TypeError(f"representations[{i}].source_layer must be an int or None, got {v!r}")
        if field == "source_component" and v is not None and not isinstance(v, str):
            raise TypeError(f"representations[{i}].source_component must be a str or None, got {v!r}")
    if not _reads_elsewhere(rep):
        return None
    comp, layer = _source_where(rep)
    if rep.unit == "t":
        raise ValueError(
            f"representations[{i}]: source_layer / source_component are not supported with unit 't' (time steps "
            "of a recurrent model); read the source at the site the intervention writes"
        )
    arg = "source_component" if rep.source_component is not None and comp != rep.component else "source_layer"
    try:
        src = resolve_site(traced, model, comp, layer)
    except (ValueError, TypeError) as e:
        if rep.source_layer is not None and str(e).startswith("layer "):  # out of range / not an int
            arg = "source_layer"
        raise type(e)(
            f"representations[{i}].{arg}: the source site (component {comp!r}, layer {layer}) cannot be read: "
            + clip(e, 160)
        ) from None
    src_axes = U.site_axes(src, traced, model)
    here, there = f"{rep.component!r} at layer {rep.layer}", f"{comp!r} at layer {layer}"
    if (src.n_heads is None) != (site.n_heads is None):
        raise ValueError(
            f"representations[{i}].{arg}: the target {here} is {'' if site.n_heads else 'not '}split into heads "
            f"but the source {there} is {'' if src.n_heads else 'not '}; unit {rep.unit!r} needs both sites alike"
        )

    def width(s, a):
        w = a.width if a.width is not None else (s.shape[-1] if s.shape and isinstance(s.shape[-1], int) else None)
        return s.dim if s.dim is not None and s.n_heads is None else w

    wt, ws = width(site, axes), width(src, src_axes)
    if (wt is not None and ws is not None and wt != ws) or axes.pos != src_axes.pos:
        raise ValueError(
            f"representations[{i}].{arg}: the source {there} has units of width {ws} ({src_axes.pos} positions), "
            f"the target {here} has units of width {wt} ({axes.pos} positions); a source is patched only into a "
            "site of the same width"
        )
    return src  # "t": time steps of a recurrent model (fxvene/graph/time_steps.py)


def _construction_signature(model):
    """The inputs the constructor traces with to resolve sites: ``input_ids`` where the model's
    forward takes them and it has input embeddings, else ``inputs_embeds`` (e.g. pyvene's MLP)."""
    from fxvene.graph.tracing import construction_inputs

    return construction_inputs(model)
