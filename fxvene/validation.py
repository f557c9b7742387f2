"""Checks of everything a user passes to an IntervenableModel, done before any forward runs.

One place per concept: the model (:func:`check_model`), an intervention choice
(:func:`check_intervention_choice`), model inputs (:func:`check_inputs`, also used by
``generate`` and the sweeps), unit locations and subspaces for one call (:func:`check_call`).
Every failure is a ``ValueError`` or ``TypeError`` that names the argument, what was given and
what was expected; nothing is changed before it is raised.
"""
from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from fxvene import locations as L
from fxvene.tracing import TracingError

INPUT_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "token_type_ids", "position_ids")
_ID_KEYS = ("input_ids", "token_type_ids", "position_ids")


class UnsupportedModelError(TracingError, ValueError):
    """No frontend can trace the model: a ``TracingError`` and, as a bad argument, a ``ValueError``."""


def _supported():
    from fxvene.models import supported_model_types

    return ", ".join(supported_model_types())


def _shape(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


# ------------------------------------------------------------------------------------ the model


def _is_abstract(component):
    return isinstance(component, str) and "." not in component and "[" not in component


def check_model(model, representations):
    """Before tracing: ``model`` is a Hugging Face-style model (an ``nn.Module`` with a
    ``config``), and abstract components (``"block_output"``) name a family fxvene maps."""
    from fxvene.models import family_for

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a Hugging Face model (torch.nn.Module with a .config), got {type(model).__name__}; "
            f"fxvene maps components for: {_supported()}"
        )
    if getattr(model, "config", None) is None:
        raise TypeError(
            f"model: {type(model).__name__} has no .config, so it is not a Hugging Face model fxvene can wrap. "
            f"Supported architectures (component names such as 'block_output'): {_supported()}; any other "
            "traceable transformers model works with string components ('model.layers[0].mlp.output')"
        )
    fam, _ = family_for(model)
    if fam is None:
        for i, rep in enumerate(representations):
            if _is_abstract(rep.component):
                raise ValueError(
                    f"representations[{i}].component={rep.component!r}: model type {type(model).__name__} has no "
                    f"component map in fxvene.models (supported: {_supported()}); use a string component such "
                    "as 'model.layers[0].mlp.output' instead"
                )
    if not any(p.numel() for p in model.parameters()):
        raise ValueError(f"model: {type(model).__name__} has no parameters; expected a Hugging Face model")


def unsupported(model, err):
    """The error for a model no frontend could trace (``err``: the tracer's report)."""
    return UnsupportedModelError(
        f"model: {err} Supported architectures: {_supported()} (other transformers models need to be "
        "traceable by torch.fx or torch.export)"
    )


# ------------------------------------------------------------------------------------ interventions


def _intervention_bases():
    from fxvene import interventions as I

    return (I.Intervention, I.LambdaIntervention, I.LocalistRepresentationIntervention,
            I.DistributedRepresentationIntervention)


def _builtin_names():
    from fxvene import interventions as I

    return sorted(n for n in dir(I) if n.endswith("Intervention") and isinstance(getattr(I, n), type)
                  and issubclass(getattr(I, n), nn.Module))


def _resolve_name(name, what):
    from fxvene import interventions as I
    from fxvene.basic_utils import get_type_from_string

    s = name.strip()
    if s.startswith("<class '") and s.endswith("'>"):
        s = s[len("<class '"):-len("'>")]
    try:
        if "." in s:
            return get_type_from_string(s)
        if s in _builtin_names():
            return getattr(I, s)
    except ValueError:
        pass
    raise ValueError(f"{what}={name!r} names no intervention class; built-in ones: {', '.join(_builtin_names())}")


def check_intervention_type(itype, what):
    """``intervention_type``: an Intervention class (or a built-in's name), or a function that
    builds one (pyvene calls it with the representation's fields). Returns the class/function."""
    if isinstance(itype, str):
        itype = _resolve_name(itype, what)
    if isinstance(itype, type):
        if not issubclass(itype, _intervention_bases()):
            raise TypeError(
                f"{what}={itype.__name__}: not an intervention class; expected a subclass of fxvene.Intervention "
                "(e.g. pv.VanillaIntervention) or a function"
            )
        return itype
    if isinstance(itype, nn.Module):
        raise TypeError(
            f"{what}: got an instance of {type(itype).__name__}; intervention_type takes a class "
            "(pass an instance as intervention=...)"
        )
    if isinstance(itype, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)) or (
        callable(itype) and not isinstance(itype, (int, float, bool))
    ):
        return itype
    raise TypeError(
        f"{what}={itype!r} ({type(itype).__name__}): expected an intervention class such as pv.VanillaIntervention"
    )


def check_intervention(iv, what):
    """``intervention``: an Intervention instance or a plain function ``f(base, source)``."""
    if isinstance(iv, types.FunctionType):
        return iv
    if isinstance(iv, type):
        raise TypeError(
            f"{what}: got the class {iv.__name__}; intervention takes an instance (or pass intervention_type="
            f"{iv.__name__})"
        )
    if isinstance(iv, nn.Module) and not isinstance(iv, _intervention_bases()):
        raise TypeError(
            f"{what}: {type(iv).__name__} is a plain nn.Module, not an intervention; subclass "
            "fxvene.Intervention (forward(base, source, subspaces)) or pass a function f(base, source)"
        )
    if not isinstance(iv, nn.Module):
        raise TypeError(f"{what}={iv!r} ({type(iv).__name__}): expected an Intervention instance or a function")
    return iv


def check_built(iv, itype, what):
    """What ``intervention_type(**fields)`` returned."""
    if isinstance(iv, types.FunctionType):
        return iv
    if not isinstance(iv, _intervention_bases()):
        name = getattr(itype, "__name__", repr(itype))
        raise TypeError(f"{what}: {name}(...) returned {type(iv).__name__}, not an intervention or a function")
    return iv


# ------------------------------------------------------------------------------------ inputs


def check_inputs(inputs, what, vocab_size=None, need=None):
    """A dict of model inputs (a tokenizer's output) -> (dict without None values, signature).

    ``input_ids`` (integer, (batch, seq), ids in the vocabulary) or ``inputs_embeds``
    (floating, (batch, seq, ...)); ``attention_mask``, ``token_type_ids`` of the same
    (batch, seq); ``position_ids`` (batch or 1, seq). Batch and sequence must not be empty.
    """
    if not (isinstance(inputs, Mapping) or (hasattr(inputs, "keys") and hasattr(inputs, "__getitem__"))):
        raise TypeError(
            f"{what} must be a dict of model inputs (e.g. a tokenizer's output), got {type(inputs).__name__}"
        )
    d = {k: inputs[k] for k in inputs.keys() if inputs[k] is not None}
    unknown = [k for k in d if k not in INPUT_KEYS]
    if unknown:
        raise ValueError(f"{what}: unsupported model inputs {unknown}; fxvene accepts {INPUT_KEYS}")
    for k, v in d.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what}[{k!r}] must be a torch.Tensor, got {type(v).__name__}")
    lead = "input_ids" if "input_ids" in d else "inputs_embeds" if "inputs_embeds" in d else None
    if lead is None or (need is not None and lead != need):
        raise ValueError(f"{what} needs {need!r}" if need else f"{what} needs 'input_ids' or 'inputs_embeds'")
    if "input_ids" in d and "inputs_embeds" in d:
        raise ValueError(f"{what}: give either 'input_ids' or 'inputs_embeds', not both")
    t = d[lead]
    if lead == "input_ids":
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{what}['input_ids'] must hold integer token ids, got dtype {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{what}['input_ids'] must be a (batch, seq) tensor, got shape {_shape(t)}")
    else:
        if not t.dtype.is_floating_point:
            raise TypeError(f"{what}['inputs_embeds'] must be a floating tensor, got dtype {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{what}['inputs_embeds'] must be a batched tensor (batch, seq, ...), got shape {_shape(t)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what}[{lead!r}] is empty (shape {_shape(t)}); expected at least one example and one token")
    bs = tuple(t.shape[:2])
    for k in ("attention_mask", "token_type_ids"):
        if k in d and tuple(d[k].shape) != bs:
            raise ValueError(f"{what}[{k!r}] has shape {_shape(d[k])}, expected {bs} like {what}[{lead!r}]")
    if "position_ids" in d:
        p = d["position_ids"]
        if p.dim() != 2 or p.shape[1] != bs[1] or p.shape[0] not in (1, bs[0]):
            raise ValueError(f"{what}['position_ids'] has shape {_shape(p)}, expected ({bs[0]} or 1, {bs[1]})")
    for k in _ID_KEYS[1:]:
        if k in d and (d[k].dtype.is_floating_point or d[k].dtype == torch.bool):
            raise TypeError(f"{what}[{k!r}] must be an integer tensor, got dtype {d[k].dtype}")
    if "attention_mask" in d and d["attention_mask"].dtype.is_complex:
        raise TypeError(f"{what}['attention_mask'] must be an integer, bool or float tensor")
    if lead == "input_ids" and vocab_size is not None:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what}['input_ids'] holds token id {bad}, outside the model's vocabulary [0, {vocab_size})"
            )
    if "attention_mask" not in d:
        d["attention_mask"] = torch.ones(bs, dtype=torch.long, device=t.device)
    sig = tuple(k for k in INPUT_KEYS if k in d)
    return d, sig


def lead_tensor(d):
    return d["input_ids"] if "input_ids" in d else d["inputs_embeds"]


# ------------------------------------------------------------------------------------ sites


@dataclass(frozen=True)
class Axes:
    """What a site's units index: ``pos`` is "seq" (the run's sequence), a fixed size, or None
    (unknown: left to the runtime check); ``heads`` the head count; ``width`` the last dim of
    one unit (None where it varies with the input or is unknown)."""

    pos: object
    heads: int | None
    width: int | None


def _example_seq(traced):
    for n in traced.gm.graph.nodes:
        if n.op == "placeholder" and n.name in ("input_ids", "inputs_embeds"):
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() >= 2:
                return val.shape[1]
    return None


def site_axes(site, traced, model):
    """The :class:`Axes` of ``site`` (a :class:`fxvene.sites.Site`) in ``traced``."""
    from fxvene.models import family_for

    shape = site.shape
    last = shape[-1] if shape else None
    last = last if isinstance(last, int) else None
    if site.n_heads is not None:
        slots = 3 if site.split3 is not None else 1
        return Axes("seq", site.n_heads, last // (slots * site.n_heads) if last else None)
    if shape is None or len(shape) < 2:
        return Axes(None, None, None)
    fam, _ = family_for(model)
    spec = fam.components.get(site.component) if fam is not None and _is_abstract(site.component) else None
    if spec is not None:
        if spec.pattern is not None:  # attention probabilities (b, H, s, s): units are heads, width is seq
            return Axes(shape[1] if isinstance(shape[1], int) else None, None, None)
        width = last // 3 if (last and site.split3 is not None) else last
        if len(shape) < 3:  # (batch, dim): a "unit" is a column, so the width is the unit count
            return Axes(width, None, None)
        return Axes("seq", None, width)
    ex = _example_seq(traced)

    def seqlike(d):
        return (d == ex) if isinstance(d, int) and isinstance(ex, int) else (not isinstance(d, int) and str(d) == str(ex))

    d1 = shape[1]
    pos = "seq" if len(shape) >= 3 and seqlike(d1) else (d1 if isinstance(d1, int) and not seqlike(d1) else None)
    width = last if last is not None and not seqlike(last) and len(shape) >= 3 else None
    return Axes(pos, None, width)


# ------------------------------------------------------------------------------------ one call


def _flattens(iv):
    from fxvene.sites import flattens

    return flattens(iv)


def _int(x):
    if isinstance(x, torch.Tensor):
        return int(x) if x.numel() == 1 else None
    return int(x) if isinstance(x, int) else None


def _forward_owner(iv):
    """The class whose ``forward`` ``iv`` runs, if it is one of fxvene's own; else None."""
    for cls in type(iv).__mro__:
        if "forward" in cls.__dict__:
            return cls.__name__ if cls.__module__.startswith("fxvene.") else None
    return None


# built-in interventions whose forward takes no subspaces (pyvene silently ignores them)
_NO_SUBSPACES = ("BoundlessRotatedSpaceIntervention", "SigmoidMaskRotatedSpaceIntervention",
                 "SigmoidMaskIntervention", "NoiseIntervention", "AutoencoderIntervention")


def _check_range(t, size, kind, what, where):
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise ValueError(f"{what}: {kind} {lo} is negative; {kind}s count from 0 (expected 0..{size - 1 if size else '?'})")
    if size is not None and hi >= size:
        raise ValueError(f"{what}: {kind} {hi} is out of range: {where} has {size} {kind}s (valid: 0..{size - 1})")


def check_index(t, unit, axes, seq, what, where):
    """Bounds of one side's index tensor(s) (from :func:`fxvene.locations.to_index`)."""
    if t is None:
        return
    if unit == "h.pos":
        _check_range(t[0], axes.heads, "head", what, "the component")
        _check_range(t[1], seq, "position", what, where)
    elif unit == "h":
        _check_range(t, axes.heads, "head", what, "the component")
    else:
        size = seq if axes.pos == "seq" else axes.pos
        _check_range(t, size, "position" if axes.pos == "seq" else "unit index", what, where)


def _n_units(t, unit):
    if t is None:
        return None
    return t[0].shape[1] if unit == "h.pos" else t.shape[1]


def _units_label(t, unit):
    if unit == "h.pos":
        return f"{t[0].shape[1]} heads x {t[1].shape[1]} positions"
    return f"{t.shape[1]} {'heads' if unit == 'h' else 'units'}"


def seen_width(iv, rep, axes, t):
    """The last dim of the tensor ``iv`` is called with (None: unknown)."""
    if axes.width is None:
        return None
    if t is None or not _flattens(iv):
        return axes.width
    return _n_units(t, rep.unit) * axes.width


def check_width(iv, rep, axes, t, key):
    """Interventions whose weights fix their width (trainable, rotated-space, noise) must see a
    tensor of that width: ``embed_dim`` = component dim x ``max_number_of_units``."""
    E = _int(getattr(iv, "embed_dim", None))
    W = seen_width(iv, rep, axes, t)
    if E is None or W is None or W == E:
        return W
    from fxvene import interventions as I

    name = type(iv).__name__
    flat = _flattens(iv) and t is not None
    owner = _forward_owner(iv)
    if owner == "NoiseIntervention":
        k = _int(getattr(iv, "interchange_dim", None)) or E
        if min(k, W) == min(k, E):
            return W
    elif not (flat or isinstance(iv, I.TrainableIntervention) or isinstance(iv, I.DistributedRepresentationIntervention)):
        return W  # a swap without weights acts on any width
    nunit = rep.max_number_of_units
    if flat:
        n = _n_units(t, rep.unit)
        raise ValueError(
            f"unit_locations of {key}: {name} is a distributed intervention built for max_number_of_units={nunit} "
            f"(width {E} = {nunit} x {axes.width}), but this call gives it {_units_label(t, rep.unit)} "
            f"(width {W}); give {nunit} per example or build it with max_number_of_units={n}"
        )
    raise ValueError(
        f"max_number_of_units={nunit} of {key}: {name} was built for width {E} = {nunit} x {axes.width}, but it "
        f"acts on one unit at a time (width {W}); build it with max_number_of_units=1"
    )


def _subspace_bound(iv, width):
    """Largest subspace index + 1 for a built-in intervention (None: unknown)."""
    owner = _forward_owner(iv)
    part = getattr(iv, "subspace_partition", None)
    if part is not None:
        return len(part), "subspace_partition entries"
    if owner == "LowRankRotatedSpaceIntervention":
        return int(iv.rotate_layer.weight.shape[-1]), "low_rank_dimension"
    if owner == "JumpReLUAutoencoderIntervention":
        return int(iv.W_enc.shape[-1]), "latent width"
    if owner == "PCARotatedSpaceIntervention":
        return int(iv.pca_components.shape[0]), "PCA components"
    return width, "dimensions"


def check_subspaces(sub, iv, key, batch, width):
    """``subspaces`` entry of one intervention: per-example lists of indices inside the
    intervention's dimension. Custom interventions and functions take anything (pyvene passes
    it through as metadata)."""
    if sub is None:
        return
    owner = _forward_owner(iv)
    if owner is None or owner == "LambdaIntervention":
        return
    name = type(iv).__name__
    if owner in _NO_SUBSPACES:
        raise ValueError(
            f"subspaces: given for {key}, but {name} takes no subspaces (pyvene ignores them silently); "
            "pass subspaces=None, or None for this intervention in a per-intervention list"
        )
    rows = sub.tolist() if isinstance(sub, torch.Tensor) else sub
    if not isinstance(rows, (list, tuple)) or not rows or L.list_depth(rows) != 2:
        raise ValueError(
            f"subspaces of {key}: expected one list of subspace indices per example (depth 2, e.g. [[0, 1]] * batch), "
            f"got {sub!r}"
        )
    if len(rows) not in (1, batch):
        raise ValueError(f"subspaces of {key}: {len(rows)} per-example lists for a batch of {batch}")
    bound, what = _subspace_bound(iv, width)
    for r in rows:
        for v in r:
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"subspaces of {key}: indices must be ints, got {v!r}")
            if v < 0:
                raise ValueError(f"subspaces of {key}: index {v} is negative; expected 0..{bound - 1 if bound else '?'}")
            if bound is not None and v >= bound:
                raise ValueError(
                    f"subspaces of {key}: index {v} is out of range: {name} has {bound} {what} (valid: 0..{bound - 1})"
                )


def _check_pairing(st, bt, unit, batch, flat, key):
    """A built-in intervention takes one source unit per base unit (pyvene also broadcasts a
    single source unit over a batch of one)."""
    counts = lambda t: (t[0].shape[1], t[1].shape[1]) if unit == "h.pos" else (t.shape[1],)  # noqa: E731
    cs, cb = counts(st), counts(bt)
    if cs == cb or (not flat and batch == 1 and all(c == 1 for c in cs)):
        return
    raise ValueError(
        f"unit_locations of {key}: the source side gives {_units_label(st, unit)} and the base side "
        f"{_units_label(bt, unit)}; each base unit takes one source unit"
    )


def serial_locations(locs, groups, keys):
    """Serial-mode ``{"source_i->X": (src, base)}`` -> per-key (src_locs, base_locs, targets):
    group i's keys read ``sources[i]`` at ``src`` and write into X (``"base"`` or
    ``"source_j"``) at ``base``."""
    n = len(keys)
    src_locs, base_locs, targets = [None] * n, [None] * n, [None] * n
    for dk, (s_side, b_side) in locs.items():
        left, _, right = dk.partition("->")
        try:
            gi = int(left.replace("source_", ""))
        except ValueError:
            raise ValueError(f"unit_locations: bad serial key {dk!r}; expected 'source_i->source_j' or 'source_i->base'") from None
        if not 0 <= gi < len(groups):
            raise ValueError(f"unit_locations: {dk!r} names group {gi} of {len(groups)}")
        tgt = "base"
        if right != "base":
            try:
                tgt = int(right.replace("source_", ""))
            except ValueError:
                raise ValueError(f"unit_locations: bad serial key {dk!r}; the target is 'base' or 'source_j'") from None
            if not 0 <= tgt < len(groups):
                raise ValueError(f"unit_locations: {dk!r} names source {tgt} of {len(groups)}")
        for j, key in enumerate(groups[gi][1]):
            i = keys.index(key)
            src_locs[i] = s_side[j]
            base_locs[i] = b_side[j]
            targets[i] = tgt
    return src_locs, base_locs, targets


def check_call(im, base_in, sources, locs, subs, srcreps):
    """Everything about one call that can be checked without running it: each source's inputs
    and batch, every unit location against the sequence / head count, unit counts against
    ``max_number_of_units`` for fixed-width interventions, and subspaces. Returns the checked
    source inputs (None where a group has no source)."""
    from fxvene.interventions import CollectIntervention

    lead = lead_tensor(base_in)
    batch, seq = lead.shape[0], lead.shape[1]
    device = lead.device
    vocab = im._vocab_size()
    src_in = []
    for g, s in enumerate(sources):
        if s is None:
            src_in.append(None)
            continue
        d, _ = check_inputs(s, f"sources[{g}]", vocab)
        if lead_tensor(d).shape[0] != batch:
            raise ValueError(f"sources[{g}]: batch size {lead_tensor(d).shape[0]} but the base has {batch}")
        src_in.append(d)
    group_of = {k: gi for gi, (_, ks) in enumerate(im._groups.items()) for k in ks}
    keys = im.sorted_keys
    if im.mode == "parallel":
        src_locs, base_locs = locs["sources->base"]
        targets = ["base"] * len(keys)
    else:
        src_locs, base_locs, targets = serial_locations(locs, list(im._groups.items()), keys)
    for i, key in enumerate(keys):
        iv, rep, axes = im.interventions[key], im.representations[key], im._axes[key]
        unit = rep.unit
        tgt = targets[i]
        tseq, where = (seq, "the base") if tgt in (None, "base") else (
            (lead_tensor(src_in[tgt]).shape[1], f"sources[{tgt}]") if src_in[tgt] is not None else (None, None))
        bw = f"unit_locations (base side) of {key}"
        bt = L.to_index(base_locs[i], unit, batch, device, bw)
        if tseq is not None:
            check_index(bt, unit, axes, tseq, bw, where)
        width = check_width(iv, rep, axes, bt, key)
        src = src_in[group_of[key]]
        reads = (not isinstance(iv, CollectIntervention) and im._needs_source(key) and srcreps is None
                 and src is not None)
        if reads and src_locs[i] is None and bt is not None:
            raise ValueError(f"unit_locations: intervention {i} ({key}) reads a source but no source-side locations were given")
        if reads and src_locs[i] is not None:
            sw = f"unit_locations (source side) of {key}"
            st = L.to_index(src_locs[i], unit, batch, device, sw)
            check_index(st, unit, axes, lead_tensor(src).shape[1], sw, f"sources[{group_of[key]}]")
            if bt is not None and _forward_owner(iv) not in (None, "LambdaIntervention"):
                _check_pairing(st, bt, unit, batch, _flattens(iv), key)
        if subs is not None:
            check_subspaces(subs[i], iv, key, batch, width)
    return src_in
