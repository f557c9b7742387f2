"""IntervenableModel: pyvene 0.1.8's API on a rewritten torch.fx graph.

A call is planned, not hooked: the *structure* of the call (which interventions act, which
collect, which source groups run) picks a rewritten GraphModule from a cache; the *data*
(source slices, unit locations) is passed to that graph as inputs. Source groups run a
truncated graph that stops after the last site they need and returns only gathered units.

This module holds construction and ``forward``; the rest of the class comes from
``fxvene.api.build`` (keys, cross-site checks), ``fxvene.api.planning``
(call planning), ``fxvene.api.sources`` (source runs) and
``fxvene.api.methods`` (parameters, inspection, generate, save/load) and
``fxvene.api.training`` (pyvene's train_alignment / eval_alignment).
"""

from __future__ import annotations

import types
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from transformers.utils import ModelOutput

from fxvene.api import unit_checks as U
from fxvene.api import validation as V

# The class is split by concept: construction helpers, call planning (graphs), source runs, and the
# public parameter / inspection / generation / persistence methods live in these modules; every name
# that used to be defined here is still importable from here.
from fxvene.api.build import (  # noqa: F401  (re-exported)
    _UNITS,
    InterventionDict,
    _construction_signature,
    _cross_site,
    _LegacyHandle,
    _reads_elsewhere,
    _representation_key,
    _source_where,
    placed,
)
from fxvene.api.configuration import EXTENSION_FIELDS, IntervenableConfig, RepresentationConfig
from fxvene.api.methods import ModelMethods
from fxvene.api.planning import (  # noqa: F401  (re-exported)
    AdaptorSiteOp,
    GraphPlanning,
    engine_subspaces,
    gets_kwargs,
    preserved_rng,
)
from fxvene.api.sources import SourceRuns
from fxvene.api.training import AlignmentTraining
from fxvene.graph import time_steps
from fxvene.graph.errors import clip
from fxvene.graph.offload import site_device
from fxvene.graph.sites import do_intervention, resolve_site
from fxvene.graph.tracing import TracingError
from fxvene.interventions import CollectIntervention, LambdaIntervention


@dataclass
class IntervenableModelOutput(ModelOutput):
    original_outputs: Any | None = None
    intervened_outputs: Any | None = None
    collected_activations: Any | None = None


class IntervenableModel(GraphPlanning, SourceRuns, ModelMethods, AlignmentTraining, nn.Module):
    """Wrap a Hugging Face model so pyvene configs run on a rewritten fx graph.

    ``tracer``: "auto" (HF's fx tracer where transformers has it, else torch.export),
    "hf_fx" or "export". The model is traced once per input signature and shared by every
    IntervenableModel built on it; its parameters are shared, never copied.
    """

    def __init__(self, config, model, tracer="auto", **kwargs):
        super().__init__()
        if isinstance(config, (dict, list)):
            config = IntervenableConfig(representations=config)
        if isinstance(config, RepresentationConfig):
            config = IntervenableConfig(representations=[config])
        if not isinstance(config, IntervenableConfig):
            raise TypeError(f"config must be an IntervenableConfig, dict or list, got {type(config).__name__}")
        # everything is checked before the model or the config is touched
        V.check_model(model, config.representations)
        self.config = config
        self.mode = config.mode
        self.tracer = tracer
        self.use_fast = kwargs.get("use_fast", False)
        self.as_adaptor = kwargs.get("as_adaptor", False)
        # fxvene extension (issue 4): torch.compile the rewritten graphs (fxvene/graph/compile.py)
        self._compile_options = None
        if kwargs.get("compile"):
            from fxvene.graph.compile import compile_options

            self._compile_options = compile_options(kwargs["compile"])
        self.model = model
        self.model_config = model.config
        self.model_type = type(model)

        try:
            traced = self._traced(_construction_signature(model), training=False)
        except TracingError as e:
            raise V.unsupported(model, e) from None
        types_ = config.intervention_types
        if isinstance(types_, list) and len(types_) != len(config.representations):
            raise ValueError(
                f"intervention_types has {len(types_)} entries for {len(config.representations)} representations"
            )
        self.representations = OrderedDict()
        self.interventions = InterventionDict()
        self.interventions._legacy = {}
        self._link_pointers = {}
        self._intervention_reverse_link = {}
        self._axes = {}
        self._source_axes = {}  # keys that read their source at another site (fxvene extension)
        self._as_written = {}  # key -> the representation as the config spells it (saved so)
        counter = {}
        any_group = False
        for i, rep in enumerate(config.representations):
            if rep.unit not in _UNITS:
                raise ValueError(f"representations[{i}].unit must be one of {_UNITS}, got {rep.unit!r}")
            if not isinstance(rep.max_number_of_units, int) or rep.max_number_of_units < 1:
                raise ValueError(f"representations[{i}].max_number_of_units must be a positive int")
            written, rep = rep, placed(rep, model, i)  # TransformerLens names: the family's site
            key, legacy = _representation_key(rep, counter)
            site = (
                time_steps.resolve(traced, model, rep.component, rep.layer).site
                if rep.unit == "t"
                else resolve_site(traced, model, rep.component, rep.layer)
            )
            if site.n_heads is None and rep.unit in ("h", "h.pos"):
                raise ValueError(
                    f"representations[{i}]: unit {rep.unit!r} needs a head component (head_*), got {rep.component!r}"
                )
            if site.n_heads is not None and rep.unit == "pos":
                raise ValueError(
                    f"representations[{i}]: component {rep.component!r} is split into heads; use unit 'h' or 'h.pos' "
                    "(pyvene 0.1.8 gathers heads for 'pos' here and then crashes)"
                )
            if rep.intervention is not None:
                intervention = V.check_intervention(rep.intervention, f"representations[{i}].intervention")
                if isinstance(intervention, types.FunctionType):
                    intervention = LambdaIntervention(intervention)
                elif hasattr(intervention, "use_fast"):
                    intervention.use_fast = self.use_fast
            else:
                itype = types_[i] if isinstance(types_, list) else types_
                itype = V.check_intervention_type(itype, f"representations[{i}].intervention_type")
                V.check_fields(rep, itype, i)
                meta = {k: v for k, v in rep._asdict().items() if k not in EXTENSION_FIELDS}
                dim = site.dim * int(rep.max_number_of_units) if site.dim is not None else None
                meta["embed_dim"] = dim
                meta["use_fast"] = self.use_fast
                intervention = V.check_built(itype(**meta), itype, f"representations[{i}].intervention_type")
                if isinstance(intervention, types.FunctionType):
                    intervention = LambdaIntervention(intervention)
            where = site_device(traced.gm, model, site.node)  # a dispatched model: the site's device
            if where is not None and isinstance(intervention, nn.Module):
                intervention.to(where)  # an intervention lives on the device of its site
            link = rep.intervention_link_key
            if link is not None:
                if link in self._link_pointers:
                    intervention = self._link_pointers[link]
                else:
                    self._link_pointers[link] = intervention
                self._intervention_reverse_link[key] = f"link#{link}"
            self.representations[key] = rep
            self._as_written[key] = written
            self.interventions[key] = intervention
            self._axes[key] = time_steps.axes(site) if rep.unit == "t" else U.site_axes(site, traced, model)
            src_site = _cross_site(traced, model, rep, i, site, self._axes[key])
            if src_site is not None:
                self._source_axes[key] = U.site_axes(src_site, traced, model)
            U.check_partition(intervention, rep, self._axes[key], i)
            self.interventions._legacy[legacy] = key
            if rep.group_key is not None:
                any_group = True
        self.sorted_keys = list(self.representations)
        self._groups = OrderedDict()
        if any_group:
            order = []
            for k in self.sorted_keys:
                g = self.representations[k].group_key
                if g is None:
                    raise ValueError("group_key: if any representation has a group_key, all must have one")
                self._groups.setdefault(g, []).append(k)
                order.append(g)
            if any(a > b for a, b in zip(order, order[1:])):
                raise ValueError("group_key: must be ascending in config order")
        else:
            for i, k in enumerate(self.sorted_keys):
                self._groups[i] = [k]
        self._graphs = {}
        self.activations = {}
        self.full_intervention_outputs = []
        self.return_collect_activations = any(
            isinstance(self.interventions[k], CollectIntervention) for k in self.sorted_keys
        )
        config.model_type = str(type(model))
        self.disable_model_gradients()

    # ------------------------------------------------------------------ model side

    def __str__(self):
        return f"IntervenableModel(model={type(self.model).__name__}, keys={self.sorted_keys})"

    def disable_model_gradients(self):
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad = False
        self.model_has_grad = False

    def enable_model_gradients(self):
        self.model.train()
        for p in self.model.parameters():
            p.requires_grad = True
        self.model_has_grad = True

    def get_device(self):
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs

    def _vocab_size(self):
        """Rows of the model's input embedding (None where it has none, e.g. a model fed embeddings)."""
        try:
            emb = self.model.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            return None
        return getattr(emb, "num_embeddings", None)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        base,
        sources=None,
        unit_locations=None,
        source_representations=None,
        subspaces=None,
        labels=None,
        output_original_output=False,
        return_dict=None,
        use_cache=None,
        intervention_additional_kwargs=None,
    ):
        base_in, sig = U.check_base(self, base)
        if (
            sources is None
            and source_representations is None
            and unit_locations is None
            and len(self.interventions) == 0
        ):
            return self.model(**base_in), None
        # the whole call is checked once; the rest of it reads the checked value
        call = U.check_call(
            self,
            base_in,
            sig,
            sources,
            unit_locations,
            source_representations,
            subspaces,
            labels,
            intervention_additional_kwargs,
        )
        device, subs, srcreps, extra = call.device, call.subspaces, call.source_representations, call.extra

        original = None
        if output_original_output:
            traced = self._traced(sig)
            original = traced.wrap_outputs(traced.gm(**base_in))

        slices = self._parallel_sources(call) if self.mode == "parallel" else self._serial_sources(call)

        active, collect = [], []
        feeds = {}
        on_base = None
        if self.mode == "serial" and srcreps is None:
            # pyvene: each source run drops the setters before it, so only the last group that has a
            # source acts on the base (none at all without sources)
            fed = [keys for keys, s in zip(self._groups.values(), call.sources) if s is not None]
            on_base = set(fed[-1]) if fed else set()
        for i, key in enumerate(self.sorted_keys):
            iv = self.interventions[key]
            if on_base is not None and key not in on_base:
                if on_base and isinstance(iv, CollectIntervention):  # pyvene crashes here; never drop it silently
                    raise ValueError(
                        f"mode='serial': the CollectIntervention {key} is in an earlier group than the last one "
                        "with a source, so it never sees the base run; put it in the last group"
                    )
                continue
            if isinstance(iv, CollectIntervention):
                collect.append(key)
            elif key in slices or not self._needs_source(key):
                active.append(key)
            else:
                continue
            feeds[f"fxv_loc_{i}"] = call.index("base", i, self.representations[key].unit)
            if key in slices:
                feeds[f"fxv_src_{i}"] = slices[key]
        run_in, run_sig = base_in, sig
        if labels is not None:  # the model computes its own loss, as in pyvene (a graph traced with labels)
            run_in, run_sig = {**base_in, "labels": labels.to(device)}, sig + ("labels",)
            try:
                self._traced(run_sig)
            except (TracingError, TypeError) as e:
                raise ValueError(
                    f"labels: {type(self.model).__name__} cannot be run with labels here ({clip(e, 150)})"
                ) from None
        traced, gm = self._base_graph(run_sig, tuple(active), tuple(collect))
        self.full_intervention_outputs = []
        calls = {}
        for i, key in enumerate(self.sorted_keys):
            if key in active:
                calls[f"fxv_site_{i}"] = self._site_call(
                    key,
                    subs[i] if subs is not None else None,
                    extra,
                    # a source *run* must match the base when whole tensors are swapped; a given
                    # source_representations tensor broadcasts (a steering vector)
                    check_source_shape=key not in (srcreps or {}),
                    full_outputs=self.full_intervention_outputs,
                )
        for name, call in calls.items():
            gm.get_submodule(name).call = call
        try:
            flat = self._run_graph(gm, {**run_in, **feeds})
        finally:
            for name in calls:
                gm.get_submodule(name).call = {}
        nout = len(traced.output_keys)
        outputs = traced.wrap_outputs(flat)
        if use_cache:
            outputs["past_key_values"] = self._past_key_values(base_in, tuple(active), feeds, calls)
        collected = []
        self.activations = {}
        for j, key in enumerate(collect):
            i = self.sorted_keys.index(key)
            val = flat[nout + j]
            kw = dict(extra) if extra else {}
            res = do_intervention(
                self.interventions[key], val, None, engine_subspaces(subs[i]) if subs is not None else None, **kw
            )
            if self.representations[key].unit == "t" and isinstance(res, torch.Tensor):
                res = list(res.unbind(1))  # one (batch, ...) tensor per listed time step, as pyvene's hooks give
                collected.extend(res)
            else:
                collected.append(res)
            self.activations[key] = res

        if self.return_collect_activations:
            if return_dict:
                return IntervenableModelOutput(
                    original_outputs=original, intervened_outputs=outputs, collected_activations=collected
                )
            if collect and not active:
                # fxvene extension: an all-Collect call returns ((orig, collected), collected)
                return (original, collected), collected
            return (original, collected), outputs
        if return_dict:
            return IntervenableModelOutput(
                original_outputs=original, intervened_outputs=outputs, collected_activations=None
            )
        return original, outputs

    __call__ = nn.Module.__call__

    # fxvene extension (issue 4): compile once. Delegates to fxvene/graph/compile.py.
    def compile(self, **options):
        """``torch.compile`` every rewritten graph this model runs (lazily, once per call
        structure; batch/sequence dims dynamic). ``options`` go to ``torch.compile``."""
        from fxvene.graph.compile import compile_options

        self._compile_options = compile_options(options)
        self.__dict__.pop("_compiled_graphs", None)
        return self

    def _run_graph(self, gm, kwargs):
        from fxvene.graph.compile import run

        return run(self, gm, kwargs)


def build_intervenable_model(config, model, **kwargs):
    """pyvene's factory: an ``IntervenableModel`` over ``model`` (no remote-model variant here)."""
    return IntervenableModel(config, model, **kwargs)
