"""Source runs of IntervenableModel: parallel (each group's source run on its own) and serial
(each group's setters act on the next group's source run), given source representations, and the
``past_key_values`` of an intervened run (``use_cache=True``). :class:`SourceRuns` holds these
methods for :class:`fxvene.intervenable.IntervenableModel`.

Split from :mod:`fxvene.intervenable`.
"""

from __future__ import annotations

import torch

from fxvene import locations as L
from fxvene import unit_checks as U
from fxvene.intervenable_graphs import preserved_rng
from fxvene.interventions import CollectIntervention
from fxvene.tracing import TracingError


class SourceRuns:
    """The source-run methods of :class:`fxvene.intervenable.IntervenableModel` (a mixin)."""

    def _broadcast_source_representations(self, srcreps):
        if srcreps is None:
            return None
        if isinstance(srcreps, dict):
            for k in srcreps:
                if k not in self.representations:
                    raise ValueError(
                        f"source_representations: unknown intervention key {k!r}; keys: {self.sorted_keys}"
                    )
            return dict(srcreps)
        if isinstance(srcreps, (list, tuple)):
            if len(srcreps) != len(self.sorted_keys):
                raise ValueError(
                    f"source_representations: got {len(srcreps)} tensors for {len(self.sorted_keys)} interventions"
                )
            return {k: v for k, v in zip(self.sorted_keys, srcreps) if v is not None}
        if isinstance(srcreps, torch.Tensor):
            return {k: srcreps for k in self.sorted_keys}
        raise TypeError(
            "source_representations must be a tensor, a list of tensors or a dict keyed by intervention key"
        )

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
        for gi, keys in enumerate(self._groups.values()):
            src = sources[gi]
            need = [
                k for k in keys if self._needs_source(k) and not isinstance(self.interventions[k], CollectIntervention)
            ]
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
        for gi, (_g, keys) in enumerate(groups):
            src = sources[gi]
            if src is None:
                prior, prior_feeds = (), {}
                continue
            need = [k for k in keys if self._needs_source(k)]
            by_key = {k: src_locs[self.sorted_keys.index(k)] for k in need}
            calls = {
                k: self._site_call(k, subs[self.sorted_keys.index(k)] if subs is not None else None, extra)
                for k in prior
            }
            got = self._run_source(src, need, by_key, batch, device, prior, prior_feeds, calls)
            # this group's setters act on the next source run (or on the base)
            prior = tuple(keys)
            prior_feeds = {}
            for k in keys:
                i = self.sorted_keys.index(k)
                prior_feeds[f"fxv_loc_{i}"] = L.to_index(
                    base_locs[i], self.representations[k].unit, batch, device, f"unit_locations (intervention {i})"
                )
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
            raise ValueError(
                f"use_cache=True: past_key_values are computed for input_ids (with attention_mask and "
                f"position_ids) only; base has {sorted(base_in)}"
            )
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
