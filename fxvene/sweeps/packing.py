"""Packed sweep rows: every segment called once for all rows, with no position computed twice.

With the causal prefix a row that patches position ``p`` computes positions ``p .. seq-1`` only.
Rows of different lengths are laid end to end in *lanes* (batch rows of width ``W``, the longest
row): a lane holds rows of one base example that enter the pipeline at the same segment, packed
first-fit by length (a 10-token prompt's rows of lengths 10, 9+1, 8+2, ... fill their lanes). Each
lane attends over its base example's cached keys/values (all positions) and its own tokens; the
packing mask (pass ``passes.pack.pack_attention``) keeps a token to the cached positions before its
row's start and to its own row's tokens up to itself, so every row computes exactly what it
computes alone. Position ids are per token (rotary tables follow them).

Lanes enter at the segment of their rows' first site, so the batch grows along the pipeline as
with groups, but every segment is one call (each layer's weights are streamed once per sweep, not
once per start-position group), and the tokens computed are the sum of the rows' lengths. After
the last layer's attention (the position-wise tail) each row's last token is taken out of its lane
and the rows run as rows of one position.
"""

from __future__ import annotations

import numpy as np
import torch

from fxvene.graph.sites import site_view
from fxvene.sweeps.groups import _rows, _take


def packable(eng, base, loc, head):
    """Whether ``run_rows`` can pack these rows (else it groups them by start position)."""
    if not (eng.pack and eng.packed_segments and eng.prefix and not eng.compiled and eng._tail_ok):
        return False
    if eng.offset_quantum is not None or base.get("kv") is None:
        return False
    if not bool(base["mask"].bool().all()):  # padding: the grouped path feeds the graph's own padding mask
        return False
    for j in range(loc.shape[1]):
        s = eng.sites[j]  # whole units or one contiguous slot of a fused output (what the selector writes)
        if bool((loc[:, j] >= 0).any()) and (s.n_heads is not None or (s.fused is not None and s.fused[0] != 1)):
            return False
    limit = _key_limit(eng)
    return limit is None or 2 * base["ids"].shape[1] <= limit


def _key_limit(eng):
    """How many keys a lane may have (None: no limit). GPT-2 on transformers 4 slices its causal mask
    off a buffer of ``n_positions``; a sliding window (Mistral) counts distances from the lane's
    positions, not the tokens' own: the lane's keys (the cached positions and its own) must fit both."""
    cfg = eng.model.config
    limits = [getattr(cfg, "n_positions", None), getattr(cfg, "sliding_window", None)]
    if getattr(cfg, "use_sliding_window", True) is False:
        limits[1] = None
    limits = [int(n) for n in limits if isinstance(n, int) and not isinstance(n, bool)]
    return min(limits) if limits else None


def lanes(first_pos, length, entry, sample, packed_entry, n_segments, max_width=None):
    """The lane layout of rows (numpy int arrays, one value per row). Rows with ``packed_entry[r]``
    False (they enter in the position-wise tail) get no lane. Returns ``(lane, slot, lane_entry,
    lane_sample, W)``: row r's tokens are ``slot[r] ..`` of lane ``lane[r]`` (-1 when unpacked);
    lanes are ordered by entry segment. The lane width ``W`` is the one (from the longest row to 1.5x
    it, at most ``max_width``) with the fewest slots computed over the segments (rows of 10, 9, ...,
    1 tokens fill lanes of 11 with no padding: 10+1, 9+2, ...)."""
    rows = np.nonzero(packed_entry)[0]
    if not len(rows):
        R, none = len(first_pos), np.zeros(0, np.int64)
        return np.full(R, -1, dtype=np.int64), np.zeros(R, dtype=np.int64), none, none, 1
    longest = int(length[rows].max())
    best = None
    widths = range(longest, longest + max(1, longest // 2) + 1)
    if max_width is not None:
        widths = [w for w in widths if w <= max_width] or [longest]
    for W in widths:
        got = _fill(length, entry, sample, rows, W)
        cost = W * float((n_segments - got[2]).sum())
        if best is None or cost < best[0]:
            best = (cost, got + (W,))
    return best[1]


def _fill(length, entry, sample, rows, W):
    """First-fit decreasing into lanes of width ``W``, per (entry segment, base example)."""
    R = len(length)
    lane = np.full(R, -1, dtype=np.int64)
    slot = np.zeros(R, dtype=np.int64)
    lane_entry, lane_sample = [], []
    order = rows[np.lexsort((-length[rows], sample[rows], entry[rows]))]
    key = None
    free = []  # free room of the lanes of the current (entry, sample)
    for r, e, s, n in zip(order.tolist(), entry[order].tolist(), sample[order].tolist(), length[order].tolist()):
        if (e, s) != key:
            key, free, first = (e, s), [], len(lane_entry)
        for i, room in enumerate(free):
            if room >= n:
                lane[r], slot[r] = first + i, W - room
                free[i] -= n
                break
        else:
            lane[r], slot[r] = len(lane_entry), 0
            free.append(W - n)
            lane_entry.append(e)
            lane_sample.append(s)
    return lane, slot, np.array(lane_entry, dtype=np.int64), np.array(lane_sample, dtype=np.int64)


def _layout_tensors(first_pos, length, lane, slot, n_lanes, W, seq):
    """Per lane slot: position id and row (-1: padding); the packing mask ``keep`` (n_lanes, W, seq + W)
    (the cached positions before the slot's row start, the row's own slots up to the slot, and
    always the slot itself, so that a padding slot's softmax has a finite entry)."""
    pos = torch.zeros((n_lanes, W), dtype=torch.long)
    row = torch.full((n_lanes, W), -1, dtype=torch.long)
    start = torch.zeros((n_lanes, W), dtype=torch.long)
    for r in np.nonzero(lane >= 0)[0].tolist():
        l, s, n, p = int(lane[r]), int(slot[r]), int(length[r]), int(first_pos[r])
        pos[l, s : s + n] = torch.arange(p, p + n)
        row[l, s : s + n] = r
        start[l, s : s + n] = p
    real = row >= 0
    past = torch.arange(seq).view(1, 1, seq) < start.unsqueeze(-1)  # (n_lanes, W, seq)
    past &= real.unsqueeze(-1)
    same = (row.unsqueeze(-1) == row.unsqueeze(1)) & real.unsqueeze(-1)
    own = same & (torch.arange(W).view(1, 1, W) <= torch.arange(W).view(1, W, 1))
    own |= torch.eye(W, dtype=torch.bool).unsqueeze(0)
    return pos, torch.cat([past, own], -1)


@torch.no_grad()
def run_packed(eng, base, source, sample, loc, entry, first_pos, tokens, bar):
    """The readout of rows ``sample``/``loc``/``entry`` (tensors, rows sorted by entry segment) in row
    order, running every segment once (see the module docstring)."""
    seq = base["ids"].shape[1]
    nseg = len(eng.segments)
    t0 = next(i for i, sg in enumerate(eng.segments) if sg.tail)  # _tail_ok: the tail exists
    en, sm = entry.numpy(), sample.numpy()
    fp = first_pos.numpy()
    limit = _key_limit(eng)
    length = seq - fp
    lane, slot, lane_entry, lane_sample, W = lanes(
        fp, length, en, sm, en < t0, t0, None if limit is None else limit - seq
    )
    n_lanes = len(lane_entry)
    first = int(en.min())
    carried = None
    if n_lanes:
        pos, keep = _layout_tensors(fp, length, lane, slot, n_lanes, W, seq)
        lane_s = torch.from_numpy(lane_sample)
        kv = [_take(t, lane_s) for t in base["kv"]]
        dtype = eng._past[0][0] if eng._past else torch.float32
        add = torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, torch.finfo(dtype).min).unsqueeze(1)
        keep = keep.unsqueeze(1)
        ids = base["ids"][lane_s.unsqueeze(1), pos]
        ones = torch.ones((n_lanes, seq + W), dtype=base["mask"].dtype)
        lane_at = np.searchsorted(lane_entry, np.arange(nseg + 1), side="right")  # lanes entered by segment i
        lane_t = torch.from_numpy(lane)
        slot_t = torch.from_numpy(slot)
        for i in range(first, t0):
            seg = eng.segments[i]
            n = int(lane_at[i])
            k_new = n - (0 if carried is None else next(iter(carried.values())).shape[0])
            if k_new:
                new = slice(n - k_new, n)
                ls, ps = lane_s[new].unsqueeze(1), pos[new]
                vals = {}
                for name in seg.ins:
                    v = base["cache"][i][name]
                    vals[name] = v[ls if v.shape[0] > 1 else torch.zeros_like(ls), ps]
                carried = vals if carried is None else {k: torch.cat([carried[k], vals[k]], 0) for k in seg.ins}
            sel = {}
            for j in seg.ops:
                rows = torch.nonzero((loc[:, j] >= 0) & (lane_t >= 0) & (lane_t < n)).flatten()
                p = loc[rows, j]
                fsrc = source["cache"][i][eng.sites[j].node]
                srows = sample[rows] if fsrc.shape[0] > 1 else torch.zeros_like(rows)
                src = site_view(fsrc, eng.sites[j])[srows.unsqueeze(1), p.unsqueeze(1)]
                where = torch.stack([lane_t[rows], slot_t[rows] + p - first_pos[rows]], 1)
                sel[j] = (src, where, torch.ones(len(rows), dtype=torch.bool))
            kw = {"input_ids": ids[:n], "attention_mask": ones[:n], "position_ids": pos[:n]}
            for k, (name, used) in enumerate(_past_used(eng, seg)):
                kw[name] = kv[k][:n] if used else None
            if eng.tokens:
                kw["fxv_tokens"] = tokens
            if "fxv_pack_add" in seg.pused:
                kw["fxv_pack_add"] = add[:n]
            if "fxv_pack_keep" in seg.pused:
                kw["fxv_pack_keep"] = keep[:n]
            _, carried = eng._step(seg, kw, carried, sel, bar, fn=seg.pfn)
    # the position-wise tail: each packed row's last token, as a row of one position
    done = lane >= 0
    n = int(done.sum())
    if carried is not None:
        last = torch.from_numpy(slot[done] + length[done] - 1)
        lt = torch.from_numpy(lane[done])
        carried = {k: v[lt, last].unsqueeze(1) for k, v in carried.items()}
    # rows are sorted by entry, packed rows first: row r's place in the tail batch is r
    if n and not bool((torch.from_numpy(np.nonzero(done)[0]) == torch.arange(n)).all()):
        raise RuntimeError("sweep: packed rows must come before the rows entering in the tail")
    final = None
    zero = torch.zeros_like(sample)
    for i in range(max(first, t0), nseg):
        seg = eng.segments[i]
        k_new = int((entry == i).sum())
        if k_new:
            rs = sample[n : n + k_new]
            vals = {}
            for name in seg.ins:
                v = base["cache"][i][name][:, seq - 1 :]
                vals[name] = v.index_select(0, rs if v.shape[0] > 1 else zero[:k_new])
            carried = vals if carried is None else {k: torch.cat([_rows(carried[k], n), vals[k]], 0) for k in seg.ins}
            n += k_new
        sel = {}
        for j in seg.ops:
            s = eng.sites[j]
            on = loc[:n, j] == seq - 1  # an earlier position no longer reaches the last one
            fsrc = source["cache"][i][s.node]
            srows = (sample[:n] if fsrc.shape[0] > 1 else zero[:n]).unsqueeze(1)
            src = site_view(fsrc, s)[srows, torch.full_like(srows, seq - 1)]
            sel[j] = (src, torch.zeros((n, 1), dtype=torch.long), on)
        rs = sample[:n]
        feeds = eng._feeds(
            seg, base["ids"].index_select(0, rs)[:, seq - 1 :], base["mask"].index_select(0, rs), seq - 1, None, tokens
        )
        final, carried = eng._step(seg, feeds, carried, sel, bar)
    return final


def _past_used(eng, seg):
    past = seg.__dict__.get("past_names")
    if past is None:
        past = seg.past_names = [(f"past_{i}", f"past_{i}" in seg.used) for i in range(len(eng._past))]
    return past


__all__ = ["run_packed", "packable", "lanes"]
