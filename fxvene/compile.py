"""Compile once: ``torch.compile`` the rewritten graphs an IntervenableModel runs.

``IntervenableModel(config, model, compile=True)`` or ``intervenable.compile(**options)``
compiles each rewritten GraphModule the runtime picks (one per call *structure*: which sites,
intervention types, source groups), lazily, the first time it runs. Everything that varies
inside a sweep is a tensor input of that graph (source activations ``fxv_src_i``, unit
locations ``fxv_loc_i``/``fxv_sloc_i``, the model inputs), and batch and sequence dimensions
are compiled dynamic, so calls that differ only in those values or sizes reuse the compiled
code: zero recompiles (``tests/test_compile.py`` counts them with torch's own counters).

Dimensions of size 0 or 1 are specialised by torch.compile (a batch of 1 and a batch of 4
are two compiles; 2, 4 and 8 are one). ``options`` go to ``torch.compile`` (``backend``,
``mode``, ``fullgraph``, ...); ``dynamic`` defaults to True.
"""
from __future__ import annotations

import torch


def compile_options(options):
    if options is True or options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"compile must be True/False or a dict of torch.compile options, got {type(options).__name__}")
    opts = {"dynamic": True}
    opts.update(options)
    return opts


def compiled(gm, cache, options):
    """The compiled callable for ``gm`` (cached by graph identity in ``cache``)."""
    key = id(gm)
    hit = cache.get(key)
    if hit is not None and hit[0] is gm:
        return hit[1]
    fn = torch.compile(gm, **options)
    cache[key] = (gm, fn)
    return fn


def run(intervenable, gm, kwargs):
    """Run ``gm`` (compiled when the IntervenableModel asks for it) on keyword tensors."""
    options = getattr(intervenable, "_compile_options", None)
    if not options:
        return gm(**kwargs)
    cache = intervenable.__dict__.setdefault("_compiled_graphs", {})
    return compiled(gm, cache, options)(**kwargs)


def recompiles():
    """Frames compiled so far by torch.compile in this process (``torch._dynamo`` counters)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
