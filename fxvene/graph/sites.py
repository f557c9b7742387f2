"""Site resolution and the modules that rewritten graphs call at intervention sites.

A ``Site`` is where a (component, layer) lives in a traced graph: the fx node, the
port, the module path, and the view (a third of a fused QKV output, a split into heads).
``SiteOp`` is the ``call_module`` target the insert pass puts after a site node: it
gathers the units of the live tensor, calls the intervention, and scatters the result back
(functionally: the traced tensor is never written in place). ``Gather`` is the
expose pass's gather (source runs, Collect).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fxvene.graph.errors import clip, known
from fxvene.models import config_value, eval_dim, family_for
from fxvene.models.aliases import is_alias, place
from fxvene.passes.locate import PATTERNS, LocateError, is_tensor_node, module_input, module_output, normalize_path


@dataclass(frozen=True)
class Axes:
    """What a site's units index: ``pos`` is "seq" (the run's sequence), a fixed size, or None
    (unknown: left to the runtime check); ``heads`` the head count; ``width`` the last dim of
    one unit (None where it varies with the input or is unknown)."""

    pos: object
    heads: int | None
    width: int | None


@dataclass(frozen=True)
class Site:
    component: str
    layer: int
    node: str  # fx node name in the traced graph
    port: str  # "input" | "output"
    path: str  # module path (region)
    split3: int | None
    n_heads: int | None
    dim: int | None  # pyvene's embed_dim for one unit
    shape: tuple | None
    dtype: torch.dtype | None
    # the slot of a fused q/k/v output: its last dim viewed as (groups, per_group, width) and the slot
    # is per_group entries [start, stop) of every group (GPT-2's thirds: (1, 3, slot, slot + 1))
    fused: tuple | None = None  # (groups, per_group, start, stop)


def _parse_string_component(component):
    comp = component.strip()
    for port in ("output", "input"):
        if comp.endswith("." + port):
            return normalize_path(comp[: -len(port) - 1]), port
    raise ValueError(
        f"component {component!r}: a string component must be a module path ending in "
        "'.output' or '.input' (e.g. 'transformer.h[0].mlp.output')"
    )


def place_component(model, component, layer):
    """``(component, layer)``, where a TransformerLens hook name (``blocks.3.mlp.hook_post``) becomes the
    site it means in ``model``'s family (models/aliases.py): a component, or a module path ending in
    ``.input`` / ``.output``. Other spellings come back as given."""
    if not is_alias(component):
        return component, layer
    fam, prefix = family_for(model)
    return place(component, None if fam is None else fam.name, prefix or "")


def resolve_site(traced, model, component, layer, moe_key=None):
    """Resolve a pyvene component at ``layer`` to a ``Site`` of ``traced``'s graph."""
    if not isinstance(component, str):
        raise TypeError(f"component must be a str, got {type(component).__name__}")
    component, layer = place_component(model, component, layer)  # a TransformerLens name has its layer
    gm = traced.gm
    config = model.config
    fam, prefix = family_for(model)
    split3 = n_heads = dim = None
    if "." in component or "[" in component:
        path, port = _parse_string_component(component)
        if "%s" in path:
            path = path.replace("%s", str(layer), 1)
        try:
            model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"component {component!r}: model {type(model).__name__} has no module {path!r}") from None
    else:
        if fam is None:
            raise ValueError(
                f"model type {type(model).__name__} has no component map in fxvene.models; "
                f"use a string component such as 'model.layers[0].mlp.output' instead of {component!r}"
            )
        if component not in fam.components:
            if component in fam.missing:  # a derived map (models/derive.py) says what it looked for
                why = clip(fam.missing[component], 200)
                raise ValueError(f"component {component!r} of {type(model).__name__} (derived map): {why}")
            names = sorted(fam.components)
            raise ValueError(f"unknown component {component!r} for {type(model).__name__}; {known(component, names)}")
        n_layers = config_value(config, fam.n_layers)
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range for {type(model).__name__} with {n_layers} layers")
        spec = fam.components[component]
        path = prefix + spec.module.format(layer=layer)
        port = spec.port
        split3 = spec.split3
        if spec.heads is not None and spec.heads != "layout":
            n_heads = int(config_value(config, spec.heads) or config.num_attention_heads)
        dim = eval_dim(spec.dim, config)
        if spec.needs == "eager":
            impl = getattr(config, "_attn_implementation", "eager")
            if impl not in (None, "eager"):
                raise ValueError(
                    f"component {component!r} needs eager attention; the model uses {impl!r} "
                    "(load it with attn_implementation='eager')"
                )
    pattern = None if fam is None or component not in fam.components else fam.components[component].pattern
    try:
        if pattern is not None:
            node = PATTERNS[pattern](gm, path)
        else:
            node = module_output(gm, path) if port == "output" else module_input(gm, path)
    except LocateError as e:
        raise ValueError(
            f"component {component!r} at layer {layer} of {type(model).__name__} ({traced.frontend}): {e}"
        ) from None
    val = node.meta.get("val")
    shape = tuple(val.shape) if is_tensor_node(node) else None
    fused = None
    if split3 is not None:
        spec = fam.components[component]
        fused = fused_slot(
            spec, config, shape[-1] if shape else None, f"component {component!r} of {type(model).__name__}"
        )
        if spec.heads == "layout":
            n_heads = fused[0] * (fused[3] - fused[2])
        if dim is None and shape is not None:
            w = slot_width(fused, shape[-1])
            dim = w // n_heads if n_heads else w
    if dim is None and shape is not None:
        last = shape[-1]
        dim = int(last) if isinstance(last, int) else None
    return Site(
        component=component,
        layer=layer,
        node=node.name,
        port=port,
        path=path,
        split3=split3,
        n_heads=n_heads,
        dim=dim,
        shape=shape,
        dtype=getattr(val, "dtype", None),
        fused=fused,
    )


def fused_slot(spec, config, width, what):
    """``(groups, per_group, start, stop)`` of q/k/v slot ``spec.split3`` in a fused output ``width`` wide
    (see ``Component.fused``). The key/value head count is what the width leaves after the query heads."""
    slot = spec.split3
    if spec.fused is None:  # three equal thirds
        return (1, 3, slot, slot + 1)
    layout, heads_expr, hd_expr = spec.fused
    n_q, hd = eval_dim(heads_expr, config), eval_dim(hd_expr, config)
    if not isinstance(width, int) or not n_q or not hd or width % hd:
        raise ValueError(f"{what}: a fused q/k/v output {width} wide does not split into heads of {hd} ({hd_expr})")
    n_kv2 = width // hd - n_q
    if n_kv2 <= 0 or n_kv2 % 2:
        raise ValueError(
            f"{what}: a fused q/k/v output of {width // hd} heads of {hd} does not hold {n_q} query heads "
            "plus equal numbers of key and value heads"
        )
    n_kv = n_kv2 // 2
    if layout == "sizes":
        bounds = ((0, n_q), (n_q, n_q + n_kv), (n_q + n_kv, n_q + 2 * n_kv))
        return (1, n_q + 2 * n_kv) + bounds[slot]
    if layout == "grouped":
        if n_q % n_kv:
            raise ValueError(f"{what}: {n_q} query heads do not split into {n_kv} key/value groups")
        q = n_q // n_kv
        bounds = ((0, q), (q, q + 1), (q + 1, q + 2))
        return (n_kv, q + 2) + bounds[slot]
    raise ValueError(f"{what}: unknown fused layout {layout!r} (expected 'sizes' or 'grouped')")


def slot_width(fused, width):
    """Width of the slot ``fused`` (``Site.fused``) of an output ``width`` wide (``width`` as given if None)."""
    if fused is None or not isinstance(width, int):
        return width
    g, p, a, z = fused
    return g * (z - a) * (width // (g * p))


def view_columns(site, width):
    """The last-dim columns of ``site``'s tensor (``width`` wide) that its view reads, in view order: the
    q/k/v slot's columns head by head (a head's columns are a run of ``width_of_slot // n_heads``)."""
    if site.fused is None:
        return list(range(width))
    g, p, a, z = site.fused
    u = width // (g * p)
    return [(gi * p + pi) * u + c for gi in range(g) for pi in range(a, z) for c in range(u)]


def slot_columns(site, width):
    """The slot's columns as one slice when they are contiguous (one group), else None."""
    if site.fused is None:
        return slice(None)
    g, p, a, z = site.fused
    if g != 1:
        return None
    u = width // p
    return slice(a * u, z * u)


# ---------------------------------------------------------------------------------------
# views, gather and scatter (functional, autograd- and compile-friendly)


def slot_view(x, site):
    """The slot of a fused q/k/v output ``x`` (``x`` itself when the site has none), last dim flat."""
    if site.fused is None:
        return x
    g, p, a, z = site.fused
    if g == 1:
        u = x.shape[-1] // p
        return x[..., a * u : z * u]
    return x.unflatten(-1, (g, p, x.shape[-1] // (g * p)))[..., a:z, :].flatten(-3)


def _slot_write(x, site, v):
    """``x`` with its slot replaced by ``v`` (a new tensor)."""
    g, p, a, z = site.fused
    y = x.clone()
    if g == 1:
        u = x.shape[-1] // p
        y[..., a * u : z * u] = v
    else:
        y.unflatten(-1, (g, p, x.shape[-1] // (g * p)))[..., a:z, :] = v.unflatten(-1, (g, z - a, -1))
    return y


def _head_view(v, n_heads):
    """(b, s, D) -> (b, H, s, dh) as pyvene's head split."""
    b, s, D = v.shape
    return v.reshape(b, s, n_heads, D // n_heads).permute(0, 2, 1, 3)


def site_view(x, site):
    """The tensor pyvene's ``output_to_subcomponent`` gives: a q/k/v slot and/or heads (b, H, s, dh)."""
    v = slot_view(x, site)
    if site.n_heads is not None:
        return _head_view(v, site.n_heads)
    return v


def _bidx(b, device):
    return torch.arange(b, device=device).unsqueeze(1)


def _check(loc, size, what):
    if torch.compiler.is_compiling() or loc.numel() == 0:
        return
    hi, lo = int(loc.max()), int(loc.min())
    if hi >= size or lo < 0:
        bad = hi if hi >= size else lo
        raise ValueError(
            f"{what}: unit index {bad} is out of range for a dimension of size {size} (valid: 0..{size - 1})"
        )


def gather(x, site, unit, loc, what="unit_locations"):
    """Units of ``x`` at ``loc`` (None: the whole view)."""
    v = site_view(x, site)
    if loc is None:  # a copy: the graph may change x in place later (Falcon: ``mlp_output += attention_output``)
        return v.clone()
    if unit == "h.pos":
        _check(loc[0], v.shape[1], what + " (heads)")
        _check(loc[1], v.shape[2], what + " (positions)")
    else:
        _check(loc, v.shape[1], what)
    if unit == "h.pos":
        hl, pl = loc
        b = v.shape[0]
        bi = _bidx(b, v.device).unsqueeze(2)
        return v[bi, hl.unsqueeze(2), pl.unsqueeze(1)]  # (b, nh, np, dh)
    bi = _bidx(loc.shape[0], v.device)
    return v[bi, loc]  # pos: (b, n, d); h: (b, n, s, dh)


def scatter(x, site, unit, loc, new):
    """``x`` with the units at ``loc`` replaced by ``new`` (a new tensor)."""
    new = new.to(x.dtype)
    v = slot_view(x, site).clone(memory_format=torch.contiguous_format)
    t = _head_view(v, site.n_heads) if site.n_heads is not None else v  # a view of v: writes land in v
    if loc is None:
        t[...] = new
    elif unit == "h.pos":
        hl, pl = loc
        bi = _bidx(x.shape[0], x.device).unsqueeze(2)
        t[bi, hl.unsqueeze(2), pl.unsqueeze(1)] = new
    else:
        t[_bidx(loc.shape[0], x.device), loc] = new
    return v if site.fused is None else _slot_write(x, site, v)


# ---------------------------------------------------------------------------------------


def flattens(intervention):
    """Whether ``intervention`` sees its units flattened into the last dim (pyvene's distributed
    interventions: ``(b, n, d) -> (b, n*d)``, ``(b, h, s, d) -> (b, s, h*d)``)."""
    from fxvene.interventions import CollectIntervention, LocalistRepresentationIntervention

    if isinstance(intervention, (LocalistRepresentationIntervention, CollectIntervention)):
        return False
    return not getattr(intervention, "keep_last_dim", False)


def _flatten_mode(intervention, base_slice):
    if base_slice.dim() == 2 or not flattens(intervention):
        return None
    return base_slice.dim()


def do_intervention(intervention, base, source, subspaces, unit_is_whole=False, **kwargs):
    """pyvene's ``do_intervention``: flatten units for distributed interventions, call, unflatten."""
    from fxvene.interventions import InterventionOutput, LambdaIntervention

    if isinstance(intervention, LambdaIntervention):
        if subspaces is None:
            return intervention(base, source, **kwargs)
        return intervention(base, source, subspaces, **kwargs)
    mode = None if unit_is_whole else _flatten_mode(intervention, base)
    shape = base.shape
    if mode == 3:  # (b, n, d) -> (b, n*d)
        fb = base.reshape(shape[0], -1)
        fs = source.reshape(source.shape[0], -1) if source is not None else None
    elif mode == 4:  # (b, h, s, d) -> (b, s, h*d)
        fb = base.permute(0, 2, 1, 3).reshape(shape[0], shape[2], -1)
        fs = source.permute(0, 2, 1, 3).reshape(source.shape[0], source.shape[2], -1) if source is not None else None
    else:
        fb, fs = base, source
    out = intervention(fb, fs, subspaces, **kwargs)
    res = out.output if isinstance(out, InterventionOutput) else out
    if res is None:
        return None
    if mode == 3:
        res = res.reshape(shape[0], shape[1], -1)
    elif mode == 4:
        res = res.reshape(shape[0], shape[2], shape[1], -1).permute(0, 2, 1, 3)
    if isinstance(out, InterventionOutput):
        out.output = res
        return out
    return res


class SiteOp(nn.Module):
    """Gather -> intervene -> scatter at one site. Called as ``op(x, source, loc)``.

    Per-call non-tensor data (subspaces, extra kwargs) is set on ``self.call`` by the runtime
    before the forward; ``self.call`` is reset after it.
    """

    def __init__(self, key, site, unit, intervention):
        super().__init__()
        self.key = key
        self.site = site
        self.unit = unit
        self.intervention = intervention
        self.call = {}

    def forward(self, x, source=None, loc=None):
        from fxvene.interventions import InterventionOutput

        call = self.call
        if call.get("skip"):
            return x
        base = gather(x, self.site, self.unit, loc, f"unit_locations (base side) of {self.key}")
        if call.get("check_source_shape") and source is not None and loc is None and source.shape != base.shape:
            raise ValueError(
                f"intervention {self.key}: unit_locations is None, so the whole activation is replaced, but the "
                f"source activation has shape {tuple(source.shape)} and the base {tuple(base.shape)}; "
                "give unit_locations or sources of the same length"
            )
        out = do_intervention(
            self.intervention, base, source, call.get("subspaces"), unit_is_whole=loc is None, **call.get("kwargs", {})
        )
        if isinstance(out, InterventionOutput):
            sink = call.get("full_outputs")
            if sink is not None:
                sink.append(out)
            out = out.output
        if out is None:
            return x
        return scatter(x, self.site, self.unit, loc, out)


class Gather(nn.Module):
    """Expose the units of a site (for source runs and Collect)."""

    def __init__(self, site, unit, what="unit_locations"):
        super().__init__()
        self.site = site
        self.unit = unit
        self.what = what

    def forward(self, x, loc=None):
        return gather(x, self.site, self.unit, loc, self.what)
