"""Pipeline stages on ``torch.distributed``: one model split into K stages at block boundaries.

    torchrun --nproc_per_node=K script.py        # each rank: pv.pipeline_intervenable(config, DIR, K)

``stage_layers`` splits the blocks into K contiguous runs balanced by parameter bytes (the input
embeddings count to the first stage, the final norm and head to the last). Each rank loads its
model with ``from_pretrained(DIR, device_map=...)``: its own stage's modules on its device, every
other module on ``"disk"``, so those stay on the meta device and transformers reads none of their
tensors (tied input/output embeddings are loaded by every stage). The rank's
``PipelineIntervenableModel`` runs every rewritten graph of a call (source runs, the base run,
Collect taps) cut at the stage boundaries (``fxvene.passes.slice.segment``): rank s runs its
segment only, receives the cut values from rank s-1 and sends its own to rank s+1 with
point-to-point ``send``/``recv``; the last stage's outputs are broadcast to the stage group, so
every rank returns what one process would (bit for bit on the CPU: no microbatching, the whole
batch is one message). Every rank calls the model with the same arguments (SPMD).

With W processes and K stages, ranks ``r // K`` form a data-parallel replica and ``r % K`` is the
stage (``--pipeline 2`` under 4 processes: two replicas of two stages).

Sweeps (``causal_trace``, ``patching_sweep``, the dataset sweeps) of a stage model (``pipeline_model``)
run the sweep engine's segments on their stages' ranks: ``fxvene.sweeps.pipeline_sweeps``.

Why not ``torch.distributed.pipelining``: its ``pipeline()`` re-traces the model into its own
stage modules (fxvene's sites and rewrites live in fxvene's graph, and each call's graph differs:
interventions, Collect taps, truncated source runs), and ``PipelineStage`` expects fixed input and
output shapes per stage, while the cut values of a call vary with the graph (a Collect tap adds an
output that crosses every later boundary). Point-to-point sends of exactly the cut values fit both.
"""

from __future__ import annotations

import os
import tempfile
import weakref

import torch

from fxvene.api.intervenable import IntervenableModel
from fxvene.graph.sites import resolve_site
from fxvene.models import family_for
from fxvene.passes.slice import node_order, segment
from fxvene.sweeps import distributed as D
from fxvene.sweeps.pipeline_sweeps import Pipe

_IN = "fxv_in_"


def block_paths(model):
    """Module path of each block of ``model`` (a family fxvene knows), in order."""
    fam, prefix = family_for(model)
    if fam is None:
        raise ValueError(f"model: pipeline stages need a model family fxvene knows; got {type(model).__name__}")
    n = int(getattr(model.config, fam.n_layers))
    tmpl = fam.components["block_input"].module
    return [(prefix or "") + tmpl.format(layer=i) for i in range(n)]


def _bytes(tensors):
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def stage_layers(model, k):
    """``[range(first, stop), ...]``: the blocks of each of ``k`` stages, contiguous, chosen to make the
    largest stage's parameter bytes smallest (embeddings before the blocks count to the first stage,
    everything after them to the last). ``model`` may live on the meta device."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (the number of stages) must be an int >= 1, got {k!r}")
    paths = block_paths(model)
    if k > len(paths):
        raise ValueError(f"k={k}: the model has only {len(paths)} blocks to split into stages")
    cost = [_bytes(model.get_submodule(p).parameters()) for p in paths]
    inside = {id(t) for p in paths for t in model.get_submodule(p).parameters()}
    head = tail = 0
    before = True
    first_block = model.get_submodule(paths[0])
    for m in model.modules():
        if m is first_block:
            before = False
        for t in m.parameters(recurse=False):
            if id(t) in inside:
                continue
            inside.add(id(t))
            if before:
                head += t.numel() * t.element_size()
            else:
                tail += t.numel() * t.element_size()
    n = len(paths)
    pre = [0]
    for c in cost:
        pre.append(pre[-1] + c)

    def load(i, j, s):  # blocks [i, j) as stage s
        return pre[j] - pre[i] + (head if s == 0 else 0) + (tail if s == k - 1 else 0)

    # best[s][j]: (max load, cuts) of the first j blocks in s+1 stages
    best = [[None] * (n + 1) for _ in range(k)]
    for j in range(1, n + 1):
        best[0][j] = (load(0, j, 0), [0])
    for s in range(1, k):
        for j in range(s + 1, n + 1):
            cands = []
            for i in range(s, j):
                prev = best[s - 1][i]
                if prev is not None:
                    cands.append((max(prev[0], load(i, j, s)), prev[1] + [i]))
            best[s][j] = min(cands, key=lambda c: (c[0], c[1][::-1]))
    starts = best[k - 1][n][1]
    return [range(a, b) for a, b in zip(starts, starts[1:] + [n])]


def stage_device_map(model, stages, stage, device="cpu"):
    """The ``device_map`` (``from_pretrained``'s form) that loads only stage ``stage``: its blocks (and
    the modules before the blocks for the first stage, after them for the last, tied embeddings and
    buffer-only modules on every stage) on ``device``, every other module on ``"disk"``."""
    paths = block_paths(model)
    if isinstance(device, torch.device):  # accelerate's form: an int for a GPU, "cpu"
        device = device.index or 0 if device.type == "cuda" else str(device.type)
    mine = {paths[i] for i in stages[stage]}
    last = len(stages) - 1
    dmap = {p: (device if p in mine else "disk") for p in paths}
    block_mods = {id(m) for p in paths for m in model.get_submodule(p).modules()}
    tied = _tied_embeddings(model)
    before = True
    for name, m in model.named_modules():
        if id(m) in block_mods:
            before = False
            continue
        params = list(m.parameters(recurse=False))
        if not params and not list(m.buffers(recurse=False)):
            continue
        if not params:
            here = True  # buffers only (rotary tables, ...): tiny, recomputed by every stage
        elif name in tied:
            # a tied head is saved once (as the input embeddings): accelerate's hooks cannot load it from
            # the checkpoint for a stage that maps it to disk, and the trace-time check runs every module
            here = True
        else:
            here = stage == (0 if before else last)
        dmap[name] = device if here else "disk"
    return dmap


def _tied_embeddings(model):
    try:
        emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return set()
    if emb is None or out is None or getattr(out, "weight", None) is not getattr(emb, "weight", 0):
        return set()
    return {n for n, m in model.named_modules() if m is emb or m is out}


def load_stage(path, k, stage, device="cpu", model_class=None, offload_folder=None, **kwargs):
    """``(model, stages)``: the model saved in ``path`` (safetensors, as ``save_pretrained`` writes it)
    with only stage ``stage`` of ``k`` loaded on ``device``; every other module stays on the meta
    device, loaded by nothing (its segment runs on another rank). ``kwargs`` go to ``from_pretrained``."""
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    from transformers import AutoConfig

    if not os.path.isdir(str(path)):
        raise ValueError(f"path must be a local checkpoint directory (save_pretrained's), got {path!r}")
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        skeleton = model_class.from_config(config)
    stages = stage_layers(skeleton, k)
    dmap = stage_device_map(skeleton, stages, stage, device)
    folder = offload_folder or tempfile.mkdtemp(prefix="fxvene-stage-")
    model = model_class.from_pretrained(path, device_map=dmap, offload_folder=folder, **kwargs)
    return model.eval(), stages


class PipelineIntervenableModel(IntervenableModel):
    """An ``IntervenableModel`` whose graphs run as pipeline stages over the ranks of its group (see
    the module docstring). ``stages``: ``stage_layers``' split; ``stage``: this rank's stage;
    ``ranks``: the global ranks of the stage group, in stage order."""

    def __init__(self, config, model, stages, stage, ranks, group=None, **kwargs):
        super().__init__(config, model, **kwargs)
        self.pipe_stages = list(stages)
        self.pipe_stage = stage
        self.pipe_ranks = list(ranks)
        self.pipe_group = group
        self.pipe_device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
        self._pipe_cuts = weakref.WeakKeyDictionary()

    def _cuts(self, gm):
        hit = self._pipe_cuts.get(gm)
        if hit is None:
            # the call's own trace (its model inputs are the graph's placeholders other than fxvene's feeds)
            sig = tuple(n.target for n in gm.graph.nodes if n.op == "placeholder" and not n.target.startswith("fxv_"))
            hit = _stage_graphs(gm, self._traced(sig), self.model, self.pipe_stages)
            self._pipe_cuts[gm] = hit
        return hit

    def _run_graph(self, gm, kwargs):
        segs, n_out = self._cuts(gm)
        s = self.pipe_stage
        last = len(segs) - 1  # a truncated graph (a source run) may end before the last stage
        result = None
        if s <= last:
            seg, ins = segs[s]
            feeds = {k: v for k, v in kwargs.items() if k in _placeholders(seg)}
            if s > 0:
                for name, t in zip(ins, _recv(self.pipe_ranks[s - 1], self.pipe_device)):
                    feeds[_IN + name] = t
                for name in seg.meta.get("fxvene_shape_inputs", ()):
                    feeds["fxv_shape_" + name] = feeds[_IN + name]  # it travels with the cut values
            out = seg(**feeds)
            if s < last:
                _send(list(out), self.pipe_ranks[s + 1])
            else:
                result = tuple(out)[:n_out]
        box = [None if result is None else _cpu(result)]
        import torch.distributed as dist

        dist.broadcast_object_list(box, src=self.pipe_ranks[last], group=self.pipe_group)
        return _to(box[0], self.pipe_device)


def _placeholders(gm):
    return {n.target for n in gm.graph.nodes if n.op == "placeholder"}


def _stage_graphs(gm, traced, model, stages):
    """``([(segment, cut input names)] per stage present in ``gm``, number of ``gm``'s outputs)``.
    Tensors whose shape a later stage reads (GPT-2's ``hidden.size(-1)``) are added to the graph's
    outputs first, so they travel with the cut values and feed the segment's shape stand-ins (they
    are stripped from the result)."""
    import torch.fx as fx

    order = node_order(gm)
    starts = []
    for st in stages[1:]:
        node = resolve_site(traced, model, "block_input", st[0]).node
        if node not in order:
            break  # the graph ends before this stage (a source run truncated after its last site)
        starts.append(order[node] + 1)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    n_out = len(out_node.args[0])
    extra = []
    while True:
        bounds = [None] + starts + [None]
        segs = []
        need = []
        for a, b in zip(bounds, bounds[1:]):
            sg, ins, _ = segment(gm, a, b, _IN)
            _default_none(sg)
            need += [x for x in sg.meta.get("fxvene_shape_inputs", ()) if x not in extra]
            segs.append((sg, ins))
        if not need:
            return segs, n_out
        extra += list(dict.fromkeys(need))
        graph = fx.Graph()
        env = {}
        for n in gm.graph.nodes:
            if n.op == "output":
                by = {m.name: m for m in gm.graph.nodes}
                kept = tuple(env[v.name] if isinstance(v, fx.Node) else v for v in out_node.args[0])
                vals = kept + tuple(env[by[x].name] for x in extra)
                graph.output(vals)
            else:
                env[n.name] = graph.node_copy(n, lambda a, env=env: env[a.name])
        gm = fx.GraphModule(gm, graph, type(gm).__name__)  # same nodes in the same order: ``starts`` hold


def _default_none(gm):
    """Give every placeholder after one with a default a default too (the cut inputs follow the
    graph's optional inputs, which Python's signature rules forbid without one); edits ``gm``."""
    late = False
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        if n.args:
            late = True
        elif late:
            n.args = (None,)
    gm.recompile()


def _send(tensors, dst):
    import torch.distributed as dist

    dist.send_object_list([[(tuple(t.shape), t.dtype) for t in tensors]], dst=dst)
    for t in tensors:
        dist.send(t.contiguous(), dst=dst)


def _recv(src, device):
    import torch.distributed as dist

    box = [None]
    dist.recv_object_list(box, src=src)
    out = []
    for shape, dtype in box[0]:
        t = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(t, src=src)
        out.append(t)
    return out


def _cpu(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, (list, tuple)):
        return type(v)(_cpu(x) for x in v)
    return v


def _to(v, device):
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, (list, tuple)):
        return type(v)(_to(x, device) for x in v)
    return v


def stage_group(k):
    """``(ctx, stage, ranks, group)`` of this rank for ``k`` stages: ``ranks`` the global ranks of its
    stage group (a data-parallel replica), ``group`` a process group over them (every rank builds all)."""
    ctx = D.context()
    if ctx is None:
        raise ValueError("pipeline stages need several processes: launch with torchrun --nproc_per_node=K")
    if ctx.world % k:
        raise ValueError(f"k={k}: the number of processes ({ctx.world}) must be a multiple of the stage count")
    import torch.distributed as dist

    groups = [dist.new_group(list(range(r, r + k))) for r in range(0, ctx.world, k)]
    first = ctx.rank - ctx.rank % k
    return ctx, ctx.rank % k, list(range(first, first + k)), groups[ctx.rank // k]


def pipeline_model(path, k, model_class=None, **load_kwargs):
    """This rank's stage of ``k`` stages of the checkpoint in ``path`` (under torchrun), for sweeps:
    ``causal_trace``, ``patching_sweep`` and the dataset sweeps of it, called with the same arguments on
    every rank, run each segment on its stage's rank (``fxvene.sweeps.pipeline_sweeps``) and return the
    one-process result on every rank (dataset sweeps: on rank 0). ``load_kwargs`` go to ``from_pretrained``."""
    model, _ = _stage_model(path, k, model_class, load_kwargs)
    return model


def _stage_model(path, k, model_class, load_kwargs):
    ctx, stage, ranks, group = stage_group(k)
    model, stages = load_stage(path, k, stage, device=D.device(), model_class=model_class, **(load_kwargs or {}))
    pipe = Pipe(stages, stage, ranks, group, D.device())
    model.fxvene_sweep_engine = pipe.engine  # what fxvene.sweeps.core.engine_for builds for this model
    D.set_stages(k)  # dataset sweeps: one replica of k stages runs each batch
    return model, pipe


def pipeline_intervenable(config, path, k, model_class=None, load_kwargs=None, **kwargs):
    """This rank's ``PipelineIntervenableModel`` for ``k`` stages of the checkpoint in ``path`` (under
    torchrun). Stage ``rank % k`` is loaded on this rank's device (``cuda:LOCAL_RANK`` or the CPU);
    ``load_kwargs`` go to ``from_pretrained``, ``kwargs`` to ``IntervenableModel``. Its ``model`` takes
    sweeps as ``pipeline_model``'s does."""
    model, p = _stage_model(path, k, model_class, load_kwargs)
    return PipelineIntervenableModel(config, model, p.stages, p.stage, p.ranks, group=p.group, **kwargs)


def held_bytes(model):
    """Bytes of ``model``'s parameters and buffers that are not on the meta device (what this rank holds)."""
    ts = [t for t in list(model.parameters()) + list(model.buffers()) if t.device.type != "meta"]
    return _bytes(ts)


__all__ = [
    "PipelineIntervenableModel",
    "block_paths",
    "held_bytes",
    "load_stage",
    "pipeline_intervenable",
    "pipeline_model",
    "stage_device_map",
    "stage_group",
    "stage_layers",
]
