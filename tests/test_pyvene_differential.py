"""Differential tests: fxvene and pyvene 0.1.8 on the same config, model and call give the same numbers.

Every non-trainable intervention type x every component x units pos / h / h.pos, on tiny random
GPT-2 and Llama (GQA) models, batch 2 with different positions per example, on every frontend
this transformers line has.
"""

import pytest
import torch
import transformers
from _matrix import cell
from conftest import frontends, make_gpt2, make_llama

import fxvene as fv

pv = pytest.importorskip("pyvene")

MODELS = {"gpt2": make_gpt2(), "llama": make_llama()}

PLAIN = [
    "block_input",
    "block_output",
    "mlp_input",
    "mlp_output",
    "mlp_activation",
    "attention_input",
    "attention_output",
    "attention_value_output",
    "query_output",
    "key_output",
    "value_output",
]
HEADS = ["head_attention_value_output", "head_query_output", "head_key_output", "head_value_output"]

LOCS = {
    "pos": ([[[0, 2], [1, 3]]], [[[0, 2], [4, 5]]]),
    "h": ([[[0], [1]]], [[[1], [0]]]),
    "h.pos": ([[[[0, 1], [1, 0]], [[2, 3], [4, 1]]]], [[[[1, 0], [0, 1]], [[2, 5], [3, 1]]]]),
}
NOISE_LOCS = ([[[0, 1, 2, 3], [1, 2, 3, 4]]], [[[0, 1, 2, 3], [4, 5, 6, 7]]])


def cases():
    out = []
    for model in MODELS:
        comps = [(c, "pos") for c in PLAIN] + [(c, u) for c in HEADS for u in ("h", "h.pos")]
        if model == "gpt2" and transformers.__version__.startswith("4."):
            # on transformers 5 GPT-2 calls attn_dropout functionally: pyvene's hook never fires and its
            # interventions there are silent no-ops (reference §10.7); test_api checks fxvene by hand
            comps.append(("attention_weight", "pos"))
        for comp, unit in comps:
            types = ["Vanilla", "Addition", "Subtraction", "Zero", "Collect"]
            # pyvene crashes on these (its GQA k/v dims are hidden_size; Llama's self_attn gets hidden_states
            # as a kwarg, which pyvene's Skip getter reads as args[0]); fxvene's behaviour there is tested by hand
            if (
                unit == "pos"
                and comp != "attention_weight"
                and not (model == "llama" and comp in ("key_output", "value_output"))
            ):
                types.append("Noise")
            if comp in ("block_output", "mlp_output", "mlp_activation") or (
                comp == "attention_output" and model == "gpt2"
            ):
                types.append("Skip")
            for t in types:
                # GPT-2's row of the support matrix (Llama's comes from test_families_llama_like.py)
                marks = [cell("gpt2", "components"), cell("gpt2", "pyvene_diff")] if model == "gpt2" else []
                if model == "gpt2" and t == "Vanilla":
                    marks.append(cell("gpt2", "intervene"))
                out.append(pytest.param(model, comp, unit, t, marks=marks, id=f"{model}-{comp}-{unit}-{t}"))
    return out


_PV_CACHE = {}


def _run(lib, model, comp, unit, t, **kw):
    name = t + "Intervention"
    # pyvene flattens Collect like a distributed intervention: it is right only with max_number_of_units = n
    nunits = 2 if (t == "Collect" and unit in ("pos", "h.pos")) else 1
    if t == "Noise":
        nunits = 1
    cfg = lib.IntervenableConfig(
        representations=[
            lib.RepresentationConfig(
                layer=1, component=comp, unit=unit, max_number_of_units=nunits, intervention_type=getattr(lib, name)
            )
        ]
    )
    im = lib.IntervenableModel(cfg, model, **kw)
    g = torch.Generator().manual_seed(1)
    base = {"input_ids": torch.randint(0, 50, (2, 8), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (2, 8), generator=g)}
    if t == "Skip":
        src = base
    locs = NOISE_LOCS if t == "Noise" else LOCS[unit]
    if comp == "attention_weight":  # 'pos' indexes dim 1 of (b, heads, s, s): the heads
        locs = ([[[0, 2], [1, 3]]], [[[0, 2], [3, 1]]])
    if t in ("Zero", "Collect", "Noise"):
        res = im(base=base, unit_locations={"base": locs[1]})
    else:
        res = im(base=base, sources=[src], unit_locations={"sources->base": locs})
    if t == "Collect":
        (orig, collected), out = res
        return collected[0]
    return res[1].logits


@pytest.mark.parametrize("frontend", frontends())
@pytest.mark.parametrize("model,comp,unit,t", cases())
def test_matches_pyvene(model, comp, unit, t, frontend):
    m = MODELS[model]
    key = (model, comp, unit, t)
    if key not in _PV_CACHE:
        _PV_CACHE[key] = _run(pv, m, comp, unit, t)
    ref = _PV_CACHE[key]
    got = _run(fv, m, comp, unit, t, tracer=frontend)
    if isinstance(got, list):
        got = got[0]
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    if t in ("Vanilla", "Addition", "Zero") and comp != "attention_weight":
        clean = m(input_ids=torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))).logits
        assert not torch.allclose(got, clean), "the intervention changed nothing"


@pytest.mark.parametrize("frontend", frontends())
def test_multi_site_groups_and_source_representations(pv_gpt2, frontend):
    gpt2 = pv_gpt2  # pyvene wraps this one (see conftest)
    g = torch.Generator().manual_seed(3)
    base = {"input_ids": torch.randint(0, 50, (3, 7), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (3, 7), generator=g)}
    reps = lambda lib, **kw: [  # noqa: E731
        lib.RepresentationConfig(layer=0, component="block_output", intervention_type=lib.VanillaIntervention, **kw),
        lib.RepresentationConfig(layer=2, component="mlp_output", intervention_type=lib.VanillaIntervention, **kw),
        lib.RepresentationConfig(
            layer=3, component="attention_output", intervention_type=lib.AdditionIntervention, **kw
        ),
    ]
    locs = {"sources->base": ([[[1], [2], [3]]] * 3, [[[4], [5], [6]]] * 3)}
    outs = []
    for lib, kw in ((pv, {}), (fv, {"tracer": frontend})):
        for grouped in (False, True):
            r = reps(lib, group_key=0) if grouped else reps(lib)
            im = lib.IntervenableModel(lib.IntervenableConfig(representations=r), gpt2, **kw)
            outs.append(im(base=base, sources=[src], unit_locations=locs)[1].logits)
        vec = torch.randn(24, generator=torch.Generator().manual_seed(5))
        im = lib.IntervenableModel(lib.IntervenableConfig(representations=reps(lib)), gpt2, **kw)
        outs.append(im(base=base, source_representations=vec, unit_locations={"base": 2})[1].logits)
    for a, b in zip(outs[:3], outs[3:]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", frontends())
def test_shorthand_locations_and_subspaces(pv_gpt2, frontend):
    gpt2 = pv_gpt2  # pyvene wraps this one (see conftest)
    g = torch.Generator().manual_seed(4)
    base = {"input_ids": torch.randint(0, 50, (2, 6), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (2, 6), generator=g)}
    for ul, sub in [
        ({"sources->base": 3}, None),
        ({"sources->base": (1, 4)}, None),
        ({"sources->base": [1, 4]}, None),
        ({"sources->base": [0, 1, 5]}, None),
        ({"sources->base": 2}, [0, 1, 2, 3, 4, 5]),
        ({"sources->base": 2}, 7),
        (None, None),
    ]:
        res = []
        for lib, kw in ((pv, {}), (fv, {"tracer": frontend})):
            cfg = lib.IntervenableConfig(
                representations=[
                    lib.RepresentationConfig(
                        layer=2, component="block_output", intervention_type=lib.VanillaIntervention
                    )
                ]
            )
            im = lib.IntervenableModel(cfg, gpt2, **kw)
            res.append(im(base=base, sources=[src], unit_locations=ul, subspaces=sub)[1].logits)
        torch.testing.assert_close(res[1], res[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", frontends())
def test_serial_mode(pv_gpt2, frontend):
    gpt2 = pv_gpt2  # pyvene wraps this one (see conftest)
    g = torch.Generator().manual_seed(6)
    base = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    s0 = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    s1 = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    res = []
    for lib, kw in ((pv, {}), (fv, {"tracer": frontend})):
        cfg = lib.IntervenableConfig(
            representations=[
                lib.RepresentationConfig(layer=1, component="block_output", intervention_type=lib.VanillaIntervention),
                lib.RepresentationConfig(layer=2, component="block_output", intervention_type=lib.VanillaIntervention),
            ],
            mode="serial",
        )
        im = lib.IntervenableModel(cfg, gpt2, **kw)
        res.append(
            im(base=base, sources=[s0, s1], unit_locations={"source_0->source_1": 1, "source_1->base": 4})[1].logits
        )
    torch.testing.assert_close(res[1], res[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", frontends())
def test_string_component_and_lambda(pv_gpt2, frontend):
    gpt2 = pv_gpt2  # pyvene wraps this one (see conftest)
    g = torch.Generator().manual_seed(7)
    base = {"input_ids": torch.randint(0, 50, (2, 6), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (2, 6), generator=g)}
    res = []
    for lib, kw in ((pv, {}), (fv, {"tracer": frontend})):
        cfg = lib.IntervenableConfig(
            representations=[
                lib.RepresentationConfig(
                    component="transformer.h[1].mlp.output", intervention_type=lib.VanillaIntervention
                )
            ]
        )
        im = lib.IntervenableModel(cfg, gpt2, **kw)
        res.append(im(base=base, sources=[src], unit_locations={"sources->base": 3})[1].logits)
        cfg = lib.IntervenableConfig(
            representations=[
                lib.RepresentationConfig(component="transformer.h[0].mlp.output", intervention=lambda b, s: b * 0.5)
            ]
        )
        im = lib.IntervenableModel(cfg, gpt2, **kw)
        res.append(im(base=base, unit_locations={"base": 2})[1].logits)
    torch.testing.assert_close(res[2], res[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res[3], res[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", frontends())
def test_constant_source_labels_and_max_units(pv_gpt2, frontend):
    gpt2 = pv_gpt2  # pyvene wraps this one (see conftest)
    g = torch.Generator().manual_seed(9)
    base = {"input_ids": torch.randint(0, 50, (2, 7), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (2, 7), generator=g)}
    const = torch.randn(24, generator=g)
    res = []
    for lib, kw in ((pv, {}), (fv, {"tracer": frontend})):
        cfg = lib.IntervenableConfig(
            representations=[
                lib.RepresentationConfig(
                    layer=1,
                    component="mlp_output",
                    intervention_type=lib.AdditionIntervention,
                    source_representation=const,
                )
            ]
        )
        im = lib.IntervenableModel(cfg, gpt2, **kw)
        res.append(im(base=base, unit_locations={"base": [1, 3]})[1].logits)
        cfg = lib.IntervenableConfig(
            representations=[
                lib.RepresentationConfig(
                    layer=2, component="block_output", max_number_of_units=3, intervention_type=lib.VanillaIntervention
                )
            ]
        )
        im = lib.IntervenableModel(cfg, gpt2, **kw)
        out = im(
            base=base,
            sources=[src],
            labels=base["input_ids"],
            unit_locations={"sources->base": ([[[0, 1, 2], [3, 4, 5]]], [[[4, 5, 6], [0, 1, 2]]])},
        )[1]
        res += [out.logits, out.loss]
    for a, b in zip(res[:3], res[3:]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
