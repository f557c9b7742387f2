"""pyvene 0.1.8 compatibility gaps (issue 13, item 4), each checked against pyvene itself: serial
mode's subspaces and keyword arguments, the "clean run" without sources, direct calls on 3-D
tensors with per-position subspaces, past_key_values in intervened outputs, the global random
state after building, as_adaptor / intervention_additional_kwargs, and the parameter names HF
Trainer groups weight decay by."""

import random

import numpy as np
import pytest
import torch

import fxvene as fv
from tests.conftest import make_gpt2, make_llama

pv = pytest.importorskip("pyvene")
TF5 = int(__import__("transformers").__version__.split(".")[0]) >= 5


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.fixture
def pair(gpt2, pv_gpt2):
    """The session's tiny GPT-2 twice (traced once per session): for fxvene, and for pyvene (which
    removes a model's hooks)."""
    return gpt2, pv_gpt2


def _ids(seed, b=2, n=6):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 50, (b, n), generator=g)}


def _build(lib, model, reps, **kw):
    return lib.IntervenableModel(
        lib.IntervenableConfig(representations=reps, mode=kw.pop("mode", "parallel")), model, **kw
    )


def _scaler(lib):
    """A source-less intervention that reads intervention_additional_kwargs (and, as an adaptor,
    the module's input ``args``) the way pyvene passes them."""

    class Scale(lib.SourcelessIntervention, lib.LocalistRepresentationIntervention):
        def forward(self, base, source=None, subspaces=None, **kwargs):
            out = base * kwargs.get("scale", 1.0)
            if "args" in kwargs:
                out = out + 0.5 * kwargs["args"]
            return out

    return Scale


# ----------------------------------------------------------------------------------- serial mode


def test_serial_mode_keeps_subspaces_and_kwargs_on_source_runs(pair):
    fm, pm = pair
    s0, s1, base = _ids(1), _ids(2), _ids(3)
    locs = {"source_0->source_1": ([[[1]] * 2], [[[2]] * 2]), "source_1->base": ([[[3]] * 2], [[[4]] * 2])}
    outs = []
    for lib, m in ((pv, pm), (fv, fm)):
        reps = [
            lib.RepresentationConfig(layer=0, component="block_output", intervention_type=lib.VanillaIntervention),
            lib.RepresentationConfig(layer=1, component="block_output", intervention_type=lib.VanillaIntervention),
        ]
        im = _build(lib, m, reps, mode="serial")
        # the subspace of the first setter acts on the second source run: pyvene swaps only columns 0..3
        _, out = im(base, [s0, s1], unit_locations=locs, subspaces=[[[0, 1, 2, 3]] * 2, [[4, 5, 6]] * 2])
        outs.append(out.logits)
        # a source-constant setter on a source run gets the call's keyword arguments
        reps = [
            lib.RepresentationConfig(layer=0, component="block_output", intervention=_scaler(lib)(embed_dim=24)),
            lib.RepresentationConfig(layer=1, component="block_output", intervention_type=lib.VanillaIntervention),
        ]
        im = _build(lib, m, reps, mode="serial")
        _, out = im(base, [s0, s1], unit_locations=locs, intervention_additional_kwargs={"scale": 3.0})
        outs.append(out.logits)
    _close(outs[2], outs[0])
    _close(outs[3], outs[1])
    # the subspace matters here (the whole-vector swap gives another number)
    im = _build(
        fv,
        fm,
        [
            fv.RepresentationConfig(layer=0, component="block_output", intervention_type=fv.VanillaIntervention),
            fv.RepresentationConfig(layer=1, component="block_output", intervention_type=fv.VanillaIntervention),
        ],
        mode="serial",
    )
    _, whole = im(base, [s0, s1], unit_locations=locs, subspaces=[None, [[4, 5, 6]] * 2])
    assert not torch.allclose(whole.logits, outs[2])


# ----------------------------------------------------------------------------------- clean run


def test_clean_run_without_sources_is_pyvenes(pair):
    fm, pm = pair
    base = _ids(4)
    res = []
    for lib, m in ((pv, pm), (fv, fm)):
        im = _build(
            lib,
            m,
            [lib.RepresentationConfig(layer=1, component="block_output", intervention_type=lib.VanillaIntervention)],
        )
        orig, out = im(base, output_original_output=True)
        res.append((orig.logits, out.logits))
    _close(res[1][0], res[0][0])
    _close(res[1][1], res[0][1])
    _close(res[1][1], fm(**base).logits)
    # generate keeps its error: steering with nothing to steer with is a mistake there
    im = _build(
        fv, fm, [fv.RepresentationConfig(layer=1, component="block_output", intervention_type=fv.AdditionIntervention)]
    )
    with pytest.raises(ValueError, match="needs a source"):
        im.generate({"input_ids": base["input_ids"][:1]}, max_new_tokens=2)


# ----------------------------------------------------------------------------------- direct calls


@pytest.mark.parametrize(
    "name", ["VanillaIntervention", "AdditionIntervention", "SubtractionIntervention", "CollectIntervention"]
)
def test_direct_call_on_3d_with_per_position_subspaces(name):
    g = torch.Generator().manual_seed(5)
    base, src = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    per_row = [[0, 1], [2, 3], [6, 7]]  # one entry per row of dimension -2 (3), not per example (2)
    got = []
    for lib in (pv, fv):
        iv = getattr(lib, name)(embed_dim=8)
        s = None if name == "CollectIntervention" else src.clone()
        got.append(iv(base.clone(), s, per_row))
    _close(got[1], got[0])
    # one entry per example keeps fxvene's per-example meaning (pyvene crashes on this shape)
    iv = getattr(fv, name)(embed_dim=8)
    per_ex = [[0, 1], [5, 6]]
    s = None if name == "CollectIntervention" else src.clone()
    out = iv(base.clone(), s, per_ex)
    for b, cols in enumerate(per_ex):
        if name == "CollectIntervention":
            _close(out[b], base[b][:, cols])
            continue
        want = base[b].clone()
        sign = {"VanillaIntervention": None, "AdditionIntervention": 1, "SubtractionIntervention": -1}[name]
        want[:, cols] = src[b][:, cols] if sign is None else base[b][:, cols] + sign * src[b][:, cols]
        _close(out[b], want)
    with pytest.raises(ValueError, match=r"subspaces has 4 entries.*one entry per example \(2\).*dimension -2 \(3\)"):
        getattr(fv, name)(embed_dim=8)(base.clone(), s, [[0], [1], [2], [3]])


# ----------------------------------------------------------------------------------- past_key_values


def _flat(pkv):
    from fxvene.graph.step_graphs import flat_cache

    return flat_cache(pkv)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_intervened_outputs_carry_past_key_values(family, request):
    # the session models: their KV-cache step graph is the one generation's tests export
    fm = request.getfixturevalue(family)
    pm = (make_gpt2 if family == "gpt2" else make_llama)()
    base, src = _ids(6), _ids(7)
    res = []
    for lib, m in ((pv, pm), (fv, fm)):
        im = _build(
            lib,
            m,
            [lib.RepresentationConfig(layer=0, component="block_output", intervention_type=lib.VanillaIntervention)],
        )
        _, out = im(
            base, [src], unit_locations={"sources->base": ([[[1, 2], [0, 3]]], [[[4, 5], [2, 1]]])}, use_cache=True
        )
        res.append(out)
    assert type(res[1].past_key_values) is type(res[0].past_key_values)
    ref, got = _flat(res[0].past_key_values), _flat(res[1].past_key_values)
    assert len(got) == len(ref) == 2 * fm.config.num_hidden_layers
    for a, b in zip(got, ref):
        _close(a, b)
    _close(res[1].logits, res[0].logits)
    # layer 1's keys differ from the plain run's: they come from the intervened run
    plain = _flat(fm(**base, use_cache=True).past_key_values)
    assert not torch.allclose(got[2], plain[2])


# ----------------------------------------------------------------------------------- random state


def test_building_leaves_the_global_random_state_alone():
    model = make_gpt2(n_layer=2, seed=3)  # a model no test has traced yet
    twin = make_gpt2(n_layer=2, seed=3)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    _build(
        fv,
        model,
        [fv.RepresentationConfig(layer=1, component="block_output", intervention_type=fv.VanillaIntervention)],
    )
    after = (random.randint(0, 10**9), float(np.random.rand()), float(torch.rand(1)))
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    _build(
        pv, twin, [pv.RepresentationConfig(layer=1, component="block_output", intervention_type=pv.VanillaIntervention)]
    )
    assert after == (random.randint(0, 10**9), float(np.random.rand()), float(torch.rand(1)))


# ----------------------------------------------------------------------------------- as_adaptor, kwargs


@pytest.mark.parametrize("adaptor", [False, True])
def test_as_adaptor_and_additional_kwargs(pair, adaptor):
    fm, pm = pair
    base = _ids(8)
    outs = []
    for lib, m in ((pv, pm), (fv, fm)):
        reps = [
            lib.RepresentationConfig(layer=1, component="mlp_output", intervention=_scaler(lib)(embed_dim=24)),
            # reads a source run: pyvene passes it no keyword arguments (its forward takes none)
            lib.RepresentationConfig(layer=0, component="block_output", intervention=_plain_swap(lib)(embed_dim=24)),
        ]
        im = _build(lib, m, reps, as_adaptor=adaptor)
        _, out = im(
            base,
            [_ids(9)],
            unit_locations={"sources->base": ([[[1]] * 2, [[2]] * 2], [[[3]] * 2, [[2]] * 2])},
            intervention_additional_kwargs={"scale": 2.0},
        )
        outs.append(out.logits)
    _close(outs[1], outs[0])


def test_as_adaptor_in_generate(gpt2, pv_gpt2):
    # the session GPT-2 (its KV-cache graph is shared with generation's tests)
    prompt = _ids(10, b=1, n=5)
    seqs = []
    for lib, m in ((pv, pv_gpt2), (fv, gpt2)):
        iv = _scaler(lib)(embed_dim=24)
        im = _build(
            lib, m, [lib.RepresentationConfig(layer=1, component="mlp_output", intervention=iv)], as_adaptor=True
        )
        _, out = im.generate(
            prompt,
            unit_locations={"sources->base": (None, [[[3, 4]]])},
            intervene_on_prompt=True,
            intervention_additional_kwargs={"scale": -4.0},
            max_new_tokens=3,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
        )
        seqs.append(out)
    assert torch.equal(seqs[1].sequences, seqs[0].sequences)
    for a, b in zip(seqs[1].scores, seqs[0].scores):
        _close(a, b)
    plain = gpt2(**prompt).logits[:, -1]
    assert not torch.allclose(seqs[1].scores[0], plain, atol=1e-3)


def _plain_swap(lib):
    class Swap(lib.Intervention, lib.LocalistRepresentationIntervention):
        def forward(self, base, source, subspaces=None):
            return source

    return Swap


# ----------------------------------------------------------------------------------- labels


def test_labels_reach_the_model_of_a_sequence_classifier():
    from tests._tiny import make_tiny

    base = {"input_ids": torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(0))}
    labels = torch.tensor([1, 0])  # class ids: the model's own loss, not a shifted LM loss
    res = []
    for lib in (pv, fv):
        im = _build(
            lib,
            make_tiny("gpt2", head="seq_cls"),
            [lib.RepresentationConfig(layer=0, component="block_output", intervention_type=lib.AdditionIntervention)],
        )
        _, out = im(base, source_representations=torch.full((32,), 0.3), unit_locations={"base": 2}, labels=labels)
        res.append(out)
    _close(res[1].logits, res[0].logits)
    _close(res[1].loss, res[0].loss)
    _close(res[1].loss, torch.nn.functional.cross_entropy(res[1].logits, labels))


# ----------------------------------------------------------------------------------- named_parameters


def test_named_parameters_are_pyvenes(pair):
    fm, pm = pair
    names = []
    for lib, m in ((pv, pm), (fv, fm)):
        reps = [
            lib.RepresentationConfig(
                layer=0,
                component="block_output",
                low_rank_dimension=2,
                intervention_type=lib.LowRankRotatedSpaceIntervention,
            ),
            lib.RepresentationConfig(layer=1, component="block_output", intervention_type=lib.VanillaIntervention),
        ]
        im = _build(lib, m, reps)
        names.append([(n, tuple(p.shape)) for n, p in im.named_parameters()])
    assert names[1] == names[0]
    assert names[1][0][0].startswith("layer_0_comp_block_output_unit_pos_nunit_1#0.rotate_layer.")
