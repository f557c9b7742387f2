"""Cases a property-based differential search against pyvene 0.1.8 found (issue 28): fxvene and pyvene
on the same config, model and call give the same numbers.
"""

import pytest
import torch
from conftest import make_gpt2, make_llama

import fxvene as fv

pv = pytest.importorskip("pyvene")

GPT2 = make_gpt2()
LLAMA = make_llama()


def _ids(seed, b=2, n=6):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 50, (b, n), generator=g)}


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _kv(past):
    """past_key_values as a flat list of tensors (a tuple of pairs, or a Cache)."""
    if hasattr(past, "layers"):
        return [t for layer in past.layers for t in (layer.keys, layer.values)]
    if hasattr(past, "key_cache"):
        return [t for pair in zip(past.key_cache, past.value_cache) for t in pair]
    return [t for pair in past for t in pair]


def test_serial_later_group_reads_upstream_of_an_earlier_write():
    # item 1: group 0 writes at block 1, group 1 reads block 0 (upstream of the write) of source 1
    base, s0, s1 = _ids(1, b=1), _ids(2, b=1), _ids(3, b=1)
    res = []
    for lib in (pv, fv):
        cfg = lib.IntervenableConfig(
            representations=[
                lib.RepresentationConfig(
                    layer=1, component="block_output", intervention_type=lib.VanillaIntervention, group_key=0
                ),
                lib.RepresentationConfig(
                    layer=0, component="block_output", intervention_type=lib.VanillaIntervention, group_key=1
                ),
            ],
            mode="serial",
        )
        im = lib.IntervenableModel(cfg, GPT2)
        ul = {"source_0->source_1": 1, "source_1->base": 4}
        res.append(im(base=base, sources=[s0, s1], unit_locations=ul)[1].logits)
    _close(res[1], res[0])
    assert not torch.allclose(res[1], GPT2(**base).logits)


@pytest.mark.parametrize("with_setter", [True, False])
def test_collect_with_use_cache(with_setter):
    # item 2: a Collect in the config and use_cache=True
    base, src = _ids(4), _ids(5)
    res = []
    for lib in (pv, fv):
        reps = [lib.RepresentationConfig(layer=0, component="mlp_output", intervention_type=lib.CollectIntervention)]
        if with_setter:
            reps.insert(
                0,
                lib.RepresentationConfig(layer=1, component="block_output", intervention_type=lib.VanillaIntervention),
            )
        im = lib.IntervenableModel(lib.IntervenableConfig(representations=reps), GPT2)
        if with_setter:
            ul = {"sources->base": ([[[1]] * 2, None], [[[3]] * 2, [[2]] * 2])}
            out = im(base=base, sources=[src, None], unit_locations=ul, use_cache=True, return_dict=True)
        else:
            out = im(base=base, unit_locations={"base": 2}, use_cache=True, return_dict=True)
        res.append(out)
    p, f = res
    _close(f.intervened_outputs.logits, p.intervened_outputs.logits)
    assert len(f.collected_activations) == len(p.collected_activations) == 1
    _close(f.collected_activations[0], p.collected_activations[0])
    pkv, fkv = _kv(p.intervened_outputs.past_key_values), _kv(f.intervened_outputs.past_key_values)
    assert type(f.intervened_outputs.past_key_values) is type(p.intervened_outputs.past_key_values)
    assert len(fkv) == len(pkv) == 2 * GPT2.config.n_layer
    for a, b in zip(fkv, pkv):
        _close(a, b)


def _recording(seen, name):
    def f(b, s):
        seen.setdefault(name, []).append(None if s is None else tuple(s.shape))
        return b + s * 2.0

    return f


def test_function_intervention_receives_its_source():
    # item 3 (forward): pyvene calls f(base, source) with the source run's units
    base, src = _ids(6), _ids(7)
    seen, res = {}, []
    for lib in (pv, fv):
        rep = lib.RepresentationConfig(layer=1, component="mlp_output", intervention=_recording(seen, lib.__name__))
        im = lib.IntervenableModel(lib.IntervenableConfig(representations=[rep]), GPT2)
        ul = {"sources->base": ([[[1, 2]] * 2], [[[3, 4]] * 2])}
        res.append(im(base=base, sources=[src], unit_locations=ul)[1].logits)
    assert seen["fxvene"] == seen["pyvene"] == [(2, 2, 24)]
    _close(res[1], res[0])


def test_function_intervention_receives_its_source_in_generate():
    # item 3 (generate): the source's units at every decoding step
    base, src = _ids(8), _ids(9)
    kw = dict(max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
    seen, res = {}, []
    for lib in (pv, fv):
        rep = lib.RepresentationConfig(layer=1, component="mlp_output", intervention=_recording(seen, lib.__name__))
        im = lib.IntervenableModel(lib.IntervenableConfig(representations=[rep]), GPT2)
        res.append(im.generate(base, [src], unit_locations={"sources->base": (2, 0)}, **kw)[1])
    assert seen["fxvene"] == seen["pyvene"] == [(2, 1, 24)] * 3
    assert torch.equal(res[1], res[0])


@pytest.mark.parametrize("ul", [[None, [[1]]], [[[1]], None], [None, [[1, 3]]]], ids=["none-first", "none-last", "two"])
def test_per_intervention_locations_with_a_none_entry(ul):
    # item 4: the nesting depth of unit_locations is judged over every entry, not the first
    base = _ids(10, b=1)
    res = []
    for lib in (pv, fv):
        cfg = lib.IntervenableConfig(
            representations=[
                lib.RepresentationConfig(layer=0, component="mlp_output", intervention_type=lib.ZeroIntervention),
                lib.RepresentationConfig(layer=1, component="block_output", intervention_type=lib.ZeroIntervention),
            ]
        )
        res.append(lib.IntervenableModel(cfg, GPT2)(base=base, unit_locations={"base": ul})[1].logits)
    _close(res[1], res[0])


@pytest.mark.parametrize("kind", ["Vanilla", "Zero", "Collect"])
def test_llama_block_input_layer0_with_inputs_embeds(kind):
    # item 7: the site is the model input itself (a placeholder of the graph)
    g = torch.Generator().manual_seed(11)
    base = {"inputs_embeds": torch.randn(2, 5, 32, generator=g)}
    src = {"inputs_embeds": torch.randn(2, 5, 32, generator=g)}
    res = []
    for lib in (pv, fv):
        rep = lib.RepresentationConfig(
            layer=0, component="block_input", intervention_type=getattr(lib, kind + "Intervention")
        )
        im = lib.IntervenableModel(lib.IntervenableConfig(representations=[rep]), LLAMA)
        b = {"inputs_embeds": base["inputs_embeds"].clone()}  # pyvene writes into the caller's inputs_embeds
        if kind == "Vanilla":
            out = im(base=b, sources=[src], unit_locations={"sources->base": (1, 3)})
        else:
            out = im(base=b, unit_locations={"base": 3})
        res.append(out[0][1][0] if kind == "Collect" else out[1].logits)
    _close(res[1], res[0])
    if kind != "Collect":
        assert not torch.allclose(res[1], LLAMA(**base).logits)
