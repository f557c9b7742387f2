"""Compile once: ``torch.compile`` the rewritten graphs an IntervenableModel runs.

``IntervenableModel(config, model, compile=True)`` or ``intervenable.compile(**options)``
compiles each rewritten GraphModule the runtime picks (one per call *structure*: which sites,
intervention types, source groups), lazily, the first time it runs. Everything that varies
inside a sweep is a tensor input of that graph (source activations ``fxv_src_i``, unit
locations ``fxv_loc_i``/``fxv_sloc_i``, the model inputs), so calls that differ only in those
values or in the batch size or sequence length reuse the compiled code: zero recompiles
(``tests/test_compile.py`` counts them with torch's own counters, batch 1 -> 2 -> 7 -> 1).

How the sizes stay dynamic (torch 2.13): ``dynamic=True`` alone specialises sizes 0 and 1, so a
first call with batch 1 would compile a batch-1 graph and batch 2 would recompile. Before every
call of a compiled graph, ``mark_dims`` marks

* the batch dimension (dim 0 of the model inputs, of the unit locations and of source activations
  computed by a source run) *unbacked*, one symbol shared by all of them
  (``torch._dynamo.decorators.mark_unbacked(..., shape_id="batch", min=1)``): no graph is
  specialised to batch 1, and no size-1 guard is installed;
* the sequence dimension dynamic (``maybe_mark_dynamic``; backed: inductor's bmm lowering in
  torch 2.13 cannot handle an unbacked sequence length). A 1-token input is the one sequence
  length that compiles its own graph.

A ``source_representations`` tensor given by the user keeps its own shape (it may broadcast, a
steering vector): its leading dim is marked as the batch only when it equals a batch larger than 1.
``options`` go to ``torch.compile`` (``backend``, ``mode``, ``fullgraph``, ...); ``dynamic``
defaults to True. The first call of each structure says on stderr that it is compiling and how
long it took.
"""

from __future__ import annotations

import contextlib

import torch

MODEL_INPUTS = ("input_ids", "attention_mask", "inputs_embeds", "position_ids", "token_type_ids")


def compile_options(options):
    if options is True or options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"compile must be True/False or a dict of torch.compile options, got {type(options).__name__}")
    opts = {"dynamic": True}
    opts.update(options)
    return opts


def say(what):
    """One progress line on stderr (fxvene/graph/progress.py) while a first compile runs."""
    try:
        from fxvene.graph.progress import progress
    except ImportError:  # pragma: no cover - progress.py ships with fxvene
        return contextlib.nullcontext()
    return progress(what, delay=0)


def _mark_batch(t, batch):
    import torch._dynamo.decorators

    if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == batch:
        torch._dynamo.decorators.mark_unbacked(t, 0, shape_id="batch", min=1)


def _mark_seq(t, dim):
    import torch._dynamo.decorators

    if isinstance(t, torch.Tensor) and t.dim() > dim:
        torch._dynamo.decorators.maybe_mark_dynamic(t, dim)


_MARKS = (
    "_dynamo_unbacked_indices",
    "_dynamo_shape_ids",
    "_dynamo_unbacked_bounds",
    "_specialize_on",
    "_dynamo_hint_overrides",
    "_dynamo_weak_dynamic_indices",
    "_has_dynamo_dim_marking",
)


def unmark(tensors):
    """Remove the marks ``mark_dims`` left on ``tensors`` (they may be the caller's own tensors,
    which another ``torch.compile`` must not see as marked)."""
    for t in tensors:
        for a in _MARKS:
            if a in t.__dict__:
                delattr(t, a)


def mark_dims(kwargs, batch, seq_dims=None, batch_names=None, loose=()):
    """Mark the batch dim (dim 0, unbacked, one shared symbol) and the sequence dims (backed
    dynamic) of a compiled graph's keyword inputs, so that no batch size (1 included) and no
    sequence length >= 2 recompiles.

    ``seq_dims``: ``{name: dim}`` of sequence dims (default: dim 1 of the model inputs);
    ``batch_names``: predicate on an input name, True where dim 0 is the batch (default: the
    model inputs and ``fxv_*`` tensors); ``loose``: names whose dim 0 may broadcast (marked as the
    batch only when it equals a batch larger than 1)."""
    if seq_dims is None:
        seq_dims = {k: 1 for k in MODEL_INPUTS}
    marked = []
    for name, v in kwargs.items():
        vals = v if isinstance(v, (tuple, list)) else (v,)
        for t in vals:
            if not isinstance(t, torch.Tensor):
                continue
            marked.append(t)
            is_batch = (
                batch_names(name) if batch_names is not None else (name in MODEL_INPUTS or name.startswith("fxv_"))
            )
            if is_batch and (name not in loose or batch > 1):
                _mark_batch(t, batch)
            if name in seq_dims:
                _mark_seq(t, seq_dims[name])
    return marked


def _autocast_region(device_type, dtype, enabled, cache_enabled, body, *args):
    with torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled):
        return body(*args)


def compile_ready(gm):
    """``gm`` as torch.compile traces it without a graph break: export graphs hold autocast regions
    (Llama's rotary tables) as ``wrap_with_autocast`` higher-order ops, which Dynamo cannot re-trace
    when the region reads a dynamic size (graph break "wrap_with_autocast: unexpected freevars"; the
    resumed frame then specialises batch 1). Each region becomes a plain call under a
    ``torch.autocast`` context with the same settings, which Dynamo traces. Shares the parameters and
    submodules of ``gm``; ``gm`` itself is not modified."""
    hop = getattr(torch.ops.higher_order, "wrap_with_autocast", None)
    if hop is None or not any(n.op == "call_function" and n.target is hop for n in gm.graph.nodes):
        return gm
    from fxvene.passes.rewrite import copy_graph

    new = copy_graph(gm)
    for n in new.graph.nodes:
        if n.op == "call_function" and n.target is hop:
            n.target = _autocast_region
    new.recompile()
    return new


def compiled(gm, cache, options):
    """The compiled callable for ``gm`` (cached by graph identity in ``cache``)."""
    key = id(gm)
    hit = cache.get(key)
    if hit is not None and hit[0] is gm:
        return hit[1]
    fn = compile_graph(gm, options)
    cache[key] = (gm, fn)
    return fn


def compile_graph(gm, options):
    """``torch.compile(gm, **options)`` of ``compile_ready``'s form of ``gm``."""
    ready = compile_ready(gm)
    if hasattr(ready, "real_recompile"):  # a lazy copy: generate its code now, not inside the first compiled call
        ready.real_recompile()
    return torch.compile(ready, **options)


def _user_sources(gm, kwargs):
    """Names of ``fxv_src_i`` inputs that are user-given ``source_representations`` (they may broadcast)."""
    out = set()
    for name in kwargs:
        if name.startswith("fxv_src_"):
            try:
                op = gm.get_submodule("fxv_site_" + name[len("fxv_src_") :])
            except AttributeError:
                continue
            call = getattr(op, "call", None) or {}
            if not call.get("check_source_shape", True):
                out.add(name)
    return out


def run(intervenable, gm, kwargs):
    """Run ``gm`` (compiled when the IntervenableModel asks for it) on keyword tensors."""
    options = getattr(intervenable, "_compile_options", None)
    if not options:
        return gm(**kwargs)
    cache = intervenable.__dict__.setdefault("_compiled_graphs", {})
    first = not (id(gm) in cache and cache[id(gm)][0] is gm)
    fn = compiled(gm, cache, options)
    lead = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    marked = []
    if isinstance(lead, torch.Tensor) and lead.dim() >= 1 and options.get("dynamic", True) is not False:
        marked = mark_dims(kwargs, int(lead.shape[0]), loose=_user_sources(gm, kwargs))
    try:
        if not first:
            return fn(**kwargs)
        with say(
            "compiling the intervened graph (first call of this structure; later batch sizes, lengths and "
            "locations reuse it)"
        ):
            return fn(**kwargs)
    finally:
        unmark(marked)


def recompiles():
    """Frames compiled so far by torch.compile in this process (``torch._dynamo`` counters)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


__all__ = ["compile_options", "compiled", "compile_graph", "mark_dims", "unmark", "run", "recompiles"]
