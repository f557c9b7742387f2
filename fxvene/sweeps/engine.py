"""The sweep engine: one model's traced graph cut into segments at the sweep sites, run as rows.

What it computes less of, and how (readout, layer-start reuse, causal prefix, position-wise tail,
per-row selectors), is told in ``fxvene.sweeps.sweep``, which holds the public ``patching_sweep`` and
``causal_trace``. Here: the per-row selector op (``SweepSite``), the engine that builds the
segments once per (model, sites) (``SweepEngine``), caches a base run at every cut
(``SweepEngine.prepare``, ``SweepEngine.prepare_pair``) and runs the rows
(``SweepEngine.run_rows``): packed in lanes (``fxvene.sweeps.packing``) where it can, else in
start-position groups chosen by expected cost (``fxvene.sweeps.groups``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from fxvene.graph.model_io import STEPS
from fxvene.graph.sites import gather, resolve_site, scatter, slot_columns
from fxvene.graph.tracing import TracingError, trace
from fxvene.models import config_value, family_for
from fxvene.passes.rewrite import expose, truncate
from fxvene.passes.slice import boundary_after, node_order, segment
from fxvene.passes.sweep import insert_selectors, readout
from fxvene.sweeps.groups import RowGroups, _bar
from fxvene.sweeps.packing import packable, run_packed

_PREFIX = "fxv_in_"


class SweepSite(nn.Module):
    """Per-row selector at a site: ``op(x, src, loc, on)``; row b's unit at ``loc[b]`` becomes
    ``src[b]`` where ``on[b]``, else stays. ``loc`` is ``(b, 1)`` positions (unit ``pos``) or
    ``(b, 2)`` (head, position) (unit ``h.pos``)."""

    def __init__(self, site, unit):
        super().__init__()
        self.site = site
        self.unit = unit

    def forward(self, x, src=None, loc=None, on=None):
        if src is None:
            return x
        cols = slot_columns(self.site, x.shape[-1])
        if self.unit == "pos" and loc.shape[-1] == 2:
            # packed rows (fxvene/sweeps/packing.py): ``loc`` is (batch row, position) of each patch
            rows = torch.nonzero(on).flatten()
            x[loc[rows, 0], loc[rows, 1], cols] = src[rows, 0].to(x.dtype)
            return x
        if (
            not torch.compiler.is_compiling()
            and not torch.is_grad_enabled()
            and self.site.n_heads is None
            and cols is not None
        ):
            # eager fast path: write only the active rows, in place (the runtime owns ``x``:
            # it is a fresh batch built for this call, never a cached or user tensor)
            rows = torch.nonzero(on).flatten()
            if len(rows):
                x[rows, loc[rows, 0], cols] = src[rows, 0].to(x.dtype)
            return x
        idx = (loc[:, :1], loc[:, 1:]) if self.unit == "h.pos" else loc
        cur = gather(x, self.site, self.unit, idx, "sweep positions")
        mask = on.reshape((-1,) + (1,) * (cur.dim() - 1))
        new = torch.where(mask, src.to(cur.dtype), cur)
        return scatter(x, self.site, self.unit, idx, new)


@dataclass
class _Segment:
    gm: object
    ins: list
    outs: list | None
    ops: list = field(default_factory=list)  # site indices whose selector sits at this segment's entry
    tail: bool = False
    fn: object = None
    used: set = field(default_factory=set)  # the placeholders the segment reads
    pfn: object = None  # the segment with the packing mask (fxvene/sweeps/packing.py; None: not packable)
    pused: set = field(default_factory=set)  # the packing-mask placeholders it reads


class SweepEngine(RowGroups):
    """Segments of one model's traced graph for a set of sweep sites (built once, reused).

    ``sites``: list of ``(component, layer)``. ``tokens``: readout only the logits of token ids
    given at run time (``(b, k)``); else the full vocabulary at the last position (``(b, V)``).
    ``position``: the position read out (-1: the last; another one, e.g. a masked LM's masked token,
    runs without the position-wise tail). ``steps``: trace the graph for this sequence length (a model
    whose graph has one length; see ``engine_for``). A family with bidirectional attention (``Family.causal``
    False: BERT, ESM) runs without the causal prefix: a patch changes the positions before it too.
    ``images``: the graph also takes ``pixel_values`` (LLaVA: the image spliced into the text), read by the
    part before the first block only; no causal prefix (the chunk step graph takes no image).
    """

    def __init__(
        self,
        model,
        sites,
        tracer="auto",
        tokens=False,
        tail=True,
        compile=False,
        prefix="auto",
        position=-1,
        steps=None,
        images=False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if prefix not in ("auto", True, False):
            raise ValueError(f"prefix must be 'auto', True or False, got {prefix!r}")
        fam, _ = family_for(model)
        if fam is None:
            raise ValueError(f"sweeps need a model family fxvene knows (GPT-2, Llama, ...); got {type(model).__name__}")
        self.model = model
        self.n_layers = int(config_value(model.config, fam.n_layers))
        self.position = int(position)
        self.images = bool(images)
        tail = tail and self.position == -1
        # the causal prefix needs the chunk step graph (export, with past keys/values as inputs)
        step = None
        self.prefix_note = None
        copts = None
        if compile is not False and compile is not None:
            from fxvene.graph.compile import compile_options

            copts = compile_options(compile)  # True or a dict of torch.compile options (TypeError otherwise)
        if prefix is not False and (not fam.causal or self.position != -1):
            why = f"{type(model).__name__} attends both ways: a patch changes the positions before it too"
            if fam.causal:
                why = f"the readout reads position {self.position}, not the last"
            if prefix is True:
                raise ValueError(f"prefix=True needs causal attention read at the last position; {why}")
            self.prefix_note = why
        elif prefix is not False and self.images:
            if prefix is True:
                raise ValueError("prefix=True: the chunk step graph takes no image (pixel_values); use prefix='auto'")
            self.prefix_note = "pixel_values: the chunk step graph takes no image"
        elif prefix is not False and tracer == "hf_fx":
            if prefix is True:
                raise ValueError(
                    "prefix=True needs the chunk step graph, which is traced with torch.export: "
                    "use tracer='auto' or 'export'"
                )
            self.prefix_note = "tracer='hf_fx': the causal prefix needs the export chunk graph"
        elif prefix is not False:
            from fxvene.api.generation import step_graph

            try:
                step = step_graph(model, "chunk")
            except TracingError as e:
                if prefix is True:
                    raise ValueError(f"prefix=True: {e}") from e
                self.prefix_note = str(e)
        names = ("input_ids", "attention_mask") + (("pixel_values",) if self.images else ())
        names += () if steps is None else (f"{STEPS}{int(steps)}",)
        traced = step.locate if step is not None else trace(model, names, tracer=tracer)
        self.traced = traced
        self.step = step
        gm = readout(traced.gm, 0, self.position, tokens=tokens)
        if self.images:  # LLaVA also returns its image features, cut before the first block: the logits only
            gm = truncate(gm, [0])
        self.tokens = tokens
        self.sites = [resolve_site(traced, model, c, l) for c, l in sites]
        self.site_keys = list(sites)
        start = resolve_site(traced, model, "block_input", 0)
        self.start_node = start.node
        order = node_order(gm)
        b0 = boundary_after(gm, start.node)
        bounds = {b0}
        for (c, l), s in zip(sites, self.sites):
            if order[s.node] < order[start.node]:
                raise ValueError(f"sweep site {c} at layer {l} lies before the first block's input")
            bounds.add(boundary_after(gm, s.node))
        self.tail_bound = None
        if tail:
            try:
                last = resolve_site(traced, model, "attention_value_output", self.n_layers - 1)
                self.tail_bound = boundary_after(gm, last.node)
                bounds.add(self.tail_bound)
            except ValueError:
                self.tail_bound = None
        bounds = sorted(bounds)
        self.bounds = bounds
        pre, _, pre_outs = segment(gm, None, bounds[0], _PREFIX)
        if pre_outs != [start.node]:
            raise ValueError(f"sweep: the first block's input is not a clean cut of this graph ({pre_outs})")
        self.pre = _Segment(pre, [], pre_outs)
        segs = []
        for i, b in enumerate(bounds):
            stop = bounds[i + 1] if i + 1 < len(bounds) else None
            sg, ins, outs = segment(gm, b, stop, _PREFIX)
            seg = _Segment(sg, ins, outs, tail=self.tail_bound is not None and b >= self.tail_bound)
            reqs = []
            for j, s in enumerate(self.sites):
                if boundary_after(gm, s.node) == b:
                    if s.node not in ins:
                        raise ValueError(f"sweep site {self.site_keys[j]} is not a cut value of the graph")
                    unit = "h.pos" if s.n_heads is not None else "pos"
                    reqs.append(dict(name=f"fxv_sel_{j}", module=SweepSite(s, unit), node=_PREFIX + s.node))
                    seg.ops.append(j)
            if reqs:
                seg.gm = insert_selectors(sg, reqs)
            segs.append(seg)
        self.segments = segs
        self.seg_of_site = {}
        for i, seg in enumerate(segs):
            for j in seg.ops:
                self.seg_of_site[j] = i
        self._shapes = {}
        self.compiled = copts is not None
        self._announced = False
        self.cache_seg = None
        self.prefix = False
        if step is not None:
            self._build_step_cache(step, gm, tokens)
            why = self._prefix_blocker(gm)
            if why is None:
                self.prefix = True
            elif prefix is True:
                raise ValueError(f"prefix=True: {why}")
            else:
                self.prefix_note = why
        for seg in [self.pre] + segs + ([self.cache_seg] if self.cache_seg is not None else []):
            if copts is not None:
                from fxvene.graph.compile import compile_graph

                seg.fn = compile_graph(seg.gm, copts)
            else:
                seg.fn = seg.gm
            seg.used = {n.target for n in seg.gm.graph.nodes if n.op == "placeholder" and n.users}
        self.packed_segments = False
        if self.prefix and copts is None:
            self._build_packed(fam)

    def _build_packed(self, fam):
        """The packed variants of the segments before the position-wise tail (fxvene/sweeps/packing.py):
        families whose attention was checked against references (GPT-2, the Llama layout), every
        attention found (``passes.pack.pack_attention``); else rows keep their start-position groups."""
        from fxvene.passes.pack import PackError, pack_attention

        if fam.name not in _PACKED_FAMILIES or self.tail_bound is None:
            return
        try:
            for seg in self.segments:
                if not seg.tail:
                    gm, seg.pused = pack_attention(seg.gm)
                    seg.pfn = gm
        except PackError as e:
            self.pack_note = str(e)
            return
        self.packed_segments = True

    def _build_step_cache(self, step, gm, tokens):
        """The cache run of a chunk-graph engine: the step graph from the first block's input to the
        end, with the keys/values of every layer and every segment boundary's value as outputs (one
        call instead of one per segment)."""
        full = readout(step.gm, 0, -1, tokens=tokens)
        b0 = boundary_after(full, self.start_node)
        cg, ins, _ = segment(full, b0, None, _PREFIX)
        if ins != [self.start_node]:
            raise ValueError(f"sweep: the first block's input is not a clean cut of the step graph ({ins})")
        names = []
        for seg in self.segments:
            for k in seg.ins:
                if k != self.start_node and k not in names:
                    names.append(k)
        cg = expose(cg, [{"node": k} for k in names])
        self.cache_seg = _Segment(cg, ins, names)
        self.n_kv = step.n_kv
        phs = {n.target: n for n in step.gm.graph.nodes if n.op == "placeholder"}
        self._past = []
        for i in range(step.n_kv):
            val = phs[f"past_{i}"].meta["val"]
            self._past.append((val.dtype, int(val.shape[1]), int(val.shape[3])))

    def _prefix_blocker(self, gm):
        """Why rows cannot start at their first patched position (None: they can). Every value cut
        at a segment boundary must be sequence-major ((batch, seq, ...)), so that the rows' cached
        base values can be sliced to the positions they recompute."""
        phs = {n.target: n for n in gm.graph.nodes if n.op == "placeholder"}
        seq = phs["input_ids"].meta.get("val")
        if seq is None:
            return "the chunk graph has no shape metadata"
        seq = str(seq.shape[1])
        by_name = {n.name: n for n in gm.graph.nodes}
        for seg in self.segments:
            for k in seg.ins:
                val = by_name[k].meta.get("val") if k in by_name else None
                if not isinstance(val, torch.Tensor) or val.dim() < 2 or str(val.shape[1]) != seq:
                    shape = None if not isinstance(val, torch.Tensor) else tuple(val.shape)
                    return f"the cut value {k!r} (shape {shape}) is not (batch, seq, ...)"
        return None

    # -------------------------------------------------------------------------------- runs

    def _feeds(self, seg, ids, mask, start, kv, tokens):
        """The graph inputs of one segment call on ``ids`` (the positions ``start`` ...). A step graph
        also takes position ids and the keys/values of positions ``< start`` (``kv``: the rows' cached
        keys/values, or None for an empty past)."""
        kw = {"input_ids": ids, "attention_mask": mask}
        if self.images:  # read before the first block only (``cache`` feeds the images there)
            kw["pixel_values"] = None
        if self.step is not None:
            n, s = ids.shape
            kw["position_ids"] = torch.arange(start, start + s, device=ids.device).expand(n, s)
            past = seg.__dict__.get("past")
            if past is None:  # (index, name, used) of every past input, once per segment
                past = seg.past = [(i, f"past_{i}", f"past_{i}" in seg.used) for i in range(len(self._past))]
            for i, name, used in past:
                if not used:
                    kw[name] = None
                elif kv is None:
                    dtype, h, hd = self._past[i]
                    kw[name] = torch.zeros((n, h, 0, hd), dtype=dtype, device=ids.device)
                else:
                    kw[name] = kv[i][:n, :, :start]
        if self.tokens:  # every segment keeps the readout's placeholder (unused before the head)
            kw["fxv_tokens"] = tokens
        return kw

    def _step(self, seg, feeds, values, sel, bar, fn=None):
        """Run one segment for the rows: ``(readout, values)`` — the readout of the last segment (else
        None) and the values carried into the next segment (the same ones after the last)."""
        res = self._call(seg, feeds, values, sel, fn)
        if bar is not None:
            bar.update(1)
        if seg.outs is None:
            return res[0], values
        return None, dict(zip(seg.outs, res))

    def _call(self, seg, feeds, values, sel, fn=None):
        kw = dict(feeds)
        for name in seg.ins:
            kw[_PREFIX + name] = values[name]
        ids = feeds["input_ids"]
        for name in seg.gm.meta.get("fxvene_shape_inputs", ()):
            kw["fxv_shape_" + name] = self._stand_in(name, ids.shape[0], ids.shape[1])
        for j in seg.ops:
            src, loc, on = sel.get(j, (None, None, None))
            kw[f"fxv_sel_{j}_src"] = src
            kw[f"fxv_sel_{j}_loc"] = loc
            kw[f"fxv_sel_{j}_on"] = on
        if self.compiled:
            # no duck sizing: a head dim equal to a sequence length must not tie the two symbols
            marked = self._mark(kw, ids.shape[0])
            try:
                with torch.fx.experimental._config.patch(use_duck_shape=False):
                    return seg.fn(**kw)
            finally:
                from fxvene.graph.compile import unmark

                unmark(marked)
        return (fn or seg.fn)(**kw)

    def compiling(self):
        """Context for a sweep call: the first call of a compiled engine says that it compiles (one
        line on stderr with the time it took); later calls, and eager engines, say nothing."""
        import contextlib

        if not self.compiled or self._announced:
            return contextlib.nullcontext()
        self._announced = True
        from fxvene.graph.compile import say

        return say(
            f"compiling the sweep's {len(self.segments) + 2} graph segments (first call of this sweep "
            "structure; later prompts, lengths and cells reuse them)"
        )

    def _mark(self, kw, rows):
        """Compiled segments: every input is rows-major (values a graph broadcasts over the batch are
        repeated to the rows); the row count is one unbacked symbol (no size-1 specialisation) and the
        position dims are dynamic, so new row counts, start positions and lengths reuse the code."""
        from fxvene.graph.compile import mark_dims

        for k, v in kw.items():
            if isinstance(v, torch.Tensor) and k != "fxv_tokens" and v.dim() >= 1 and v.shape[0] != rows:
                kw[k] = v.expand((rows,) + tuple(v.shape[1:])).contiguous()
            elif isinstance(v, torch.Tensor) and v.stride() != _dense_strides(v.shape):
                # strides are guarded (a sliced view would recompile), and a view's symbolic strides can
                # reach a guard inductor emits without binding their symbol (the tail's one-position rows
                # are "contiguous" views with the full length's strides): a dense copy
                kw[k] = v.clone(memory_format=torch.contiguous_format)
        seq = {"input_ids": 1, "attention_mask": 1, "position_ids": 1}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor) and v.dim() >= 2 and k.startswith(("fxv_in_", "fxv_shape_")):
                seq[k] = 1
            elif k.startswith("past_"):
                seq[k] = 2
        return mark_dims(kw, rows, seq_dims=seq, batch_names=lambda k: k != "fxv_tokens")

    def _stand_in(self, name, rows, seq):
        """A zero-stride tensor with the shape ``name`` has in a run of ``rows`` x ``seq``."""
        rec = self._shapes.get(name)
        if rec is None:
            raise ValueError(f"sweep: no recorded shape for the stand-in of {name!r}")
        dtype, rest = rec
        return torch.empty((), dtype=dtype).expand((rows, seq) + rest)

    @torch.no_grad()
    def cache(self, input_ids, attention_mask, perturb=None, tokens=None, pixel_values=None):
        """Run the plain model through every segment; returns (values per segment, readout, keys/values
        per layer (step graphs; else None)). ``perturb(x)`` edits the first block's input (noise)
        before the blocks run. ``pixel_values``: the images of an ``images`` engine."""
        feeds = self._feeds(self.pre, input_ids, attention_mask, 0, None, tokens)
        if self.images:
            if pixel_values is None:
                raise ValueError("inputs: this sweep splices images into the text; give 'pixel_values'")
            feeds["pixel_values"] = pixel_values
        out = self.pre.fn(**feeds)
        values = {self.start_node: out[0]}
        self._record(values)
        if perturb is not None:
            values[self.start_node] = perturb(values[self.start_node])
        if self.cache_seg is not None:
            res = self._call(
                self.cache_seg, self._feeds(self.cache_seg, input_ids, attention_mask, 0, None, tokens), values, {}
            )
            final, kv = res[0], list(res[1 : 1 + self.n_kv])
            values.update(zip(self.cache_seg.outs, res[1 + self.n_kv :]))
            self._record(values)
            return [{k: values[k] for k in seg.ins} for seg in self.segments], final, kv
        per_seg = []
        final = None
        for seg in self.segments:
            per_seg.append({k: values[k] for k in seg.ins})
            res = self._call(seg, self._feeds(seg, input_ids, attention_mask, 0, None, tokens), values, {})
            if seg.outs is None:
                final = res[0]
            else:
                values = dict(zip(seg.outs, res))
                self._record(values)
        return per_seg, final, None

    def _record(self, values):
        for k, v in values.items():
            if isinstance(v, torch.Tensor) and v.dim() >= 2:
                self._shapes[k] = (v.dtype, tuple(v.shape[2:]))

    @torch.no_grad()
    def run_rows(self, base, source, rows, tokens=None, max_rows=None, progress=None):
        """Run sweep rows. ``base``/``source``: dicts from ``prepare`` (ids, mask, cached
        values, batch). ``rows``: dict of int64 arrays ``sample`` (R,) (the base/source example
        of the row), ``loc`` (R, n_sites) (positions; -1: site off), ``head`` (R, n_sites).
        Returns the readout for every row, in row order.

        With the causal prefix (``self.prefix``) a row whose first patched position is ``p`` runs
        only positions ``p ...``, attending over the base run's cached keys/values of ``0 .. p-1``
        (positions before ``p`` are the base run's at every layer: nothing there changes); rows
        are packed in lanes (``fxvene.sweeps.packing``) or grouped by ``p``."""
        sample = torch.as_tensor(rows["sample"], dtype=torch.long)
        loc = torch.as_tensor(rows["loc"], dtype=torch.long)
        head = torch.as_tensor(rows["head"], dtype=torch.long) if rows.get("head") is not None else None
        R = sample.shape[0]
        if R == 0:
            raise ValueError("sweep: no cells to run")
        entry = torch.full((R,), len(self.segments), dtype=torch.long)
        for j in range(loc.shape[1]):
            on = loc[:, j] >= 0
            entry = torch.where(on, torch.minimum(entry, torch.full_like(entry, self.seg_of_site[j])), entry)
        if bool((entry >= len(self.segments)).any()):
            raise ValueError("sweep: a row has no active site")
        self.last_packed = packable(self, base, loc, head)
        if self.last_packed:
            return self._run_packed(base, source, sample, loc, entry, tokens, max_rows, progress)
        return self._run_groups(base, source, sample, loc, head, entry, tokens, max_rows, progress)

    def _run_packed(self, base, source, sample, loc, entry, tokens, max_rows, progress):
        """Rows packed in lanes (fxvene/sweeps/packing.py), in chunks of ``max_rows`` rows."""
        R, seq = sample.shape[0], base["ids"].shape[1]
        first = torch.where(loc >= 0, loc, torch.full_like(loc, seq)).min(1).values.clamp(max=seq - 1)
        order = torch.from_numpy(np.argsort(entry.numpy(), kind="stable")).long()
        max_rows = R if max_rows is None else int(max_rows)
        chunks = [order[i : i + max_rows] for i in range(0, R, max_rows)]
        bar = _bar(sum(len(self.segments) - int(entry[c].min()) for c in chunks), progress)
        try:
            out = torch.cat(
                [run_packed(self, base, source, sample[c], loc[c], entry[c], first[c], tokens, bar) for c in chunks], 0
            )
        finally:
            if bar is not None:
                bar.close()
        inv = torch.empty_like(order)
        inv[order] = torch.arange(R)
        return out[inv]

    def prepare(self, inputs, perturb=None, tokens=None):
        ids, mask = ids_mask(inputs, "inputs")
        return self._prepared(ids, mask, *self.cache(ids, mask, perturb, tokens, inputs.get("pixel_values")))

    def prepare_pair(self, base, source, perturb=None, tokens=None):
        """``prepare`` of ``base`` (``perturb`` edits its rows only) and of ``source`` (the same
        length) in one cache run: every layer's weights are read once for both."""
        b_ids, b_mask = ids_mask(base, "base")
        s_ids, s_mask = ids_mask(source, "source")
        nb, N = b_ids.shape[0], b_ids.shape[0] + s_ids.shape[0]
        if b_ids.shape[1] != s_ids.shape[1] or N == 1:
            return self.prepare(base, perturb, tokens), self.prepare(source, None, tokens)
        ids, mask = torch.cat([b_ids, s_ids]), torch.cat([b_mask, s_mask])
        edit = None if perturb is None else (lambda x: torch.cat([perturb(x[:nb]), x[nb:]]))
        px = [d.get("pixel_values") for d in (base, source)]
        px = torch.cat(px) if self.images and px[0] is not None and px[1] is not None else None
        cache, final, kv = self.cache(ids, mask, edit, tokens, px)

        def part(v, lo, hi):
            return v[lo:hi] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == N else v

        return tuple(
            self._prepared(
                i,
                m,
                [{k: part(v, lo, hi) for k, v in vals.items()} for vals in cache],
                part(final, lo, hi),
                None if kv is None else [part(t, lo, hi) for t in kv],
            )
            for i, m, lo, hi in ((b_ids, b_mask, 0, nb), (s_ids, s_mask, nb, N))
        )

    def _prepared(self, ids, mask, cache, final, kv):
        self._check_batched(cache, ids.shape[0])
        self._tail_ok = self.tail_bound is not None and self._check_tail(cache, ids.shape[1])
        # (the cost model of the row groups is measured on the first grouped run: packed rows need none)
        return {"ids": ids, "mask": mask, "cache": cache, "final": final, "batch": ids.shape[0], "kv": kv}

    def _check_tail(self, cache, seq):
        for seg, vals in zip(self.segments, cache):
            if seg.tail:
                for v in vals.values():
                    if v.dim() < 2 or v.shape[1] != seq:
                        return False
        return True

    def _check_batched(self, cache, batch):
        for vals in cache:
            for k, v in vals.items():
                if v.shape[0] not in (1, batch):
                    raise ValueError(
                        f"sweep: the cut value {k!r} has leading dim {v.shape[0]}, not the batch {batch}; "
                        "this graph cannot be sliced for sweeps"
                    )

    _tail_ok = False
    pack = True  # pack rows in lanes where the engine can (fxvene/sweeps/packing.py); False: start-position groups
    pack_note = None  # why the segments could not be packed
    last_packed = None  # whether the last run_rows packed its rows
    offset_quantum = None  # positions per row group (None: chosen by expected cost, ``plan``)


_PACKED_FAMILIES = ("gpt2", "llama")


def _dense_strides(shape):
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(out))


def position_pair(base, source, what):
    """``(base ids, base mask, source ids, source mask)`` of a base and a source that are patched position p
    into position p: the same length, and a source batch of 1 or the base's. ``what`` says that in the
    length error (e.g. ``"path patching patches"``)."""
    b_ids, b_mask = ids_mask(base, "base")
    s_ids, s_mask = ids_mask(source, "source")
    if s_ids.shape[1] != b_ids.shape[1]:
        raise ValueError(
            f"source has {s_ids.shape[1]} tokens and base {b_ids.shape[1]}: {what} position p of the "
            "source into position p of the base, so they must have the same length"
        )
    if s_ids.shape[0] not in (1, b_ids.shape[0]):
        raise ValueError(f"source batch {s_ids.shape[0]} must be 1 or the base batch {b_ids.shape[0]}")
    return b_ids, b_mask, s_ids, s_mask


def ids_mask(inputs, what):
    from fxvene.api.validation import check_inputs  # one input check for forward, generate and sweeps

    d, _ = check_inputs(inputs, what, need="input_ids")
    return d["input_ids"], d["attention_mask"]


__all__ = ["SweepEngine", "SweepSite"]
