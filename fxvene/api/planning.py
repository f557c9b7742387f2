"""Call planning for IntervenableModel: which rewritten graph a call runs.

The *structure* of a call (which interventions act, which collect, which source groups run) picks a
rewritten GraphModule from the model's cache: the base graph with a site op (or a gather, for
Collect) at each site, and truncated source graphs that stop after the last site a group reads and
return only the gathered units (in train mode a source graph runs the whole forward, so its dropouts
draw what pyvene's full source run draws). Graphs are cached per model mode (train / eval). ``GraphPlanning`` holds these methods for
``fxvene.api.intervenable.IntervenableModel``.

Split from ``fxvene.api.intervenable`` (which re-exports the public helpers here).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace

import numpy as np
import torch

from fxvene.api.build import _reads_elsewhere, _source_where
from fxvene.graph import time_steps
from fxvene.graph.sites import Gather, SiteOp, gather, resolve_site
from fxvene.graph.tracing import trace
from fxvene.interventions import CollectIntervention, LambdaIntervention, SkipIntervention
from fxvene.interventions.swap import PerExampleSubspaces
from fxvene.passes.locate import module_input
from fxvene.passes.rewrite import expose, insert_interventions, truncate


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
    """A ``SiteOp`` for ``as_adaptor=True``: the module's input, gathered at the same units as
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


class GraphPlanning:
    """The graph-building methods of ``fxvene.api.intervenable.IntervenableModel`` (a mixin)."""

    def _train_graphs(self):
        """Whether calls run the train-mode graphs: the model is in train mode (``model.train()``,
        ``enable_model_gradients``, ``IntervenableModel.train()``), so its dropout is live, as in pyvene."""
        return bool(self.model.training)

    def _traced(self, signature, training=None):
        training = self._train_graphs() if training is None else training
        with preserved_rng():
            traced = trace(self.model, signature, tracer=self.tracer, training=training)
        return time_steps.prepare(traced, self.model, getattr(self, "representations", None))

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
        ck = ("base", sig, tuple(active), tuple(collect), self._train_graphs())
        if ck in self._graphs:
            return self._graphs[ck]
        traced = self._traced(sig)
        gm = insert_interventions(traced.gm, self._site_requests(traced, active, collect))
        self._graphs[ck] = (traced, gm)
        return traced, gm

    def _site_requests(self, traced, active, collect):
        """``insert_interventions`` requests of the keys in ``active`` (site ops) and ``collect`` (taps)."""
        reqs = []
        own, keep = self._step_collects(traced, active, collect)
        for key in self.sorted_keys:
            if key not in active and key not in collect:
                continue
            i = self.sorted_keys.index(key)
            if self.representations[key].unit == "t":
                reqs.extend(
                    time_steps.requests(
                        traced,
                        self.model,
                        self.representations[key],
                        i,
                        key,
                        self.interventions[key],
                        collect=key in collect,
                        own_stack=key in own,
                        keep=keep.get(key, ()),
                    )
                )
                continue
            site = self._site(traced, key)
            unit = self.representations[key].unit
            if key in collect:
                reqs.append(
                    dict(
                        name=f"fxv_collect_{i}",
                        module=Gather(site, unit, f"unit_locations (base side) of {key}"),
                        node=site.node,
                        port=site.port,
                        region=site.path,
                        inputs=[f"fxv_loc_{i}"],
                        collect=True,
                    )
                )
            else:
                iv = self.interventions[key]
                inputs = [f"fxv_src_{i}", f"fxv_loc_{i}"]
                if self.as_adaptor and gets_kwargs(iv):
                    op = AdaptorSiteOp(key, site, unit, iv)
                    inputs.append(module_input(traced.gm, site.path).name)
                else:
                    op = SiteOp(key, site, unit, iv)
                reqs.append(
                    dict(
                        name=f"fxv_site_{i}", module=op, node=site.node, port=site.port, region=site.path, inputs=inputs
                    )
                )
        return reqs

    def _step_collects(self, traced, active, collect):
        """Unit ``t`` Collects listed before a setter at the same steps: those Collects (each reads its own
        stack) and, per setter, the stacks it must leave alone, so a Collect sees what pyvene's does."""
        t_keys = [k for k in self.sorted_keys if (k in active or k in collect) and self.representations[k].unit == "t"]
        if len(t_keys) < 2:
            return set(), {}
        steps = {}
        for k in t_keys:
            rep = self.representations[k]
            steps[k] = time_steps.resolve(traced, self.model, rep.component, rep.layer).nodes
        own, keep = set(), {}
        for n, c in enumerate(t_keys):
            later = [s for s in t_keys[n + 1 :] if s in active and s not in collect and steps[s] == steps[c]]
            if c not in collect or not later:
                continue
            own.add(c)
            stack = time_steps.collect_stack(traced, self.model, self.representations[c], self.sorted_keys.index(c))
            for s in later:
                keep.setdefault(s, []).append(stack)
        return own, keep

    def _site_call(self, key, sub, extra, **more):
        """The per-call data a site op reads (subspaces, keyword arguments as pyvene passes them)."""
        call = {
            "subspaces": engine_subspaces(sub),
            "kwargs": dict(extra or {}) if gets_kwargs(self.interventions[key]) else {},
        }
        call.update(more)
        return call

    def _source_graph(self, sig, keys, prior=()):
        ck = ("source", sig, tuple(keys), tuple(prior), self._train_graphs())
        if ck in self._graphs:
            return self._graphs[ck]
        traced = self._traced(sig)
        reqs = []
        for key in keys:
            i = self.sorted_keys.index(key)
            if self.representations[key].unit == "t":
                reqs.append(time_steps.source_request(traced, self.model, self.representations[key], i, key))
                continue
            site = self._site(traced, key, source_side=True)
            reqs.append(
                dict(
                    node=site.node,
                    port=site.port,
                    region=site.path,
                    module=Gather(site, self.representations[key].unit, f"unit_locations (source side) of {key}"),
                    name=f"fxv_get_{i}",
                    inputs=[f"fxv_sloc_{i}"],
                )
            )
        n_out = len(traced.output_keys)
        if prior:
            # serial mode: the previous group's setters act on this source run, and each getter is a tap
            # among them in pyvene's hook order (one tensor may have several names; the setters were
            # registered first, so on one hook they act before the getter)
            taps = [dict(r, port=r.get("port", "output"), region=r.get("region", ""), collect=True) for r in reqs]
            gm = insert_interventions(traced.gm, self._site_requests(traced, prior, ()) + taps)
        else:
            gm = expose(traced.gm, reqs)
        if self._train_graphs():
            # train mode: the whole forward runs, so its dropouts draw every random number pyvene's
            # full source forward draws; the gathered values are the outputs after the model's
            gm.meta["fxvene_skip_outputs"] = n_out
        else:
            gm = truncate(gm, list(range(n_out, n_out + len(reqs))))
        self._graphs[ck] = (traced, gm)
        return traced, gm

    def _needs_source(self, key):
        """Whether ``key`` cannot act without a source (a function acts with ``source=None``)."""
        iv = self.interventions[key]
        if isinstance(iv, LambdaIntervention):
            return False
        return not getattr(iv, "is_source_constant", False)

    def _reads_source(self, key):
        """Whether ``key`` reads its group's source run when the call has one: every intervention that
        needs a source, and a function (pyvene 0.1.8 calls ``f(base, source)`` with the source's units)."""
        iv = self.interventions[key]
        if isinstance(iv, CollectIntervention):
            return False
        return isinstance(iv, LambdaIntervention) or self._needs_source(key)
