"""pyvene 0.1.8's API surface and return values, and the pyvene bugs fxvene does not copy (reference §10)."""

import pytest
import torch
from conftest import frontends

import fxvene as pv


def _first(o):
    """A block's output: a tuple in transformers 4.x, a tensor in 5.x."""
    return o[0] if isinstance(o, tuple) else o


def _rewrap(o, h):
    return (h,) + tuple(o[1:]) if isinstance(o, tuple) else h


def _vanilla(layer=2, comp="block_output", **kw):
    return pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=layer, component=comp, intervention_type=pv.VanillaIntervention, **kw)
        ]
    )


def _manual_patch(model, base, src, layer, src_pos, base_pos):
    """Hook-free reference: hidden states of the source at ``layer`` written into the base's run."""
    hs = model(**src, output_hidden_states=True).hidden_states[layer + 1]
    store = {}

    def hook(mod, args, out):
        h = _first(out).clone()
        for b in range(h.shape[0]):
            h[b, base_pos[b]] = hs[b, src_pos[b]]
        return _rewrap(out, h)

    handle = model.transformer.h[layer].register_forward_hook(hook)
    try:
        store["logits"] = model(**base).logits
    finally:
        handle.remove()
    return store["logits"]


def test_keys_moduledict_and_legacy_dotted_key(gpt2):
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=6 % 4, component="block_output", intervention_type=pv.VanillaIntervention),
            pv.RepresentationConfig(layer=6 % 4, component="block_output", intervention_type=pv.VanillaIntervention),
            pv.RepresentationConfig(component="transformer.h[0].mlp.output", intervention_type=pv.ZeroIntervention),
        ]
    )
    im = pv.IntervenableModel(cfg, gpt2)
    assert isinstance(im.interventions, torch.nn.ModuleDict)
    assert list(im.interventions.keys()) == [
        "layer_2_comp_block_output_unit_pos_nunit_1#0",
        "layer_2_comp_block_output_unit_pos_nunit_1#1",
        "comp_transformer_h[0]_mlp_output_unit_pos_nunit_1#0",
    ]
    iv, handle = im.interventions["layer.2.comp.block_output.unit.pos.nunit.1#1"]
    assert iv is im.interventions["layer_2_comp_block_output_unit_pos_nunit_1#1"]
    assert hasattr(handle, "remove")
    assert im.sorted_keys == list(im.interventions.keys())


def test_wrapping_freezes_model(gpt2):
    gpt2.train()
    pv.IntervenableModel(_vanilla(), gpt2)
    assert not gpt2.training
    assert all(not p.requires_grad for p in gpt2.parameters())


@pytest.mark.parametrize("frontend", frontends())
def test_return_values(gpt2, batch, frontend):
    base, src = batch
    im = pv.IntervenableModel(_vanilla(), gpt2, tracer=frontend)
    orig, out = im(base=base, sources=[src], unit_locations={"sources->base": 3})
    assert orig is None
    assert type(out).__name__ == type(gpt2(**base)).__name__
    orig, out2 = im(base=base, sources=[src], unit_locations={"sources->base": 3}, output_original_output=True)
    torch.testing.assert_close(orig.logits, gpt2(**base).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out2.logits, out.logits)
    rd = im(base=base, sources=[src], unit_locations={"sources->base": 3}, return_dict=True)
    assert isinstance(rd, pv.IntervenableModelOutput)
    torch.testing.assert_close(rd.intervened_outputs.logits, out.logits)
    assert rd.original_outputs is None and rd.collected_activations is None


@pytest.mark.parametrize("frontend", frontends())
def test_collect_returns(gpt2, batch, frontend):
    base, src = batch
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=1, component="block_output", intervention_type=pv.CollectIntervention),
            pv.RepresentationConfig(layer=3, component="attention_output", intervention_type=pv.CollectIntervention),
        ]
    )
    im = pv.IntervenableModel(cfg, gpt2, tracer=frontend)
    hs = gpt2(**base, output_hidden_states=True).hidden_states
    # the tutorials' unpacking: _, collected = intervenable(base=inputs)
    _, collected = im(base=base)
    assert isinstance(collected, list) and len(collected) == 2
    torch.testing.assert_close(collected[0], hs[2], atol=1e-5, rtol=1e-5)
    assert collected[1].shape == (2, 8, 24)
    # pyvene's idiom: result[0][-1]
    res = im(base=base, unit_locations={"base": 3})
    assert res[0][0] is None
    torch.testing.assert_close(res[0][-1][0], hs[2][:, [3]], atol=1e-5, rtol=1e-5)
    rd = im(base=base, unit_locations={"base": 3}, return_dict=True)
    torch.testing.assert_close(rd.collected_activations[0], hs[2][:, [3]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rd.intervened_outputs.logits, gpt2(**base).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", frontends())
def test_collect_after_vanilla_sees_the_patch(gpt2, batch, frontend):
    base, src = batch
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=1, component="block_output", intervention_type=pv.VanillaIntervention),
            pv.RepresentationConfig(layer=1, component="block_output", intervention_type=pv.CollectIntervention),
        ]
    )
    im = pv.IntervenableModel(cfg, gpt2, tracer=frontend)
    (_, collected), out = im(base=base, sources=[src, None], unit_locations={"sources->base": 2})
    src_h = gpt2(**src, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(collected[0], src_h[:, [2]], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- pyvene bugs not copied


def test_no_sticky_fast_path(gpt2, batch):
    """pyvene: an int shorthand sets use_fast for good, and a later per-example call patches locs[0] everywhere."""
    base, src = batch
    im = pv.IntervenableModel(_vanilla(), gpt2)
    im(base=base, sources=[src], unit_locations={"sources->base": 3})
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([[[1], [4]]], [[[2], [6]]])})
    expected = _manual_patch(gpt2, base, src, 2, [[1], [4]], [[2], [6]])
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


def test_sources_list_not_mutated(gpt2, batch):
    base, src = batch
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=1, component="block_output", intervention_type=pv.VanillaIntervention),
            pv.RepresentationConfig(layer=2, component="block_output", intervention_type=pv.VanillaIntervention),
        ]
    )
    im = pv.IntervenableModel(cfg, gpt2)
    sources = [src]
    im(base=base, sources=sources, unit_locations={"sources->base": 1})
    assert sources == [src]


def test_user_hooks_survive(gpt2, batch):
    base, src = batch
    calls = []
    h1 = gpt2.transformer.h[0].register_forward_hook(lambda m, a, o: calls.append("fwd"))
    h2 = gpt2.transformer.h[0].register_forward_pre_hook(lambda m, a: calls.append("pre"))
    try:
        im = pv.IntervenableModel(_vanilla(), gpt2)
        im(base=base, sources=[src], unit_locations={"sources->base": 1})
        calls.clear()
        gpt2(**base)
        assert calls == ["pre", "fwd"]
    finally:
        h1.remove()
        h2.remove()


@pytest.mark.parametrize("frontend", frontends())
def test_multi_position_collect_without_max_units(gpt2, batch, frontend):
    base, _ = batch
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=1, component="block_output", intervention_type=pv.CollectIntervention)
        ]
    )
    im = pv.IntervenableModel(cfg, gpt2, tracer=frontend)
    _, collected = im(base=base, unit_locations={"base": [[[0, 3, 5], [1, 2, 7]]]})
    hs = gpt2(**base, output_hidden_states=True).hidden_states[2]
    expected = torch.stack([hs[0, [0, 3, 5]], hs[1, [1, 2, 7]]])
    torch.testing.assert_close(collected[0], expected, atol=1e-5, rtol=1e-5)


def test_per_example_subspaces(gpt2, batch):
    base, src = batch
    im = pv.IntervenableModel(_vanilla(), gpt2)
    subs = [[[0, 1, 2], [10, 11]]]
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": 4}, subspaces=subs)
    hs = gpt2(**src, output_hidden_states=True).hidden_states[3]

    def hook(mod, args, o):
        h = _first(o).clone()
        h[0, 4, [0, 1, 2]] = hs[0, 4, [0, 1, 2]]
        h[1, 4, [10, 11]] = hs[1, 4, [10, 11]]
        return _rewrap(o, h)

    handle = gpt2.transformer.h[2].register_forward_hook(hook)
    try:
        expected = gpt2(**base).logits
    finally:
        handle.remove()
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


def test_skipping_an_intervention_with_a_none_source(gpt2, batch):
    base, src = batch
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=1, component="block_output", intervention_type=pv.VanillaIntervention),
            pv.RepresentationConfig(layer=2, component="block_output", intervention_type=pv.VanillaIntervention),
        ]
    )
    im = pv.IntervenableModel(cfg, gpt2)
    _, both_skipped_first = im(base=base, sources=[None, src], unit_locations={"sources->base": 3})
    only = pv.IntervenableModel(_vanilla(layer=2), gpt2)
    _, expected = only(base=base, sources=[src], unit_locations={"sources->base": 3})
    torch.testing.assert_close(both_skipped_first.logits, expected.logits, atol=1e-6, rtol=1e-6)


def test_custom_intervention_class_and_function(gpt2, batch):
    base, _ = batch

    class Times(pv.ConstantSourceIntervention, pv.LocalistRepresentationIntervention):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)

        def forward(self, base, source=None, subspaces=None):
            return base * 3.0

    for cfg in (
        pv.IntervenableConfig(
            representations=[pv.RepresentationConfig(layer=1, component="mlp_output", intervention_type=Times)]
        ),
        pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(layer=1, component="mlp_output", intervention=lambda b, s: b * 3.0)
            ]
        ),
    ):
        im = pv.IntervenableModel(cfg, gpt2)
        _, out = im(base=base, unit_locations={"base": 2})
        h = gpt2.transformer.h[1].mlp.register_forward_hook(
            lambda m, a, o: torch.cat([o[:, :2], o[:, 2:3] * 3.0, o[:, 3:]], 1)
        )
        try:
            expected = gpt2(**base).logits
        finally:
            h.remove()
        torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


def test_llama_gqa_head_key_output(llama):
    g = torch.Generator().manual_seed(2)
    base = {"input_ids": torch.randint(0, 50, (2, 6), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (2, 6), generator=g)}
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=1, component="head_key_output", unit="h", intervention_type=pv.VanillaIntervention
            )
        ]
    )
    im = pv.IntervenableModel(cfg, llama)
    assert im.interventions[im.sorted_keys[0]].embed_dim.item() == 8  # head_dim = 32 / 4
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([[[1], [0]]], [[[1], [0]]])})
    kv = {}
    hk = llama.model.layers[1].self_attn.k_proj.register_forward_hook(lambda m, a, o: kv.__setitem__("k", o))
    llama(**src)
    hk.remove()
    src_k = kv["k"]  # (b, s, 2 kv heads * 8)

    def put(m, a, o):
        o = o.clone()
        o[0, :, 8:16] = src_k[0, :, 8:16]  # kv head 1 of example 0
        o[1, :, 0:8] = src_k[1, :, 0:8]  # kv head 0 of example 1
        return o

    hk = llama.model.layers[1].self_attn.k_proj.register_forward_hook(put)
    try:
        expected = llama(**base).logits
    finally:
        hk.remove()
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


def test_gqa_key_output_noise_and_skip_by_hand(llama):
    """Cases where pyvene 0.1.8 crashes (GQA k/v widths; Skip on a kwargs-called module)."""
    g = torch.Generator().manual_seed(8)
    base = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=0, component="key_output", intervention_type=pv.NoiseIntervention)
        ]
    )
    im = pv.IntervenableModel(cfg, llama)
    assert im.interventions[im.sorted_keys[0]].embed_dim.item() == 16  # 2 kv heads x head_dim 8
    _, out = im(base=base, unit_locations={"base": [1, 2, 3, 4, 5]})
    import numpy as np

    noise = torch.from_numpy(np.random.RandomState(1).randn(1, 5, 16)) * 0.13462981581687927
    h = llama.model.layers[0].self_attn.k_proj.register_forward_hook(
        lambda m, a, o: torch.cat([o[:, :1], (o[:, 1:6] + noise).to(o.dtype)], 1)
    )
    try:
        expected = llama(**base).logits
    finally:
        h.remove()
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)

    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=1, component="attention_output", intervention_type=pv.SkipIntervention)
        ]
    )
    im = pv.IntervenableModel(cfg, llama)
    _, out = im(base=base, sources=[base], unit_locations={"sources->base": 2})
    seen = {}
    pre = llama.model.layers[1].self_attn.register_forward_pre_hook(
        lambda m, a, k: seen.__setitem__("x", k["hidden_states"]), with_kwargs=True
    )
    llama(**base)
    pre.remove()

    def put(m, a, o):
        y = _first(o).clone()
        y[:, 2] = seen["x"][:, 2]
        return _rewrap(o, y)

    h = llama.model.layers[1].self_attn.register_forward_hook(put)
    try:
        expected = llama(**base).logits
    finally:
        h.remove()
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", frontends())
def test_attention_weight_by_hand(gpt2, batch, frontend):
    base, _ = batch
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=2, component="attention_weight", intervention_type=pv.CollectIntervention)
        ]
    )
    im = pv.IntervenableModel(cfg, gpt2, tracer=frontend)
    _, collected = im(base=base, unit_locations={"base": [[[0, 3], [1, 2]]]})  # 'pos' indexes heads here
    att = gpt2(**base, output_attentions=True).attentions[2]
    torch.testing.assert_close(collected[0], torch.stack([att[0, [0, 3]], att[1, [1, 2]]]), atol=1e-6, rtol=1e-5)
    zero = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(layer=2, component="attention_weight", intervention_type=pv.ZeroIntervention)
            ]
        ),
        gpt2,
        tracer=frontend,
    )
    _, out = zero(base=base, unit_locations={"base": [[[1], [1]]]})
    assert not torch.allclose(out.logits, gpt2(**base).logits)
