"""pyvene 0.1.8's configuration objects (same fields, same defaults, same validation)."""
from __future__ import annotations

import json
from collections import namedtuple

from transformers.configuration_utils import PretrainedConfig

RepresentationConfig = namedtuple(
    "RepresentationConfig",
    "layer component unit "
    "max_number_of_units "
    "low_rank_dimension intervention_type intervention "
    "subspace_partition group_key intervention_link_key moe_key "
    "source_representation hidden_source_representation latent_dim",
    defaults=(0, "block_output", "pos", 1, None, None, None, None, None, None, None, None, None, None),
)


def _cast(reprs):
    if isinstance(reprs, RepresentationConfig):
        return reprs
    if isinstance(reprs, (list, tuple)):
        return RepresentationConfig(*reprs)
    if isinstance(reprs, dict):
        return RepresentationConfig(**reprs)
    raise ValueError(f"representations: {reprs!r} is not a RepresentationConfig, list or dict")


class IntervenableConfig(PretrainedConfig):
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
        from fxvene.interventions import VanillaIntervention

        if representations is None:
            representations = [RepresentationConfig()]
        if intervention_types is None:
            intervention_types = VanillaIntervention
        if not isinstance(representations, list):
            representations = [representations]
        self.representations = [_cast(r) for r in representations]
        self.intervention_types = intervention_types
        overwrite = False
        types = []
        for reprs in self.representations:
            if overwrite and reprs.intervention_type is None and reprs.intervention is None:
                raise ValueError("intervention_type if used should be specified for all")
            if reprs.intervention_type is not None and reprs.intervention is not None:
                raise ValueError("Only one of the field should be provided: intervention_type, intervention")
            if reprs.intervention_type is not None:
                overwrite = True
                types.append(reprs.intervention_type)
            elif reprs.intervention is not None:
                overwrite = True
                types.append(type(reprs.intervention))
        if overwrite:
            self.intervention_types = types
        if mode not in ("parallel", "serial"):
            raise ValueError(f"mode must be 'parallel' or 'serial', got {mode!r}")
        self.mode = mode
        self.sorted_keys = sorted_keys
        self.intervention_dimensions = intervention_dimensions
        self.intervention_constant_sources = intervention_constant_sources
        self.model_type = model_type
        super().__init__(**kwargs)

    def add_intervention(self, representations):
        if not isinstance(representations, list):
            representations = [representations]
        for reprs in representations:
            reprs = _cast(reprs)
            if reprs.intervention_type is None:
                raise ValueError("intervention_type should be provided.")
            self.representations.append(reprs)
            if not isinstance(self.intervention_types, list):
                self.intervention_types = [self.intervention_types] * (len(self.representations) - 1)
            self.intervention_types.append(reprs.intervention_type)

    def __repr__(self):
        reps = []
        for reprs in self.representations:
            d = {}
            for k, v in reprs._asdict().items():
                d[k] = "PLACEHOLDER" if (type(v) not in {str, int, list, tuple, dict} and v is not None) else v
            reps.append(d)
        r = {
            "model_type": str(self.model_type),
            "representations": tuple(reps),
            "intervention_types": str(self.intervention_types),
            "mode": self.mode,
            "sorted_keys": tuple(self.sorted_keys) if self.sorted_keys is not None else str(self.sorted_keys),
            "intervention_dimensions": str(self.intervention_dimensions),
        }
        return "IntervenableConfig\n" + json.dumps(r, indent=4)

    __str__ = __repr__
