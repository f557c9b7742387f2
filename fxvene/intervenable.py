"""IntervenableModel: pyvene 0.1.8's API on a rewritten torch.fx graph.

A call is planned, not hooked: the *structure* of the call (which interventions act, which
collect, which source groups run) picks a rewritten GraphModule from a cache; the *data*
(source slices, unit locations) is passed to that graph as inputs. Source groups run a
truncated graph that stops after the last site they need and returns only gathered units.
"""
from __future__ import annotations

import contextlib
import random
import types
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from transformers.utils import ModelOutput

from fxvene import locations as L
from fxvene import unit_checks as U
from fxvene import validation as V
from fxvene._interventions.swap import PerExampleSubspaces
from fxvene.configuration import EXTENSION_FIELDS, IntervenableConfig, RepresentationConfig
from fxvene.interventions import (
    CollectIntervention,
    LambdaIntervention,
    SkipIntervention,
    TrainableIntervention,
)
from fxvene.passes.locate import module_input
from fxvene.passes.rewrite import expose, insert_interventions, truncate
from fxvene.sites import Gather, SiteOp, do_intervention, gather, resolve_site
from fxvene import time_steps
from fxvene.tracing import TracingError, steps_signature, trace


@contextlib.contextmanager
def preserved_rng():
    """Leave Python's, numpy's and torch's global random state as they were (HF's fx tracer draws
    from ``random``; pyvene builds without tracing, so user code seeded before building must draw
    the same numbers after it)."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def engine_subspaces(sub):
    """Subspaces the engine hands an intervention: a plain per-example list is marked as such, so a
    3-D unit tensor never reads it as pyvene's one-entry-per-position form."""
    if isinstance(sub, list) and not isinstance(sub, PerExampleSubspaces):
        return PerExampleSubspaces(sub)
    return sub


def gets_kwargs(intervention):
    """pyvene 0.1.8 passes ``intervention_additional_kwargs`` (and, ``as_adaptor``, the module input
    as ``args``) only to Collect and to source-constant interventions; one that reads a source run,
    and a plain function, get none."""
    if isinstance(intervention, CollectIntervention):
        return True
    if isinstance(intervention, LambdaIntervention):
        return False
    return bool(getattr(intervention, "is_source_constant", False))


class AdaptorSiteOp(SiteOp):
    """A :class:`SiteOp` for ``as_adaptor=True``: the module's input, gathered at the same units as
    its output, reaches the intervention as the keyword argument ``args`` (pyvene 0.1.8)."""

    def forward(self, x, source=None, loc=None, module_input=None):
        call = self.call
        if call.get("skip") or module_input is None:
            return super().forward(x, source, loc)
        selected = gather(module_input, self.site, self.unit, loc, f"unit_locations (base side) of {self.key}")
        self.call = {**call, "kwargs": {**call.get("kwargs", {}), "args": selected}}
        try:
            return super().forward(x, source, loc)
        finally:
            self.call = call


@dataclass
class IntervenableModelOutput(ModelOutput):
    original_outputs: Optional[Any] = None
    intervened_outputs: Optional[Any] = None
    collected_activations: Optional[Any] = None


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
    """The source :class:`Site` of a representation that reads its source at another site (None
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
        raise type(e)(f"representations[{i}].{arg}: the source site (component {comp!r}, layer {layer}) "
                      f"cannot be read: {e}") from None
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
    return src  # "t": time steps of a recurrent model (fxvene/time_steps.py)


def _construction_signature(model):
    """The inputs the constructor traces with to resolve sites: ``input_ids`` where the model's
    forward takes them and it has input embeddings, else ``inputs_embeds`` (e.g. pyvene's MLP)."""
    from fxvene.tracing import construction_inputs

    return construction_inputs(model)


class IntervenableModel(nn.Module):
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
        # fxvene extension (issue 4): torch.compile the rewritten graphs (fxvene/compile.py)
        self._compile_options = None
        if kwargs.get("compile"):
            from fxvene.compile import compile_options

            self._compile_options = compile_options(kwargs["compile"])
        self.model = model
        self.model_config = model.config
        self.model_type = type(model)

        try:
            traced = self._traced(_construction_signature(model))
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
        counter = {}
        any_group = False
        for i, rep in enumerate(config.representations):
            if rep.unit not in _UNITS:
                raise ValueError(f"representations[{i}].unit must be one of {_UNITS}, got {rep.unit!r}")
            if not isinstance(rep.max_number_of_units, int) or rep.max_number_of_units < 1:
                raise ValueError(f"representations[{i}].max_number_of_units must be a positive int")
            key, legacy = _representation_key(rep, counter)
            site = (time_steps.resolve(traced, model, rep.component, rep.layer).site if rep.unit == "t"
                    else resolve_site(traced, model, rep.component, rep.layer))
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
            link = rep.intervention_link_key
            if link is not None:
                if link in self._link_pointers:
                    intervention = self._link_pointers[link]
                else:
                    self._link_pointers[link] = intervention
                self._intervention_reverse_link[key] = f"link#{link}"
            self.representations[key] = rep
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

    def _traced(self, signature):
        with preserved_rng():
            traced = trace(self.model, signature, tracer=self.tracer)
        return time_steps.prepare(traced, self.model, getattr(self, "representations", None))

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

    def _inputs(self, inputs, what):
        """Checked model inputs (see :func:`fxvene.validation.check_inputs`) and their signature."""
        d, sig = V.check_inputs(inputs, what, self._vocab_size())
        return d, steps_signature(self.model, d, sig)  # + the length, where the graph has one (a GRU)

    def _check_call(self, base_in, sources, locs, subs, srcreps, labels=None, extra=None):
        """Check a whole call (sources, unit locations, subspaces, ...) before anything runs;
        returns the checked source inputs. See :mod:`fxvene.unit_checks`."""
        return U.check_call(self, base_in, sources, locs, subs, srcreps, labels, extra)

    # ------------------------------------------------------------------ graphs

    def _site(self, traced, key, source_side=False):
        rep = self.representations[key]
        if source_side and _reads_elsewhere(rep):  # fxvene extension: the source run is read at another site
            site = resolve_site(traced, self.model, *_source_where(rep))
        else:
            site = resolve_site(traced, self.model, rep.component, rep.layer)
        if source_side and isinstance(self.interventions[key], SkipIntervention):
            # Skip takes the *input* of the module from the source run
            node = module_input(traced.gm, site.path)
            site = replace(site, node=node.name, port="input")
        return site

    def _base_graph(self, sig, active, collect):
        ck = ("base", sig, tuple(active), tuple(collect))
        if ck in self._graphs:
            return self._graphs[ck]
        traced = self._traced(sig)
        reqs = []
        for key in self.sorted_keys:
            if key not in active and key not in collect:
                continue
            i = self.sorted_keys.index(key)
            if self.representations[key].unit == "t":
                reqs.extend(time_steps.requests(traced, self.model, self.representations[key], i, key,
                                                self.interventions[key], collect=key in collect))
                continue
            site = self._site(traced, key)
            unit = self.representations[key].unit
            if key in collect:
                reqs.append(dict(name=f"fxv_collect_{i}", module=Gather(site, unit, f"unit_locations (base side) of {key}"), node=site.node,
                                 port=site.port, region=site.path, inputs=[f"fxv_loc_{i}"], collect=True))
            else:
                iv = self.interventions[key]
                inputs = [f"fxv_src_{i}", f"fxv_loc_{i}"]
                if self.as_adaptor and gets_kwargs(iv):
                    op = AdaptorSiteOp(key, site, unit, iv)
                    inputs.append(module_input(traced.gm, site.path).name)
                else:
                    op = SiteOp(key, site, unit, iv)
                reqs.append(dict(name=f"fxv_site_{i}", module=op, node=site.node, port=site.port, region=site.path,
                                 inputs=inputs))
        gm = insert_interventions(traced.gm, reqs)
        self._graphs[ck] = (traced, gm)
        return traced, gm

    def _site_call(self, key, sub, extra, **more):
        """The per-call data a site op reads (subspaces, keyword arguments as pyvene passes them)."""
        call = {"subspaces": engine_subspaces(sub),
                "kwargs": dict(extra or {}) if gets_kwargs(self.interventions[key]) else {}}
        call.update(more)
        return call

    def _source_graph(self, sig, keys, prior=()):
        ck = ("source", sig, tuple(keys), tuple(prior))
        if ck in self._graphs:
            return self._graphs[ck]
        traced = self._traced(sig)
        gm = traced.gm
        written = {}  # (node, port, module) -> the last prior setter's node there
        if prior:  # serial mode: the previous group's setters act on this source run
            _, gm = self._base_graph(sig, tuple(prior), ())
            for pk in prior:
                if self.representations[pk].unit != "t":
                    ps = self._site(traced, pk)
                    written[(ps.node, ps.port, ps.path)] = f"fxv_site_{self.sorted_keys.index(pk)}"
        reqs = []
        for key in keys:
            i = self.sorted_keys.index(key)
            if self.representations[key].unit == "t":
                reqs.append(time_steps.source_request(traced, self.model, self.representations[key], i, key))
                continue
            site = self._site(traced, key, source_side=True)
            # a site a prior setter wrote is read after it (pyvene: the setter's hook runs before the getter's)
            node = written.get((site.node, site.port, site.path), site.node)
            reqs.append(dict(node=node, module=Gather(site, self.representations[key].unit, f"unit_locations (source side) of {key}"),
                             name=f"fxv_get_{i}", inputs=[f"fxv_sloc_{i}"]))
        n_out = len(traced.output_keys)
        gm = expose(gm, reqs)
        gm = truncate(gm, list(range(n_out, n_out + len(reqs))))
        self._graphs[ck] = (traced, gm)
        return traced, gm

    # ------------------------------------------------------------------ forward

    def _needs_source(self, key):
        iv = self.interventions[key]
        if isinstance(iv, LambdaIntervention):
            return False
        return not getattr(iv, "is_source_constant", False)

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
        if sources is not None and not isinstance(sources, (list, tuple)):
            sources = [sources]
        base_in, sig = self._inputs(base, "base")
        if sources is None and source_representations is None and unit_locations is None and len(self.interventions) == 0:
            return self.model(**base_in), None
        lead = base_in.get("input_ids", base_in.get("inputs_embeds"))
        batch, seq = lead.shape[0], lead.shape[1]
        device = lead.device
        n = len(self.sorted_keys)
        ngroups = len(self._groups)

        locs = L.broadcast_unit_locations(unit_locations, batch, self.sorted_keys, self.mode)
        # no sources: interventions that read a source run are skipped (pyvene's "clean run")
        sources = list(sources) if sources is not None else [None] * ngroups
        if len(sources) == 1 and ngroups > 1:
            sources = sources * ngroups  # a single source serves every group (the caller's list is not touched)
        if len(sources) != ngroups:
            raise ValueError(f"sources: got {len(sources)}, expected {ngroups} (one per intervention group) or 1")
        srcreps = self._broadcast_source_representations(source_representations)
        subs = L.broadcast_subspaces(subspaces, batch, n)
        sources = self._check_call(base_in, sources, locs, subs, srcreps, labels, intervention_additional_kwargs)
        extra = intervention_additional_kwargs or {}

        original = None
        if output_original_output:
            traced = self._traced(sig)
            original = traced.wrap_outputs(traced.gm(**base_in))

        if self.mode == "parallel":
            src_locs, base_locs = locs["sources->base"]
            slices = self._parallel_sources(sources, srcreps, src_locs, base_locs, batch, device)
        else:
            slices, src_locs, base_locs = self._serial_sources(sources, srcreps, locs, batch, device, subs, extra)

        active, collect = [], []
        feeds = {}
        on_base = None
        if self.mode == "serial" and srcreps is None:
            # pyvene: each source run drops the setters before it, so only the last group that has a
            # source acts on the base (none at all without sources)
            fed = [keys for keys, s in zip(self._groups.values(), sources) if s is not None]
            on_base = set(fed[-1]) if fed else set()
        for i, key in enumerate(self.sorted_keys):
            iv = self.interventions[key]
            unit = self.representations[key].unit
            if on_base is not None and key not in on_base:
                continue
            if isinstance(iv, CollectIntervention):
                collect.append(key)
            elif key in slices or not self._needs_source(key):
                active.append(key)
            else:
                continue
            bl = L.to_index(base_locs[i], unit, batch, device, f"unit_locations (base side, intervention {i})")
            feeds[f"fxv_loc_{i}"] = bl
            if key in slices:
                feeds[f"fxv_src_{i}"] = slices[key]
        run_in, run_sig = base_in, sig
        if labels is not None:  # the model computes its own loss, as in pyvene (a graph traced with labels)
            run_in, run_sig = {**base_in, "labels": labels.to(device)}, sig + ("labels",)
            try:
                self._traced(run_sig)
            except (TracingError, TypeError) as e:
                raise ValueError(f"labels: {type(self.model).__name__} cannot be run with labels here ({e})") from None
        traced, gm = self._base_graph(run_sig, tuple(active), tuple(collect))
        self.full_intervention_outputs = []
        calls = {}
        for i, key in enumerate(self.sorted_keys):
            if key in active:
                calls[f"fxv_site_{i}"] = self._site_call(
                    key, subs[i] if subs is not None else None, extra,
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
        for j, key in enumerate(collect):
            i = self.sorted_keys.index(key)
            val = flat[nout + j]
            kw = dict(extra) if extra else {}
            res = do_intervention(self.interventions[key], val, None,
                                  engine_subspaces(subs[i]) if subs is not None else None, **kw)
            collected.append(res)
        self.activations = dict(zip(collect, collected))

        if self.return_collect_activations:
            if return_dict:
                return IntervenableModelOutput(original_outputs=original, intervened_outputs=outputs,
                                               collected_activations=collected)
            if collect and not active:
                # fxvene extension: an all-Collect call returns ((orig, collected), collected)
                return (original, collected), collected
            return (original, collected), outputs
        if return_dict:
            return IntervenableModelOutput(original_outputs=original, intervened_outputs=outputs,
                                           collected_activations=None)
        return original, outputs

    __call__ = nn.Module.__call__

    # fxvene extension (issue 4): compile once. Delegates to fxvene/compile.py.
    def compile(self, **options):
        """``torch.compile`` every rewritten graph this model runs (lazily, once per call
        structure; batch/sequence dims dynamic). ``options`` go to ``torch.compile``."""
        from fxvene.compile import compile_options

        self._compile_options = compile_options(options)
        self.__dict__.pop("_compiled_graphs", None)
        return self

    def _run_graph(self, gm, kwargs):
        from fxvene.compile import run

        return run(self, gm, kwargs)

    def _broadcast_source_representations(self, srcreps):
        if srcreps is None:
            return None
        if isinstance(srcreps, dict):
            for k in srcreps:
                if k not in self.representations:
                    raise ValueError(f"source_representations: unknown intervention key {k!r}; keys: {self.sorted_keys}")
            return dict(srcreps)
        if isinstance(srcreps, (list, tuple)):
            if len(srcreps) != len(self.sorted_keys):
                raise ValueError(
                    f"source_representations: got {len(srcreps)} tensors for {len(self.sorted_keys)} interventions"
                )
            return {k: v for k, v in zip(self.sorted_keys, srcreps) if v is not None}
        if isinstance(srcreps, torch.Tensor):
            return {k: srcreps for k in self.sorted_keys}
        raise TypeError("source_representations must be a tensor, a list of tensors or a dict keyed by intervention key")

    def _run_source(self, src, keys, src_locs_by_key, batch, device, prior=(), prior_feeds=None, prior_calls=None):
        src_in, ssig = self._inputs(src, "sources")  # checked already (a no-op) where the caller ran _check_call
        slead = src_in.get("input_ids", src_in.get("inputs_embeds"))
        traced, gm = self._source_graph(ssig, tuple(keys), tuple(prior))
        feeds = dict(prior_feeds or {})
        for key in keys:
            i = self.sorted_keys.index(key)
            unit = self.representations[key].unit
            sl = src_locs_by_key[key]
            if sl is not None:
                t = L.to_index(sl, unit, slead.shape[0], device, f"unit_locations (source side, intervention {i})")
                feeds[f"fxv_sloc_{i}"] = t
        ops = []
        for key in prior:
            i = self.sorted_keys.index(key)
            op = gm.get_submodule(f"fxv_site_{i}")
            ops.append(op)
            op.call = (prior_calls or {}).get(key) or self._site_call(key, None, None)
        try:
            flat = self._run_graph(gm, {**src_in, **feeds})
        finally:
            for op in ops:
                op.call = {}
        return dict(zip(keys, flat))

    def _parallel_sources(self, sources, srcreps, src_locs, base_locs, batch, device):
        slices = {}
        if srcreps is not None:
            for k, v in srcreps.items():
                slices[k] = v
            return slices
        for gi, (g, keys) in enumerate(self._groups.items()):
            src = sources[gi]
            need = [k for k in keys if self._needs_source(k) and not isinstance(self.interventions[k], CollectIntervention)]
            if src is None or not need:
                continue
            by_key = {k: src_locs[self.sorted_keys.index(k)] for k in need}
            slices.update(self._run_source(src, need, by_key, batch, device))
        return slices

    def _serial_sources(self, sources, srcreps, locs, batch, device, subs=None, extra=None):
        groups = list(self._groups.items())
        src_locs, base_locs, _ = U.serial_locations(locs, groups, self.sorted_keys)
        slices = {}
        if srcreps is not None:
            return dict(srcreps), src_locs, base_locs
        prior, prior_feeds = (), {}
        for gi, (g, keys) in enumerate(groups):
            src = sources[gi]
            if src is None:
                prior, prior_feeds = (), {}
                continue
            need = [k for k in keys if self._needs_source(k)]
            by_key = {k: src_locs[self.sorted_keys.index(k)] for k in need}
            calls = {k: self._site_call(k, subs[self.sorted_keys.index(k)] if subs is not None else None, extra)
                     for k in prior}
            got = self._run_source(src, need, by_key, batch, device, prior, prior_feeds, calls)
            # this group's setters act on the next source run (or on the base)
            prior = tuple(keys)
            prior_feeds = {}
            for k in keys:
                i = self.sorted_keys.index(k)
                prior_feeds[f"fxv_loc_{i}"] = L.to_index(base_locs[i], self.representations[k].unit, batch, device,
                                                         f"unit_locations (intervention {i})")
                if k in got:
                    prior_feeds[f"fxv_src_{i}"] = got[k]
            slices = {k: got[k] for k in got}
        return slices, src_locs, base_locs

    def _past_key_values(self, base_in, active, feeds, calls):
        """The intervened run's keys/values, as the model returns them (``use_cache=True``): the
        prompt forward of the KV-cache step graph (:mod:`fxvene.step_graphs`) with the same
        interventions, units and per-call data as the call's graph."""
        from fxvene.generation import _graph
        from fxvene.step_graphs import TF_MAJOR, _make_cache, step_graph

        if "input_ids" not in base_in or set(base_in) - {"input_ids", "attention_mask", "position_ids"}:
            raise ValueError(f"use_cache=True: past_key_values are computed for input_ids (with attention_mask and "
                             f"position_ids) only; base has {sorted(base_in)}")
        ids, mask = base_in["input_ids"], base_in["attention_mask"]
        pos = base_in.get("position_ids")
        if pos is None:  # what the model uses without position_ids
            pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        pos = pos.expand(ids.shape[0], -1).contiguous()
        try:
            with preserved_rng():
                sg = step_graph(self.model, "prefill")
        except TracingError as e:
            raise ValueError(f"use_cache=True: no KV-cache graph for {type(self.model).__name__} ({e})") from None
        gm = _graph(self, sg, active, ())
        empty = sg.empty(ids.shape[0], ids.device) if sg.empty_past else []
        for name, call in calls.items():
            gm.get_submodule(name).call = {**call, "full_outputs": None}
        try:
            flat = gm(ids, mask, pos, *empty, **feeds)
        finally:
            for name in calls:
                gm.get_submodule(name).call = {}
        past = list(flat[1:])
        pairs = tuple((past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2))
        return pairs if TF_MAJOR < 5 else _make_cache(past, "dynamic")

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """pyvene 0.1.8's naming: ``<key>.<name>`` for trainable interventions' parameters, then
        ``model.<name>`` for the model's grad-enabled ones (HF Trainer groups weight decay by these
        names). A parameter shared by linked interventions is listed once."""
        seen = set()
        pre = f"{prefix}." if prefix else ""
        for k, iv in self.interventions.items():
            if isinstance(iv, TrainableIntervention):
                for n, p in iv.named_parameters():
                    if remove_duplicate and id(p) in seen:
                        continue
                    seen.add(id(p))
                    yield f"{pre}{k}.{n}", p
        for n, p in self.model.named_parameters():
            if p.requires_grad and not (remove_duplicate and id(p) in seen):
                seen.add(id(p))
                yield f"{pre}model.{n}", p

    # ------------------------------------------------------------------ trainable side

    def get_trainable_parameters(self):
        # Each parameter once: pyvene 0.1.8 lists a linked (shared) intervention's parameters once per
        # key, so an optimizer built from its list updates shared weights twice per step.
        params, seen = [], set()
        for k, iv in self.interventions.items():
            if isinstance(iv, TrainableIntervention):
                for p in iv.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        params.append(p)
        params += [p for p in self.model.parameters() if p.requires_grad and id(p) not in seen]
        return params

    def count_parameters(self, include_model=False):
        seen, total = set(), 0
        for iv in self.interventions.values():
            if isinstance(iv, TrainableIntervention) and id(iv) not in seen:
                seen.add(id(iv))
                total += sum(p.numel() for p in iv.parameters() if p.requires_grad)
        if include_model:
            total += sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return total

    def set_temperature(self, temp):
        for iv in self.interventions.values():
            if hasattr(iv, "set_temperature"):
                iv.set_temperature(temp)

    def set_device(self, device, set_model=True):
        for iv in self.interventions.values():
            iv.to(device)
        if set_model:
            self.model.to(device)

    def train(self, mode=True):
        for iv in self.interventions.values():
            iv.train(mode)
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        for iv in self.interventions.values():
            iv.zero_grad(set_to_none=set_to_none)

    set_zero_grad = zero_grad

    # ------------------------------------------------------------------ inspection (fxvene.inspection, fxvene.graphdiff)

    def sites(self, signature=("input_ids", "attention_mask")):
        """Where each intervention acts: a list of :class:`fxvene.inspection.SiteInfo` (node, module, shape, ...)."""
        from fxvene.inspection import sites

        return sites(self, signature=signature)

    def print_sites(self, file=None, signature=("input_ids", "attention_mask")):
        """Print the site table (before a run, to check what will be changed); returns the rows."""
        from fxvene.inspection import print_sites

        return print_sites(self, file=file, signature=signature)

    def rewritten_graph(self, plan="base", group=0, signature=("input_ids", "attention_mask"), active=None, collect=None):
        """``(traced, gm)``: the rewritten GraphModule a call runs; see :func:`fxvene.graphdiff.rewritten_graph`."""
        from fxvene.graphdiff import rewritten_graph

        return rewritten_graph(self, plan=plan, group=group, signature=signature, active=active, collect=collect)

    def graph_diff(self, plan="base", group=0, signature=("input_ids", "attention_mask"), active=None, collect=None):
        """The :class:`fxvene.graphdiff.GraphDiff` from the traced model graph to :meth:`rewritten_graph`'s."""
        from fxvene.graphdiff import intervenable_diff

        return intervenable_diff(self, plan=plan, group=group, signature=signature, active=active, collect=collect)

    # ---------------------------------------------------------------- generation (fxvene/generation.py)
    def generate(self, base, sources=None, unit_locations=None, source_representations=None,
                 intervene_on_prompt=False, subspaces=None, output_original_output=False,
                 intervention_additional_kwargs=None, intervene_on=None, decode_steps=None, **generate_kwargs):
        """pyvene 0.1.8's ``generate`` on a KV-cached rewritten graph; returns ``(original_or_None, sequences)``,
        or ``((original_or_None, collected), sequences)`` with a CollectIntervention (one tensor per forward).

        Default semantics are pyvene's (reference section 5.3): ``intervene_on_prompt=False`` acts on every
        decode step at the new token (``{"base": 0}``), never on the prompt; ``intervene_on_prompt=True`` with
        locations acts on the prompt only; with ``unit_locations=None`` on every forward.
        fxvene extension: ``intervene_on="prompt" | "decode" | "all"`` ("all" = the prompt at
        ``unit_locations`` and every generated token in one call) and ``decode_steps=[k, ...]`` (only these
        decode forwards; step k reads the k-th generated token). ``generate_kwargs``: max_new_tokens,
        max_length, do_sample, temperature, top_k, top_p, min_p, typical_p, repetition_penalty,
        no_repeat_ngram_size, min_new_tokens, min_length, eos_token_id, pad_token_id, logits_processor,
        stopping_criteria, generation_config, return_dict_in_generate, output_scores, output_logits, max_time,
        use_cache; early_stopping / length_penalty are accepted and, as in HF without beams, change nothing.
        ``num_beams > 1`` is refused (the cache rows beam search reorders carry per-example interventions).
        See :mod:`fxvene.generation`.
        """
        from fxvene.generation import generate

        return generate(self, base, sources=sources, unit_locations=unit_locations,
                        source_representations=source_representations, intervene_on_prompt=intervene_on_prompt,
                        subspaces=subspaces, output_original_output=output_original_output,
                        intervention_additional_kwargs=intervention_additional_kwargs,
                        intervene_on=intervene_on, decode_steps=decode_steps, **generate_kwargs)

    # ---------------------------------------------------------------- save / load (fxvene/serialization.py)
    def save(self, save_directory, save_to_hf_hub=False, hf_repo_name="my-awesome-model", include_model=False):
        """Write ``config.json`` (pyvene 0.1.8's layout) and safetensors weights. Never pickle.
        See :mod:`fxvene.serialization`."""
        from fxvene.serialization import save

        return save(self, save_directory, save_to_hf_hub=save_to_hf_hub, hf_repo_name=hf_repo_name,
                    include_model=include_model)

    @staticmethod
    def load(load_directory, model, local_directory=None, from_huggingface_hub=False, include_model=False,
             custom_types=None, **kwargs):
        """Rebuild from a directory saved by fxvene or pyvene 0.1.8 (``.bin`` files are read with
        ``torch.load(weights_only=True)``). ``custom_types``: user intervention classes the config may
        name. See :mod:`fxvene.serialization`."""
        from fxvene.serialization import load

        return load(load_directory, model, local_directory=local_directory,
                    from_huggingface_hub=from_huggingface_hub, include_model=include_model,
                    custom_types=custom_types, **kwargs)

    def save_intervention(self, save_directory, include_model=True):
        """Weights only (safetensors), no config. See :mod:`fxvene.serialization`."""
        from fxvene.serialization import save_intervention

        return save_intervention(self, save_directory, include_model=include_model)

    def load_intervention(self, load_directory, include_model=True):
        """Load weights into the existing interventions in place (maps to the CPU, then to where each
        intervention lives; never a hard-coded device). See :mod:`fxvene.serialization`."""
        from fxvene.serialization import load_intervention

        return load_intervention(self, load_directory, include_model=include_model)


def build_intervenable_model(config, model, **kwargs):
    """pyvene's factory: an :class:`IntervenableModel` over ``model`` (no remote-model variant here)."""
    return IntervenableModel(config, model, **kwargs)
