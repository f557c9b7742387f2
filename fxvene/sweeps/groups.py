"""Sweep rows in start-position groups: the path of engines that cannot pack their rows in lanes
(``fxvene.sweeps.packing``: compiled engines, head sites, padded prompts, families whose attention the
packing pass does not know, fixed ``offset_quantum``).

Rows are grouped by start position: a group starts at the first position of its rows, the rest
recompute a few unchanged positions (exact either way). Every segment call has a fixed cost (op
dispatch, streaming a layer's weights through thin matmuls) that more groups pay more often; fewer
groups recompute more positions. ``RowGroups`` (a base class of the engine) measures both once per
engine and picks the group width with the lowest expected cost. A model with offloaded weights
(accelerate's disk or CPU offload) runs one group per chunk instead: every segment call reads its layers'
weights from the offload folder, so each chunk reads each weight once.
"""

from __future__ import annotations

import numpy as np
import torch

from fxvene.graph.offload import offloaded_weights
from fxvene.graph.sites import gather, site_view


class RowGroups:
    """The grouped path of ``SweepEngine.run_rows`` (a base class of the engine)."""

    def _run_groups(self, base, source, sample, loc, head, entry, tokens, max_rows, progress):
        R, seq = sample.shape[0], base["ids"].shape[1]
        if self.prefix and base.get("kv") is not None:
            offset = torch.where(loc >= 0, loc, torch.full_like(loc, seq)).min(1).values.clamp(max=seq - 1)
            # rows are grouped by start position, one group per ``q`` positions: a group starts at the
            # first position of its rows, the rest recompute a few unchanged positions (exact either
            # way). ``q`` is chosen by expected cost (``plan``): every segment call has a fixed cost
            # (op dispatch, streaming the layer's weights through thin matmuls) that more groups pay
            # more often; ``q = seq`` is one group of full-length rows.
            if self.offset_quantum:
                q = self.offset_quantum
            elif offloaded_weights(self.model):  # accelerate reads these per segment call: one group, one read
                q = seq
            else:
                q = -(-seq // 8) if self.compiled else self.plan(offset, entry, seq, base)
            if q > 1:
                offset = offset // q * q
            self.last_quantum = q
        else:
            offset = torch.zeros(R, dtype=torch.long)
        order = torch.from_numpy(np.lexsort((entry.numpy(), offset.numpy()))).long()
        max_rows = R if max_rows is None else int(max_rows)
        chunks = []
        for off in torch.unique(offset).tolist():
            grp = order[offset[order] == off]
            chunks += [(grp[i : i + max_rows], off) for i in range(0, len(grp), max_rows)]
        results = [None] * len(chunks)
        bar = _bar(sum(len(self.segments) - int(entry[c].min()) for c, _ in chunks), progress)
        try:
            for ci, (idx, off) in enumerate(chunks):
                results[ci] = self._run_chunk(
                    base,
                    source,
                    sample[idx],
                    loc[idx],
                    None if head is None else head[idx],
                    entry[idx],
                    tokens,
                    bar,
                    off,
                )
        finally:
            if bar is not None:
                bar.close()
        out = torch.cat(results, 0)
        done = torch.cat([idx for idx, _ in chunks])
        inv = torch.empty_like(done)
        inv[done] = torch.arange(R)
        return out[inv]

    def _run_chunk(self, base, source, sample, loc, head, entry, tokens, bar, off=0):
        seq = base["ids"].shape[1]
        carried = None
        n = 0
        first = int(entry.min())
        final = None
        sliced = False
        # the chunk's rows' cached keys/values of the positions before ``off`` (step graphs; a group that
        # starts at 0 has no past), gathered once per chunk
        kv = self._kv_rows(base, sample, off) if off else None
        # rows are sorted by entry segment: the rows entering segment i are the next counts[i] rows
        counts = np.bincount(entry.numpy(), minlength=len(self.segments) + 1).tolist()
        zero = torch.zeros_like(sample)
        src_rows = {}  # the source run's example of each row (a batch-1 source serves every row)
        ids_n = None  # (n, ids, mask) of the rows so far
        for i in range(first, len(self.segments)):
            seg = self.segments[i]
            tail = seg.tail and self._tail_ok
            if tail and not sliced and carried is not None:
                carried = {k: v[:, -1:].contiguous() for k, v in carried.items()}
            sliced = sliced or tail
            start = seq - 1 if tail else off
            k_new = counts[i]
            if k_new:
                vals = {}
                for name in seg.ins:
                    # always a fresh, contiguous copy (index_select): selectors write rows in place, graphs
                    # view() their inputs; a value the graph broadcasts (leading dim 1) is repeated
                    v = base["cache"][i][name]
                    rows = sample[n : n + k_new] if v.shape[0] > 1 else zero[n : n + k_new]
                    vals[name] = (v[:, start:] if start else v).index_select(0, rows)
                if carried is None:
                    carried = vals
                else:  # values a segment broadcasts (leading dim 1: rotary tables) are expanded to the rows
                    carried = {k: torch.cat([_rows(carried[k], n), vals[k]], 0) for k in seg.ins}
                n += k_new
            if ids_n is None or ids_n[0] != n:
                rs = sample[:n]
                ids_n = (n, base["ids"].index_select(0, rs), base["mask"].index_select(0, rs))
            ids, mask = ids_n[1], ids_n[2]
            if start:
                ids = ids[:, start:]
                if self.step is None:  # the plain graph sees the tail alone; a step graph masks the past too
                    mask = mask[:, start:]
            sel = {}
            for j in seg.ops:
                s = self.sites[j]
                lj = loc[:n, j]
                on = lj >= 0
                pos = lj.clamp(min=0).unsqueeze(1)
                fsrc = source["cache"][i][s.node]
                if s.n_heads is not None:
                    hj = head[:n, j].clamp(min=0).unsqueeze(1)
                    src = gather(_take(fsrc, sample[:n]), s, "h.pos", (hj, pos), "sweep positions")
                else:  # the source units of the rows, read straight off the cached source values
                    key = (n, fsrc.shape[0] > 1)
                    if key not in src_rows:
                        src_rows[key] = (sample[:n] if key[1] else zero[:n]).unsqueeze(1)
                    src = site_view(fsrc, s)[src_rows[key], pos]
                on = on & (pos[:, 0] >= start)
                pos = (pos - start).clamp(min=0)
                lt = torch.cat([hj, pos], 1) if s.n_heads is not None else pos
                sel[j] = (src, lt, on)
            feeds = self._feeds(seg, ids, mask, start, kv if start else None, tokens)
            final, carried = self._step(seg, feeds, carried, sel, bar)
        return final

    last_quantum = None

    def _kv_rows(self, base, rs, upto):
        return None if base.get("kv") is None else [_take(t[:, :, :upto], rs) for t in base["kv"]]

    def plan(self, first_pos, entry, seq, base):
        """The group width ``q`` (positions per row group) with the lowest expected cost among
        1, 2, seq/8, seq/4, seq/2 and seq (one group: full-length rows). Cost model: a segment call
        costs ``call + token * rows * positions`` (``_costs``, measured once per engine)."""
        fp, en = first_pos.numpy(), entry.numpy()
        key = (seq, bool(self._tail_ok), fp.tobytes(), en.tobytes())
        plans = self.__dict__.setdefault("_plans", {})
        if key in plans:
            return plans[key]
        call, tok, last = self._costs(base)
        nseg = len(self.segments)
        width = np.array([1 if (sg.tail and self._tail_ok) else 0 for sg in self.segments])
        best = None
        for q in sorted({1, 2, -(-seq // 8), -(-seq // 4), -(-seq // 2), seq}):
            off = fp // q * q
            cost = 0.0
            for o in np.unique(off):
                e = en[off == o]
                active = np.bincount(e, minlength=nseg + 1)[:nseg].cumsum()
                lo = int(e.min())
                pos = np.where(width[lo:] == 1, 1, seq - int(o))
                cost += call * (nseg - lo - 1) + last + tok * float((active[lo:] * pos).sum())
            if best is None or cost < best[0] - 1e-12:
                best = (cost, q)
        if len(plans) > 64:
            plans.clear()
        plans[key] = best[1]
        return best[1]

    def _costs(self, base):
        """(fixed cost of a segment call, cost per row-position, fixed cost of the last segment call
        (the LM head: its weights are streamed once per call)) in seconds, measured once per engine:
        a middle block segment on one position of one row and on all positions of 16 rows, the last
        segment on one row (best of two each)."""
        if getattr(self, "_cost_model", None) is not None:
            return self._cost_model
        import time

        i = max(0, min(len(self.segments) - 1, (len(self.segments) - 1) // 2))
        while i > 0 and self.segments[i].tail:
            i -= 1
        seq = base["ids"].shape[1]
        k = 16

        def call(rows, S, i=i):
            seg = self.segments[i]
            rs = torch.zeros(rows, dtype=torch.long)
            vals = {n: base["cache"][i][n][:, :S].index_select(0, rs) for n in seg.ins}
            ids, mask = base["ids"][:1, :S].expand(rows, S), base["mask"][:1, :S].expand(rows, S)
            feeds = self._feeds(seg, ids, mask, 0, None, None if not self.tokens else torch.zeros(1, dtype=torch.long))
            t0 = time.perf_counter()
            self._call(seg, feeds, vals, {})
            return time.perf_counter() - t0

        try:
            with torch.no_grad():
                t1 = min(call(1, 1) for _ in range(2))
                t2 = min(call(k, seq) for _ in range(2))
                t3 = min(call(1, 1, len(self.segments) - 1) for _ in range(2))
            tok = max(t2 - t1, 1e-9) / (k * seq - 1)
            self._cost_model = (t1, tok, t3)
        except (RuntimeError, ValueError, IndexError):  # a segment that cannot run on a one-position
            self._cost_model = (1.0, 0.0, 1.0)  # slice: count calls only (fewest groups)
        return self._cost_model


def _bar(total, progress):
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc="fxvene sweep", delay=0 if progress else 3.0, leave=False)


def _take(v, rows):
    """Rows ``rows`` of a cached value; a value the graph broadcasts over the batch (leading dim 1:
    rotary tables) is expanded instead."""
    return v.index_select(0, rows) if v.shape[0] > 1 else v.expand((len(rows),) + tuple(v.shape[1:]))


def _rows(v, n):
    return v.expand((n,) + tuple(v.shape[1:])) if v.shape[0] == 1 and n > 1 else v


__all__ = ["RowGroups"]
