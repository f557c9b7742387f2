"""Generation in Hugging Face's own loop: ``model.generate`` (what pyvene 0.1.8 calls) with the model's
forward replaced, for the call, by fxvene's rewritten KV-cache step graphs. ``fxvene.api.generation``
uses it for beam search, several sequences per prompt and ``use_cache=False``, where HF's loop (its beam
bookkeeping, its cache reordering, its whole-sequence forwards) is what pyvene's tokens come from. Also the
per-call data of a phase's site ops (``set_calls``), which both loops share.
"""

from __future__ import annotations

import torch

from fxvene.graph.step_graphs import cache_mode, flat_cache, make_cache, position_ids_from_mask


def set_calls(phase, step):
    """Hand each site op of ``phase`` its per-call data (``{"skip": True}`` on a decode step it skips)."""
    skip = step is not None and phase.steps is not None and step not in phase.steps
    for name, call in phase.ops.items():
        phase.gm.get_submodule(name).call = {"skip": True} if skip else call


def clear_calls(phase):
    """Drop the per-call data of ``phase``'s site ops."""
    for name in phase.ops:
        phase.gm.get_submodule(name).call = {}


class _HFStep:
    """``model.forward`` while Hugging Face's ``generate`` drives the loop (beam search, several sequences per
    prompt): the prompt forward runs the prefill phase's graph, each later forward the decode phase's, on the
    rows HF passes (its beams); keys/values go back to HF in the model's own cache type, so HF reorders them.
    Without the cache (``cached=False``) every forward runs the whole sequence with an empty past, the first
    as the prompt forward and each later one as a decode step, as pyvene's hooks count them."""

    def __init__(self, prefill, dec, mode, on_collect, cached=True):
        self.phases, self.mode, self.on_collect, self.cached = (prefill, dec), mode, on_collect, cached
        self.step = -2

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        token_type_ids=None,
        **kwargs,
    ):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("generate: inputs_embeds are not supported here (beams, use_cache=False); pass input_ids")
        if not self.cached:
            first, past_key_values = self.step == -2, None
        elif past_key_values is None:
            first = True
        elif hasattr(past_key_values, "get_seq_length"):
            first = past_key_values.get_seq_length() == 0
        else:
            first = len(past_key_values) == 0
        past = [] if first or not self.cached else flat_cache(past_key_values)
        phase = self.phases[0] if first else self.phases[1]
        self.step = -1 if first else self.step + 1
        S = input_ids.shape[1]
        if attention_mask is None:
            attention_mask = input_ids.new_ones(input_ids.shape[0], (past[0].shape[-2] if past else 0) + S)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)[:, -S:]
        if not past:  # the prompt, or any forward without the cache: an empty past of the rows HF passes
            past = [t.new_zeros(input_ids.shape[0], *t.shape[1:]) for t in self.phases[0].past]
        # token types (a chunk_tt graph): HF slices and extends them per step, as for the plain model
        tt = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        set_calls(phase, None if first else self.step)
        try:
            flat = phase.gm(input_ids, attention_mask, position_ids, *past, **tt, **phase.feeds)
        finally:
            clear_calls(phase)
        n_kv = len(flat) - 1 - len(phase.collect)
        if self.on_collect is not None and phase.collect:
            self.on_collect("prefill" if first else "decode", self.step, flat[1 + n_kv :])
        kv = make_cache(list(flat[1 : 1 + n_kv]), self.mode) if self.cached else None
        return CausalLMOutputWithPast(logits=flat[0][:, None, :], past_key_values=kv)


def hf_generate(model, prefill, dec, base, kwargs, on_collect=None, cached=True):
    """HF ``model.generate(**base, **kwargs)`` (what pyvene calls) with the model's forward replaced by the
    phases' rewritten step graphs (``_HFStep``); the model is left as it was."""
    own = model.__dict__.get("forward")
    model.forward = _HFStep(prefill, dec, cache_mode(model), on_collect, cached)
    try:
        return model.generate(**base, **kwargs)
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def expand_rows(x, batch, k):
    """Per-example data for ``k`` rows per example (HF's beams or sequences): tensors and per-example
    lists whose first dimension is the batch are repeated row by row."""
    if k == 1:
        return x
    if isinstance(x, torch.Tensor):
        return x.repeat_interleave(k, dim=0) if x.dim() >= 2 and x.shape[0] == batch else x
    if isinstance(x, tuple):
        return tuple(expand_rows(v, batch, k) for v in x)
    if isinstance(x, list) and len(x) == batch:
        return type(x)([v for v in x for _ in range(k)])
    return x
