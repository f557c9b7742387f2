"""Sweeps on pipeline stages: ``causal_trace``, ``patching_sweep`` and the dataset sweeps of a model whose
blocks are split over the ranks of a stage group (``fxvene.sweeps.pipeline``).

Every rank of the group runs the same sweep (SPMD): the same row plan, the same chunks, the same segment
calls in the same order. ``PipelineSweepEngine`` is the sweep engine with the stage boundaries added to
its cuts, so each segment lies in one stage, and each segment call is run by the rank of its stage only:
that rank computes the rows' values at the segment's exit, sends them to the rank of the next segment
when that is another rank (``send``/``recv``: exactly the rows of that call; their shapes and dtypes go
first, to the whole group), and every other rank carries shape-only stand-ins on the meta device, so
the engine's row bookkeeping (which rows join where, the tail's last position) runs unchanged and
allocates nothing. The readout of the last segment is broadcast to the group: every rank returns the
sweep's whole result. The base and source runs go through the stages the same way, and each rank keeps
the cached values of its own segments only.

The rows run full length (no causal prefix: its cache run is one graph over every block) and eager.
"""

from __future__ import annotations

import torch

from fxvene.sweeps.engine import SweepEngine


class Pipe:
    """Where this rank sits: ``stages`` (``stage_layers``' split), ``stage`` (this rank's),
    ``ranks`` (global ranks of the stage group, in stage order), ``group``, ``device``."""

    def __init__(self, stages, stage, ranks, group, device):
        self.stages, self.stage, self.ranks = list(stages), int(stage), list(ranks)
        self.group, self.device = group, torch.device(device)

    def engine(self, model, sites, **kwargs):
        """The sweep engine factory ``fxvene.sweeps.core.engine_for`` calls (``model.fxvene_sweep_engine``)."""
        return PipelineSweepEngine(model, sites, self, **kwargs)


class PipelineSweepEngine(SweepEngine):
    """A ``SweepEngine`` whose segments run on their stage's rank (see the module docstring)."""

    def __init__(self, model, sites, pipe, tracer="auto", tokens=False, compile=False, prefix="auto", **kwargs):
        if compile is not False and compile is not None:
            raise ValueError("compile: sweeps on pipeline stages run eager segments; pass compile=False")
        if prefix is True:
            raise ValueError("prefix=True: sweeps on pipeline stages run full-length rows; pass prefix='auto' or False")
        self.pipe = pipe
        n = len(sites)
        cuts = [("block_input", st[0]) for st in pipe.stages[1:]]  # a segment never spans two stages
        super().__init__(model, list(sites) + cuts, tracer=tracer, tokens=tokens, compile=False, prefix=False, **kwargs)
        self.n_sweep_sites = n
        firsts = [self.seg_of_site[n + i] for i in range(len(cuts))]
        self.owners = [sum(1 for f in firsts if f <= i) for i in range(len(self.segments))]
        chain = [self.pre] + self.segments
        owners = [0] + self.owners
        for i, seg in enumerate(chain):
            nxt = owners[i + 1] if i + 1 < len(chain) else None
            seg.fn = _staged(seg.fn, owners[i], nxt, pipe)

    def run_rows(self, base, source, rows, tokens=None, max_rows=None, progress=None):
        import numpy as np

        rows = dict(rows)
        extra = len(self.sites) - np.asarray(rows["loc"]).shape[1]
        if extra > 0:  # the stage cuts' selectors: never on
            loc = np.asarray(rows["loc"])
            rows["loc"] = np.concatenate([loc, np.full((loc.shape[0], extra), -1, dtype=loc.dtype)], 1)
            if rows.get("head") is not None:
                head = np.asarray(rows["head"])
                rows["head"] = np.concatenate([head, np.zeros((head.shape[0], extra), dtype=head.dtype)], 1)
        return super().run_rows(base, source, rows, tokens=tokens, max_rows=max_rows, progress=progress)

    def cache(self, input_ids, attention_mask, perturb=None, *args, **kwargs):
        # the first block's input is real on the first stage only; elsewhere it is a stand-in of the same shape
        return super().cache(input_ids, attention_mask, perturb if self.pipe.stage == 0 else None, *args, **kwargs)


def _staged(fn, owner, nxt, pipe):
    """``fn`` (one segment) run by stage ``owner``; its outputs real on stage ``nxt`` (the next segment's;
    None: the readout, real on every stage), shape-only stand-ins elsewhere."""
    import torch.distributed as dist

    def run(**kw):
        me = pipe.stage
        out = tuple(fn(**kw)) if me == owner else None
        box = [None if out is None else [_spec(v) for v in out]]
        dist.broadcast_object_list(box, src=pipe.ranks[owner], group=pipe.group)
        specs = box[0]
        if nxt is None:
            vals = [_dense(v) for v in out] if me == owner else [_empty(s, pipe.device) for s in specs]
            for v in vals:
                if isinstance(v, torch.Tensor):
                    dist.broadcast(v, src=pipe.ranks[owner], group=pipe.group)
            return tuple(vals)
        if me == owner and nxt == owner:
            return out
        if me == owner:
            for v in out:
                if isinstance(v, torch.Tensor):
                    dist.send(v.contiguous(), dst=pipe.ranks[nxt])
        elif me == nxt:
            vals = [_empty(s, pipe.device) for s in specs]
            for v in vals:
                if isinstance(v, torch.Tensor):
                    dist.recv(v, src=pipe.ranks[owner])
            return tuple(vals)
        return tuple(_empty(s, "meta") for s in specs)

    return run


def _dense(v):
    return v.contiguous() if isinstance(v, torch.Tensor) else v


def _spec(v):
    return ("t", tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else ("v", v)


def _empty(spec, device):
    if spec[0] == "v":
        return spec[1]
    return torch.empty(spec[1], dtype=spec[2], device=device)


__all__ = ["Pipe", "PipelineSweepEngine"]
