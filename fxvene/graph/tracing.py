"""Tracing frontends: turn a Hugging Face model into a plain torch.fx GraphModule.

Both frontends return a ``TracedGraph``: a ``GraphModule`` whose placeholders
are the model's keyword inputs (``input_ids``, ``attention_mask``, ...) and whose
output is a flat tuple of tensors (``output_keys`` names them). The GraphModule
shares the model's parameters: nothing is copied.

Nothing is assumed of the model's ``forward`` beyond a lead input (``input_ids`` or
``inputs_embeds``): what it takes and returns, and graphs of one sequence length (a recurrent
model's unrolled loop), are ``fxvene.graph.model_io``'s. A model is traced in eval mode (dropout
off, as pyvene's wrap leaves it) or, with ``training=True``, in train mode: that graph keeps every
dropout as a random op drawing from torch's global generator in the model's own order (HF's fx
tracer leaves ``nn.Dropout`` modules as module calls that read their live ``training`` flag; they
become ``F.dropout`` calls of the graph's mode, passing their input through in eval mode). The two modes are two
graphs, cached apart; the user's module modes and random state come back afterwards.

* ``hf_fx``: ``transformers.utils.fx.symbolic_trace`` (transformers 4.x only).
* ``export``: ``torch.export.export(..., strict=False)`` with dynamic batch and
  sequence dimensions, then ``.module()`` with its pytree codegen removed.
* ``auto``: decided up front from the model (``choose_frontend``): ``hf_fx`` where transformers
  has it, supports the model family and the model uses eager attention (HF's fx tracer gives wrong
  outputs for SDPA attention on transformers 4.47, e.g. GPT-2), else ``export``. Every traced graph
  is still checked against the model's own outputs; should the chosen frontend fail, the other one
  is tried, quietly: the warnings of an attempt that fails are dropped, those of one that succeeds
  pass through the user's filters; the error when both fail is two lines (``.attempts`` keeps each
  tracer's whole message).

Exported graphs are kept in the on-disk graph cache (``fxvene.graph.cache``); a loaded graph
passes the same output check as a fresh one. Slow steps say what they do on stderr
(``fxvene.graph.progress``); the tracers' own log chatter is kept from the user.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
import weakref
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from fxvene.graph import offload
from fxvene.graph.errors import TracingError, clip
from fxvene.graph.model_io import (  # noqa: F401  (construction_inputs, lead_input, steps_signature: public here too)
    FIXED_LENGTH,
    STEPS,
    add_ignored_inputs,
    check_ignored_input,
    construction_inputs,
    dynamic_dims,
    example_features,
    example_ids,
    example_pixels,
    fixed_length,
    flat_output,
    forward_parameters,
    guard_length,
    lead_input,
    split_inputs,
    steps_signature,
    switches,
    text_cache_off,
)
from fxvene.graph.modes import model_mode
from fxvene.graph.progress import progress, quiet_loggers
from fxvene.graph.sharded import check_not_sharded
from fxvene.models.llava import batch_free_features

FRONTENDS = ("auto", "hf_fx", "export")
NO_HF_FX = "not in this transformers (HF's fx tracer: 4.x only)"
log = logging.getLogger("fxvene.graph.tracing")


@dataclass
class TracedGraph:
    gm: fx.GraphModule
    frontend: str
    input_names: tuple
    output_keys: tuple
    output_cls: type
    trace_seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    def run(self, gm=None, **inputs):
        gm = self.gm if gm is None else gm
        return gm(**{k: inputs.get(k) for k in self.input_names})

    def wrap_outputs(self, flat):
        """The model's own output type from the graph's flat outputs (a ModelOutput, a tuple or a tensor)."""
        n = len(self.output_keys)
        if self.output_cls is tuple:
            return tuple(flat[:n])
        if self.output_cls is torch.Tensor:
            return flat[0]
        return self.output_cls(**dict(zip(self.output_keys, flat[:n])))


def hf_fx_available():
    try:
        from transformers.utils import fx as hf_fx  # noqa: F401

        return hasattr(hf_fx, "symbolic_trace")
    except Exception:
        return False


def _example_inputs(model, input_names, batch=2, seq=8):
    cfg = model.config
    vocab = getattr(cfg, "vocab_size", 16) or 16
    g = torch.Generator().manual_seed(0)
    device = offload.main_device(model)  # a dispatched model's offloaded weights sit on the meta device
    ex = {}
    for name in input_names:
        if name == "input_ids":
            ex[name] = example_ids(model, batch, seq, g, device)
            seq = ex[name].shape[1]  # lengthened for a model's image tokens (LLaVA)
        elif name == "decoder_input_ids":  # an encoder-decoder's decoder side: its own length
            ex[name] = torch.randint(0, vocab, (batch, seq - 3), generator=g).to(device)
        elif name == "decoder_attention_mask":
            ex[name] = torch.ones(batch, seq - 3, dtype=torch.long, device=device)
        elif name in ("attention_mask", "token_type_ids"):
            ex[name] = torch.ones(batch, seq, dtype=torch.long, device=device)
        elif name == "position_ids":
            ex[name] = torch.arange(seq, device=device).unsqueeze(0).expand(batch, seq).contiguous()
        elif name == "labels":  # traced with labels, the model computes its own loss (forward(labels=...))
            if "ForSequenceClassification" in type(model).__name__:
                ex[name] = torch.randint(0, getattr(cfg, "num_labels", 2) or 2, (batch,), generator=g).to(device)
            else:
                ex[name] = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
        elif name == "pixel_values":
            ex[name] = example_pixels(model, batch, g, device, next(model.parameters()).dtype)
        elif name == "input_features":
            ex[name] = example_features(model, batch, g, device, next(model.parameters()).dtype)
        elif name == "inputs_embeds":
            hidden = next(
                (getattr(cfg, a) for a in ("hidden_size", "n_embd", "h_dim", "d_model") if getattr(cfg, a, None)), None
            )
            dtype = next(model.parameters()).dtype
            ex[name] = torch.randn(batch, seq, hidden, generator=g).to(device=device, dtype=dtype)
        else:
            raise ValueError(f"fxvene cannot build an example for model input {name!r}")
    return ex


def _reference_output(model, example):
    with torch.no_grad(), _seeded(model):
        out = model(**example, **switches(model, use_cache=False))  # the model's own output type, as pyvene returns it
    cls, keys, flat = flat_output(out)
    return cls, keys, flat


def _shape_prop(gm, example, input_names):
    """Record ``meta['val']`` (a real tensor's meta copy) on every node of an fx graph."""

    class _Prop(fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if isinstance(result, torch.Tensor):
                n.meta["val"] = result.detach().to("meta")
            elif isinstance(result, (tuple, list)):
                n.meta["val"] = type(result)(
                    r.detach().to("meta") if isinstance(r, torch.Tensor) else r for r in result
                )
            else:
                n.meta["val"] = result
            return result

    with torch.no_grad():
        _Prop(gm).run(*[example[k] for k in input_names])


def _trace_hf_fx(model, input_names, example, out_keys):
    import torch._dynamo  # noqa: F401  (before HF's tracer patches torch.finfo; see DESIGN.md. Here, not at

    # module level: a process that loads its graphs from the graph cache never needs it)
    from transformers.utils.fx import symbolic_trace

    use_cache = getattr(model.config, "use_cache", None)
    try:
        if use_cache is not None:  # else HF's tracer logs a warning and switches it off itself
            model.config.use_cache = False
        with _quiet_logs(), offload.tracing_view(model):  # accelerate's hooks set aside (a dispatched model)
            gm = symbolic_trace(model, input_names=list(input_names))
    finally:  # leave the user's config as it was
        if use_cache is not None:
            model.config.use_cache = use_cache
    graph = gm.graph
    out_node = next(n for n in graph.nodes if n.op == "output")
    ret = out_node.args[0]
    if not isinstance(ret, dict):
        raise TracingError(f"hf_fx: unexpected traced output structure {type(ret)}")
    flat = []
    for k in out_keys:
        if k not in ret:
            raise TracingError(f"hf_fx: traced graph has no output {k!r}")
        flat.append(ret[k])
    out_node.args = (tuple(flat),)
    graph.eliminate_dead_code()
    _fix_dropouts(model, graph, model.training)
    gm = fx.GraphModule(model, graph, class_name="FxveneTraced")
    gm = offload.finish(gm, model)  # a dispatched model: offloaded weights loaded where used
    _shape_prop(gm, example, input_names)
    return gm


def _fix_dropouts(model, graph, training):
    """Give the graph's ``nn.Dropout`` module calls the mode of the trace: in train mode an
    ``F.dropout(x, p, training=True)`` call (the op the module runs, same random draws), in eval mode
    ``training=False`` (the input passes through; the node keeps its module path for sites). Other
    dropout kinds stay module calls."""
    for n in list(graph.nodes):
        if n.op != "call_module":
            continue
        mod = model.get_submodule(n.target)
        if type(mod) is not torch.nn.Dropout or len(n.args) != 1 or n.kwargs:
            continue
        # the node stays (its module path is a site: GPT-2's attention_output is attn.resid_dropout's output);
        # in eval mode F.dropout(training=False) passes its input through
        n.op, n.target = "call_function", torch.nn.functional.dropout
        n.kwargs = {"p": float(mod.p), "training": bool(training), "inplace": bool(mod.inplace)}


def _quiet_logs():
    """HF's and torch's tracers log warnings meant for their own developers (``is_fx_tracing`` ...)."""
    return quiet_loggers(
        "torch.fx._symbolic_trace",
        "transformers.utils.fx",
        "torch.export",
        "torch._export",
        "torch.fx.experimental.symbolic_shapes",
    )


def _export_program(model, input_names, example):
    dyn = {k: dynamic_dims(k, example[k]) for k in input_names}
    kwargs = dict(example)
    for k, v in switches(model, use_cache=False).items():
        kwargs[k] = v
        dyn[k] = None
    # under no_grad, `@torch.no_grad()` helpers (rotary embeddings) trace as plain ops instead of
    # set_grad_enabled higher-order submodules; the aten graph is the same and still differentiable
    # a dispatched model is exported on its structure: hooks set aside, weights and inputs on meta
    with (
        torch.no_grad(),
        _quiet_logs(),
        text_cache_off(model),
        batch_free_features(model),
        offload.tracing_view(model, meta=True) as dispatched,
    ):
        kwargs = offload.to_meta(kwargs) if dispatched else kwargs
        return torch.export.export(model, (), kwargs, dynamic_shapes=dyn, strict=False)


def _trace_export(model, input_names, example, out_keys, ep=None):
    if ep is None:
        ep = _export_program(model, input_names, example)
    gm = ep.module()
    graph = export_graph(gm)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for n in placeholders:
        if n.name not in input_names and n.target not in input_names:
            if n.users:
                raise TracingError(f"export: graph reads the non-tensor input {n.target!r}")
            graph.erase_node(n)
    out_node = next(n for n in graph.nodes if n.op == "output")
    flat = list(out_node.args[0])
    if len(flat) < len(out_keys):
        raise TracingError(f"export: {len(flat)} outputs, expected {len(out_keys)}")
    out_node.args = (tuple(flat[: len(out_keys)]),)
    graph.eliminate_dead_code()
    if offload.is_dispatched(model):  # the model's live tensors (the export ran on meta stand-ins)
        new_gm = offload.finish(fx.GraphModule(offload.live_root(gm, graph, model), graph, "FxveneTraced"), model)
    else:
        new_gm = fx.GraphModule(gm, graph, class_name="FxveneTraced")
    return new_gm


def export_graph(gm):
    """The graph of an exported program's module (``ep.module()``) as fxvene runs it, edited in
    place: a plain positional signature (no pytree codegen), no guard module, and no runtime
    asserts (export's metadata asserts pin dtypes/devices and clutter patterns)."""
    graph = gm.graph
    graph._codegen = fx.graph.CodeGen()
    for n in list(graph.nodes):
        if n.op == "call_module" and str(n.target).startswith("_guards_fn"):
            graph.erase_node(n)
        elif n.op == "call_function" and not n.users and _is_assert(n.target):
            graph.erase_node(n)
    return graph


def _is_assert(target):
    name = str(getattr(target, "__name__", target))
    return name.startswith("_assert") or "sym_constrain_range" in name or "_assert_tensor_metadata" in str(target)


def _tensor_equal(a, b):
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def choose_frontend(model):
    """``(frontend, reason)``: the frontend ``tracer="auto"`` uses for ``model``, decided from its
    config before any tracing. ``hf_fx`` needs transformers 4.x, a model family HF's fx tracer
    supports and eager attention (with SDPA it traces GPT-2 to wrong outputs on transformers 4.47)."""
    if not hf_fx_available():
        return "export", NO_HF_FX
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if impl != "eager":
        return "export", f"attn_implementation={impl!r}: HF's fx tracer is exact for eager attention only"
    try:
        from transformers.utils.fx import check_if_model_is_supported

        check_if_model_is_supported(model)
    except Exception as e:  # noqa: BLE001 - NotImplementedError for unsupported families
        return "export", f"HF's fx tracer does not support {type(model).__name__} ({type(e).__name__})"
    return "hf_fx", "eager attention, a model family HF's fx tracer supports"


def _attempt(model, frontend, input_names, example, out_keys, ref):
    """One frontend's graph, checked against the model's outputs ``ref`` (raises on mismatch).
    Export: from the graph cache when it holds this graph and it passes the check."""
    name = type(model).__name__
    if frontend == "hf_fx":
        with progress(f"tracing {name} with HF's fx tracer"):
            gm = _trace_hf_fx(model, input_names, example, out_keys)
            _check(gm, example, out_keys, ref, model)
        return gm, False
    from fxvene.graph import cache as graph_cache

    sig = {"inputs": list(input_names)}
    if model.training:  # a train-mode graph (dropout live) is its own entry
        sig["training"] = True
    if model in FIXED_LENGTH:  # a fixed-length graph: one entry per length
        sig["steps"] = int(next(iter(example.values())).shape[1])
    key, about = graph_cache.key_for(model, "forward", sig)
    if graph_cache.has(key):
        with progress(f"loading the graph of {name} from the graph cache"):
            ep = graph_cache.load(key, about, model)
            if ep is not None:
                try:
                    gm = _trace_export(model, input_names, example, out_keys, ep=ep)
                    _check(gm, example, out_keys, ref, model)
                    return gm, True
                except Exception as e:  # noqa: BLE001 - a stale entry: export afresh
                    graph_cache.discard(key, f"failed its check: {type(e).__name__}: {e}"[:200])
    later = " (first use; cached for next time)" if key is not None and graph_cache.enabled() else ""
    with progress(f"exporting {name} with torch.export{later}"):
        ep = _export_program(model, input_names, example)
        gm = _trace_export(model, input_names, example, out_keys, ep=ep)
        _check(gm, example, out_keys, ref, model)
        graph_cache.save(key, about, ep, model)
    return gm, False


@contextlib.contextmanager
def _seeded(model):
    """A train-mode model's check run draws its dropout from a fixed seed (the reference forward and
    the graph draw the same numbers); the caller's random state is kept."""
    if not model.training:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _check(gm, example, out_keys, ref, model=None):
    with torch.no_grad(), _seeded(model if model is not None else gm):
        got = gm(**example)
    for k, g, r in zip(out_keys, got, ref):
        if not _tensor_equal(g, r):
            raise TracingError(f"traced output {k!r} differs from the model's")


def trace(model, input_names=("input_ids", "attention_mask"), tracer="auto", check=True, training=False):
    """Trace ``model`` once per (frontend, input names, mode); later calls reuse the graph.

    ``training=False`` (default): the eval-mode graph, whatever mode the model is in. ``training=True``:
    the train-mode graph, every dropout of the model live (its own cache entries)."""
    if tracer not in FRONTENDS:
        raise ValueError(f"tracer must be one of {FRONTENDS}, got {tracer!r}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be True or False, got {training!r}")
    input_names = tuple(input_names)
    per_model = _CACHE.setdefault(model if not training else _TrainKey.of(model), {})
    key = (tracer, input_names)
    if key in per_model:
        return per_model[key]
    # the graph's mode; the user's modes (and random state) come back after
    with model_mode(model, training), torch.random.fork_rng(devices=[]) if training else contextlib.nullcontext():
        return _trace_new(model, input_names, tracer, per_model, key)


class _TrainKey:
    """The per-model key of a model's train-mode graphs in the trace cache (weakly held by the model)."""

    _by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, model):
        k = cls._by_model.get(model)
        if k is None:
            k = cls._by_model[model] = cls()
        return k


def _trace_new(model, input_names, tracer, per_model, key):
    check_not_sharded(model)  # tensor-parallel (DTensor) weights: a clear ValueError, before any forward
    steps = [int(str(k)[len(STEPS) :]) for k in input_names if str(k).startswith(STEPS)]
    input_names = tuple(k for k in input_names if not str(k).startswith(STEPS))
    if tracer == "auto":
        first, _ = choose_frontend(model)
        order = (first, "export" if first == "hf_fx" else "hf_fx")
    else:
        order = (tracer,)
    taken, ignored = split_inputs(model, input_names)
    example = _example_inputs(model, taken, seq=steps[0] if steps else 8)
    out_cls, out_keys, ref = _reference_output(model, example)
    errors = {}
    for frontend in order:
        if frontend == "hf_fx" and not hf_fx_available():
            errors[frontend] = NO_HF_FX
            continue
        t0 = time.perf_counter()
        try:
            with _held_warnings() as held:  # a tracer fxvene abandons says nothing to the user
                gm, from_cache = _attempt(model, frontend, taken, example, out_keys, ref)
            lead = "input_ids" if "input_ids" in taken else "inputs_embeds"
            fixed = fixed_length(gm, lead) if frontend == "export" else None
            if fixed is not None:
                FIXED_LENGTH[model] = fixed
                gm = guard_length(gm, lead, fixed, type(model).__name__)
            gm = add_ignored_inputs(gm, ignored, type(model).__name__)
        except Exception as e:  # noqa: BLE001 - we report every frontend's failure together
            errors[frontend] = f"{type(e).__name__}: {e}"
            log.debug("fxvene: %s could not trace %s: %s", frontend, type(model).__name__, errors[frontend])
            for w in held:
                log.debug("fxvene: %s warned (not shown: it failed): %s", frontend, w.message)
            continue
        _replay(held)
        tg = TracedGraph(
            gm=gm,
            frontend=frontend,
            input_names=input_names,
            output_keys=out_keys,
            output_cls=out_cls,
            trace_seconds=time.perf_counter() - t0,
            meta={"from_cache": from_cache, "steps": fixed},
        )
        per_model[key] = tg
        if tracer == "auto":
            per_model[(frontend, input_names)] = tg
        if fixed is not None and not steps:  # a later call of this length finds it under its length
            for t in {tracer, frontend}:
                per_model[(t, input_names + (f"{STEPS}{fixed}",))] = tg
        return tg
    raise _failure(model, tracer, errors)


def _failure(model, tracer, errors):
    """The error when no frontend traced ``model``: at most two lines, each tracer's error cut to its
    first line (``.attempts`` keeps every tracer's whole message; ``.hint``, what to do, when known)."""
    head = f"fxvene could not trace {type(model).__name__} (tracer={tracer!r}): "
    hint = None
    if tracer == "hf_fx" and hf_fx_available() and choose_frontend(model)[0] != "hf_fx":
        hint = f"{choose_frontend(model)[1]}; use tracer='auto' or 'export'"
    # room for a caller's "model: " and a second line of what to do (validation.unsupported)
    budget, parts = 290 - len(head) - max(len(hint or ""), 85), {}
    for i, (k, v) in enumerate(sorted(errors.items(), key=lambda kv: len(kv[1]))):  # short ones leave room
        parts[k] = clip(v, max(budget // (len(errors) - i) - len(k) - 4, 30))
        budget -= len(parts[k]) + len(k) + 4
    msg = head + "; ".join(f"{k}: {parts[k]}" for k in errors) + (f"\n{hint}" if hint else "")
    err = TracingError(msg)
    err.attempts, err.hint = dict(errors), hint
    return err


@contextlib.contextmanager
def _held_warnings():
    """Record the warnings a tracing attempt emits (whatever the user's filters say), for
    ``_replay`` once it succeeds; a failed attempt's warnings are dropped."""
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        yield held


_REPLAYED: dict = {}  # the warnings registry of replayed warnings ("default" shows each once)


def _replay(held):
    """The warnings of an attempt that succeeded, through the user's own filters."""
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry=_REPLAYED, source=w.source)


def shares_parameters(gm, model):
    """True if every parameter of ``gm`` is (by storage) a parameter or buffer of ``model``."""
    ptrs = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    return all(p.data_ptr() in ptrs for p in gm.parameters())
