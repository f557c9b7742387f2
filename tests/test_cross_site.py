"""Patching from a different site (fxvene extension of RepresentationConfig: ``source_layer`` /
``source_component``): the source run is read at one site and written into another of the base.

Every result is checked against a hand-written reference with forward hooks on the Hugging Face
modules: collect the value in the source run, patch it into the base run.
"""

import json

import pytest
import torch
from _hooks import module_hook, read
from conftest import batch_ids, make_gpt2, make_llama

import fxvene as pv
from fxvene.graph.sites import resolve_site


@pytest.fixture(scope="module")
def models():
    return {"gpt2": make_gpt2(), "llama": make_llama()}


def _blocks(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def _collect(model, module, inputs, pre=False):
    """The output (or, ``pre``, the first input) of ``module`` in a plain run of ``model``."""
    return read(model, module, inputs, "input" if pre else "output")


def _patched_logits(model, module, inputs, edit, pre=False, grad=False):
    """Logits of ``model`` on ``inputs`` with ``edit(x) -> x'`` applied to ``module``'s output (input, ``pre``)."""
    with module_hook(module, "input" if pre else "output", edit), torch.set_grad_enabled(grad):
        return model(**inputs).logits


def _put(pos_dst, value):
    def edit(x):
        x = x.clone()
        x[:, pos_dst] = value
        return x

    return edit


BASE, SRC = batch_ids(1), batch_ids(2)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_block_output_from_an_earlier_layer(models, family):
    model = models[family]
    blocks = _blocks(model)
    last = len(blocks) - 1
    v = _collect(model, blocks[0], SRC)[:, 2]  # source: layer 0's block output at position 2
    ref = _patched_logits(model, blocks[last], BASE, _put(5, v))  # -> the last layer's, position 5
    iv = pv.IntervenableModel(pv.RepresentationConfig(last, "block_output", source_layer=0), model)
    _, out = iv(BASE, [SRC], {"sources->base": (2, 5)})
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=0)
    # the same config without the extension field patches layer `last` from layer `last`: a different result
    same = pv.IntervenableModel(pv.RepresentationConfig(last, "block_output"), model)
    assert not torch.equal(same(BASE, [SRC], {"sources->base": (2, 5)})[1].logits, ref)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_mlp_output_into_attention_output(models, family):
    model = models[family]
    blocks = _blocks(model)
    v = _collect(model, blocks[0].mlp, SRC)[:, 3]
    attn = blocks[2].attn.resid_dropout if family == "gpt2" else blocks[2].self_attn
    ref = _patched_logits(model, attn, BASE, _put(1, v))
    rep = pv.RepresentationConfig(2, "attention_output", source_layer=0, source_component="mlp_output")
    iv = pv.IntervenableModel(rep, model)
    _, out = iv(BASE, [SRC], {"sources->base": (3, 1)})
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=0)


def test_head_to_another_head_and_layer(models):
    """unit 'h.pos': source locations index the heads of the source site."""
    model = models["llama"]
    blocks = _blocks(model)
    H = model.config.num_attention_heads
    d = model.config.hidden_size // H
    v = _collect(model, blocks[0].self_attn.o_proj, SRC, pre=True)
    v = v.view(*v.shape[:2], H, d)[:, 4, 1]  # layer 0, head 1, position 4

    def edit(x):
        x = x.clone().view(*x.shape[:2], H, d)
        x[:, 6, 3] = v  # layer 2, head 3, position 6
        return x.view(*x.shape[:2], H * d)

    ref = _patched_logits(model, blocks[2].self_attn.o_proj, BASE, edit, pre=True)
    rep = pv.RepresentationConfig(2, "head_attention_value_output", "h.pos", source_layer=0)
    iv = pv.IntervenableModel(rep, model)
    _, out = iv(BASE, [SRC], {"sources->base": ([[[[1]] * 2, [[4]] * 2]], [[[[3]] * 2, [[6]] * 2]])})
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=0)


def test_serial_chain_reads_the_intervened_source_run(models):
    """Serial: source 0's layer 0 goes into source 1's layer 2, whose (now patched) layer 2 goes
    into the base's layer 3."""
    model = models["gpt2"]
    blocks = _blocks(model)
    src0, src1 = SRC, batch_ids(3)
    v0 = _collect(model, blocks[0], src0)[:, 1]
    got = {}

    def edit_src1(x):
        x = x.clone()
        x[:, 4] = v0
        got["v"] = x[:, 4].detach().clone()
        return x

    _patched_logits(model, blocks[2], src1, edit_src1)
    ref = _patched_logits(model, blocks[3], BASE, _put(6, got["v"]))
    config = pv.IntervenableConfig(
        [
            pv.RepresentationConfig(2, "block_output", group_key=0, source_layer=0),
            pv.RepresentationConfig(3, "block_output", group_key=1, source_layer=2),
        ],
        mode="serial",
    )
    iv = pv.IntervenableModel(config, model)
    _, out = iv(BASE, [src0, src1], {"source_0->source_1": (1, 4), "source_1->base": (4, 6)})
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=0)


def test_trainable_rotated_space_across_sites(models):
    model = models["gpt2"]
    blocks = _blocks(model)
    rep = pv.RepresentationConfig(
        3, "block_output", source_layer=1, low_rank_dimension=4, intervention_type=pv.LowRankRotatedSpaceIntervention
    )
    iv = pv.IntervenableModel(pv.IntervenableConfig([rep]), model)
    intervention = next(iter(iv.interventions.values()))
    v = _collect(model, blocks[1], SRC)[:, 2]
    ref = _patched_logits(model, blocks[3], BASE, lambda x: _put(5, intervention(x[:, 5], v))(x), grad=True)
    ref.sum().backward()
    ref_grad = [p.grad.clone() for p in iv.get_trainable_parameters()]
    iv.zero_grad()
    _, out = iv(BASE, [SRC], {"sources->base": (2, 5)})
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=0)
    out.logits.sum().backward()
    grads = [p.grad for p in iv.get_trainable_parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    for g, r in zip(grads, ref_grad):
        torch.testing.assert_close(g, r)


def test_generate_reads_the_other_site_on_the_prompt(models):
    model = models["gpt2"]
    blocks = _blocks(model)
    v = _collect(model, blocks[0], SRC)[:, 2]
    seq = BASE["input_ids"].shape[1]

    def edit(x):  # the prompt forward only (later steps of the KV-cached loop see one token)
        return _put(5, v)(x) if x.shape[1] == seq else x

    with module_hook(blocks[3], "output", edit), torch.no_grad():
        ref = model.generate(
            **BASE, attention_mask=torch.ones_like(BASE["input_ids"]), max_new_tokens=3, do_sample=False, pad_token_id=0
        )
    iv = pv.IntervenableModel(pv.RepresentationConfig(3, "block_output", source_layer=0), model)
    _, seqs = iv.generate(
        BASE,
        sources=[SRC],
        unit_locations={"sources->base": (2, 5)},
        intervene_on_prompt=True,
        max_new_tokens=3,
        do_sample=False,
    )
    assert torch.equal(seqs, ref)


def test_graph_diff_exposes_the_source_site(models):
    model = models["gpt2"]
    iv = pv.IntervenableModel(pv.RepresentationConfig(3, "block_output", source_layer=1), model)
    d = iv.graph_diff(plan="source")
    traced, _ = iv.rewritten_graph(plan="source")
    at = resolve_site(traced, model, "block_output", 1).node
    target = resolve_site(traced, model, "block_output", 3).node
    get = d._new_nodes["fxv_get_0"]
    assert get.args[0].name == at  # the source run's value is taken at layer 1 ...
    assert target in d.removed  # ... and the run stops there: layer 3 is never computed
    assert "fxv_get_0" in d.added
    # the base graph writes at layer 3
    base = iv.graph_diff()
    assert base._new_nodes["fxv_site_0"].args[0].name == target
    # the site table shows where the source is read
    row = iv.sites()[0]
    assert row.node == target and row.source_node == at


def test_save_load_keeps_the_source_site(models, tmp_path):
    model = models["gpt2"]
    rep = pv.RepresentationConfig(
        3,
        "attention_output",
        source_layer=1,
        source_component="mlp_output",
        low_rank_dimension=2,
        intervention_type=pv.LowRankRotatedSpaceIntervention,
    )
    iv = pv.IntervenableModel(pv.IntervenableConfig([rep]), model)
    assert '"source_layer": 1' in repr(iv.config) and '"source_component": "mlp_output"' in repr(iv.config)
    iv.save(str(tmp_path / "cross"))
    saved = json.load(open(tmp_path / "cross" / "config.json"))["representations"][0]
    assert saved[-2:] == [1, "mlp_output"]
    loaded = pv.IntervenableModel.load(str(tmp_path / "cross"), model)
    got = next(iter(loaded.representations.values()))
    assert (got.source_layer, got.source_component) == (1, "mlp_output")
    call = (BASE, [SRC], {"sources->base": (2, 5)})
    assert torch.equal(loaded(*call)[1].logits, iv(*call)[1].logits)
    # a config without the extension keeps pyvene 0.1.8's 14 positional fields
    plain = pv.IntervenableModel(pv.RepresentationConfig(3, "block_output"), model)
    plain.save(str(tmp_path / "plain"))
    assert len(json.load(open(tmp_path / "plain" / "config.json"))["representations"][0]) == 14


@pytest.mark.parametrize(
    "fields,err,match",
    [
        (dict(source_component="no_such_component"), ValueError, r"source_component.*no_such_component"),
        (dict(source_layer=99), ValueError, r"source_layer.*99.*out of range"),
        (dict(source_layer="1"), TypeError, r"source_layer must be an int"),
        (dict(source_component="mlp_activation"), ValueError, r"source_component.*width 96.*width 24"),
        (dict(source_component="head_attention_value_output"), ValueError, r"source_component.*split into heads"),
    ],
)
def test_bad_source_site(models, fields, err, match):
    with pytest.raises(err, match=match):
        pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", **fields), models["gpt2"])


def test_positional_pyvene_config_is_unchanged():
    fields = (2, "mlp_output", "pos", 1, None, None, None, None, None, None, None, None, None, None)
    rep = pv.RepresentationConfig(*fields)
    assert rep.source_layer is None and rep.source_component is None
    assert rep._fields[:14] == (
        "layer",
        "component",
        "unit",
        "max_number_of_units",
        "low_rank_dimension",
        "intervention_type",
        "intervention",
        "subspace_partition",
        "group_key",
        "intervention_link_key",
        "moe_key",
        "source_representation",
        "hidden_source_representation",
        "latent_dim",
    )


def test_serial_read_of_a_site_the_previous_group_wrote_matches_pyvene(pyvene):
    """Both groups at one site: group 1 reads source 1 after group 0's setter wrote it (pyvene's
    hook order), on a model pyvene wraps separately."""
    base, s0, s1 = BASE, SRC, batch_ids(3)
    locs = {"source_0->source_1": ([[[1]] * 2], [[[4]] * 2]), "source_1->base": ([[[4]] * 2], [[[6]] * 2])}

    def config(lib):
        return lib.IntervenableConfig(
            [
                lib.RepresentationConfig(2, "block_output", group_key=0),
                lib.RepresentationConfig(2, "block_output", group_key=1),
            ],
            mode="serial",
        )

    ours = pv.IntervenableModel(config(pv), make_gpt2())(base, [s0, s1], locs)[1].logits
    theirs = pyvene.IntervenableModel(config(pyvene), make_gpt2())(base, [s0, s1], locs)[1].logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
