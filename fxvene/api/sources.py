"""Source runs of IntervenableModel: parallel (each group's source run on its own) and serial
(each group's setters act on the next group's source run), given source representations, and the
``past_key_values`` of an intervened run (``use_cache=True``). ``SourceRuns`` holds these
methods for ``fxvene.api.intervenable.IntervenableModel``.

Split from ``fxvene.api.intervenable``.
"""

from __future__ import annotations

import torch

from fxvene.api.planning import preserved_rng
from fxvene.graph.errors import clip
from fxvene.graph.tracing import TracingError


class SourceRuns:
    """The source-run methods of ``fxvene.api.intervenable.IntervenableModel`` (a mixin)."""

    def _run_source(self, call, g, keys, prior=(), prior_feeds=None, prior_calls=None):
        """Run group ``g``'s source (of the ``fxvene.api.unit_checks.CheckedCall`` ``call``) through
        its truncated graph; returns the values at ``keys``' sites. ``prior``: keys whose setters act on
        this run (serial mode), fed ``prior_feeds`` and called with ``prior_calls``."""
        traced, gm = self._source_graph(call.source_signatures[g], tuple(keys), tuple(prior))
        feeds = dict(prior_feeds or {})
        for key in keys:
            i = self.sorted_keys.index(key)
            if call.src_locs[i] is not None:
                feeds[f"fxv_sloc_{i}"] = call.index("source", i, self.representations[key].unit)
        ops = []
        present = dict(gm.named_children())
        for key in prior:
            op = present.get(f"fxv_site_{self.sorted_keys.index(key)}")
            if op is None:  # a setter no read site of this group depends on: truncated away (pyvene: it fires unread)
                continue
            ops.append(op)
            op.call = (prior_calls or {}).get(key) or self._site_call(key, None, None)
        try:
            flat = self._run_graph(gm, {**call.sources[g], **feeds})
        finally:
            for op in ops:
                op.call = {}
        return dict(zip(keys, flat[gm.meta.get("fxvene_skip_outputs", 0) :]))

    def _parallel_sources(self, call):
        """Each group's source run on its own: the source values of every intervention that reads one."""
        if call.source_representations is not None:
            return dict(call.source_representations)
        slices = {}
        for gi, keys in enumerate(self._groups.values()):
            need = [k for k in keys if self._reads_source(k)]
            if call.sources[gi] is not None and need:
                slices.update(self._run_source(call, gi, need))
        return slices

    def _serial_sources(self, call):
        """Serial mode: each group's setters act on the next group's source run; returns the last
        group's source values."""
        if call.source_representations is not None:
            return dict(call.source_representations)
        slices = {}
        prior, prior_feeds = (), {}
        for gi, keys in enumerate(self._groups.values()):
            if call.sources[gi] is None:
                prior, prior_feeds = (), {}
                continue
            need = [k for k in keys if self._reads_source(k)]
            subs = call.subspaces
            calls = {
                k: self._site_call(k, subs[self.sorted_keys.index(k)] if subs is not None else None, call.extra)
                for k in prior
            }
            got = self._run_source(call, gi, need, prior, prior_feeds, calls)
            # this group's setters act on the next source run (or on the base)
            prior = tuple(keys)
            prior_feeds = {}
            for k in keys:
                i = self.sorted_keys.index(k)
                prior_feeds[f"fxv_loc_{i}"] = call.index("base", i, self.representations[k].unit)
                if k in got:
                    prior_feeds[f"fxv_src_{i}"] = got[k]
            slices = dict(got)
        return slices

    def _past_key_values(self, base_in, active, feeds, calls):
        """The intervened run's keys/values, as the model returns them (``use_cache=True``): the
        prompt forward of the KV-cache step graph (``fxvene.graph.step_graphs``) with the same
        interventions, units and per-call data as the call's graph."""
        from fxvene.api.generation import step_graph_for
        from fxvene.graph.step_graphs import TF_MAJOR, make_cache, step_graph

        lead = "inputs_embeds" if "inputs_embeds" in base_in else "input_ids"
        if lead not in base_in or set(base_in) - {lead, "attention_mask", "position_ids"}:
            raise ValueError(
                f"use_cache=True: past_key_values are computed for input_ids or inputs_embeds (with attention_mask "
                f"and position_ids) only; base has {sorted(base_in)}"
            )
        ids, mask = base_in[lead], base_in["attention_mask"]  # ids: (batch, seq) or embeddings (batch, seq, width)
        pos = base_in.get("position_ids")
        if pos is None:  # what the model uses without position_ids
            pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        pos = pos.expand(ids.shape[0], -1).contiguous()
        try:
            with preserved_rng():
                sg = step_graph(self.model, "prefill" if lead == "input_ids" else "prefill_embeds")
        except TracingError as e:
            raise ValueError(
                f"use_cache=True: no KV-cache graph for {type(self.model).__name__} ({clip(e, 200)})"
            ) from None
        gm = step_graph_for(self, sg, active, ())
        # the call's feeds without those of its Collects (this graph has no taps)
        takes = {n.target for n in gm.graph.nodes if n.op == "placeholder"}
        feeds = {k: v for k, v in feeds.items() if k in takes}
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
        return pairs if TF_MAJOR < 5 else make_cache(past, "dynamic")
