"""generate's remaining call shapes against pyvene 0.1.8 (issue 23, items 3 and 5): a function intervention
fed by a source at every step, beam search and several sequences per prompt (HF's own loop, each beam
intervened), sampling under a seed; GPT-2 and Llama, batches with left padding.

pyvene's generate is ``model.generate(**base, **kwargs)`` with its hooks on the model; where pyvene crashes
(per-example locations or sources with beams at batch > 1) each row is checked against pyvene at batch 1.
"""

import pytest
import torch
from _hooks import hooks
from conftest import make_gpt2, make_llama

import fxvene as fv

pv = pytest.importorskip("pyvene")

MODELS = {"gpt2": make_gpt2(), "llama": make_llama()}
KW = dict(max_new_tokens=4, eos_token_id=None, pad_token_id=0)


def _base(seed, b=2, n=6):
    """``b`` prompts of ``n`` tokens, the second left-padded by two."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (b, n), generator=g)
    mask = torch.ones_like(ids)
    if b > 1:
        ids[1, :2], mask[1, :2] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def _function(lib, model):
    rep = lib.RepresentationConfig(layer=1, component="block_output", intervention=lambda b, s: b + s * 0.1)
    return lib.IntervenableModel(lib.IntervenableConfig(representations=[rep]), model)


def _steer(lib, model):
    rep = lib.RepresentationConfig(layer=1, component="block_output", intervention_type=lib.AdditionIntervention)
    return lib.IntervenableModel(lib.IntervenableConfig(representations=[rep]), model)


def _vec(model):
    return torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3)) * 3


def _both(build, model, *args, seed=None, **kw):
    """(pyvene's, fxvene's) generated sequences of one call."""
    out = []
    for lib in (pv, fv):
        if seed is not None:
            torch.manual_seed(seed)
        out.append(build(lib, model).generate(*args, **kw)[1])
    return out


# ------------------------------------------------------------------------------------------------ item 3

FUNCTION_LOCS = {
    "decode": dict(unit_locations={"sources->base": (3, 0)}),
    "prompt": dict(unit_locations={"sources->base": ([[[3], [4]]], [[[4], [5]]])}, intervene_on_prompt=True),
}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("where", list(FUNCTION_LOCS))
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_function_with_a_source_in_generate(name, where, use_cache):
    """``lambda b, s: b + s * 0.1`` gets the source's units at every step where pyvene gives them; without
    the KV cache each step runs the whole sequence, so the decode location is a prompt position (pyvene)."""
    model = MODELS[name]
    base, src = _base(1), _base(2)
    kw = dict(FUNCTION_LOCS[where], use_cache=use_cache, do_sample=False)
    theirs, ours = _both(_function, model, base, [src], **kw, **KW)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    "call",
    [
        dict(),
        dict(intervene_on_prompt=True, unit_locations=None),
        dict(intervene_on_prompt=True, unit_locations={"base": [[[1, 2], [3, 4]]]}),
    ],
    ids=["default", "every-forward", "prompt-positions"],
)
def test_steering_without_the_cache(call):
    model = MODELS["gpt2"]
    kw = dict(source_representations=_vec(model), use_cache=False, **call, **KW)
    theirs, ours = _both(_steer, model, _base(3), **kw)
    assert torch.equal(ours, theirs)


def test_per_token_control_needs_the_cache():
    im = _steer(fv, MODELS["gpt2"])
    with pytest.raises(ValueError, match="intervene_on='decode' acts on each new token"):
        im.generate(_base(3), source_representations=_vec(MODELS["gpt2"]), intervene_on="decode", use_cache=False)


# ------------------------------------------------------------------------------------------------ item 5


BLOCK1 = {"gpt2": "transformer.h.1", "llama": "model.layers.1"}


def _hf_steered(name, base, edit, prompt, decode, **kw):
    """HF generate with a forward hook on block 1's output: ``edit(rows)`` on the prompt forward at the
    ``prompt`` positions of each row (None: every position), and on each decode forward at index 0 when
    ``decode``; every row (every beam) alike: the manual oracle of beams with interventions."""
    model = MODELS[name]

    def fn(h):
        h = h.clone()
        if h.shape[1] > 1 and prompt is not False:
            rows = torch.arange(h.shape[0])
            cols = slice(None) if prompt is None else prompt.repeat_interleave(h.shape[0] // prompt.shape[0], 0)
            if prompt is None:
                h = edit(h)
            else:
                h[rows[:, None], cols] = edit(h[rows[:, None], cols])
        elif h.shape[1] == 1 and decode:
            h = edit(h)
        return h

    with torch.no_grad(), hooks(model, [(BLOCK1[name], "output", fn)]):
        return model.generate(**base, **kw, **KW)


BEAMS = [dict(num_beams=2), dict(num_beams=3, num_return_sequences=2)]


@pytest.mark.parametrize("beams", BEAMS, ids=["2", "3-return-2"])
def test_beam_search_steering_on_every_forward(beams):
    """unit_locations=None, intervene_on_prompt=True: every forward, every row (pyvene too, at any batch)."""
    model = MODELS["gpt2"]
    kw = dict(source_representations=_vec(model), intervene_on_prompt=True, unit_locations=None, **beams, **KW)
    theirs, ours = _both(_steer, model, _base(4), **kw)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours, _hf_steered("gpt2", _base(4), lambda h: h + _vec(model), None, True, **beams))


@pytest.mark.parametrize("beams", BEAMS, ids=["2", "3-return-2"])
@pytest.mark.parametrize("where", ["decode", "prompt"])
def test_beam_search_steering_at_locations_on_every_beam(beams, where):
    """Locations with beams: each beam of each example is intervened at that example's locations (a batch of
    two, left-padded). pyvene intervenes only on the first of the flattened rows (the first beam of the first
    example) and crashes for batches of several prompts (docs/differences.md)."""
    model = MODELS["gpt2"]
    base, vec = _base(4), _vec(model)
    if where == "decode":
        kw, prompt, decode = dict(intervene_on_prompt=False), False, True
    else:
        kw = dict(intervene_on_prompt=True, unit_locations={"base": [[[1, 2], [3, 4]]]})
        prompt, decode = torch.tensor([[1, 2], [3, 4]]), False
    _, ours = _steer(fv, model).generate(base, source_representations=vec, **kw, **beams, **KW)
    assert torch.equal(ours, _hf_steered("gpt2", base, lambda h: h + vec, prompt, decode, **beams))


def test_beam_search_function_with_a_source():
    """A function fed by a source at each decode step, on every beam (the source's units per example)."""
    model = MODELS["llama"]
    base, src = _base(5), _base(6)
    _, ours = _function(fv, model).generate(base, [src], unit_locations={"sources->base": (3, 0)}, num_beams=2, **KW)
    with torch.no_grad():
        s = model(**src, output_hidden_states=True).hidden_states[2][:, 3:4]  # block 1's output at position 3
    s = s.repeat_interleave(2, 0)
    assert torch.equal(ours, _hf_steered("llama", base, lambda h: h + s * 0.1, False, True, num_beams=2))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "extra",
    [dict(), dict(num_return_sequences=2, intervene_on_prompt=True, unit_locations=None)],
    ids=["one", "two-per-prompt"],
)
def test_sampling_with_a_seed(name, extra):
    model = MODELS[name]
    kw = dict(source_representations=_vec(model), do_sample=True, top_k=10, **extra, **KW)
    theirs, ours = _both(_steer, model, _base(8), seed=11, **kw)
    assert torch.equal(ours, theirs)


# ------------------------------------------------------------------------------------------------ issue 28 leftovers


def test_gru_collect_before_a_write_sees_the_clean_steps():
    """unit "t": a Collect listed before a Zero at the same steps returns the steps before the write, as
    pyvene's Collect does (its hook runs first); the Zero still acts."""
    out = {}
    for lib in (pv, fv):
        torch.manual_seed(4)  # the GRU of tests/test_toy_models.py: one export for both files
        _, _, gru = lib.create_gru_classifier(lib.GRUConfig(h_dim=6, n_layer=2))
        embeds = torch.randn(1, 8, 6, generator=torch.Generator().manual_seed(1))
        rep = {"layer": 0, "component": "cell_output", "unit": "t"}
        im = lib.IntervenableModel(
            [dict(rep, intervention_type=lib.CollectIntervention), dict(rep, intervention_type=lib.ZeroIntervention)],
            model=gru,
        )
        every = [list(range(8))]
        (_, collected), res = im(base={"inputs_embeds": embeds.clone()}, unit_locations={"base": [every, every]})
        out[lib.__name__] = (collected, res[0])
    (pc, pr), (fc, fr) = out["pyvene"], out["fxvene"]
    assert len(fc) == len(pc) == 8 and all(f.abs().sum() > 0 for f in fc)
    assert all(torch.allclose(f, p, atol=1e-6) for f, p in zip(fc, pc))
    assert torch.allclose(fr, pr, atol=1e-6)


def test_serial_collect_in_an_earlier_group_is_refused():
    """Serial mode: a Collect in a group before the last one with a source never sees the base run;
    pyvene crashes ('Tensor' object has no attribute 'append'), fxvene refuses with a ValueError."""
    g = torch.Generator().manual_seed(1)
    base, s0, s1 = [{"input_ids": torch.randint(1, 50, (1, 6), generator=g)} for _ in range(3)]
    ul = {"source_0->source_1": 1, "source_1->base": 4}
    for lib in (pv, fv):
        reps = [
            lib.RepresentationConfig(
                layer=0, component="block_output", intervention_type=lib.CollectIntervention, group_key=0
            ),
            lib.RepresentationConfig(
                layer=1, component="block_output", intervention_type=lib.VanillaIntervention, group_key=1
            ),
        ]
        im = lib.IntervenableModel(lib.IntervenableConfig(representations=reps, mode="serial"), MODELS["gpt2"])
        if lib is pv:
            with pytest.raises(AttributeError):
                im(base=base, sources=[s0, s1], unit_locations=ul)
        else:
            with pytest.raises(ValueError, match="never sees the base run; put it in the last group"):
                im(base=base, sources=[s0, s1], unit_locations=ul)
