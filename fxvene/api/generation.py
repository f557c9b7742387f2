"""Generation with interventions: pyvene 0.1.8's ``generate`` on a KV-cached, rewritten graph.

How it runs
-----------
Generation runs one KV-cache *step graph* per model (``fxvene.graph.step_graphs``: ``torch.export`` of
a small wrapper module around the Hugging Face model, on transformers 4.x and 5.x alike, cached
per model and on disk): the **chunk** graph, ``(input_ids (b, S), attention_mask (b, P+S),
position_ids (b, S), past_0 ... past_2L-1) -> (last logits, updated keys/values)``, with the past
keys/values as plain tensor inputs and outputs. The prompt forward runs it with an empty past
(``P = 0``), each decode step with a one-token input (``S = 1``); sweeps use the same graph. (A
model whose chunk graph fails its checks gets separate prefill and decode exports.)

Interventions are inserted into these graphs with the same passes and site ops as
``IntervenableModel.forward`` (``passes.rewrite.insert_interventions``, ``sites.SiteOp``), so each
new token costs **one single-token forward of the rewritten decode graph**, never a forward over the
whole prefix. The decoding loop (greedy, sampling with HF's logits processors, eos / pad stopping,
batches with left padding) lives here. Beam search, several sequences per prompt and ``use_cache=False``
run Hugging Face's own ``generate`` instead (what pyvene calls), with the model's forward replaced by the
rewritten step graphs for the call (``fxvene.api.hf_loop``): each row HF makes (every beam) gets its example's
locations, sources and subspaces; without the cache every forward runs the whole sequence, the first as the
prompt forward and each later one as a decode step, so a decode-step location is a position of the whole
sequence, as in pyvene. ``token_type_ids`` in ``base`` (models that take them, GPT-2) run the chunk graph
exported with token types as its last input (``step_graph(model, "chunk_tt")``); each new token gets the
prompt's last column, as HF generate extends them.

Encoder-decoders (T5, BART, Whisper) take another path, ``fxvene.api.encdec_generation``: HF's loop over
the rewritten whole-model graph, with the decoder rules below applied to the decoder's tokens.

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
``tracer`` the IntervenableModel uses for ``forward``; the export costs a few seconds once per
model and machine (kept in the on-disk graph cache, shared by every IntervenableModel on the model).

Return values are pyvene's: ``(original_or_None, sequences)``, or ``((original_or_None, collected),
sequences)`` when the config has a ``CollectIntervention``; ``collected`` holds one tensor per forward
the collector acted on (per key, in ``sorted_keys`` order).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from fxvene.api import unit_checks as U
from fxvene.api.encdec_generation import generate_encdec
from fxvene.api.hf_loop import clear_calls, expand_rows, hf_generate, set_calls
from fxvene.api.planning import AdaptorSiteOp, engine_subspaces, gets_kwargs, preserved_rng
from fxvene.graph.errors import known
from fxvene.graph.sites import Gather, SiteOp, do_intervention, resolve_site

# the KV-cache step graphs live in step_graphs; these names stay importable from here
from fxvene.graph.step_graphs import (  # noqa: F401
    TF_MAJOR,
    CacheStep,
    StepGraph,
    cache_mode,
    flat_cache,
    make_cache,
    position_ids_from_mask,
    step_graph,
)
from fxvene.interventions import CollectIntervention
from fxvene.passes.locate import module_input
from fxvene.passes.rewrite import insert_interventions

INTERVENE_ON = ("prompt", "decode", "all")

# ---------------------------------------------------------------------------------------------
# generation settings (HF generate's options that make sense here)

_DEFAULTS = dict(
    max_length=20,
    max_new_tokens=None,
    min_length=0,
    min_new_tokens=None,
    do_sample=False,
    temperature=1.0,
    top_k=50,
    top_p=1.0,
    min_p=None,
    typical_p=1.0,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    eos_token_id=None,
    pad_token_id=None,
    bos_token_id=None,
    use_cache=True,
    return_dict_in_generate=False,
    output_scores=False,
    output_logits=False,
    num_beams=1,
    num_return_sequences=1,
    max_time=None,
)
# beam-search options: HF generate ignores them without beams, and so does this loop (pyreft passes early_stopping)
_BEAM_ONLY = ("early_stopping", "length_penalty", "low_memory")
_EXTRA_KW = ("logits_processor", "stopping_criteria", "generation_config")
# options that change what generate does and that fxvene's loop does not implement
_UNSUPPORTED = dict(
    num_beam_groups=(None, 1),
    penalty_alpha=(None,),
    guidance_scale=(None, 1, 1.0),
    constraints=(None,),
    force_words_ids=(None,),
    bad_words_ids=(None,),
    sequence_bias=(None,),
    suppress_tokens=(None,),
    begin_suppress_tokens=(None,),
    forced_bos_token_id=(None,),
    forced_eos_token_id=(None,),
    renormalize_logits=(None, False),
    epsilon_cutoff=(None, 0.0),
    eta_cutoff=(None, 0.0),
    exponential_decay_length_penalty=(None,),
    watermarking_config=(None,),
    stop_strings=(None,),
    output_attentions=(None, False),
    output_hidden_states=(None, False),
    diversity_penalty=(None, 0.0),
    encoder_repetition_penalty=(None, 1.0),
    prompt_lookup_num_tokens=(None,),
    assistant_model=(None,),
    streamer=(None,),
    prefix_allowed_tokens_fn=(None,),
    top_h=(None,),
    remove_invalid_values=(None, False),
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
    expand: int = 1  # rows per prompt (beams, or sequences per prompt): > 1 runs HF's own loop (hf_generate)
    use_cache: bool = True  # False: HF's own loop, each forward over the whole sequence (as pyvene's)


def _as_list(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.flatten().tolist()]
    if isinstance(x, (list, tuple)):
        return [int(v) for v in x]
    return [int(x)]


def _default_length(model, given_gc, kwargs, cfg):
    """Whether HF generate's default length applies (its ``has_default_max_length`` branch of
    ``_prepare_generated_length``): then ``max_length`` counts new tokens. transformers 4: no
    ``max_length`` argument and the config's is GenerationConfig's 20; transformers 5: ``max_length``
    set neither as an argument nor in the given or the model's generation config."""
    if kwargs.get("max_length") is not None:
        return False
    if TF_MAJOR < 5:
        return cfg["max_length"] == 20
    model_gc = getattr(model, "generation_config", None)
    return getattr(given_gc, "max_length", None) is None and getattr(model_gc, "max_length", None) is None


def settings(model, prompt_len, mask, kwargs):
    """Merge ``model.generation_config`` (or a ``generation_config=`` argument) with ``kwargs`` into
    the loop's settings. Unknown or unsupported options raise ``ValueError`` naming them."""
    from transformers import LogitsProcessorList, StoppingCriteriaList
    from transformers.generation import logits_process as lp

    kwargs = dict(kwargs)
    given_gc = kwargs.pop("generation_config", None)
    gc = given_gc or getattr(model, "generation_config", None)
    user_procs = kwargs.pop("logits_processor", None)
    user_stops = kwargs.pop("stopping_criteria", None)
    for k in kwargs:
        if k in _DEFAULTS or k in _BEAM_ONLY:
            continue
        if k in _UNSUPPORTED:
            if kwargs[k] in _UNSUPPORTED[k]:
                continue
            raise ValueError(f"generate: {k}={kwargs[k]!r} is not supported by fxvene's generation loop")
        raise ValueError(
            f"generate: unknown or unsupported argument {k!r}; {known(k, sorted(_DEFAULTS) + list(_EXTRA_KW))} "
            "(model inputs go in `base`)"
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
                raise ValueError(
                    f"generate: the generation config sets {k}={v!r}, which fxvene's loop does not support"
                )
    cfg.update(kwargs)
    beams, n_seq = int(cfg["num_beams"] or 1), int(cfg["num_return_sequences"] or 1)
    if beams < 1 or n_seq < 1 or (beams > 1 and n_seq > beams):
        raise ValueError(
            f"generate: num_return_sequences={n_seq} with num_beams={beams}; both must be >= 1, and with beams "
            "num_return_sequences <= num_beams"
        )
    if cfg["max_new_tokens"] is not None:
        max_new = int(cfg["max_new_tokens"])
    else:
        max_len = int(cfg["max_length"])
        if _default_length(model, given_gc, kwargs, cfg):  # HF: 20 *new* tokens, within the model's positions
            max_len += prompt_len
            limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
            if isinstance(limit, int):
                max_len = min(max_len, limit)
        max_new = max_len - prompt_len
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
            procs.append(
                lp.RepetitionPenaltyLogitsProcessor(
                    cfg["repetition_penalty"], prompt_ignore_length=(mask != 0).int().argmax(dim=1)
                )
            )
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
    if cfg["max_time"] is not None:
        from transformers import MaxTimeCriteria

        stops.append(MaxTimeCriteria(max_time=float(cfg["max_time"])))
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
        use_cache=bool(cfg["use_cache"]),
        expand=beams if beams > 1 else n_seq,
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
    past: list = field(default_factory=list)  # prefill only: the empty past of the chunk graph


def decode(prefill, dec, input_ids, mask, st, on_collect=None, types=None):
    """Greedy / sampled decoding with a KV cache. ``prefill`` and ``dec`` are ``Phase``\\s; each
    new token runs ``dec.gm`` once on a one-token input. ``on_collect(phase, step, values)`` receives
    the collect outputs of each forward. ``types``: the prompt's token_type_ids (graphs of the chunk_tt
    step); each new token gets the prompt's last column, as HF generate extends them. Returns (sequences,
    scores, logits)."""
    b, S = input_ids.shape
    device = input_ids.device
    n_kv = None
    scores, raw = [], []
    unfinished = torch.ones(b, dtype=torch.long, device=device)
    pos = position_ids_from_mask(mask)
    seq = input_ids
    has_eos = st.eos is not None
    tt = {} if types is None else {"token_type_ids": types}
    # prompt forward
    set_calls(prefill, None)
    try:
        flat = prefill.gm(input_ids, mask, pos, *prefill.past, **tt, **prefill.feeds)
    finally:
        clear_calls(prefill)
    step = -1  # the prompt forward
    while True:
        logits = flat[0]
        if n_kv is None:
            n_kv = len(flat) - 1 - len(prefill.collect)
            collect_phase = prefill
        else:
            collect_phase = dec
        if on_collect is not None and collect_phase.collect:
            on_collect("prefill" if step < 0 else "decode", step, flat[1 + n_kv :])
        past = flat[1 : 1 + n_kv]
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
        if types is not None:
            tt = {"token_type_ids": types[:, -1:]}
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=-1)
        # as each line's generate: transformers 4 recounts the mask, 5 continues from the last position
        pos = mask.long().sum(-1, keepdim=True) - 1 if TF_MAJOR < 5 else pos[:, -1:] + 1
        set_calls(dec, step)
        try:
            flat = dec.gm(nxt[:, None], mask, pos, *past, **tt, **dec.feeds)
        finally:
            clear_calls(dec)
    return seq, scores, raw


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
            f"unit_locations (base side) of {key}: position {int(bad[0])} on a decode step, which sees only the "
            "new token (position 0); to intervene on the prompt pass intervene_on_prompt=True or intervene_on='prompt'"
            "/'all'"
        )


def step_graph_for(im, sg, active, collect):
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
            reqs.append(
                dict(
                    name=f"fxv_collect_{i}",
                    module=Gather(site, rep.unit, f"unit_locations (base side) of {key}"),
                    node=site.node,
                    port=site.port,
                    region=site.path,
                    inputs=[f"fxv_loc_{i}"],
                    collect=True,
                )
            )
        elif getattr(im, "as_adaptor", False) and gets_kwargs(im.interventions[key]):  # the module input as ``args``
            reqs.append(
                dict(
                    name=f"fxv_site_{i}",
                    module=AdaptorSiteOp(key, site, rep.unit, im.interventions[key]),
                    node=site.node,
                    port=site.port,
                    region=site.path,
                    inputs=[f"fxv_src_{i}", f"fxv_loc_{i}", module_input(sg.locate.gm, site.path).name],
                )
            )
        else:
            reqs.append(
                dict(
                    name=f"fxv_site_{i}",
                    module=SiteOp(key, site, rep.unit, im.interventions[key]),
                    node=site.node,
                    port=site.port,
                    region=site.path,
                    inputs=[f"fxv_src_{i}", f"fxv_loc_{i}"],
                )
            )
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
    """See ``fxvene.IntervenableModel.generate`` and this module's docstring."""
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
            raise ValueError(
                f"decode_steps must be non-negative ints (0 = the forward that reads the first "
                f"generated token), got {decode_steps!r}"
            )
        decode_steps = steps
    if getattr(getattr(im.model, "config", None), "is_encoder_decoder", False):  # T5, BART, Whisper
        return generate_encdec(
            im,
            base,
            sources,
            unit_locations,
            source_representations,
            intervene_on_prompt,
            subspaces,
            output_original_output,
            intervention_additional_kwargs,
            intervene_on,
            decode_steps,
            generate_kwargs,
        )
    base_in, sig = U.check_base(im, base)
    extra_inputs = [k for k in base_in if k not in ("input_ids", "attention_mask", "token_type_ids")]
    if extra_inputs:
        raise ValueError(
            f"base: generate takes input_ids (and attention_mask, token_type_ids), got also {extra_inputs}"
        )
    types = base_in.get("token_type_ids")
    if types is not None and "token_type_ids" not in inspect.signature(im.model.forward).parameters:
        raise ValueError(
            f"base['token_type_ids']: {type(im.model).__name__} takes no token_type_ids; pass input_ids and "
            "attention_mask only"
        )
    input_ids, mask = base_in["input_ids"], base_in["attention_mask"].to(base_in["input_ids"].device)
    if input_ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"base['input_ids'] must be an integer tensor, got {input_ids.dtype}")
    if mask.shape != input_ids.shape:
        raise ValueError(f"base['attention_mask'] has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}")
    batch, S = input_ids.shape
    device = input_ids.device
    st = settings(im.model, S, mask, generate_kwargs)

    if not st.use_cache and intervene_on in ("decode", "all"):
        raise ValueError(
            f"generate: intervene_on={intervene_on!r} acts on each new token, which needs the KV cache; drop "
            "use_cache=False (without the cache a decode forward runs the whole sequence, as in pyvene)"
        )
    # -- which forwards each intervention acts on
    if intervene_on is None and not intervene_on_prompt and unit_locations is None:
        unit_locations = {"base": 0}  # pyvene: "we intervene on every generated token"
    # sources, locations, subspaces: checked once, before any forward
    call = U.check_call(
        im,
        base_in,
        sig,
        sources,
        unit_locations,
        source_representations,
        subspaces,
        None,
        intervention_additional_kwargs,
    )
    subs, srcreps, extra = call.subspaces, call.source_representations, call.extra

    needs = [
        k for k in im.sorted_keys if not isinstance(im.interventions[k], CollectIntervention) and im._needs_source(k)
    ]
    if needs and srcreps is None and all(s is None for s in call.sources):
        k = needs[0]
        raise ValueError(
            f"generate: intervention {k} ({type(im.interventions[k]).__name__}) needs a source, and none was given. "
            "Pass source_representations=<tensor> (e.g. a steering vector of the component's width) or "
            "sources=[<inputs>] (with unit_locations saying where to read them) to generate()."
        )

    slices = im._parallel_sources(call) if im.mode == "parallel" else im._serial_sources(call)
    from_source = srcreps is None

    plan = {"prefill": ([], [], {}), "decode": ([], [], {})}  # active, collect, feeds
    calls = {"prefill": {}, "decode": {}}
    for i, key in enumerate(im.sorted_keys):
        iv = im.interventions[key]
        unit = im.representations[key].unit
        is_collect = isinstance(iv, CollectIntervention)
        if not is_collect and key not in slices and im._needs_source(key):
            continue  # no source for this group: pyvene's "smart jump"
        bl = call.index("base", i, unit)
        if intervene_on is None:
            if bl is None:
                when = {"prefill": None, "decode": None}
            elif intervene_on_prompt:
                when = {"prefill": bl}
            else:
                if st.use_cache:  # without the cache a decode forward runs the whole sequence (pyvene)
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
        one_token = "decode" in when and st.use_cache
        if one_token and src is not None and from_source and isinstance(src, torch.Tensor) and src.dim() >= 3:
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
                calls[phase][f"fxv_site_{i}"] = im._site_call(
                    key, subs[i] if subs is not None else None, extra, check_source_shape=from_source, full_outputs=None
                )
    if decode_steps is not None and not (plan["decode"][0] or plan["decode"][1]):
        raise ValueError(
            "decode_steps was given but no intervention acts on decode steps "
            "(use intervene_on='decode' or 'all', or pyvene's default intervene_on_prompt=False)"
        )
    if decode_steps is not None and max(decode_steps, default=-1) >= st.max_new_tokens - 1:
        raise ValueError(
            f"decode_steps {sorted(s for s in decode_steps if s >= st.max_new_tokens - 1)} never run: with "
            f"max_new_tokens={st.max_new_tokens} the decode steps are 0..{st.max_new_tokens - 2} (step k reads the "
            "k-th generated token; the last generated token is never fed back)"
        )

    with torch.no_grad():
        with preserved_rng():
            if types is None:
                pre_sg = step_graph(im.model, "prefill")
                dec_sg = step_graph(im.model, "decode")
            else:  # the chunk graph with token types as its last input; empty past for the prompt
                dec_sg = step_graph(im.model, "chunk_tt")
                pre_sg = replace(dec_sg, phase="prefill", empty_past=True)
        empty = pre_sg.empty(batch, device) if pre_sg.empty_past else []

        original = None
        # beams or several sequences per prompt: HF's own loop (as pyvene's call), each row its example's data
        hf_loop = st.expand > 1 or not st.use_cache
        hf_keys = ("input_ids", "attention_mask", "token_type_ids")
        hf_base = {k: base_in[k] for k in hf_keys if k in base} if hf_loop else None
        if not st.use_cache and (dec_sg.traced is not pre_sg.traced or not pre_sg.empty_past):
            raise ValueError(
                f"generate: use_cache=False needs {type(im.model).__name__}'s KV-cache chunk graph, which it does "
                "not have; pass use_cache=True"
            )
        if output_original_output and hf_base is not None:
            original = im.model.generate(**hf_base, **generate_kwargs)
        elif output_original_output:
            plain = (Phase(pre_sg.gm, {}, {}, [], past=empty), Phase(dec_sg.gm, {}, {}, []))
            seq0, sc0, lg0 = decode(*plain, input_ids, mask, st, types=types)
            original = _wrap(seq0, sc0, lg0, st)

        im.full_intervention_outputs = []
        phases = []
        for phase, sg in (("prefill", pre_sg), ("decode", dec_sg)):
            active, collect, feeds = plan[phase]
            gm = step_graph_for(im, sg, tuple(active), tuple(collect))
            ops = {}
            for name, call in calls[phase].items():
                call = dict(call)
                call["full_outputs"] = im.full_intervention_outputs
                call["subspaces"] = expand_rows(call.get("subspaces"), batch, st.expand)
                ops[name] = call
            phases.append(
                Phase(
                    gm,
                    {k: expand_rows(v, batch, st.expand) for k, v in feeds.items()},
                    ops,
                    list(collect),
                    decode_steps if phase == "decode" else None,
                    past=empty if phase == "prefill" else [],
                )
            )
        collected = {k: [] for k in im.sorted_keys if isinstance(im.interventions[k], CollectIntervention)}

        def on_collect(phase, step, values):
            ph = phases[0] if phase == "prefill" else phases[1]
            if phase == "decode" and ph.steps is not None and step not in ph.steps:
                return
            for key, val in zip(ph.collect, values):
                i = im.sorted_keys.index(key)
                collected[key].append(
                    do_intervention(
                        im.interventions[key],
                        val,
                        None,
                        expand_rows(engine_subspaces(subs[i]), batch, st.expand) if subs is not None else None,
                    )
                )

        if hf_base is not None:
            out = hf_generate(im.model, phases[0], phases[1], hf_base, generate_kwargs, on_collect, st.use_cache)
        else:
            out = _wrap(*decode(phases[0], phases[1], input_ids, mask, st, on_collect, types), st)
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
