"""Checks of one call's unit locations, unit widths and subspaces, before anything runs.

A site's ``Axes`` (what its units index, how wide one unit is) is worked out once, when the
IntervenableModel is built; ``check_call`` then checks every location against the length of
the run it indexes (the base, or the source it reads) and the head count, unit counts against
``max_number_of_units`` for interventions whose weights fix their width, and subspaces against
the intervention's dimension. Errors name the argument (``unit_locations (base side) of <key>``,
``subspaces of <key>``, ...), what was given and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fxvene.api import locations as L
from fxvene.api.validation import check_inputs, is_abstract_component, lead_tensor, sequence_length
from fxvene.graph.sites import Axes
from fxvene.graph.tracing import steps_signature
from fxvene.interventions import CollectIntervention

# ------------------------------------------------------------------------------------ sites


def _example_seq(traced):
    for n in traced.gm.graph.nodes:
        if n.op == "placeholder" and n.name in ("input_ids", "inputs_embeds"):
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() >= 2:
                return val.shape[1]
    return None


def site_axes(site, traced, model):
    """The ``Axes`` of ``site`` (a ``fxvene.graph.sites.Site``) in ``traced``."""
    from fxvene.models import family_for

    shape = site.shape
    last = shape[-1] if shape else None
    last = last if isinstance(last, int) else None
    from fxvene.graph.sites import slot_width

    if site.n_heads is not None:
        return Axes("seq", site.n_heads, slot_width(site.fused, last) // site.n_heads if last else None)
    if shape is None or len(shape) < 2:
        return Axes(None, None, None)
    fam, _ = family_for(model)
    spec = fam.components.get(site.component) if fam is not None and is_abstract_component(site.component) else None
    if spec is not None:
        if spec.pattern is not None:  # attention probabilities (b, H, s, s): units are heads, width is seq
            return Axes(shape[1] if isinstance(shape[1], int) else None, None, None)
        width = slot_width(site.fused, last)
        if len(shape) < 3:  # (batch, dim): a "unit" is a column, so the width is the unit count
            return Axes(width, None, None)
        return Axes("seq", None, width)
    ex = _example_seq(traced)

    def seqlike(d):
        return (
            (d == ex) if isinstance(d, int) and isinstance(ex, int) else (not isinstance(d, int) and str(d) == str(ex))
        )

    d1 = shape[1]
    pos = "seq" if len(shape) >= 3 and seqlike(d1) else (d1 if isinstance(d1, int) and not seqlike(d1) else None)
    width = last if last is not None and not seqlike(last) and len(shape) >= 3 else None
    return Axes(pos, None, width)


# ------------------------------------------------------------------------------------ one call


def _flattens(iv):
    from fxvene.graph.sites import flattens

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
_NO_SUBSPACES = (
    "BoundlessRotatedSpaceIntervention",
    "SigmoidMaskRotatedSpaceIntervention",
    "SigmoidMaskIntervention",
    "NoiseIntervention",
    "AutoencoderIntervention",
)


def _check_range(t, size, kind, what, where):
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise ValueError(
            f"{what}: {kind} {lo} is negative; {kind}s count from 0 (expected 0..{size - 1 if size else '?'})"
        )
    if size is not None and hi >= size:
        raise ValueError(f"{what}: {kind} {hi} is out of range: {where} has {size} {kind}s (valid: 0..{size - 1})")


def check_index(t, unit, axes, seq, what, where):
    """Bounds of one side's index tensor(s) (from ``fxvene.api.locations.to_index``)."""
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
    if unit == "t":  # time steps: the intervention acts on one step at a time (fxvene/graph/time_steps.py)
        return 1
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
    elif not (
        flat or isinstance(iv, I.TrainableIntervention) or isinstance(iv, I.DistributedRepresentationIntervention)
    ):
        return W  # a swap without weights acts on any width
    nunit = rep.max_number_of_units
    ours = axes.width * nunit == E  # built here from max_number_of_units (else an instance built elsewhere)
    built = f"max_number_of_units={nunit} (width {E} = {nunit} x {axes.width})" if ours else f"embed_dim={E}"
    if flat:
        n = _n_units(t, rep.unit)
        fix = (
            f"build it with max_number_of_units={n}" if W == n * axes.width and ours else f"build it with embed_dim={W}"
        )
        raise ValueError(
            f"unit_locations of {key}: {name} is a distributed intervention built for {built}, but this call "
            f"gives it {_units_label(t, rep.unit)} (width {W}); give {E // axes.width if E % axes.width == 0 else '?'} "
            f"per example or {fix}"
        )
    how = "unit_locations=None gives it the whole activation" if t is None else "it acts on one unit at a time"
    raise ValueError(
        f"max_number_of_units={nunit} of {key}: {name} was built for {built}, but {how} "
        f"(width {W}); build it with " + ("max_number_of_units=1" if ours else f"embed_dim={W}")
    )


def _subspace_bound(iv, width, partition=True):
    """Largest subspace index + 1 for a built-in intervention (None: unknown); with
    ``partition=False`` the columns a ``subspace_partition`` may name."""
    owner = _forward_owner(iv)
    part = getattr(iv, "subspace_partition", None)
    if part is not None and partition:
        return len(part), "subspace_partition entries"
    if owner == "LowRankRotatedSpaceIntervention":
        return int(iv.rotate_layer.weight.shape[-1]), "low_rank_dimension"
    if owner == "JumpReLUAutoencoderIntervention":
        return int(iv.W_enc.shape[-1]), "latent width"
    if owner == "PCARotatedSpaceIntervention":
        return int(iv.pca_components.shape[0]), "PCA components"
    return width, "dimensions"


def check_partition(iv, rep, axes, i):
    """``subspace_partition`` columns must lie inside what the intervention swaps over."""
    part = getattr(iv, "subspace_partition", None)
    if part is None or _forward_owner(iv) in (None, "LambdaIntervention"):
        return
    E = _int(getattr(iv, "embed_dim", None))
    width = E if _flattens(iv) else axes.width
    bound, what = _subspace_bound(iv, width, partition=False)
    cols = [c for p in part for c in p]
    bad = [c for c in cols if c < 0 or (bound is not None and c >= bound)]
    if bad:
        raise ValueError(
            f"representations[{i}].subspace_partition={rep.subspace_partition!r}: column {bad[0]} is outside the "
            f"{bound} {what} of {type(iv).__name__} here (valid: 0..{bound - 1 if bound else '?'})"
        )


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
                raise ValueError(
                    f"subspaces of {key}: index {v} is negative; expected 0..{bound - 1 if bound else '?'}"
                )
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


def _serial_index(part, dk, n, expected, noun):
    """The ``i`` of a serial key's ``source_i`` side, in ``[0, n)``; a ValueError otherwise."""
    try:
        i = int(part.replace("source_", ""))
    except ValueError:
        raise ValueError(f"unit_locations: bad serial key {dk!r}; {expected}") from None
    if not 0 <= i < n:
        raise ValueError(f"unit_locations: {dk!r} names {noun} {i} of {n}")
    return i


def serial_locations(locs, groups, keys):
    """Serial-mode ``{"source_i->X": (src, base)}`` -> per-key (src_locs, base_locs, targets):
    group i's keys read ``sources[i]`` at ``src`` and write into X (``"base"`` or
    ``"source_j"``) at ``base``."""
    n = len(keys)
    src_locs, base_locs, targets = [None] * n, [None] * n, [None] * n
    for dk, (s_side, b_side) in locs.items():
        left, _, right = dk.partition("->")
        gi = _serial_index(left, dk, len(groups), "expected 'source_i->source_j' or 'source_i->base'", "group")
        tgt = (
            "base"
            if right == "base"
            else _serial_index(right, dk, len(groups), "the target is 'base' or 'source_j'", "source")
        )
        for side, name in ((s_side, "source"), (b_side, "base")):
            if len(side) < len(groups[gi][1]):
                raise ValueError(
                    f"unit_locations[{dk!r}] ({name} side) has {len(side)} entries for the "
                    f"{len(groups[gi][1])} interventions of group {gi}; give one per intervention"
                )
        for j, key in enumerate(groups[gi][1]):
            i = keys.index(key)
            src_locs[i] = s_side[j]
            base_locs[i] = b_side[j]
            targets[i] = tgt
    return src_locs, base_locs, targets


def _check_source_representation(t, iv, key, width):
    """A given source tensor must have the width the (unflattened) intervention sees."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"source_representations for {key}: expected a tensor, got {type(t).__name__}")
    if width is None or _flattens(iv) or _forward_owner(iv) in (None, "LambdaIntervention"):
        return
    if t.dim() == 0 or t.shape[-1] != width:
        raise ValueError(
            f"source_representations for {key}: last dimension {tuple(t.shape)[-1:] or '()'} (shape {tuple(t.shape)}), "
            f"but {type(iv).__name__} acts on units of width {width}"
        )


def _check_extras(labels, extra, batch, seq, model=None):
    if labels is not None and "ForSequenceClassification" in type(model).__name__:
        # the model's own loss reads them: (batch,) class ids, or (batch, num_labels) for regression / multi-label
        if not isinstance(labels, torch.Tensor) or labels.dim() == 0 or labels.shape[0] != batch:
            raise ValueError(
                f"labels must be a tensor with one row per example ({batch}), got "
                f"{tuple(getattr(labels, 'shape', ())) or type(labels).__name__}"
            )
    elif labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dim() != 2:
            raise TypeError(
                f"labels must be an integer (batch, seq) tensor of token ids, got "
                f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}"
            )
        if tuple(labels.shape) != (batch, seq):
            raise ValueError(f"labels has shape {tuple(labels.shape)}, expected the base's ({batch}, {seq})")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(
            f"intervention_additional_kwargs must be a dict of keyword arguments, got {type(extra).__name__}"
        )


@dataclass
class CheckedCall:
    """One call of an IntervenableModel (``forward`` or ``generate``), checked once by ``check_call``.

    The rest of the call reads everything from here: the checked base and source inputs and their
    graph signatures, the per-intervention unit locations (``src_locs``: where each reads its source;
    ``base_locs``: where it writes, on the base or, in serial mode, on the next group's source run,
    ``targets``), subspaces, source representations, the extra intervention keywords and labels.
    ``index`` turns a location into its index tensor once; the checks made them already.
    """

    base: dict
    signature: tuple
    batch: int
    seq: int
    device: torch.device
    sources: list
    source_signatures: list
    src_locs: list
    base_locs: list
    targets: list
    subspaces: list | None
    source_representations: dict | None
    extra: dict
    labels: object = None
    _index: dict = field(default_factory=dict)

    def index(self, side, i, unit, what=None):
        """The index tensor of intervention ``i``'s locations on ``side`` ("source" or "base");
        ``what`` names them in an error (the first call for a location makes its tensor)."""
        if (side, i) not in self._index:
            locs = self.src_locs if side == "source" else self.base_locs
            what = what or f"unit_locations ({side} side) of intervention {i}"
            self._index[side, i] = L.to_index(locs[i], unit, self.batch, self.device, what)
        return self._index[side, i]


def check_base(im, base, what="base"):
    """``(inputs, signature)`` of the base: the checked model inputs (``fxvene.api.validation.check_inputs``)
    and the signature of the graph that runs them (with the length, where the graph has one: a GRU)."""
    d, sig = check_inputs(base, what, im._vocab_size())
    return d, steps_signature(im.model, d, sig)


def check_call(
    im, base_in, signature, sources, unit_locations, source_representations, subspaces, labels=None, extra=None
):
    """Everything about one call that can be checked without running it, checked once into a
    ``CheckedCall``: the sources (one per group, or one for all) and their inputs and batch, every
    unit location against the sequence / head count, unit counts against ``max_number_of_units`` for
    fixed-width interventions, source representations, subspaces, labels. ``base_in``/``signature``
    come from ``check_base``."""
    lead = lead_tensor(base_in)
    batch, seq = lead.shape[0], sequence_length(base_in)
    device = lead.device
    ngroups = len(im._groups)
    if sources is not None and not isinstance(sources, (list, tuple)):
        sources = [sources]
    # no sources: interventions that read a source run are skipped (pyvene's "clean run")
    sources = list(sources) if sources is not None else [None] * ngroups
    if len(sources) == 1 and ngroups > 1:
        sources = sources * ngroups  # a single source serves every group (the caller's list is not touched)
    if len(sources) != ngroups:
        raise ValueError(f"sources: got {len(sources)}, expected {ngroups} (one per intervention group) or 1")
    locs = L.broadcast_unit_locations(unit_locations, batch, im.sorted_keys, im.mode)
    srcreps = _source_representations(im, source_representations)
    subs = L.broadcast_subspaces(subspaces, batch, len(im.sorted_keys))
    _check_extras(labels, extra, batch, seq, im.model)
    src_in, src_sigs = [], []
    for g, s in enumerate(sources):
        if s is None:
            src_in.append(None)
            src_sigs.append(None)
            continue
        d, ssig = check_base(im, s, f"sources[{g}]")
        if lead_tensor(d).shape[0] != batch:
            raise ValueError(f"sources[{g}]: batch size {lead_tensor(d).shape[0]} but the base has {batch}")
        src_in.append(d)
        src_sigs.append(ssig)
    group_of = {k: gi for gi, (_, ks) in enumerate(im._groups.items()) for k in ks}
    keys = im.sorted_keys
    if im.mode == "parallel":
        src_locs, base_locs = locs["sources->base"]
        targets = ["base"] * len(keys)
    else:
        src_locs, base_locs, targets = serial_locations(locs, list(im._groups.items()), keys)
    call = CheckedCall(
        base_in,
        signature,
        batch,
        seq,
        device,
        src_in,
        src_sigs,
        list(src_locs),
        list(base_locs),
        targets,
        subs,
        srcreps,
        extra or {},
        labels,
    )
    for i, key in enumerate(keys):
        iv, rep, axes = im.interventions[key], im.representations[key], im._axes[key]
        unit = rep.unit
        tgt = targets[i]
        comp = rep.component  # an encoder-decoder's decoder components count the decoder's positions
        tseq, where = (
            (sequence_length(base_in, comp), "the base")
            if tgt in (None, "base")
            else ((sequence_length(src_in[tgt], comp), f"sources[{tgt}]") if src_in[tgt] is not None else (None, None))
        )
        bw = f"unit_locations (base side) of {key}"
        bt = call.index("base", i, unit, bw)
        if tseq is not None:
            check_index(bt, unit, axes, tseq, bw, where)
        width = check_width(iv, rep, axes, bt, key)
        src = src_in[group_of[key]]
        reads = im._reads_source(key) and srcreps is None and src is not None
        if reads and src_locs[i] is None and bt is not None:
            raise ValueError(
                f"unit_locations: intervention {i} ({key}) reads a source but no source-side locations were given"
            )
        if reads and src_locs[i] is not None:
            sw = f"unit_locations (source side) of {key}"
            st = call.index("source", i, unit, sw)
            src_axes = getattr(im, "_source_axes", {}).get(key, axes)  # a source read at another site
            check_index(st, unit, src_axes, sequence_length(src, comp), sw, f"sources[{group_of[key]}]")
            if bt is not None and _forward_owner(iv) not in (None, "LambdaIntervention"):
                _check_pairing(st, bt, unit, batch, _flattens(iv), key)
        if srcreps is not None and key in srcreps:
            _check_source_representation(srcreps[key], iv, key, width)
        if subs is not None:
            check_subspaces(subs[i], iv, key, batch, width)
    return call


def _source_representations(im, srcreps):
    """``source_representations`` as a dict by intervention key (a tensor for all, a list, or a dict)."""
    if srcreps is None:
        return None
    collects = {k for k in im.sorted_keys if isinstance(im.interventions[k], CollectIntervention)}
    if isinstance(srcreps, torch.Tensor):  # one tensor for every intervention that takes a source
        return {k: srcreps for k in im.sorted_keys if k not in collects}
    if isinstance(srcreps, dict):
        for k in srcreps:
            if k not in im.representations:
                raise ValueError(f"source_representations: unknown intervention key {k!r}; keys: {im.sorted_keys}")
        given = dict(srcreps)
    elif isinstance(srcreps, (list, tuple)):
        if len(srcreps) != len(im.sorted_keys):
            raise ValueError(
                f"source_representations: got {len(srcreps)} tensors for {len(im.sorted_keys)} interventions"
            )
        given = {k: v for k, v in zip(im.sorted_keys, srcreps) if v is not None}
    else:
        raise TypeError(
            "source_representations must be a tensor, a list of tensors or a dict keyed by intervention key"
        )
    for k in given:
        if k in collects:
            raise ValueError(
                f"source_representations for {k}: a CollectIntervention reads the base and takes no source; "
                "give None in its place"
            )
    return given
