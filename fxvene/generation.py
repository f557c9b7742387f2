"""Generation with interventions: pyvene 0.1.8's ``generate`` on a KV-cached, rewritten graph.

How it runs
-----------
A model gets two *step graphs*, traced once (``torch.export`` of a small wrapper module around
the Hugging Face model, on transformers 4.x and 5.x alike) and cached per model:

* **prefill**: ``(input_ids, attention_mask, position_ids) -> (last logits, k_0, v_0, ..., k_L-1, v_L-1)``
* **decode**: ``(input_ids (b, 1), attention_mask (b, P+1), position_ids (b, 1), past_0 ... past_2L-1)
  -> (logits, updated keys/values)``; the past keys/values are plain tensor inputs and outputs.

(A third step graph, **chunk**, is the decode step with an ``S``-token input: ``(input_ids (b, S),
attention_mask (b, P+S), position_ids (b, S), past ...)``; sweeps use it to recompute only the
positions after a patched one, attending over the cached keys/values of the unchanged prefix.)

Interventions are inserted into these graphs with the same passes and site ops as
:meth:`IntervenableModel.forward` (``passes.rewrite.insert_interventions``, ``sites.SiteOp``), so each
new token costs **one single-token forward of the rewritten decode graph**, never a forward over the
whole prefix. The decoding loop (greedy, sampling with HF's logits processors, eos / pad stopping,
batches with left padding) lives here.

Which forwards an intervention acts on
--------------------------------------
``intervene_on=None`` (the default) follows pyvene 0.1.8 exactly (reference section 5.3):

=======================  ===============  ==================================================
``intervene_on_prompt``  ``unit_locations``  acts on
=======================  ===============  ==================================================
False (default)          None             every decode forward, at index 0 of its one-token
                                          slice (``{"base": 0}``); never the prompt, so the
                                          first generated token is produced unintervened
True                     given            the prompt forward only, at the given positions
True                     None             every forward: the whole prompt, then each token
False                    given            every decode forward, at the given index of the
                                          one-token slice (so only 0 / -1 are valid)
=======================  ===============  ==================================================

(An intervention whose per-intervention base location is ``None`` acts on every forward, on the
whole tensor, as in pyvene.)

fxvene extension (per-step control, pyvene issues #15 and #193):

* ``intervene_on="prompt"``: the prompt forward only, at ``unit_locations`` (None: every prompt position).
* ``intervene_on="decode"``: every decode forward, on the newly fed token (``unit_locations`` may only
  name heads for ``h``/``h.pos`` units; positions must be 0).
* ``intervene_on="all"``: the prompt at ``unit_locations`` (None: all prompt positions) **and** every
  decode forward on the new token, in one call.
* ``decode_steps=[...]``: restrict decode-time interventions (and decode-time collection) to these
  decode steps. Decode step ``k`` (0-based) is the forward that reads the ``k``-th generated token
  and predicts token ``k+1``: ``decode_steps=[0, 1, 2]`` steers the representations of the first
  three generated tokens.

The step graphs are always traced with ``torch.export`` (on both transformers lines), whatever
``tracer`` the IntervenableModel uses for ``forward``; tracing costs a few seconds once per model
(cached, shared by every IntervenableModel on it).

Return values are pyvene's: ``(original_or_None, sequences)``, or ``((original_or_None, collected),
sequences)`` when the config has a ``CollectIntervention``; ``collected`` holds one tensor per forward
the collector acted on (per key, in ``sorted_keys`` order).
"""
from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import transformers

from fxvene import locations as L
from fxvene.interventions import CollectIntervention
from fxvene.passes.rewrite import insert_interventions, truncate
from fxvene.sites import Gather, SiteOp, do_intervention, resolve_site
from fxvene.tracing import TracedGraph, TracingError, export_graph

TF_MAJOR = int(transformers.__version__.split(".")[0])
INTERVENE_ON = ("prompt", "decode", "all")

# ---------------------------------------------------------------------------------------------
# cache-graph tracing


def _cache_mode(model):
    """How the wrapped model wants its past keys/values: a DynamicCache or legacy tuples."""
    if TF_MAJOR >= 5:
        return "dynamic"
    return "legacy_cache" if getattr(model, "_supports_cache_class", False) else "tuple"


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


def _make_cache(past, mode):
    pairs = tuple((past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2))
    if mode == "tuple":
        return pairs if pairs else None
    if mode == "legacy_cache":
        return _export_cache_cls()(pairs)
    if not pairs:
        return None
    return _v5_cache(pairs)


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


def _flat_cache(pkv):
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
        pkv = _make_cache(past, self._mode)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=pkv,
            use_cache=True,
            return_dict=True,
            **self._keep,
        )
        return (out.logits[:, -1, :], *_flat_cache(out.past_key_values))


@dataclass
class StepGraph:
    """A traced prefill or decode graph. ``traced.gm`` runs; ``locate`` is the same graph truncated
    to the logits (same node names), where sites resolve: the cache outputs would otherwise make
    attention/block regions have several escaping values."""

    phase: str
    traced: TracedGraph
    locate: TracedGraph
    n_kv: int
    key: tuple = field(default=())

    @property
    def gm(self):
        return self.traced.gm


def _strip_prefix(graph, prefix="model"):
    for n in graph.nodes:
        stack = n.meta.get("nn_module_stack")
        if not stack:
            continue
        new = {}
        for k, v in stack.items():
            path, cls = (v if isinstance(v, tuple) else (k, None))
            path = str(path)
            if path == "" and cls is not None and str(getattr(cls, "__name__", cls)).endswith("CacheStep"):
                continue  # the wrapper itself
            if path == prefix:
                path = ""
            elif path.startswith(prefix + "."):
                path = path[len(prefix) + 1:]
            elif path.startswith(f"L['self'].{prefix}"):
                path = path[len(f"L['self'].{prefix}"):].lstrip(".")
            else:
                continue  # anything outside the HF model (cache plumbing of the wrapper)
            new[k] = (path, cls)
        n.meta["nn_module_stack"] = new


def _examples(model, wrapper, phase):
    cfg = model.config
    vocab = int(getattr(cfg, "vocab_size", 16) or 16)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    b, s = 2, 5
    ids = torch.randint(0, vocab, (b, s), generator=g).to(device)
    mask = torch.ones(b, s, dtype=torch.long, device=device)
    mask[1, :2] = 0  # left padding in the example (values do not specialise the trace)
    pos = position_ids_from_mask(mask)
    if phase == "prefill":
        return (ids, mask, pos, []), ({0: _auto(), 1: _auto()},) * 3 + ([],)
    if phase == "chunk":
        # a 3-token chunk after a 2-token past, batch 4: every size distinct, so none is unified with another
        b, P = 4, 2
        ids = torch.randint(0, vocab, (b, s), generator=g).to(device)
        mask = torch.ones(b, s, dtype=torch.long, device=device)
        mask[1, :1] = 0
        pos = position_ids_from_mask(mask)
        with torch.no_grad():
            past = list(wrapper(ids[:, :P], mask[:, :P], pos[:, :P], [])[1:])
        dyn = ({0: _auto(), 1: _auto()}, {0: _auto(), 1: _auto()}, {0: _auto(), 1: _auto()},
               [{0: _auto(), 2: _auto()}] * len(past))
        return (ids[:, P:], mask, pos[:, P:], past), dyn
    with torch.no_grad():
        past = list(wrapper(ids, mask, pos, [])[1:])
    ids1 = torch.randint(0, vocab, (b, 1), generator=g).to(device)
    mask1 = torch.cat([mask, torch.ones(b, 1, dtype=torch.long, device=device)], dim=1)
    pos1 = pos[:, -1:] + 1
    dyn = ({0: _auto()}, {0: _auto(), 1: _auto()}, {0: _auto()}, [{0: _auto(), 2: _auto()}] * len(past))
    return (ids1, mask1, pos1, past), dyn


def _flat_attrs(gm, graph, params):
    """Give every weight a flat attribute name on the step graph, bound to a detached alias of the
    model's tensor (same storage: nothing is copied). The generated code then reads
    ``self.fxw_3`` instead of walking ``self.model.transformer.h[3]...`` through ``nn.Module.__getattr__``
    on every decode step (about a millisecond per token on a 12-layer model). The aliases are buffers
    of the new GraphModule; ``params`` (a set) receives the names that alias parameters."""
    root = {}
    for i, n in enumerate(n for n in graph.nodes if n.op == "get_attr"):
        obj = gm
        for part in str(n.target).split("."):
            obj = getattr(obj, part)
        flat = f"fxw_{i}_" + "".join(c if c.isalnum() else "_" for c in str(n.target))[-60:]
        root[flat] = obj.detach() if isinstance(obj, torch.Tensor) else obj
        if isinstance(obj, nn.Parameter):
            params.add(flat)
        n.target = flat
    return root


def _auto():
    from torch.export import Dim

    return Dim.AUTO


def _export_step(model, phase):
    wrapper = CacheStep(model)
    args, dyn = _examples(model, wrapper, phase)
    with torch.no_grad():
        try:
            ep = torch.export.export(wrapper, args, dynamic_shapes=dyn, strict=False)
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}".split("\n")[0][:500]
            raise TracingError(
                f"fxvene could not trace the {phase} step of {type(model).__name__} with a KV cache "
                f"(torch.export of the model with past_key_values): {msg}"
            ) from e
        ref = wrapper(*args)
    gm = ep.module()
    graph = export_graph(gm)
    _strip_prefix(graph)
    graph.eliminate_dead_code()
    params = set()
    gm = fx.GraphModule(_flat_attrs(gm, graph, params), graph, class_name=f"FxveneStep_{phase}")
    gm.meta["fxvene_param_attrs"] = frozenset(params)  # weights, for the slice passes (heavy values)
    with torch.no_grad():
        got = gm(*args[:3], *args[3])
    if len(got) != len(ref) or not all(a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4)
                                       for a, b in zip(got, ref)):
        raise TracingError(f"the traced {phase} step of {type(model).__name__} does not reproduce the model")
    names = tuple(n.target for n in graph.nodes if n.op == "placeholder")
    _check_dynamic(graph, phase, model)
    if phase == "chunk":
        _check_chunk_edges(gm, wrapper, model)
    n_kv = len(ref) - 1
    out_keys = ("logits",) + tuple(f"past_{i}" for i in range(n_kv))
    traced = TracedGraph(gm=gm, frontend="export", input_names=names, output_keys=out_keys, output_cls=tuple)
    locate = TracedGraph(gm=truncate(gm, [0]), frontend="export", input_names=names, output_keys=("logits",),
                         output_cls=tuple)
    return StepGraph(phase=phase, traced=traced, locate=locate, n_kv=n_kv)


def _check_chunk_edges(gm, wrapper, model):
    """The chunk graph is traced at a 3-token chunk after a 2-token past; sweeps also run it with no
    past (the whole prompt), a one-token past and one-token chunks. torch.export specialises sizes 0
    and 1 of an example, so those edges are checked against the model itself (the runtime asserts
    of the exported program are stripped, so a specialised graph would otherwise run silently)."""
    vocab = int(getattr(model.config, "vocab_size", 16) or 16)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(1)
    b = 3
    for past_len, new_len in ((0, 3), (0, 1), (1, 3), (4, 1)):
        ids = torch.randint(0, vocab, (b, past_len + new_len), generator=g).to(device)
        mask = torch.ones_like(ids)
        pos = torch.arange(ids.shape[1], device=device).expand(b, -1)
        with torch.no_grad():
            if past_len:
                past = list(wrapper(ids[:, :past_len], mask[:, :past_len], pos[:, :past_len], [])[1:])
            else:
                past = [t[:, :, :0] for t in wrapper(ids[:, :1], mask[:, :1], pos[:, :1], [])[1:]]
            ref = wrapper(ids[:, past_len:], mask, pos[:, past_len:], past if past_len else [])
            got = gm(ids[:, past_len:], mask, pos[:, past_len:], *past)
        if len(got) != len(ref) or not all(
                a.shape == r.shape and torch.allclose(a, r, atol=1e-4, rtol=1e-4) for a, r in zip(got, ref)):
            raise TracingError(f"the traced chunk step of {type(model).__name__} does not reproduce the model with a "
                               f"{past_len}-token past and a {new_len}-token chunk")


def _check_dynamic(graph, phase, model):
    """The batch (and prompt / past length) must stay symbolic: a model whose code turns them into
    constants would otherwise give a graph that silently only runs at the example's shape."""
    phs = {n.target: n for n in graph.nodes if n.op == "placeholder"}
    want = [("input_ids", 0, "batch size"), ("attention_mask", 1, "sequence length")]
    if phase in ("prefill", "chunk"):
        want.append(("input_ids", 1, "prompt length"))
    if phase in ("decode", "chunk"):
        want.append(("past_0", 2, "past length"))
    for name, dim, what in want:
        val = phs[name].meta.get("val") if name in phs else None
        if val is None or isinstance(val.shape[dim], int):
            raise TracingError(
                f"tracing the {phase} step of {type(model).__name__}: its code fixed the {what} to a constant, "
                "so the KV-cache graph cannot serve other shapes"
            )


_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def step_graph(model, phase):
    """The (cached) prefill or decode graph of ``model``; retraced if its parameters moved."""
    if phase not in ("prefill", "decode", "chunk"):
        raise ValueError(f"phase must be 'prefill', 'decode' or 'chunk', got {phase!r}")
    p = next(model.parameters())
    key = (phase, p.device, p.dtype, p.data_ptr())
    per = _STEPS.setdefault(model, {})
    sg = per.get(phase)
    if sg is None or sg.key != key:
        sg = _export_step(model, phase)
        sg.key = key
        per[phase] = sg
    return sg


def position_ids_from_mask(mask):
    """HF generate's positions for (left-)padded prompts: cumsum of the mask minus one; pad
    positions get 1 (transformers 4) or 0 (transformers 5), as each line's generate does."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1 if TF_MAJOR < 5 else 0)


# ---------------------------------------------------------------------------------------------
# generation settings (HF generate's options that make sense here)

_DEFAULTS = dict(
    max_length=20, max_new_tokens=None, min_length=0, min_new_tokens=None, do_sample=False, temperature=1.0,
    top_k=50, top_p=1.0, min_p=None, typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
    eos_token_id=None, pad_token_id=None, bos_token_id=None, use_cache=True, return_dict_in_generate=False,
    output_scores=False, output_logits=False, num_beams=1, num_return_sequences=1,
)
_EXTRA_KW = ("logits_processor", "stopping_criteria", "generation_config")
# options that change what generate does and that fxvene's loop does not implement
_UNSUPPORTED = dict(
    num_beam_groups=(None, 1), penalty_alpha=(None,), guidance_scale=(None, 1, 1.0), constraints=(None,),
    force_words_ids=(None,), bad_words_ids=(None,), sequence_bias=(None,), suppress_tokens=(None,),
    begin_suppress_tokens=(None,), forced_bos_token_id=(None,), forced_eos_token_id=(None,),
    renormalize_logits=(None, False), epsilon_cutoff=(None, 0.0), eta_cutoff=(None, 0.0),
    exponential_decay_length_penalty=(None,), watermarking_config=(None,), stop_strings=(None,),
    output_attentions=(None, False), output_hidden_states=(None, False), diversity_penalty=(None, 0.0),
    encoder_repetition_penalty=(None, 1.0), prompt_lookup_num_tokens=(None,), assistant_model=(None,),
    streamer=(None,), prefix_allowed_tokens_fn=(None,), top_h=(None,), remove_invalid_values=(None, False),
)


@dataclass
class GenSettings:
    max_new_tokens: int
    do_sample: bool
    processors: list
    stopping: list
    eos: torch.Tensor | None
    pad_token_id: int | None
    return_dict: bool
    output_scores: bool
    output_logits: bool


def _as_list(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.flatten().tolist()]
    if isinstance(x, (list, tuple)):
        return [int(v) for v in x]
    return [int(x)]


def settings(model, prompt_len, mask, kwargs):
    """Merge ``model.generation_config`` (or a ``generation_config=`` argument) with ``kwargs`` into
    the loop's settings. Unknown or unsupported options raise ``ValueError`` naming them."""
    from transformers import LogitsProcessorList, StoppingCriteriaList
    from transformers.generation import logits_process as lp

    kwargs = dict(kwargs)
    gc = kwargs.pop("generation_config", None) or getattr(model, "generation_config", None)
    user_procs = kwargs.pop("logits_processor", None)
    user_stops = kwargs.pop("stopping_criteria", None)
    for k in kwargs:
        if k in _DEFAULTS:
            continue
        if k in _UNSUPPORTED:
            if kwargs[k] in _UNSUPPORTED[k]:
                continue
            raise ValueError(f"generate: {k}={kwargs[k]!r} is not supported by fxvene's generation loop")
        raise ValueError(
            f"generate: unknown or unsupported argument {k!r}; fxvene's generate accepts the model inputs in "
            f"`base` and these options: {sorted(_DEFAULTS) + list(_EXTRA_KW)}"
        )
    cfg = dict(_DEFAULTS)
    if gc is not None:
        for k in _DEFAULTS:
            v = getattr(gc, k, None)
            if v is not None:
                cfg[k] = v
        for k, allowed in _UNSUPPORTED.items():
            v = getattr(gc, k, None)
            if k not in kwargs and v not in allowed and not (isinstance(v, (list, dict)) and len(v) == 0):
                raise ValueError(f"generate: the generation config sets {k}={v!r}, which fxvene's loop does not support")
    cfg.update(kwargs)
    if cfg["num_beams"] not in (None, 1):
        raise ValueError(f"generate: num_beams={cfg['num_beams']} (beam search) is not supported; use greedy or sampling")
    if cfg["num_return_sequences"] not in (None, 1):
        raise ValueError("generate: num_return_sequences > 1 is not supported; repeat the prompt in the batch instead")
    if cfg["use_cache"] is False:
        pass  # fxvene always decodes with the KV cache; the tokens are the same
    if cfg["max_new_tokens"] is not None:
        max_new = int(cfg["max_new_tokens"])
    else:
        max_new = int(cfg["max_length"]) - prompt_len
    if max_new < 1:
        raise ValueError(
            f"generate: nothing to generate (max_new_tokens={cfg['max_new_tokens']}, max_length={cfg['max_length']}, "
            f"prompt length {prompt_len}); pass max_new_tokens >= 1"
        )
    device = mask.device
    eos = _as_list(cfg["eos_token_id"])
    eos_t = torch.tensor(eos, device=device) if eos else None
    pad = cfg["pad_token_id"]
    if pad is None and eos:
        pad = eos[0]  # what HF generate does (with a warning)
    procs = []
    if cfg["repetition_penalty"] is not None and cfg["repetition_penalty"] != 1.0:
        rp_params = inspect.signature(lp.RepetitionPenaltyLogitsProcessor.__init__).parameters
        # transformers >= 5.2x skips each row's left padding (a per-row tensor); earlier lines do not
        if "prompt_ignore_length" in rp_params and "Tensor" in str(rp_params["prompt_ignore_length"].annotation):
            procs.append(lp.RepetitionPenaltyLogitsProcessor(
                cfg["repetition_penalty"], prompt_ignore_length=(mask != 0).int().argmax(dim=1)))
        else:
            procs.append(lp.RepetitionPenaltyLogitsProcessor(penalty=cfg["repetition_penalty"]))
    if cfg["no_repeat_ngram_size"] and cfg["no_repeat_ngram_size"] > 0:
        procs.append(lp.NoRepeatNGramLogitsProcessor(cfg["no_repeat_ngram_size"]))
    if cfg["min_length"] and cfg["min_length"] > 0 and eos_t is not None:
        procs.append(lp.MinLengthLogitsProcessor(cfg["min_length"], eos_t, device=device))
    if cfg["min_new_tokens"] and cfg["min_new_tokens"] > 0 and eos_t is not None:
        procs.append(lp.MinNewTokensLengthLogitsProcessor(prompt_len, cfg["min_new_tokens"], eos_t, device=device))
    if cfg["do_sample"]:
        if cfg["temperature"] is not None and cfg["temperature"] != 1.0:
            if not cfg["temperature"] > 0:
                raise ValueError(f"generate: temperature must be > 0, got {cfg['temperature']}")
            procs.append(lp.TemperatureLogitsWarper(cfg["temperature"]))
        if cfg["top_k"] is not None and cfg["top_k"] != 0:
            procs.append(lp.TopKLogitsWarper(top_k=cfg["top_k"], min_tokens_to_keep=1))
        if cfg["top_p"] is not None and cfg["top_p"] < 1.0:
            procs.append(lp.TopPLogitsWarper(top_p=cfg["top_p"], min_tokens_to_keep=1))
        if cfg["min_p"] is not None:
            procs.append(lp.MinPLogitsWarper(min_p=cfg["min_p"], min_tokens_to_keep=1))
        if cfg["typical_p"] is not None and cfg["typical_p"] < 1.0:
            procs.append(lp.TypicalLogitsWarper(mass=cfg["typical_p"], min_tokens_to_keep=1))
    if user_procs is not None:
        procs.extend(list(user_procs))
    stops = list(user_stops) if user_stops is not None else []
    return GenSettings(
        max_new_tokens=max_new,
        do_sample=bool(cfg["do_sample"]),
        processors=LogitsProcessorList(procs),
        stopping=StoppingCriteriaList(stops),
        eos=eos_t,
        pad_token_id=pad,
        return_dict=bool(cfg["return_dict_in_generate"]),
        output_scores=bool(cfg["output_scores"]),
        output_logits=bool(cfg["output_logits"]),
    )


# ---------------------------------------------------------------------------------------------
# the decoding loop


@dataclass
class Phase:
    """What one phase's graph does: the rewritten GraphModule, its per-call inputs, the site ops
    and their per-call data, and which collect outputs it appends."""

    gm: object
    feeds: dict
    ops: dict  # submodule name -> call dict
    collect: list  # keys, in output order
    steps: object = None  # decode only: None (every step) or a set of decode-step indices


def decode(prefill, dec, input_ids, mask, st, on_collect=None):
    """Greedy / sampled decoding with a KV cache. ``prefill`` and ``dec`` are :class:`Phase`\\s; each
    new token runs ``dec.gm`` once on a one-token input. ``on_collect(phase, step, values)`` receives
    the collect outputs of each forward. Returns (sequences, scores, logits)."""
    b, S = input_ids.shape
    device = input_ids.device
    n_kv = None
    scores, raw = [], []
    unfinished = torch.ones(b, dtype=torch.long, device=device)
    pos = position_ids_from_mask(mask)
    seq = input_ids
    has_eos = st.eos is not None
    # prompt forward
    _set_calls(prefill, None)
    try:
        flat = prefill.gm(input_ids, mask, pos, **prefill.feeds)
    finally:
        _clear_calls(prefill)
    step = -1  # the prompt forward
    while True:
        logits = flat[0]
        if n_kv is None:
            n_kv = len(flat) - 1 - len(prefill.collect)
            collect_phase = prefill
        else:
            collect_phase = dec
        if on_collect is not None and collect_phase.collect:
            on_collect("prefill" if step < 0 else "decode", step, flat[1 + n_kv:])
        past = flat[1:1 + n_kv]
        next_logits = logits.float()
        next_scores = st.processors(seq, next_logits) if len(st.processors) else next_logits
        if st.output_scores:
            scores.append(next_scores)
        if st.output_logits:
            raw.append(next_logits)
        if st.do_sample:
            probs = nn.functional.softmax(next_scores, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
        else:
            nxt = torch.argmax(next_scores, dim=-1)
        if has_eos:
            nxt = nxt * unfinished + st.pad_token_id * (1 - unfinished)
        seq = torch.cat([seq, nxt[:, None]], dim=-1)
        done = seq.shape[1] - S >= st.max_new_tokens
        if has_eos:
            unfinished = unfinished & ~torch.isin(nxt, st.eos)
        if len(st.stopping):
            unfinished = unfinished & ~st.stopping(seq, scores[-1] if scores else next_scores).to(unfinished.device)
        if done or unfinished.max() == 0:
            break
        step += 1
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=-1)
        # as each line's generate: transformers 4 recounts the mask, 5 continues from the last position
        pos = mask.long().sum(-1, keepdim=True) - 1 if TF_MAJOR < 5 else pos[:, -1:] + 1
        _set_calls(dec, step)
        try:
            flat = dec.gm(nxt[:, None], mask, pos, *past, **dec.feeds)
        finally:
            _clear_calls(dec)
    return seq, scores, raw


def _set_calls(phase, step):
    skip = step is not None and phase.steps is not None and step not in phase.steps
    for name, call in phase.ops.items():
        phase.gm.get_submodule(name).call = {"skip": True} if skip else call


def _clear_calls(phase):
    for name in phase.ops:
        phase.gm.get_submodule(name).call = {}


# ---------------------------------------------------------------------------------------------
# IntervenableModel.generate


def _pos_only(loc, unit):
    """Decode-time location derived from a prompt location: the new token (index 0), heads kept."""
    if loc is None:
        return None
    if unit == "pos":
        return torch.zeros(loc.shape[0], 1, dtype=torch.long, device=loc.device)
    if unit == "h":
        return loc
    heads, _ = loc
    return heads, torch.zeros(heads.shape[0], 1, dtype=torch.long, device=heads.device)


def _check_decode_loc(loc, unit, key):
    if loc is None:
        return
    p = loc if unit == "pos" else (loc[1] if unit == "h.pos" else None)
    if p is None or p.numel() == 0:
        return
    bad = p[(p != 0) & (p != -1)]
    if bad.numel():
        raise ValueError(
            f"unit_locations (base side) of {key}: position {int(bad[0])} on a decode step. With a KV cache each "
            "decode forward sees only the newly generated token, so the base position must be 0. To intervene on "
            "prompt positions pass intervene_on_prompt=True (pyvene) or intervene_on='prompt' / 'all' (fxvene)."
        )


def _graph(im, sg, active, collect):
    cache = im.__dict__.setdefault("_gen_graphs", {})
    ck = (sg.phase, id(sg.traced), tuple(active), tuple(collect))
    if ck in cache and cache[ck][0] is sg.traced:
        return cache[ck][1]
    reqs = []
    for key in im.sorted_keys:
        if key not in active and key not in collect:
            continue
        i = im.sorted_keys.index(key)
        rep = im.representations[key]
        site = resolve_site(sg.locate, im.model, rep.component, rep.layer)
        if key in collect:
            reqs.append(dict(name=f"fxv_collect_{i}", module=Gather(site, rep.unit, f"unit_locations (base side) of {key}"),
                             node=site.node, port=site.port, region=site.path, inputs=[f"fxv_loc_{i}"], collect=True))
        else:
            reqs.append(dict(name=f"fxv_site_{i}", module=SiteOp(key, site, rep.unit, im.interventions[key]),
                             node=site.node, port=site.port, region=site.path, inputs=[f"fxv_src_{i}", f"fxv_loc_{i}"]))
    gm = insert_interventions(sg.gm, reqs) if reqs else sg.gm
    cache[ck] = (sg.traced, gm)
    return gm


def generate(
    im,
    base,
    sources=None,
    unit_locations=None,
    source_representations=None,
    intervene_on_prompt=False,
    subspaces=None,
    output_original_output=False,
    intervention_additional_kwargs=None,
    intervene_on=None,
    decode_steps=None,
    **generate_kwargs,
):
    """See :meth:`fxvene.IntervenableModel.generate` and this module's docstring."""
    if intervene_on is not None and intervene_on not in INTERVENE_ON:
        raise ValueError(f"intervene_on must be one of {INTERVENE_ON} or None, got {intervene_on!r}")
    if intervene_on is not None and intervene_on_prompt:
        raise ValueError("pass either intervene_on_prompt (pyvene) or intervene_on (fxvene), not both")
    if decode_steps is not None:
        if isinstance(decode_steps, int) and not isinstance(decode_steps, bool):
            decode_steps = [decode_steps]
        try:
            steps = set(decode_steps)
        except TypeError:
            raise TypeError(f"decode_steps must be a list of ints, got {type(decode_steps).__name__}") from None
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
            raise ValueError(f"decode_steps must be non-negative ints (0 = the forward that reads the first "
                             f"generated token), got {decode_steps!r}")
        decode_steps = steps
    if sources is not None and not isinstance(sources, (list, tuple)):
        sources = [sources]
    base_in, sig = im._inputs(base, "base")
    extra_inputs = [k for k in base_in if k not in ("input_ids", "attention_mask")]
    if extra_inputs:
        raise ValueError(f"base: generate takes input_ids (and attention_mask), got also {extra_inputs}")
    input_ids, mask = base_in["input_ids"], base_in["attention_mask"].to(base_in["input_ids"].device)
    if input_ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"base['input_ids'] must be an integer tensor, got {input_ids.dtype}")
    if mask.shape != input_ids.shape:
        raise ValueError(f"base['attention_mask'] has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}")
    batch, S = input_ids.shape
    device = input_ids.device
    st = settings(im.model, S, mask, generate_kwargs)
    n = len(im.sorted_keys)

    # -- which forwards each intervention acts on
    if intervene_on is None and not intervene_on_prompt and unit_locations is None:
        unit_locations = {"base": 0}  # pyvene: "we intervene on every generated token"
    locs = L.broadcast_unit_locations(unit_locations, batch, im.sorted_keys, im.mode)
    ngroups = len(im._groups)
    sources = list(sources) if sources is not None else [None] * ngroups
    if len(sources) == 1 and ngroups > 1:
        sources = sources * ngroups
    if len(sources) != ngroups:
        raise ValueError(f"sources: got {len(sources)}, expected {ngroups} (one per intervention group) or 1")
    srcreps = im._broadcast_source_representations(source_representations)
    subs = L.broadcast_subspaces(subspaces, batch, n)
    im._check_call(base_in, sources, locs, subs, srcreps)  # sources, locations, subspaces: before any forward
    extra = intervention_additional_kwargs or {}

    needs = [k for k in im.sorted_keys
             if not isinstance(im.interventions[k], CollectIntervention) and im._needs_source(k)]
    if needs and srcreps is None and all(s is None for s in sources):
        k = needs[0]
        raise ValueError(
            f"generate: intervention {k} ({type(im.interventions[k]).__name__}) needs a source, and none was given. "
            "Pass source_representations=<tensor> (e.g. a steering vector of the component's width) or "
            "sources=[<inputs>] (with unit_locations saying where to read them) to generate()."
        )

    if im.mode == "parallel":
        src_locs, base_locs = locs["sources->base"]
        slices = im._parallel_sources(sources, srcreps, src_locs, base_locs, batch, device)
    else:
        slices, src_locs, base_locs = im._serial_sources(sources, srcreps, locs, batch, device)
    from_source = srcreps is None

    plan = {"prefill": ([], [], {}), "decode": ([], [], {})}  # active, collect, feeds
    calls = {"prefill": {}, "decode": {}}
    for i, key in enumerate(im.sorted_keys):
        iv = im.interventions[key]
        unit = im.representations[key].unit
        is_collect = isinstance(iv, CollectIntervention)
        if not is_collect and key not in slices and im._needs_source(key):
            continue  # no source for this group: pyvene's "smart jump"
        bl = L.to_index(base_locs[i], unit, batch, device, f"unit_locations (base side, intervention {i})")
        if intervene_on is None:
            if bl is None:
                when = {"prefill": None, "decode": None}
            elif intervene_on_prompt:
                when = {"prefill": bl}
            else:
                _check_decode_loc(bl, unit, key)
                when = {"decode": bl}
        elif intervene_on == "prompt":
            when = {"prefill": bl}
        elif intervene_on == "decode":
            _check_decode_loc(bl, unit, key)
            when = {"decode": bl}
        else:
            when = {"prefill": bl, "decode": _pos_only(bl, unit)}
        src = slices.get(key)
        if "decode" in when and src is not None and from_source and isinstance(src, torch.Tensor) and src.dim() >= 3:
            units = src.shape[1] if unit == "pos" else src.shape[2] if unit == "h.pos" else None
            if units is not None and units != 1:
                raise ValueError(
                    f"sources: intervention {key} reads {units} source positions, but a decode step has one token; "
                    "give one source position (unit_locations {'sources->base': (src_pos, 0)}) or a source_representations tensor"
                )
        for phase, loc in when.items():
            active, collect, feeds = plan[phase]
            (collect if is_collect else active).append(key)
            feeds[f"fxv_loc_{i}"] = loc
            if src is not None and not is_collect:
                feeds[f"fxv_src_{i}"] = src
            if not is_collect:
                calls[phase][f"fxv_site_{i}"] = {
                    "subspaces": subs[i] if subs is not None else None,
                    "kwargs": extra,
                    "check_source_shape": from_source,
                    "full_outputs": None,
                }
    if decode_steps is not None and not (plan["decode"][0] or plan["decode"][1]):
        raise ValueError("decode_steps was given but no intervention acts on decode steps "
                         "(use intervene_on='decode' or 'all', or pyvene's default intervene_on_prompt=False)")
    if decode_steps is not None and max(decode_steps, default=-1) >= st.max_new_tokens - 1:
        raise ValueError(
            f"decode_steps {sorted(s for s in decode_steps if s >= st.max_new_tokens - 1)} never run: with "
            f"max_new_tokens={st.max_new_tokens} the decode steps are 0..{st.max_new_tokens - 2} (step k reads the "
            "k-th generated token; the last generated token is never fed back)"
        )

    with torch.no_grad():
        pre_sg = step_graph(im.model, "prefill")
        dec_sg = step_graph(im.model, "decode")

        original = None
        if output_original_output:
            plain = (Phase(pre_sg.gm, {}, {}, []), Phase(dec_sg.gm, {}, {}, []))
            seq0, sc0, lg0 = decode(*plain, input_ids, mask, st)
            original = _wrap(seq0, sc0, lg0, st)

        im.full_intervention_outputs = []
        phases = []
        for phase, sg in (("prefill", pre_sg), ("decode", dec_sg)):
            active, collect, feeds = plan[phase]
            gm = _graph(im, sg, tuple(active), tuple(collect))
            ops = {}
            for name, call in calls[phase].items():
                call = dict(call)
                call["full_outputs"] = im.full_intervention_outputs
                ops[name] = call
            phases.append(Phase(gm, feeds, ops, list(collect), decode_steps if phase == "decode" else None))
        collected = {k: [] for k in im.sorted_keys if isinstance(im.interventions[k], CollectIntervention)}

        def on_collect(phase, step, values):
            ph = phases[0] if phase == "prefill" else phases[1]
            if phase == "decode" and ph.steps is not None and step not in ph.steps:
                return
            for key, val in zip(ph.collect, values):
                i = im.sorted_keys.index(key)
                collected[key].append(do_intervention(im.interventions[key], val, None,
                                                      subs[i] if subs is not None else None))

        seq, sc, lg = decode(phases[0], phases[1], input_ids, mask, st, on_collect)
    out = _wrap(seq, sc, lg, st)
    im.activations = {k: v for k, v in collected.items()}
    if im.return_collect_activations:
        flat = [t for k in im.sorted_keys if k in collected for t in collected[k]]
        return (original, flat), out
    return original, out


def _wrap(seq, scores, logits, st):
    if not st.return_dict:
        return seq
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return GenerateDecoderOnlyOutput(
        sequences=seq,
        scores=tuple(scores) if st.output_scores else None,
        logits=tuple(logits) if st.output_logits else None,
    )
