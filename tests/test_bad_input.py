"""Bad input, wherever a user passes it: one ValueError/TypeError that names the argument, raised
before any forward runs, with the model and the IntervenableModel unchanged - the good call right
after gives pyvene 0.1.8's numbers (a pyvene IntervenableModel on the same config, same weights)."""

import json
import os

import pytest
import torch
import torch.nn as nn
from conftest import make_gpt2

import fxvene as pv

# ------------------------------------------------------------------------------------ helpers


def _rep(lib, t="VanillaIntervention", **kw):
    kw.setdefault("layer", 1)
    kw.setdefault("component", "block_output")
    return lib.RepresentationConfig(intervention_type=getattr(lib, t), **kw)


def _im(model, *reps):
    return pv.IntervenableModel(pv.IntervenableConfig(representations=list(reps)), model)


def _twin(pyvene, pv_model, im):
    """pyvene's IntervenableModel on the same config, with the same intervention weights."""
    reps = []
    for key in im.sorted_keys:
        r, iv = im.representations[key], im.interventions[key]
        reps.append(
            pyvene.RepresentationConfig(
                layer=r.layer,
                component=r.component,
                unit=r.unit,
                max_number_of_units=r.max_number_of_units,
                low_rank_dimension=r.low_rank_dimension,
                subspace_partition=r.subspace_partition,
                intervention_type=getattr(pyvene, type(iv).__name__),
            )
        )
    twin = pyvene.IntervenableModel(pyvene.IntervenableConfig(representations=reps), pv_model)
    for key in im.sorted_keys:
        twin.interventions[key].load_state_dict(im.interventions[key].state_dict())
    return twin


def _state(model, im=None):
    """Everything a failed call must leave as it was."""
    out = {f"m.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    out["m.grad"] = tuple(p.requires_grad for p in model.parameters())
    out["m.training"] = model.training
    if im is not None:
        for key, iv in im.interventions.items():
            for k, v in iv.state_dict().items():
                out[f"i.{key}.{k}"] = v.detach().clone()
        out["i.activations"] = dict(im.activations)
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif k != "i.activations":
            assert a[k] == b[k], k


class _Runs:
    """Counts the graph runs of an IntervenableModel (source runs and the base run)."""

    def __init__(self, im, monkeypatch):
        self.n = 0
        run = im._run_graph

        def counted(gm, kwargs):
            self.n += 1
            return run(gm, kwargs)

        monkeypatch.setattr(im, "_run_graph", counted)


def _rejects(im, model, monkeypatch, exc, names, call):
    """``call()`` raises ``exc`` whose message contains every string in ``names``, before any
    graph runs, and leaves the model and ``im`` as they were."""
    before = _state(model, im)
    runs = _Runs(im, monkeypatch)
    with pytest.raises(exc) as e:
        call()
    msg = str(e.value)
    for s in names:
        assert s in msg, (s, msg)
    assert runs.n == 0, "a forward ran before the error"
    _same(before, _state(model, im))
    monkeypatch.undo()
    return msg


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(11)
    return (
        {"input_ids": torch.randint(0, 50, (2, 8), generator=g)},
        {"input_ids": torch.randint(0, 50, (2, 8), generator=g)},
    )


# ------------------------------------------------------------------------------------ intervention types


BAD_TYPES = [
    (3, TypeError, ["intervention_type", "3", "intervention class"]),
    ("NoSuchIntervention", ValueError, ["intervention_type", "'NoSuchIntervention'", "VanillaIntervention"]),
    ("os.system", ValueError, ["intervention_type", "'os.system'"]),
    (nn.Linear, TypeError, ["intervention_type", "Linear", "subclass of fxvene.Intervention"]),
    (nn.Identity(), TypeError, ["intervention_type", "Identity", "class"]),
]


@pytest.mark.parametrize("bad,exc,names", BAD_TYPES, ids=lambda x: repr(x)[:20])
def test_bad_intervention_type(gpt2, pv_gpt2, pyvene, ids, bad, exc, names):
    model = make_gpt2()  # a fresh model: construction must not touch it either
    before = _state(model)
    with pytest.raises(exc) as e:
        pv.IntervenableModel(
            pv.IntervenableConfig([pv.RepresentationConfig(1, "block_output", intervention_type=bad)]), model
        )
    assert all(s in str(e.value) for s in names), str(e.value)
    _same(before, _state(model))
    # the global intervention_types too
    with pytest.raises(exc):
        pv.IntervenableModel(
            pv.IntervenableConfig([pv.RepresentationConfig(1, "block_output")], intervention_types=bad), model
        )
    _same(before, _state(model))
    base, src = ids
    im = _im(model, _rep(pv))
    _, out = im(base, [src], unit_locations={"sources->base": 3})
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations={"sources->base": 3})
    _close(out.logits, ref.logits)


BAD_INSTANCES = [
    (nn.Linear(24, 24), ["representations[0].intervention", "Linear", "plain nn.Module"]),
    (pv.VanillaIntervention, ["representations[0].intervention", "class VanillaIntervention", "instance"]),
    (7, ["representations[0].intervention", "7", "Intervention instance or a function"]),
]


@pytest.mark.parametrize("bad,names", BAD_INSTANCES, ids=["module", "class", "int"])
def test_bad_intervention_instance(pv_gpt2, pyvene, ids, bad, names):
    model = make_gpt2()
    before = _state(model)
    with pytest.raises(TypeError) as e:
        pv.IntervenableModel(
            pv.IntervenableConfig([pv.RepresentationConfig(1, "block_output", intervention=bad)]), model
        )
    assert all(s in str(e.value) for s in names), str(e.value)
    _same(before, _state(model))
    base, src = ids
    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            [pv.RepresentationConfig(1, "block_output", intervention=pv.VanillaIntervention(embed_dim=24))]
        ),
        model,
    )
    _, out = im(base, [src], unit_locations={"sources->base": 2})
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations={"sources->base": 2})
    _close(out.logits, ref.logits)


def test_intervention_type_by_name_is_the_class(gpt2, pv_gpt2, pyvene, ids):
    base, src = ids
    im = pv.IntervenableModel(
        pv.IntervenableConfig([pv.RepresentationConfig(1, "block_output", intervention_type="AdditionIntervention")]),
        gpt2,
    )
    assert type(im.interventions[im.sorted_keys[0]]) is pv.AdditionIntervention
    _, out = im(base, [src], unit_locations={"sources->base": 4})
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations={"sources->base": 4})
    _close(out.logits, ref.logits)


# ------------------------------------------------------------------------------------ model inputs


def _bad_inputs():
    g = torch.Generator().manual_seed(3)
    good = torch.randint(0, 50, (2, 8), generator=g)
    return [
        ("float ids", {"input_ids": good.float()}, TypeError, ["['input_ids']", "integer", "torch.float32"]),
        ("1-D ids", {"input_ids": good[0]}, ValueError, ["['input_ids']", "(batch, seq)", "(8,)"]),
        (
            "mask shape",
            {"input_ids": good, "attention_mask": torch.ones(2, 7, dtype=torch.long)},
            ValueError,
            ["['attention_mask']", "(2, 7)", "(2, 8)"],
        ),
        ("empty batch", {"input_ids": good[:0]}, ValueError, ["['input_ids']", "empty", "(0, 8)"]),
        ("empty seq", {"input_ids": good[:, :0]}, ValueError, ["['input_ids']", "empty", "(2, 0)"]),
        ("vocab", {"input_ids": good + 50}, ValueError, ["['input_ids']", "vocabulary", "[0, 50)"]),
        ("not a tensor", {"input_ids": good.tolist()}, TypeError, ["['input_ids']", "torch.Tensor", "list"]),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())), ids=[c[0] for c in _bad_inputs()])
@pytest.mark.parametrize("side", ["base", "sources[0]"])
def test_bad_inputs_base_and_sources(gpt2, pv_gpt2, pyvene, ids, monkeypatch, case, side):
    _, bad, exc, names = _bad_inputs()[case]
    base, src = ids
    im = _im(gpt2, _rep(pv))
    call = (
        (lambda: im(bad, [src], unit_locations={"sources->base": 1}))
        if side == "base"
        else (lambda: im(base, [bad], unit_locations={"sources->base": 1}))
    )
    _rejects(im, gpt2, monkeypatch, exc, [side] + names, call)
    _, out = im(base, [src], unit_locations={"sources->base": 1})
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations={"sources->base": 1})
    _close(out.logits, ref.logits)


def test_bad_inputs_embeds(gpt2, ids, monkeypatch):
    base, src = ids
    im = _im(gpt2, _rep(pv))
    emb = gpt2.get_input_embeddings()(base["input_ids"]).detach()
    _rejects(
        im,
        gpt2,
        monkeypatch,
        TypeError,
        ["base['inputs_embeds']", "floating", "torch.int64"],
        lambda: im({"inputs_embeds": emb.long()}, [src], unit_locations={"sources->base": 1}),
    )
    _rejects(
        im,
        gpt2,
        monkeypatch,
        ValueError,
        ["base", "either 'input_ids' or 'inputs_embeds'"],
        lambda: im({**base, "inputs_embeds": emb}, [src], unit_locations={"sources->base": 1}),
    )


def test_second_source_is_checked_before_the_first_runs(gpt2, ids, monkeypatch):
    base, src = ids
    im = _im(gpt2, _rep(pv, layer=0, group_key=0), _rep(pv, layer=2, group_key=1))
    _rejects(
        im,
        gpt2,
        monkeypatch,
        ValueError,
        ["sources[1]", "batch size 1", "base has 2"],
        lambda: im(base, [src, {"input_ids": src["input_ids"][:1]}], unit_locations={"sources->base": 1}),
    )
    _rejects(
        im,
        gpt2,
        monkeypatch,
        TypeError,
        ["sources[1]['input_ids']", "integer"],
        lambda: im(base, [src, {"input_ids": src["input_ids"].float()}], unit_locations={"sources->base": 1}),
    )


# ------------------------------------------------------------------------------------ subspaces


SUBSPACE_CASES = [
    # (intervention, rep kwargs, subspaces, exc, names)
    ("VanillaIntervention", {}, [[0, 24]] * 2, ValueError, ["subspaces", "index 24", "24 dimensions"]),
    ("VanillaIntervention", {}, [[-1]] * 2, ValueError, ["subspaces", "index -1", "negative"]),
    ("VanillaIntervention", {}, [[0]] * 3, ValueError, ["subspaces", "3 per-example lists", "batch of 2"]),
    (
        "VanillaIntervention",
        {"subspace_partition": [[0, 12], [12, 24]]},
        [[2]] * 2,
        ValueError,
        ["subspaces", "index 2", "2 subspace_partition entries"],
    ),
    (
        "LowRankRotatedSpaceIntervention",
        {"low_rank_dimension": 4},
        [[4]] * 2,
        ValueError,
        ["subspaces", "index 4", "4 low_rank_dimension"],
    ),
    ("RotatedSpaceIntervention", {}, [[0, 1.5]] * 2, TypeError, ["subspaces", "ints", "1.5"]),
    (
        "BoundlessRotatedSpaceIntervention",
        {},
        [[0]] * 2,
        ValueError,
        ["subspaces", "BoundlessRotatedSpaceIntervention", "takes no subspaces"],
    ),
    (
        "SigmoidMaskIntervention",
        {},
        [[0]] * 2,
        ValueError,
        ["subspaces", "SigmoidMaskIntervention", "takes no subspaces"],
    ),
]


@pytest.mark.parametrize(
    "t,kw,subs,exc,names",
    SUBSPACE_CASES,
    ids=["past-dim", "negative", "batch", "partition", "low-rank", "float", "boundless", "mask"],
)
def test_bad_subspaces(gpt2, pv_gpt2, pyvene, ids, monkeypatch, t, kw, subs, exc, names):
    base, src = ids
    torch.manual_seed(0)
    im = _im(gpt2, _rep(pv, t, **kw))
    ul = {"sources->base": 5}
    _rejects(im, gpt2, monkeypatch, exc, names, lambda: im(base, [src], unit_locations=ul, subspaces=[subs]))
    good = None if t in ("BoundlessRotatedSpaceIntervention", "SigmoidMaskIntervention") else [[[0, 1]] * 2]
    _, out = im(base, [src], unit_locations=ul, subspaces=good)
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations=ul, subspaces=good)
    _close(out.logits, ref.logits)


# ------------------------------------------------------------------------------------ the model


class _NoConfig(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)

    def forward(self, input_ids=None, attention_mask=None):
        return self.emb(input_ids)


class _Untraceable(type(make_gpt2(n_layer=1))):
    def forward(self, input_ids=None, attention_mask=None, **kw):
        if int(input_ids.max()) > 1000:  # data-dependent Python control flow
            input_ids = input_ids * 0
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kw)


@pytest.mark.parametrize("bad", [nn.Linear(4, 4), _NoConfig()], ids=["linear", "no-config"])
def test_unsupported_model(pv_gpt2, pyvene, ids, bad):
    before = _state(bad)
    with pytest.raises(TypeError) as e:
        _im(bad, _rep(pv))
    msg = str(e.value)
    assert "model" in msg and type(bad).__name__ in msg and "GPT2LMHeadModel" in msg and "LlamaForCausalLM" in msg, msg
    assert "`fxvene components --list`" in msg, msg  # the full list is behind the command
    _same(before, _state(bad))
    base, src = ids
    model = make_gpt2()
    im = _im(model, _rep(pv))
    _, out = im(base, [src], unit_locations={"sources->base": 6})
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations={"sources->base": 6})
    _close(out.logits, ref.logits)


def test_untraceable_model_is_a_value_error_listing_what_is_supported():
    from fxvene.graph.tracing import TracingError

    m = _Untraceable(make_gpt2(n_layer=1).config).eval()
    before = _state(m)
    with pytest.raises(ValueError) as e:
        _im(m, _rep(pv, layer=0))
    assert isinstance(e.value, TracingError)
    msg = str(e.value)
    assert msg.startswith("model: ") and "could not trace _Untraceable" in msg and "fxvene components --list" in msg
    assert "export: " in msg and set(e.value.attempts) >= {"export"}  # each tracer's whole error is kept
    _same(before, _state(m))


# ------------------------------------------------------------------------------------ max_number_of_units


UNIT_CASES = [
    # distributed: the flattened width must be max_number_of_units x the component's
    (
        "RotatedSpaceIntervention",
        dict(max_number_of_units=1),
        {"sources->base": ([[[1, 2]] * 2], [[[1, 2]] * 2])},
        ["unit_locations", "max_number_of_units=1", "2 units", "give 1 per example"],
    ),
    (
        "LowRankRotatedSpaceIntervention",
        dict(max_number_of_units=2, low_rank_dimension=3),
        {"sources->base": ([[[1, 2, 3]] * 2], [[[1, 2, 3]] * 2])},
        ["unit_locations", "max_number_of_units=2", "3 units"],
    ),
    (
        "RotatedSpaceIntervention",
        dict(component="head_attention_value_output", unit="h", max_number_of_units=1),
        {"sources->base": ([[[0, 1]] * 2], [[[0, 1]] * 2])},
        ["unit_locations", "max_number_of_units=1", "2 heads"],
    ),
    # localist with weights of the intervention's width: one unit at a time
    (
        "SigmoidMaskIntervention",
        dict(max_number_of_units=2),
        {"sources->base": ([[[1, 2]] * 2], [[[1, 2]] * 2])},
        ["max_number_of_units=2", "SigmoidMaskIntervention", "one unit at a time"],
    ),
]


@pytest.mark.parametrize("t,kw,bad,names", UNIT_CASES, ids=["rotated", "low-rank", "rotated-heads", "sigmoid-mask"])
def test_units_against_max_number_of_units(gpt2, pv_gpt2, pyvene, ids, monkeypatch, t, kw, bad, names):
    base, src = ids
    torch.manual_seed(0)
    im = _im(gpt2, _rep(pv, t, **kw))
    _rejects(im, gpt2, monkeypatch, ValueError, names, lambda: im(base, [src], unit_locations=bad))
    if t == "SigmoidMaskIntervention":  # no call fits it: rebuild it as the message says
        im = _im(gpt2, _rep(pv, t, **{**kw, "max_number_of_units": 1}))
    n = 1 if t == "SigmoidMaskIntervention" else kw["max_number_of_units"]
    good = {"sources->base": ([[list(range(1, 1 + n))] * 2], [[list(range(1, 1 + n))] * 2])}
    _, out = im(base, [src], unit_locations=good)
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations=good)
    _close(out.logits, ref.logits)


def test_localist_swaps_take_any_number_of_units(gpt2, pv_gpt2, pyvene, ids):
    # A weightless localist intervention acts on each unit: more units than max_number_of_units is
    # pyvene's ordinary use (tutorial 2 noises every subject position with max_number_of_units=1).
    base, src = ids
    im = _im(gpt2, _rep(pv, max_number_of_units=1))
    ul = {"sources->base": ([[[0, 3, 5]] * 2], [[[1, 2, 7]] * 2])}
    _, out = im(base, [src], unit_locations=ul)
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations=ul)
    _close(out.logits, ref.logits)


# ------------------------------------------------------------------------------------ unit_locations


LOC_CASES = [
    ("past-seq-base", {}, {"sources->base": (0, 8)}, ["unit_locations (base side)", "position 8", "the base has 8"]),
    (
        "past-seq-source",
        {},
        {"sources->base": (8, 0)},
        ["unit_locations (source side)", "position 8", "sources[0] has 8"],
    ),
    ("negative-base", {}, {"sources->base": (0, -1)}, ["unit_locations (base side)", "position -1", "negative"]),
    ("negative-source", {}, {"sources->base": (-2, 0)}, ["unit_locations (source side)", "position -2", "negative"]),
    (
        "batch",
        {},
        {"sources->base": ([[[0]] * 3], [[[0]] * 3])},
        ["unit_locations", "3 per-example entries", "batch of 2"],
    ),
    ("nesting", {}, {"sources->base": ([[[[0]]] * 2], [[[[0]]] * 2])}, ["unit_locations", "depth 2"]),
    ("ragged", {}, {"sources->base": ([[[0], [0, 1]]], [[[0], [0, 1]]])}, ["unit_locations", "same number of units"]),
    (
        "pairing",
        {},
        {"sources->base": ([[[0, 1]] * 2], [[[0, 1, 2]] * 2])},
        ["unit_locations", "source side gives 2 units", "base side 3 units"],
    ),
    (
        "head-past",
        dict(component="head_attention_value_output", unit="h"),
        {"sources->base": ([[[4]] * 2], [[[4]] * 2])},
        ["unit_locations", "head 4", "4 heads"],
    ),
    (
        "hpos-head-past",
        dict(component="head_attention_value_output", unit="h.pos"),
        {"sources->base": ([[[[1]] * 2, [[2]] * 2]], [[[[9]] * 2, [[2]] * 2]])},
        ["unit_locations (base side)", "head 9", "4 heads"],
    ),
    (
        "hpos-pos-past",
        dict(component="head_attention_value_output", unit="h.pos"),
        {"sources->base": ([[[[1]] * 2, [[2]] * 2]], [[[[1]] * 2, [[12]] * 2]])},
        ["unit_locations (base side)", "position 12", "the base has 8"],
    ),
]


@pytest.mark.parametrize("name,kw,bad,names", LOC_CASES, ids=[c[0] for c in LOC_CASES])
def test_bad_unit_locations(gpt2, pv_gpt2, pyvene, ids, monkeypatch, name, kw, bad, names):
    base, src = ids
    im = _im(gpt2, _rep(pv, **kw))
    _rejects(im, gpt2, monkeypatch, ValueError, names, lambda: im(base, [src], unit_locations=bad))
    unit = kw.get("unit", "pos")
    good = {
        "pos": {"sources->base": (3, 6)},
        "h": {"sources->base": ([[[1, 3]] * 2], [[[1, 3]] * 2])},
        "h.pos": {"sources->base": ([[[[1]] * 2, [[2]] * 2]], [[[[1]] * 2, [[5]] * 2]])},
    }[unit]
    _, out = im(base, [src], unit_locations=good)
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations=good)
    _close(out.logits, ref.logits)


def test_shorter_source_is_checked_against_its_own_length(gpt2, pv_gpt2, pyvene, ids, monkeypatch):
    base, src = ids
    short = {"input_ids": src["input_ids"][:, :5]}
    im = _im(gpt2, _rep(pv))
    _rejects(
        im,
        gpt2,
        monkeypatch,
        ValueError,
        ["unit_locations (source side)", "position 6", "sources[0] has 5"],
        lambda: im(base, [short], unit_locations={"sources->base": (6, 6)}),
    )
    _, out = im(base, [short], unit_locations={"sources->base": (4, 6)})
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [short], unit_locations={"sources->base": (4, 6)})
    _close(out.logits, ref.logits)


def test_serial_locations_are_checked_against_their_target(gpt2, ids, monkeypatch):
    base, src = ids
    cfg = pv.IntervenableConfig([_rep(pv, layer=0, group_key=0), _rep(pv, layer=2, group_key=1)], mode="serial")
    im = pv.IntervenableModel(cfg, gpt2)
    short = {"input_ids": src["input_ids"][:, :4]}
    _rejects(
        im,
        gpt2,
        monkeypatch,
        ValueError,
        ["unit_locations (base side)", "position 6", "sources[1] has 4"],
        lambda: im(base, [src, short], unit_locations={"source_0->source_1": (1, 6), "source_1->base": (2, 2)}),
    )
    _rejects(
        im,
        gpt2,
        monkeypatch,
        ValueError,
        ["unit_locations", "'source_0->target'"],
        lambda: im(base, [src, src], unit_locations={"source_0->target": (1, 1)}),
    )


# ------------------------------------------------------------------------------------ generate and sweeps


GEN_KW = dict(max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)


def test_generate_rejects_the_same_bad_input(gpt2, pv_gpt2, pyvene, ids, monkeypatch):
    import fxvene.api.generation as G

    base, src = ids
    im = _im(gpt2, _rep(pv))
    ran = []
    monkeypatch.setattr(G, "decode", lambda *a, **k: ran.append(1))
    cases = [
        (
            dict(base={"input_ids": base["input_ids"].float()}, sources=[src]),
            TypeError,
            ["base['input_ids']", "integer"],
        ),
        (
            dict(base=base, sources=[{"input_ids": src["input_ids"][0]}]),
            ValueError,
            ["sources[0]['input_ids']", "(8,)"],
        ),
        (dict(base={"input_ids": base["input_ids"][:0]}, sources=[src]), ValueError, ["base['input_ids']", "empty"]),
        (
            dict(base=base, sources=[src], unit_locations={"sources->base": (2, 9)}, intervene_on_prompt=True),
            ValueError,
            ["unit_locations (base side)", "position 9", "the base has 8"],
        ),
        (
            dict(base=base, sources=[src], unit_locations={"sources->base": (-1, 0)}),
            ValueError,
            ["unit_locations (source side)", "position -1", "negative"],
        ),
        (
            dict(base=base, sources=[src], unit_locations={"sources->base": (2, 0)}, subspaces=[[[30]] * 2]),
            ValueError,
            ["subspaces", "index 30", "24 dimensions"],
        ),
    ]
    for kw, exc, names in cases:
        kw = dict(kw)
        b = kw.pop("base")
        _rejects(im, gpt2, monkeypatch, exc, names, lambda: im.generate(b, **kw, **GEN_KW))
        monkeypatch.setattr(G, "decode", lambda *a, **k: ran.append(1))
    assert not ran
    monkeypatch.undo()
    ul = {"sources->base": (2, 5)}
    _, out = im.generate(base, [src], unit_locations=ul, intervene_on_prompt=True, **GEN_KW)
    _, ref = _twin(pyvene, pv_gpt2, im).generate(base, [src], unit_locations=ul, intervene_on_prompt=True, **GEN_KW)
    assert torch.equal(out, ref)


def test_sweeps_reject_bad_inputs_and_positions(gpt2, ids):
    base, src = ids
    bad_inputs = [
        ({"input_ids": base["input_ids"].float()}, TypeError, "integer"),
        ({"input_ids": base["input_ids"][:0]}, ValueError, "empty"),
        ({"input_ids": base["input_ids"], "attention_mask": torch.ones(2, 3)}, ValueError, "(2, 3)"),
    ]
    for bad, exc, s in bad_inputs:
        with pytest.raises(
            exc, match=r"base\['(input_ids|attention_mask)'\].*" + s.replace("(", r"\(").replace(")", r"\)")
        ):
            pv.patching_sweep(gpt2, bad, src, layers=[0], positions=[0], progress=False)
        with pytest.raises(exc, match=r"inputs\['(input_ids|attention_mask)'\]"):
            pv.causal_trace(
                gpt2,
                {**bad, "input_ids": bad["input_ids"][:1]} if bad["input_ids"].shape[0] else bad,
                subject_positions=[0],
                target_token=1,
                progress=False,
            )
    with pytest.raises(ValueError, match="positions: 8 is not a position of a 8-token input"):
        pv.patching_sweep(gpt2, base, src, layers=[0], positions=[8], progress=False)
    with pytest.raises(ValueError, match="positions: -1 is not a position"):
        pv.patching_sweep(gpt2, base, src, layers=[0], positions=[-1], progress=False)
    with pytest.raises(ValueError, match="layers: 4 is out of range"):
        pv.patching_sweep(gpt2, base, src, layers=[4], positions=[0], progress=False)
    with pytest.raises(ValueError, match="heads: 4 is out of range for 4 heads"):
        pv.patching_sweep(
            gpt2,
            base,
            src,
            components=("head_attention_value_output",),
            layers=[0],
            positions=[0],
            heads=[4],
            progress=False,
        )
    one = {"input_ids": base["input_ids"][:1]}
    with pytest.raises(ValueError, match="subject_positions: 9 is not a position"):
        pv.causal_trace(gpt2, one, subject_positions=[9], target_token=1, progress=False)


# ------------------------------------------------------------------------------------ save / load


def _saved(tmp_path, gpt2, t="RotatedSpaceIntervention", **kw):
    torch.manual_seed(0)
    im = _im(gpt2, _rep(pv, t, **kw))
    d = tmp_path / "saved"
    im.save(str(d))
    return im, d


def _check_good_after(im, pv_gpt2, pyvene, ids):
    base, src = ids
    _, out = im(base, [src], unit_locations={"sources->base": 2})
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations={"sources->base": 2})
    _close(out.logits, ref.logits)


def test_load_missing_or_corrupt_directory(gpt2, pv_gpt2, pyvene, ids, tmp_path):
    im, d = _saved(tmp_path, gpt2)
    before = _state(gpt2)
    with pytest.raises(ValueError, match="load_directory .*is not a local directory \\(it does not exist\\)") as e:
        pv.IntervenableModel.load(str(tmp_path / "nope"), gpt2)
    assert isinstance(e.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="load_directory .*has no config.json"):
        pv.IntervenableModel.load(str(tmp_path / "empty"), gpt2)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="load_directory .*is not a directory"):
        pv.IntervenableModel.load(str(tmp_path / "afile"), gpt2)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        pv.IntervenableModel.load(str(d), gpt2)
    (d / "config.json").write_text(json.dumps(cfg))
    w = next(p for p in os.listdir(d) if p.startswith("intkey_"))
    raw = (d / w).read_bytes()
    (d / w).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        pv.IntervenableModel.load(str(d), gpt2)
    os.remove(d / w)
    with pytest.raises(ValueError, match="no weights for intervention") as e:
        pv.IntervenableModel.load(str(d), gpt2)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(TypeError, match="load_directory must be a path"):
        pv.IntervenableModel.load(3, gpt2)
    _same(before, _state(gpt2))
    _check_good_after(im, pv_gpt2, pyvene, ids)


@pytest.mark.parametrize(
    "bad_type",
    [
        "<class 'os.system'>",
        "builtins.eval",
        "<class 'torch.nn.Linear'>",
        "pyvene.models.interventions.NoSuchIntervention",
    ],
)
def test_load_refuses_types_outside_the_allow_list(gpt2, pv_gpt2, pyvene, ids, tmp_path, bad_type):
    im, d = _saved(tmp_path, gpt2, "VanillaIntervention")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intervention_types"] = [bad_type]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported intervention type string") as e:
        pv.IntervenableModel.load(str(d), gpt2)
    assert bad_type in str(e.value)
    _check_good_after(im, pv_gpt2, pyvene, ids)


def test_weights_with_the_wrong_shape(gpt2, pv_gpt2, pyvene, ids, tmp_path):
    from safetensors.torch import load_file, save_file

    from fxvene.api.serialization import intervention_state_dict

    im, d = _saved(tmp_path, gpt2)
    w = d / next(p for p in os.listdir(d) if p.startswith("intkey_"))
    sd = load_file(str(w))
    sd["rotate_layer.weight"] = torch.eye(12)
    save_file(sd, str(w))
    with pytest.raises(ValueError, match=r"rotate_layer.weight.*\(12, 12\).*\(24, 24\)"):
        pv.IntervenableModel.load(str(d), gpt2)
    # in place: a file that does not fit changes no intervention (the first one loads, the second fails)
    torch.manual_seed(1)
    two = _im(gpt2, _rep(pv, "RotatedSpaceIntervention", layer=0), _rep(pv, "RotatedSpaceIntervention", layer=2))
    d2 = tmp_path / "two"
    two.save_intervention(str(d2), include_model=False)
    k2 = two.sorted_keys[1]
    sd = load_file(str(d2 / f"intkey_{k2}.safetensors"))
    sd["rotate_layer.weight"] = torch.eye(6)
    save_file(sd, str(d2 / f"intkey_{k2}.safetensors"))
    k1 = two.sorted_keys[0]
    save_file(
        {k: v.contiguous() for k, v in intervention_state_dict(im.interventions[im.sorted_keys[0]]).items()},
        str(d2 / f"intkey_{k1}.safetensors"),
    )
    before = _state(gpt2, two)
    with pytest.raises(ValueError, match=r"rotate_layer.weight"):
        two.load_intervention(str(d2), include_model=False)
    _same(before, _state(gpt2, two))
    _check_good_after(two, pv_gpt2, pyvene, ids)


# ------------------------------------------------------------------------------------ other call arguments


def test_source_representations_labels_and_kwargs(gpt2, pv_gpt2, pyvene, ids, monkeypatch):
    base, src = ids
    im = _im(gpt2, _rep(pv, "AdditionIntervention"))
    key = im.sorted_keys[0]
    _rejects(
        im,
        gpt2,
        monkeypatch,
        ValueError,
        [f"source_representations for {key}", "(10,)", "width 24"],
        lambda: im(base, source_representations=torch.ones(10), unit_locations={"base": 3}),
    )
    _rejects(
        im,
        gpt2,
        monkeypatch,
        TypeError,
        [f"source_representations for {key}", "list"],
        lambda: im(base, source_representations={key: [1.0] * 24}, unit_locations={"base": 3}),
    )
    _rejects(
        im,
        gpt2,
        monkeypatch,
        ValueError,
        ["labels", "(2, 5)", "(2, 8)"],
        lambda: im(
            base, source_representations=torch.ones(24), unit_locations={"base": 3}, labels=base["input_ids"][:, :5]
        ),
    )
    _rejects(
        im,
        gpt2,
        monkeypatch,
        TypeError,
        ["labels", "integer"],
        lambda: im(
            base, source_representations=torch.ones(24), unit_locations={"base": 3}, labels=base["input_ids"].float()
        ),
    )
    _rejects(
        im,
        gpt2,
        monkeypatch,
        TypeError,
        ["intervention_additional_kwargs", "list"],
        lambda: im(
            base, source_representations=torch.ones(24), unit_locations={"base": 3}, intervention_additional_kwargs=[1]
        ),
    )
    vec = torch.linspace(-1, 1, 24)
    _, out = im(base, source_representations=vec, unit_locations={"base": 3}, labels=base["input_ids"])
    _, ref = _twin(pyvene, pv_gpt2, im)(
        base, source_representations=vec, unit_locations={"base": 3}, labels=base["input_ids"]
    )
    _close(out.logits, ref.logits)
    _close(out.loss, ref.loss)


def test_distributed_on_the_whole_activation(gpt2, ids, monkeypatch):
    base, src = ids
    im = _im(gpt2, _rep(pv, "RotatedSpaceIntervention", max_number_of_units=2))
    _rejects(
        im,
        gpt2,
        monkeypatch,
        ValueError,
        ["max_number_of_units=2", "unit_locations=None gives it the whole activation", "width 24"],
        lambda: im(base, [src]),
    )


FIELD_CASES = [
    (
        "AutoencoderIntervention",
        {},
        ValueError,
        ["representations[0].latent_dim", "required", "AutoencoderIntervention"],
    ),
    ("JumpReLUAutoencoderIntervention", {}, ValueError, ["representations[0].low_rank_dimension", "required"]),
    (
        "LowRankRotatedSpaceIntervention",
        dict(low_rank_dimension=0),
        ValueError,
        ["representations[0].low_rank_dimension=0", "positive int"],
    ),
    (
        "PCARotatedSpaceIntervention",
        {},
        ValueError,
        [
            "representations[0].intervention_type=PCARotatedSpaceIntervention",
            "intervention=PCARotatedSpaceIntervention(",
        ],
    ),
    (
        "VanillaIntervention",
        dict(subspace_partition=5),
        TypeError,
        ["representations[0].subspace_partition=5", "pairs"],
    ),
    (
        "VanillaIntervention",
        dict(subspace_partition=[[0, 12], [12, 30]]),
        ValueError,
        ["representations[0].subspace_partition", "column 24", "24 dimensions"],
    ),
    (
        "LowRankRotatedSpaceIntervention",
        dict(low_rank_dimension=4, subspace_partition=[[0, 2], [2, 6]]),
        ValueError,
        ["representations[0].subspace_partition", "column 4", "4 low_rank_dimension"],
    ),
]


@pytest.mark.parametrize(
    "t,kw,exc,names",
    FIELD_CASES,
    ids=["ae-latent", "jumprelu-width", "rank-0", "pca", "partition-type", "partition-range", "partition-low-rank"],
)
def test_bad_representation_fields(pv_gpt2, pyvene, ids, t, kw, exc, names):
    model = make_gpt2()
    before = _state(model)
    with pytest.raises(exc) as e:
        _im(model, _rep(pv, t, **kw))
    assert all(s in str(e.value) for s in names), str(e.value)
    _same(before, _state(model))
    base, src = ids
    im = _im(model, _rep(pv, subspace_partition=[[0, 12], [12, 24]]))
    ul, subs = {"sources->base": 5}, [[[1]] * 2]
    _, out = im(base, [src], unit_locations=ul, subspaces=subs)
    _, ref = _twin(pyvene, pv_gpt2, im)(base, [src], unit_locations=ul, subspaces=subs)
    _close(out.logits, ref.logits)
