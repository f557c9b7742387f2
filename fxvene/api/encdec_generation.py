"""Generation with interventions for encoder-decoders (BART, Whisper, T5): ``IntervenableModel.generate``
on a model whose config says ``is_encoder_decoder``.

How it runs
-----------
Hugging Face's own ``model.generate`` drives the loop (its logits processors, Whisper's short-form decoding
from ``input_features`` with its start tokens and suppressions, eos / pad handling), with the model's
forward replaced, for the call, by the rewritten graph of ``IntervenableModel.forward``. This first version
keeps no cache: every forward HF asks for runs the whole model, the encoder over the inputs and the decoder
over every decoder token so far, with the interventions placed so that the result is the cached run's:

* **encoder components** (and the decoder's cross-attention keys and values, ``decoder_cross_attention_
  {key,value}_output`` and their head views, which lie over encoder positions) act on the encoder's input
  at their ``unit_locations`` (None: every position), on every forward alike, whatever ``intervene_on``
  says. Since the encoder's output does not depend on the decoder, this equals an encoder run once with the
  interventions, and cross-attention keys/values computed once at the first step and cached, as HF caches
  them: an edit of them applies to that cached value for every step.
* **decoder components** keep the decoder rules of ``fxvene.api.generation`` (pyvene's ``intervene_on_prompt``
  table, ``intervene_on``, ``decode_steps``), over the decoder's tokens: the *prompt* is the decoder's start
  (``decoder_input_ids`` in ``base``, else what HF generate starts the decoder with), decode step ``k`` reads
  the ``k``-th generated token. A forward over the whole sequence re-applies each earlier step's intervention
  at that step's token (a decoder position is computed causally, so this gives the keys and values the
  cached run stored): the same tokens as the cached run, at one forward of the whole sequence per new token.

Not yet: beam search and several sequences per prompt, collecting interventions, serial mode, decoder
``h`` units on decode steps (use ``h.pos``), and module-path components (whose stack is not known).
"""

from __future__ import annotations

import torch

from fxvene.api import unit_checks as U
from fxvene.api.validation import _over_encoder, is_abstract_component
from fxvene.interventions import CollectIntervention

_BASE_KEYS = ("input_ids", "input_features", "attention_mask", "decoder_input_ids")


def _decoder_side(component):
    """Whether a component's positions are the decoder's tokens (not the encoder's)."""
    return component.startswith("decoder_") and not _over_encoder(component)


def _refuse(im, base, generate_kwargs):
    if im.mode != "parallel":
        raise ValueError("generate: an encoder-decoder generates in mode='parallel' only for now")
    for key in im.sorted_keys:
        if isinstance(im.interventions[key], CollectIntervention):
            raise ValueError(
                f"generate: {key} is a CollectIntervention; an encoder-decoder's generate does not collect yet "
                "(collect with a forward call on the generated decoder_input_ids)"
            )
        if not is_abstract_component(im.representations[key].component):
            raise ValueError(
                f"generate: {key} names a module path; an encoder-decoder's generate takes the family's "
                "component names (block_output, decoder_block_output, ...)"
            )
    gc = generate_kwargs.get("generation_config") or getattr(im.model, "generation_config", None)
    for name in ("num_beams", "num_return_sequences"):
        n = generate_kwargs.get(name, getattr(gc, name, 1))
        if n not in (None, 1):
            raise ValueError(f"generate: {name}={n} on an encoder-decoder is not supported yet; use 1")
    if not isinstance(base, dict):
        raise TypeError(f"base: expected a dict of model inputs, got {type(base).__name__}")
    extra = [k for k in base if k not in _BASE_KEYS]
    if extra:
        raise ValueError(
            f"base: an encoder-decoder's generate takes input_ids or input_features (and attention_mask, "
            f"decoder_input_ids), got also {extra}"
        )


def _start_ids(im, base):
    """The decoder prompt the checks use before HF's loop starts: ``decoder_input_ids`` or the start token."""
    if "decoder_input_ids" in base:
        return base["decoder_input_ids"]
    lead = base.get("input_ids", base.get("input_features"))
    gc = getattr(im.model, "generation_config", None)
    start = getattr(gc, "decoder_start_token_id", None)
    if start is None:
        start = getattr(im.model.config, "decoder_start_token_id", None)
    if not isinstance(start, int):
        raise ValueError("base: this model has no single decoder_start_token_id; pass decoder_input_ids")
    return torch.full((lead.shape[0], 1), start, dtype=torch.long, device=lead.device)


def _with_decoder(d, dec):
    if d is None or "decoder_input_ids" in d:
        return d
    return {**d, "decoder_input_ids": dec.to(next(iter(d.values())).device)}


def _positions(loc, unit):
    """The position tensor of a location (``pos``: itself; ``h.pos``: its second part)."""
    return loc if unit == "pos" else loc[1]


def _with_positions(loc, unit, pos):
    return pos if unit == "pos" else (loc[0], pos)


class _Plan:
    """Where each intervention acts, per forward of the recomputing loop."""

    def __init__(self, im, call, intervene_on, intervene_on_prompt, user_locs, decode_steps):
        self.im, self.steps, self.entries = im, decode_steps, []
        for i, key in enumerate(im.sorted_keys):
            rep = im.representations[key]
            bl = call.index("base", i, rep.unit)
            sl = call.index("source", i, rep.unit) if call.src_locs[i] is not None else None
            if not _decoder_side(rep.component):
                self.entries.append(("encoder", bl, sl))
                continue
            if bl is None and user_locs is not None:
                when = "every"  # pyvene: a None location acts on every forward, on the whole tensor
            elif intervene_on is None and intervene_on_prompt:
                when = "every" if user_locs is None else "prompt"
            elif intervene_on is None:
                when = "decode"
            else:
                when = intervene_on
            if rep.unit == "h.pos" and bl is None and when != "every":
                raise ValueError(
                    f"unit_locations: {key} has unit 'h.pos' on the decoder; give its heads (and positions) "
                    "in unit_locations"
                )
            if when in ("decode", "all") and rep.unit == "h":
                raise ValueError(
                    f"generate: {key} has unit 'h' on an encoder-decoder's decode steps; use unit 'h.pos' "
                    "(heads at the new token)"
                )
            if when == "decode" and bl is not None:
                p = _positions(bl, rep.unit)
                bad = p[(p != 0) & (p != -1)]
                if bad.numel():
                    raise ValueError(
                        f"unit_locations (base side) of {key}: position {int(bad[0])} on a decode step, which sees "
                        "only the new token (0); for the decoder prompt pass intervene_on='prompt' or 'all'"
                    )
            if when in ("decode", "all") and sl is not None and _positions(sl, rep.unit).shape[1] != 1:
                raise ValueError(
                    f"sources: intervention {key} reads {_positions(sl, rep.unit).shape[1]} source positions, but "
                    "a decode step has one token; give one source position"
                )
            self.entries.append((when, bl, sl))

    def locations(self, step, start, batch, device):
        """Per-key (source, base) locations of the forward after decode step ``step`` (-1: the prompt) over a
        decoder prompt of ``start`` tokens, and the keys that do not act on it."""
        srcs, bases, skip = [], [], set()
        for key, (when, bl, sl) in zip(self.im.sorted_keys, self.entries):
            unit = self.im.representations[key].unit
            if when in ("encoder", "every"):
                srcs.append(sl)
                bases.append(bl)
                continue
            parts, src_parts = [], []
            if when in ("prompt", "all"):
                p = _positions(bl, unit) if bl is not None else None
                if p is None:
                    p = torch.arange(start, device=device).expand(batch, -1)
                parts.append(p)
                if sl is not None:
                    sp = _positions(sl, unit)
                    src_parts.append(sp if sp.shape[1] == p.shape[1] else sp[:, :1].expand(-1, p.shape[1]))
            if when in ("decode", "all") and step >= 0:
                new = [start + j for j in range(step + 1) if self.steps is None or j in self.steps]
                if new:
                    parts.append(torch.tensor(new, device=device).expand(batch, -1))
                    if sl is not None:
                        src_parts.append(_positions(sl, unit)[:, :1].expand(-1, len(new)))
            if not parts:  # nothing to act on in this forward: any valid location, and the op skips
                skip.add(key)
                parts = [torch.zeros(batch, 1, dtype=torch.long, device=device)]
                src_parts = [parts[0]] if sl is not None else []
            pos = torch.cat(parts, dim=1)
            ref = bl if bl is not None else (None, None)
            bases.append(_with_positions(ref, unit, pos.tolist()) if unit == "h.pos" else pos.tolist())
            if sl is None:
                srcs.append(None)
            else:
                sp = torch.cat(src_parts, dim=1).tolist()
                srcs.append(_with_positions(sl, unit, sp) if unit == "h.pos" else sp)
        return srcs, bases, skip


def _as_list(loc):
    if loc is None:
        return None
    if isinstance(loc, tuple):
        return [t.tolist() if isinstance(t, torch.Tensor) else t for t in loc]
    return loc.tolist() if isinstance(loc, torch.Tensor) else loc


class _Runner:
    """One intervened forward of the whole model per call (``model.forward`` while HF's generate runs)."""

    def __init__(self, im, base, sources, plan, srcreps, subspaces, extra):
        self.im, self.base, self.sources, self.plan = im, base, sources, plan
        self.srcreps, self.subspaces, self.extra = srcreps, subspaces, extra
        self.start = None

    def run(self, dec, step, start, build_only=False):
        im = self.im
        base_in, sig = U.check_base(im, {**self.base, "decoder_input_ids": dec})
        batch, device = dec.shape[0], dec.device
        srcs, bases, skip = self.plan.locations(step, start, batch, device)
        locs = {"sources->base": ([_as_list(s) for s in srcs], [_as_list(b) for b in bases])}
        sources = [_with_decoder(s, dec[:, :start]) for s in self.sources] if self.sources is not None else None
        call = U.check_call(im, base_in, sig, sources, locs, self.srcreps, self.subspaces, None, self.extra)
        slices = im._parallel_sources(call)
        active = [k for k in im.sorted_keys if k in slices or not im._needs_source(k)]
        traced, gm = im._base_graph(sig, tuple(active), ())
        if build_only:
            return None
        feeds, calls = {}, {}
        given = call.source_representations or {}
        for i, key in enumerate(im.sorted_keys):
            if key not in active:
                continue
            feeds[f"fxv_loc_{i}"] = call.index("base", i, im.representations[key].unit)
            if key in slices:
                feeds[f"fxv_src_{i}"] = slices[key]
            sub = call.subspaces[i] if call.subspaces is not None else None
            calls[f"fxv_site_{i}"] = (
                {"skip": True}
                if key in skip
                else im._site_call(key, sub, call.extra, check_source_shape=key not in given, full_outputs=[])
            )
        for name, c in calls.items():
            gm.get_submodule(name).call = c
        try:
            flat = im._run_graph(gm, {**base_in, **feeds})
        finally:
            for name in calls:
                gm.get_submodule(name).call = {}
        return traced.wrap_outputs(flat)

    def __call__(self, decoder_input_ids=None, decoder_attention_mask=None, **kwargs):
        from transformers.modeling_outputs import Seq2SeqLMOutput

        if decoder_attention_mask is not None and not bool((decoder_attention_mask != 0).all()):
            raise ValueError("generate: a padded decoder prompt (decoder_attention_mask) is not supported yet")
        if self.start is None:
            self.start = decoder_input_ids.shape[1]
        step = decoder_input_ids.shape[1] - self.start - 1
        out = self.run(decoder_input_ids, step, self.start)
        return Seq2SeqLMOutput(logits=out["logits"])


def generate_encdec(
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
):
    """``IntervenableModel.generate`` on an encoder-decoder (this module's docstring); pyvene's return values."""
    _refuse(im, base, generate_kwargs)
    start_ids = _start_ids(im, base)
    user_start = "decoder_input_ids" in base
    base_in, sig = U.check_base(im, {**base, "decoder_input_ids": start_ids})
    base = {k: v for k, v in base_in.items() if k != "decoder_input_ids"}
    if sources is not None and not isinstance(sources, (list, tuple)):
        sources = [sources]
    sources = [_with_decoder(s, start_ids) for s in sources] if sources is not None else None
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
    given = call.source_representations or {}
    for key in im.sorted_keys:
        if im._needs_source(key) and key not in given and all(x is None for x in call.sources):
            raise ValueError(
                f"generate: intervention {key} ({type(im.interventions[key]).__name__}) needs a source, and none "
                "was given; pass source_representations=<tensor> or sources=[<inputs>]"
            )
    plan = _Plan(im, call, intervene_on, intervene_on_prompt, unit_locations, decode_steps)
    runner = _Runner(im, base, sources, plan, source_representations, subspaces, intervention_additional_kwargs)
    with torch.no_grad():
        # every graph (the base's, each source's) is traced here, before the model's forward is replaced
        runner.run(start_ids, -1, start_ids.shape[1], build_only=True)
        hf_base = {**base, "decoder_input_ids": start_ids} if user_start else dict(base)
        original = im.model.generate(**hf_base, **generate_kwargs) if output_original_output else None
        kwargs = {**generate_kwargs, "use_cache": False}  # each forward runs the whole decoder sequence
        own = im.model.__dict__.get("forward")
        im.model.forward = runner
        try:
            out = im.model.generate(**hf_base, **kwargs)
        finally:
            if own is None:
                del im.model.forward
            else:
                im.model.forward = own
    return original, out
