"""The configuration objects of pyvene 0.1.8's API: ``RepresentationConfig`` (where and
what to intervene on) and ``IntervenableConfig`` (a list of them plus the run mode)."""

from __future__ import annotations

import json
from collections import namedtuple
from typing import Any

from transformers.configuration_utils import PretrainedConfig

from fxvene.interventions import VanillaIntervention
from fxvene.models.aliases import check_alias, is_alias

# Field order and defaults are part of the API: configs are also given as positional lists.
# pyvene 0.1.8's 14 fields come first, in its order; fxvene's extensions are appended after
# them with default None, so pyvene's positional configs mean the same here.
RepresentationConfig = namedtuple(
    "RepresentationConfig",
    "layer component unit "
    "max_number_of_units "
    "low_rank_dimension intervention_type intervention "
    "subspace_partition group_key intervention_link_key moe_key "
    "source_representation hidden_source_representation latent_dim "
    "source_layer source_component",
    defaults=(0, "block_output", "pos", 1, None, None, None, None, None, None, None, None, None, None, None, None),
)
RepresentationConfig.__doc__ = """Where and what to intervene on (pyvene 0.1.8's fields, in its order).

fxvene extension, *patching from a different site*: ``source_layer`` / ``source_component``
(default None: the same as ``layer`` / ``component``) name where the source run is read. The
intervention still writes at (``component``, ``layer``) of the base; the source side of
``unit_locations`` indexes the source site. Both sites must have the same unit width.
"""

# the fields fxvene adds after pyvene 0.1.8's (not passed to intervention constructors,
# left out of saved configs while None so pyvene can read them)
EXTENSION_FIELDS = ("source_layer", "source_component")
PYVENE_FIELDS = RepresentationConfig._fields[: -len(EXTENSION_FIELDS)]

RepresentationLike = RepresentationConfig | list | tuple | dict


def _as_representation(item: RepresentationLike) -> RepresentationConfig:
    """A ``RepresentationConfig`` from itself, its fields in order, or a dict of fields; a
    TransformerLens hook name as ``component`` is checked and gives the layer (``_resolve_alias``)."""
    if isinstance(item, dict):
        item = RepresentationConfig(**item)
    elif isinstance(item, (list, tuple)) and not isinstance(item, RepresentationConfig):
        item = RepresentationConfig(*item)
    if not isinstance(item, RepresentationConfig):
        raise ValueError(f"representations: {item!r} is not a RepresentationConfig, list or dict")
    return _resolve_alias(item)


def _resolve_alias(rep: RepresentationConfig) -> RepresentationConfig:
    """``component=None`` takes the hook name of the intervention (a loaded SAE). A hook name such as
    ``blocks.1.hook_resid_pre`` is checked and gives the layer (``layer=1``) but stays as written: the
    site it means depends on the model's family, so the IntervenableModel places it."""
    comp = rep.component
    if comp is None and isinstance(getattr(rep.intervention, "hook_name", None), str):
        comp = rep.intervention.hook_name
    if not is_alias(comp):
        return rep if comp is rep.component else rep._replace(component=comp)
    _, layer = check_alias(comp)
    if rep.layer not in (0, layer):
        raise ValueError(f"component {comp!r} names layer {layer} but layer={rep.layer!r}; give layer={layer} or 0")
    return rep._replace(component=comp, layer=layer)


def _type_of(rep: RepresentationConfig, where: str) -> type | None:
    """The intervention class a representation names itself, or None."""
    if rep.intervention_type is not None and rep.intervention is not None:
        raise ValueError(
            f"{where} gives both intervention_type ({rep.intervention_type!r}) and intervention "
            f"({rep.intervention!r}); give one of them"
        )
    if rep.intervention_type is not None:
        return rep.intervention_type
    return None if rep.intervention is None else type(rep.intervention)


def _shown(value: Any) -> Any:
    """``value`` for the JSON repr; objects that JSON cannot show become ``"PLACEHOLDER"``."""
    if value is None or type(value) in (str, int, list, tuple, dict):
        return value
    return "PLACEHOLDER"


class IntervenableConfig(PretrainedConfig):
    """Which representations to intervene on, with which intervention classes, and how.

    ``representations``: one or a list of ``RepresentationConfig`` (or lists / dicts of its
    fields). ``intervention_types``: one class for all of them, or one per representation;
    a representation's own ``intervention_type`` / ``intervention`` takes precedence, and
    then every representation must name one. ``mode``: "parallel" (every source patches
    the base) or "serial" (each source run feeds the next). ``sorted_keys``,
    ``intervention_dimensions`` and ``intervention_constant_sources`` are written by ``save``.
    """

    model_type = "fxvene_intervenable"

    def __init__(
        self,
        representations=None,
        intervention_types=None,
        mode="parallel",
        sorted_keys=None,
        model_type=None,
        intervention_dimensions=None,
        intervention_constant_sources=None,
        **kwargs,
    ):
        if representations is None:
            representations = [RepresentationConfig()]
        elif not isinstance(representations, list):
            representations = [representations]
        self.representations = [_as_representation(r) for r in representations]
        own_types = [_type_of(r, f"representations[{i}]") for i, r in enumerate(self.representations)]
        named = [t is not None for t in own_types]
        if any(named) and not all(named):
            raise ValueError(
                f"representations[{named.index(True)}] names its intervention_type, representations"
                f"[{named.index(False)}] does not: once used, it must be specified for all representations"
            )
        if any(named):
            self.intervention_types = own_types
        elif intervention_types is None:
            self.intervention_types = VanillaIntervention
        else:
            self.intervention_types = intervention_types
        self.intervention_dimensions = intervention_dimensions
        self.intervention_constant_sources = intervention_constant_sources
        if mode not in ("parallel", "serial"):
            raise ValueError(f"mode must be 'parallel' or 'serial', got {mode!r}")
        self.mode = mode
        self.sorted_keys = sorted_keys
        self.model_type = model_type
        super().__init__(**kwargs)

    def add_intervention(self, representations: RepresentationLike | list) -> None:
        """Append representations; each must name its ``intervention_type``."""
        if not isinstance(representations, list):
            representations = [representations]
        for i, item in enumerate(representations):
            rep = _as_representation(item)
            if rep.intervention_type is None:
                raise ValueError(f"add_intervention: representations[{i}] has no intervention_type; give one")
            if not isinstance(self.intervention_types, list):
                # one class for all so far: spell it out per representation
                self.intervention_types = [self.intervention_types] * len(self.representations)
            self.representations.append(rep)
            self.intervention_types.append(rep.intervention_type)

    def __repr__(self) -> str:
        summary = {
            "model_type": str(self.model_type),
            "representations": tuple({k: _shown(v) for k, v in r._asdict().items()} for r in self.representations),
            "intervention_types": str(self.intervention_types),
            "mode": self.mode,
            "sorted_keys": str(None) if self.sorted_keys is None else tuple(self.sorted_keys),
            "intervention_dimensions": str(self.intervention_dimensions),
        }
        return "IntervenableConfig\n" + json.dumps(summary, indent=4)

    __str__ = __repr__
