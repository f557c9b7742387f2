"""KV-cache step graphs: ``torch.export`` of a small wrapper around a Hugging Face model whose past
keys/values are plain tensor inputs and outputs.

* **chunk**: ``(input_ids (b, S), attention_mask (b, P+S), position_ids (b, S), past_0 ... past_2L-1)
  -> (last logits, updated keys/values)``: ``S`` new tokens after ``P`` cached positions, both
  symbolic. It is the one graph a process exports: with ``P = 0`` (empty past tensors) it is the
  prompt forward (*prefill*), with ``S = 1`` the *decode* step, and sweeps run it to recompute
  only the positions after a patched one. Its edges (P = 0, P = 1, S = 1) are checked against the
  model itself when it is traced (torch.export specialises sizes 0 and 1 of an example).
* **prefill** / **decode**: separate exports, used only for a model whose chunk graph cannot be
  traced or fails those checks. ``step_graph(model, "prefill")`` on a model with a working chunk
  graph returns the chunk graph with ``empty_past`` set: call it with ``StepGraph.inputs``.
* **prefill_embeds**: the prompt forward on ``inputs_embeds (b, S, width)`` instead of ``input_ids``
  (no past), exported on request only: the keys/values of forward's ``use_cache=True`` on embeddings.
* **chunk_tt**: the chunk graph with ``token_type_ids (b, S)`` as a last input, exported on request only
  (``generate`` with token types, for models that take them, GPT-2 among them).

Exported programs are kept in the on-disk graph cache (``fxvene.graph.cache``); a loaded one is
checked exactly like a fresh export.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import weakref
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import transformers

from fxvene.graph import cache as graph_cache
from fxvene.graph import offload
from fxvene.graph.errors import clip
from fxvene.graph.progress import progress
from fxvene.graph.tracing import TracedGraph, TracingError, export_graph
from fxvene.passes.rewrite import truncate

TF_MAJOR = int(transformers.__version__.split(".")[0])
log = logging.getLogger("fxvene.graph.step_graphs")


def _cache_mode(model):
    """How the wrapped model wants its past keys/values: a DynamicCache or legacy tuples."""
    if TF_MAJOR >= 5:
        return "dynamic"
    return "legacy_cache" if getattr(model, "_supports_cache_class", False) else "tuple"


def cache_mode(model):
    """How ``model`` takes and returns its past keys/values (``make_cache``'s ``mode``)."""
    return _cache_mode(model)


_EXPORT_CACHE = None


def _export_cache_cls():
    """transformers 4.x's DynamicCache calls ``len(tensor)`` in ``update``/``get_seq_length``, which makes
    torch.export specialise the batch size; this subclass does the same thing with shapes only."""
    global _EXPORT_CACHE
    if _EXPORT_CACHE is None:
        from transformers import DynamicCache

        class ExportDynamicCache(DynamicCache):
            def __init__(self, pairs=()):
                super().__init__()
                for k, v in pairs:
                    self.key_cache.append(k)
                    self.value_cache.append(v)
                self._seen_tokens = pairs[0][0].shape[-2] if pairs else 0

            def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
                if layer_idx == 0:
                    self._seen_tokens += key_states.shape[-2]
                if layer_idx < len(self.key_cache):
                    self.key_cache[layer_idx] = torch.cat([self.key_cache[layer_idx], key_states], dim=-2)
                    self.value_cache[layer_idx] = torch.cat([self.value_cache[layer_idx], value_states], dim=-2)
                elif layer_idx == len(self.key_cache):
                    self.key_cache.append(key_states)
                    self.value_cache.append(value_states)
                else:
                    raise RuntimeError(f"cache layer {layer_idx} updated before layer {len(self.key_cache)}")
                return self.key_cache[layer_idx], self.value_cache[layer_idx]

            def get_seq_length(self, layer_idx=0):
                if layer_idx is None:
                    layer_idx = 0
                if len(self.key_cache) <= layer_idx:
                    return 0
                return self.key_cache[layer_idx].shape[-2]

        _EXPORT_CACHE = ExportDynamicCache
    return _EXPORT_CACHE


def make_cache(past, mode):
    pairs = tuple((past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2))
    if mode == "tuple":
        return pairs if pairs else None
    if mode == "legacy_cache":
        return _export_cache_cls()(pairs)
    if not pairs:
        # an empty cache of full layers: left to itself, a transformers-5 model with sliding-window layers
        # (Mistral, Gemma 2/3) makes a cache whose sliding layers keep only the last window of keys/values;
        # the step graphs keep every position (the masks apply the window), so every past has one shape
        from transformers import DynamicCache

        return DynamicCache()
    return _v5_cache(pairs)


@contextlib.contextmanager
def sliding_window_masks(model):
    """transformers 4's Gemma 2 applies its sliding window inside each sliding layer as
    ``tril(mask, diagonal=-window)`` on the (query, key) mask, which is right only when query ``i`` is
    position ``i`` (no past) and gives no window at all on a one-token decode step over a cache of
    every position. (HF's own generate uses a HybridCache whose rolling buffer holds the window.) While
    this context is active each sliding layer receives the mask with the window already applied at the
    queries' absolute positions (``cache_position``), so its own ``tril`` changes nothing more. No-op
    for every other model and on transformers 5 (whose masks place the window by position)."""
    handles = []
    if TF_MAJOR < 5 and getattr(model.config, "model_type", None) == "gemma2":
        for mod in model.modules():
            if getattr(mod, "is_sliding", False) and getattr(mod, "sliding_window", None):
                handles.append(mod.register_forward_pre_hook(_window_mask_hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _window_mask_hook(mod, args, kwargs):
    mask, pos = kwargs.get("attention_mask"), kwargs.get("cache_position")
    if mask is None or pos is None or mask.dim() != 4:
        return None
    keys = torch.arange(mask.shape[-1], device=mask.device)
    outside = keys[None, :] <= pos[:, None] - mod.sliding_window  # (queries, keys)
    kwargs = dict(kwargs)
    kwargs["attention_mask"] = mask.masked_fill(outside, torch.finfo(mask.dtype).min)
    return args, kwargs


_LAYER_ATTRS = None


def _v5_cache(pairs):
    """A transformers-5 DynamicCache holding ``pairs`` *as is*. ``DynamicCache(pairs)`` would fill each
    layer through ``update`` (``cat([empty, k])``), i.e. copy the whole cache once more on every decode
    step inside the traced graph. Falls back to it if DynamicLayer has state this code does not know."""
    global _LAYER_ATTRS
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if _LAYER_ATTRS is None:
        ref = DynamicLayer()
        z = torch.zeros(1, 1, 1, 1)
        ref.update(z, z)
        _LAYER_ATTRS = set(vars(ref))
    if _LAYER_ATTRS != {"keys", "values", "dtype", "device", "is_initialized"}:
        return DynamicCache(pairs)
    cache = DynamicCache()
    layers = []
    for k, v in pairs:
        layer = DynamicLayer()
        layer.dtype, layer.device = k.dtype, k.device
        layer.keys, layer.values = k, v
        layer.is_initialized = True
        layers.append(layer)
    cache.layers = layers
    return cache


def flat_cache(pkv):
    if pkv is None:
        raise TracingError("the model returned no past_key_values with use_cache=True")
    if isinstance(pkv, (tuple, list)):
        return [t for kv in pkv for t in kv[:2]]
    if hasattr(pkv, "layers"):  # transformers 5
        return [t for layer in pkv.layers for t in (layer.keys, layer.values)]
    return [t for kv in zip(pkv.key_cache, pkv.value_cache) for t in kv]


class CacheStep(nn.Module):
    """The module that is exported: flat past tensors in, last-position logits and flat updated
    past tensors out. The HF model is its attribute ``model``; the traced graph's module paths are
    stripped of that prefix so that component specs resolve as on the plain model."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self._mode = _cache_mode(model)
        params = inspect.signature(model.forward).parameters
        # what HF generate passes: compute the unembedding only for the last position
        self._keep = {}
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in params:
                self._keep = {name: 1}
                break

    def forward(self, input_ids, attention_mask, position_ids, past):
        return self._step({"input_ids": input_ids}, attention_mask, position_ids, past)

    def _step(self, lead, attention_mask, position_ids, past):
        pkv = make_cache(past, self._mode)
        with sliding_window_masks(self.model):
            out = self.model(
                **lead,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=pkv,
                use_cache=True,
                return_dict=True,
                **self._keep,
            )
        return (out.logits[:, -1, :], *flat_cache(out.past_key_values))


class CacheStepEmbeds(CacheStep):
    """``CacheStep`` on ``inputs_embeds`` (b, S, width) instead of ``input_ids`` (the prefill_embeds graph)."""

    def forward(self, inputs_embeds, attention_mask, position_ids, past):
        return self._step({"inputs_embeds": inputs_embeds}, attention_mask, position_ids, past)


class CacheStepTypes(CacheStep):
    """``CacheStep`` with the model's ``token_type_ids`` (b, S) as a last input (the chunk_tt graph)."""

    def forward(self, input_ids, attention_mask, position_ids, past, token_type_ids):
        return self._step(
            {"input_ids": input_ids, "token_type_ids": token_type_ids}, attention_mask, position_ids, past
        )


@dataclass
class StepGraph:
    """A traced KV-cache step graph. ``traced.gm`` runs; ``locate`` is the same graph truncated to
    the logits (same node names), where sites resolve: the cache outputs would otherwise make
    attention/block regions have several escaping values.

    ``empty_past``: the graph is the chunk graph standing in for the prompt forward, so it takes
    past tensors of length 0 (``inputs`` adds them)."""

    phase: str
    traced: TracedGraph
    locate: TracedGraph
    n_kv: int
    key: tuple = field(default=())
    past_shapes: tuple = field(default=())  # per past tensor: (dim 1, dim 3, dtype); dims 0 and 2 vary
    empty_past: bool = False
    from_cache: bool = False

    @property
    def gm(self):
        return self.traced.gm

    def empty(self, batch, device):
        """Zero-length past keys/values for ``batch`` rows (the chunk graph's prompt forward)."""
        return [torch.zeros(batch, d1, 0, d3, dtype=dt, device=device) for d1, d3, dt in self.past_shapes]

    def inputs(self, input_ids, attention_mask, position_ids, past=None):
        """The positional inputs of ``gm`` (past: the flat cached keys/values, or None for a prompt)."""
        if past is None:
            past = self.empty(input_ids.shape[0], input_ids.device) if self.empty_past or self.phase == "chunk" else []
        return (input_ids, attention_mask, position_ids, *past)


def _strip_prefix(graph, prefix="model"):
    for n in graph.nodes:
        stack = n.meta.get("nn_module_stack")
        if not stack:
            continue
        new = {}
        for k, v in stack.items():
            path, cls = v if isinstance(v, tuple) else (k, None)
            path = str(path)
            if (
                path == ""
                and cls is not None
                and str(getattr(cls, "__name__", cls)).endswith(("CacheStep", "CacheStepEmbeds"))
            ):
                continue  # the wrapper itself
            if path == prefix:
                path = ""
            elif path.startswith(prefix + "."):
                path = path[len(prefix) + 1 :]
            elif path.startswith(f"L['self'].{prefix}"):
                path = path[len(f"L['self'].{prefix}") :].lstrip(".")
            else:
                continue  # anything outside the HF model (cache plumbing of the wrapper)
            new[k] = (path, cls)
        n.meta["nn_module_stack"] = new


def _examples(model, wrapper, phase):
    cfg = model.config
    vocab = int(getattr(cfg, "vocab_size", 16) or 16)
    device = offload.main_device(model)  # a dispatched model's offloaded weights sit on the meta device
    g = torch.Generator().manual_seed(0)
    b, s = 2, 5
    ids = torch.randint(0, vocab, (b, s), generator=g).to(device)
    mask = torch.ones(b, s, dtype=torch.long, device=device)
    mask[1, :2] = 0  # left padding in the example (values do not specialise the trace)
    pos = position_ids_from_mask(mask)
    if phase == "prefill":
        return (ids, mask, pos, []), ({0: _auto(), 1: _auto()},) * 3 + ([],)
    if phase == "prefill_embeds":
        try:
            with torch.no_grad():
                embeds = model.get_input_embeddings()(ids)
        except Exception as e:  # noqa: BLE001 - no usable input embeddings
            raise TracingError(f"{type(model).__name__} has no input embeddings to trace inputs_embeds with") from e
        return (embeds, mask, pos, []), ({0: _auto(), 1: _auto()},) * 3 + ([],)
    if phase == "chunk_tt":  # the chunk example, with token types 0/1 for the new tokens
        (ids, mask, pos, past), dyn = _examples(model, CacheStep(model), "chunk")
        types = torch.randint(0, 2, tuple(ids.shape), generator=g).to(device)
        return (ids, mask, pos, past, types), (*dyn, {0: _auto(), 1: _auto()})
    if phase == "chunk":
        # a 3-token chunk after a 2-token past, batch 4: every size distinct, so none is unified with another
        b, P = 4, 2
        ids = torch.randint(0, vocab, (b, s), generator=g).to(device)
        mask = torch.ones(b, s, dtype=torch.long, device=device)
        mask[1, :1] = 0
        pos = position_ids_from_mask(mask)
        with torch.no_grad():
            past = list(wrapper(ids[:, :P], mask[:, :P], pos[:, :P], [])[1:])
        dyn = (
            {0: _auto(), 1: _auto()},
            {0: _auto(), 1: _auto()},
            {0: _auto(), 1: _auto()},
            [{0: _auto(), 2: _auto()}] * len(past),
        )
        return (ids[:, P:], mask, pos[:, P:], past), dyn
    with torch.no_grad():
        past = list(wrapper(ids, mask, pos, [])[1:])
    ids1 = torch.randint(0, vocab, (b, 1), generator=g).to(device)
    mask1 = torch.cat([mask, torch.ones(b, 1, dtype=torch.long, device=device)], dim=1)
    pos1 = pos[:, -1:] + 1
    dyn = ({0: _auto()}, {0: _auto(), 1: _auto()}, {0: _auto()}, [{0: _auto(), 2: _auto()}] * len(past))
    return (ids1, mask1, pos1, past), dyn


def _flat_attrs(gm, graph, params, sources=None):
    """Give every weight a flat attribute name on the step graph, bound to a detached alias of the
    model's tensor (same storage: nothing is copied). The generated code then reads
    ``self.fxw_3`` instead of walking ``self.model.transformer.h[3]...`` through ``nn.Module.__getattr__``
    on every decode step (about a millisecond per token on a 12-layer model). The aliases are buffers
    of the new GraphModule; ``params`` (a set) receives the names that alias parameters, ``sources``
    (a dict) the original attribute path of each name (the graph cache stores those)."""
    root = {}
    for i, n in enumerate(n for n in graph.nodes if n.op == "get_attr"):
        obj = gm
        for part in str(n.target).split("."):
            obj = getattr(obj, part)
        flat = f"fxw_{i}_" + "".join(c if c.isalnum() else "_" for c in str(n.target))[-60:]
        root[flat] = obj.detach() if isinstance(obj, torch.Tensor) else obj
        if isinstance(obj, nn.Parameter):
            params.add(flat)
        if sources is not None:
            sources[flat] = str(n.target)
        n.target = flat
    return root


def _auto():
    from torch.export import Dim

    return Dim.AUTO


def _export(wrapper, args, dyn, model, phase):
    with torch.no_grad():
        try:
            # a dispatched model is exported on its structure (hooks set aside, weights and inputs on meta)
            with offload.tracing_view(model, meta=True) as dispatched:
                args = offload.to_meta(args) if dispatched else args
                return torch.export.export(wrapper, args, dynamic_shapes=dyn, strict=False)
        except Exception as e:  # noqa: BLE001
            msg = clip(f"{type(e).__name__}: {e}", 130)
            raise TracingError(
                f"fxvene could not trace the {phase} step of {type(model).__name__} with a KV cache "
                f"(torch.export of the model with past_key_values): {msg}"
            ) from e


def _export_step(model, phase):
    """Export (or load from the graph cache) and check the ``phase`` step graph of ``model``."""
    wrapper = {"prefill_embeds": CacheStepEmbeds, "chunk_tt": CacheStepTypes}.get(phase, CacheStep)(model)
    args, dyn = _examples(model, wrapper, phase)
    with torch.no_grad():
        ref = wrapper(*args)
    key, about = graph_cache.key_for(model, f"step:{phase}", {"phase": phase, "cache_mode": wrapper._mode})
    name = type(model).__name__
    ep = None
    stale = False
    if key is not None and graph_cache.enabled() and graph_cache.has(key):
        stale = True  # unless it loads and passes its check below
        with progress(f"loading the KV-cache graph of {name} from the graph cache"):
            got = graph_cache.load(key, about, wrapper, class_name=f"FxveneStep_{phase}")
            if got is not None:
                try:
                    if isinstance(got, fx.GraphModule):  # fxvene's own format: the finished graph
                        return _checked(got, model, wrapper, phase, args, ref, from_cache=True)
                    return _finish(got, model, wrapper, phase, args, ref, from_cache=True)
                except Exception as e:  # noqa: BLE001 - a stale or corrupt entry: export afresh
                    graph_cache.discard(key, f"failed its check: {type(e).__name__}: {e}"[:300])
    what = "the KV-cache graph" if phase == "chunk" else f"the {phase} step"
    later = "; first use, cached for next time" if key is not None and graph_cache.enabled() else ""
    if stale:
        later = "; its graph-cache entry was stale or damaged and is replaced"
    with progress(f"exporting {name} with a KV cache ({what}{later})"):
        ep = _export(wrapper, args, dyn, model, phase)
        sg = _finish(ep, model, wrapper, phase, args, ref)
        graph_cache.save(key, about, ep, wrapper, graph=sg.gm)
    return sg


def _finish(ep, model, wrapper, phase, args, ref, from_cache=False):
    """The exported program as fxvene runs it, checked against the model (``ref``: its outputs on
    ``args``); raises TracingError if it does not reproduce the model."""
    gm = offload.rebind(ep.module(), wrapper)  # a dispatched model: its live weights, not the meta stand-ins
    graph = export_graph(gm)
    _strip_prefix(graph)
    graph.eliminate_dead_code()
    params, sources = set(), {}
    gm = fx.GraphModule(_flat_attrs(gm, graph, params, sources), graph, class_name=f"FxveneStep_{phase}")
    gm = offload.finish(gm, model, {k: v.removeprefix("model.") for k, v in sources.items()})
    gm.meta["fxvene_param_attrs"] = frozenset(params)  # weights, for the slice passes (heavy values)
    gm.meta["fxvene_attr_sources"] = sources
    return _checked(gm, model, wrapper, phase, args, ref, from_cache)


def _checked(gm, model, wrapper, phase, args, ref, from_cache=False):
    """The finished step graph ``gm`` checked against the model (as ``_finish`` says)."""
    graph = gm.graph
    with torch.no_grad():
        got = gm(*args[:3], *args[3], *args[4:])
    if len(got) != len(ref) or not all(
        a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(got, ref)
    ):
        raise TracingError(f"the traced {phase} step of {type(model).__name__} does not reproduce the model")
    names = tuple(n.target for n in graph.nodes if n.op == "placeholder")
    _check_dynamic(graph, phase, model)
    if phase in ("chunk", "chunk_tt") and not from_cache:
        # a stored entry passed these checks when it was exported (the cache key covers the model's
        # config, the library versions and this file); a load is checked on the example above
        _check_chunk_edges(gm, wrapper, model, types=phase == "chunk_tt")
    n_kv = len(ref) - 1
    out_keys = ("logits",) + tuple(f"past_{i}" for i in range(n_kv))
    traced = TracedGraph(gm=gm, frontend="export", input_names=names, output_keys=out_keys, output_cls=tuple)
    locate = TracedGraph(
        gm=truncate(gm, [0]), frontend="export", input_names=names, output_keys=("logits",), output_cls=tuple
    )
    shapes = tuple((int(t.shape[1]), int(t.shape[3]), t.dtype) for t in ref[1:])
    return StepGraph(phase=phase, traced=traced, locate=locate, n_kv=n_kv, past_shapes=shapes, from_cache=from_cache)


def _check_chunk_edges(gm, wrapper, model, types=False):
    """The chunk graph is traced at a 3-token chunk after a 2-token past; sweeps also run it with no
    past (the whole prompt), a one-token past and one-token chunks. torch.export specialises sizes 0
    and 1 of an example, so those edges are checked against the model itself (the runtime asserts
    of the exported program are stripped, so a specialised graph would otherwise run silently).
    One forward of the model over 5 tokens (all logits, its cache) gives every reference: causal
    attention makes position ``t``'s logits and the keys/values of the first ``t`` positions the
    same as a forward over those positions alone. ``types``: the graph takes token_type_ids (chunk_tt)."""
    vocab = int(getattr(model.config, "vocab_size", 16) or 16)
    device = offload.main_device(model)  # a dispatched model's offloaded weights sit on the meta device
    g = torch.Generator().manual_seed(1)
    b, n = 3, 5
    ids = torch.randint(0, vocab, (b, n), generator=g).to(device)
    mask = torch.ones_like(ids)
    pos = torch.arange(n, device=device).expand(b, -1)
    tt = torch.randint(0, 2, (b, n), generator=g).to(device) if types else None
    more = {"token_type_ids": tt} if types else {}
    with torch.no_grad():
        # the model's own forward (no past: the window needs no placing), with a cache of every position
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            return_dict=True,
            past_key_values=make_cache([], _cache_mode(model)),
            **more,
        )
        logits, kv = out.logits, flat_cache(out.past_key_values)
        for past_len, new_len in ((0, 3), (0, 1), (1, 3), (4, 1)):
            t = past_len + new_len
            ref = (logits[:, t - 1], *[x[:, :, :t] for x in kv])
            chunk = [tt[:, past_len:t]] if types else []
            got = gm(ids[:, past_len:t], mask[:, :t], pos[:, past_len:t], *[x[:, :, :past_len] for x in kv], *chunk)
            if len(got) != len(ref) or not all(
                a.shape == r.shape and torch.allclose(a, r, atol=1e-4, rtol=1e-4) for a, r in zip(got, ref)
            ):
                raise TracingError(
                    f"the traced chunk step of {type(model).__name__} does not reproduce the model "
                    f"with a {past_len}-token past and a {new_len}-token chunk"
                )


def _check_dynamic(graph, phase, model):
    """The batch (and prompt / past length) must stay symbolic: a model whose code turns them into
    constants would otherwise give a graph that silently only runs at the example's shape."""
    phs = {n.target: n for n in graph.nodes if n.op == "placeholder"}
    lead = "inputs_embeds" if phase == "prefill_embeds" else "input_ids"
    want = [(lead, 0, "batch size"), ("attention_mask", 1, "sequence length")]
    if phase in ("prefill", "chunk", "prefill_embeds", "chunk_tt"):
        want.append((lead, 1, "prompt length"))
    if phase in ("decode", "chunk", "chunk_tt"):
        want.append(("past_0", 2, "past length"))
    for name, dim, what in want:
        val = phs[name].meta.get("val") if name in phs else None
        if val is None or isinstance(val.shape[dim], int):
            raise TracingError(
                f"tracing the {phase} step of {type(model).__name__}: its code fixed the {what} to a constant, "
                "so the KV-cache graph cannot serve other shapes"
            )


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def step_graph(model, phase):
    """The (cached) KV-cache step graph of ``model`` for ``phase`` ('prefill', 'decode', 'chunk',
    'prefill_embeds', 'chunk_tt'); re-made if its parameters moved. One export serves the first three: 'prefill' and
    'decode' return the chunk graph (prefill with ``empty_past``) unless it cannot be traced or fails its
    checks, in which case they get their own exports. 'prefill_embeds' and 'chunk_tt' (the chunk graph with
    the model's ``token_type_ids`` as its last input, for generate) are always their own exports."""
    if phase not in ("prefill", "decode", "chunk", "prefill_embeds", "chunk_tt"):
        raise ValueError(f"phase must be 'prefill', 'decode', 'chunk', 'prefill_embeds' or 'chunk_tt', got {phase!r}")
    p = next(model.parameters())
    key = (p.device, p.dtype, p.data_ptr())
    per = _STEPS.setdefault(model, {})
    if per.get("_key") != key:
        per.clear()
        per["_key"] = key
    if phase in per:
        return per[phase]
    if phase in ("prefill", "decode"):
        chunk = None
        if per.get("_chunk_error") is None:
            try:
                chunk = step_graph(model, "chunk")
            except TracingError as e:
                per["_chunk_error"] = str(e)
                log.debug(
                    "fxvene: chunk step graph of %s unusable (%s); separate %s graph", type(model).__name__, e, phase
                )
        if chunk is not None:
            sg = (
                chunk
                if phase == "decode"
                else StepGraph(
                    phase="prefill",
                    traced=chunk.traced,
                    locate=chunk.locate,
                    n_kv=chunk.n_kv,
                    key=key,
                    past_shapes=chunk.past_shapes,
                    empty_past=True,
                    from_cache=chunk.from_cache,
                )
            )
            per[phase] = sg
            return sg
    sg = _export_step(model, phase)
    sg.key = key
    per[phase] = sg
    return sg


def position_ids_from_mask(mask):
    """HF generate's positions for (left-)padded prompts: cumsum of the mask minus one; pad
    positions get 1 (transformers 4) or 0 (transformers 5), as each line's generate does."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1 if TF_MAJOR < 5 else 0)
