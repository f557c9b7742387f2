"""Bad input is a loud ValueError/TypeError that names the argument, never a silent no-op."""

import pytest
import torch
from transformers import ElectraConfig, ElectraModel

import fxvene as pv


def _cfg(**kw):
    kw.setdefault("intervention_type", pv.VanillaIntervention)
    return pv.IntervenableConfig(representations=[pv.RepresentationConfig(**kw)])


@pytest.fixture(scope="module")
def im(gpt2):
    return pv.IntervenableModel(_cfg(layer=1, component="block_output"), gpt2)


def test_unknown_component(gpt2):
    with pytest.raises(ValueError, match="unknown component 'block_outptu'"):
        pv.IntervenableModel(_cfg(layer=1, component="block_outptu"), gpt2)


def test_unknown_model_type_needs_string_component():
    # ELECTRA: no hand-written map, and its feed-forward is split over two children (nothing is derived)
    electra = ElectraModel(
        ElectraConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=30)
    ).eval()
    with pytest.raises(ValueError, match="no component map"):
        pv.IntervenableModel(_cfg(layer=0, component="block_output"), electra)


def test_layer_out_of_range(gpt2):
    with pytest.raises(ValueError, match="layer 4 is out of range"):
        pv.IntervenableModel(_cfg(layer=4, component="block_output"), gpt2)
    with pytest.raises(TypeError, match="layer must be an int"):
        pv.IntervenableModel(_cfg(layer="1", component="block_output"), gpt2)


def test_string_component_that_does_not_exist(gpt2):
    with pytest.raises(ValueError, match="has no module 'transformer.h.9.mlp'"):
        pv.IntervenableModel(_cfg(component="transformer.h[9].mlp.output"), gpt2)
    with pytest.raises(ValueError, match="ending in '.output' or '.input'"):
        pv.IntervenableModel(_cfg(component="transformer.h[0].mlp.outptu"), gpt2)


def test_bad_unit(gpt2):
    with pytest.raises(ValueError, match="unit must be one of"):
        pv.IntervenableModel(_cfg(layer=0, unit="hpos"), gpt2)
    with pytest.raises(ValueError, match="needs a head component"):
        pv.IntervenableModel(_cfg(layer=0, unit="h"), gpt2)
    with pytest.raises(ValueError, match="use unit 'h' or 'h.pos'"):
        pv.IntervenableModel(_cfg(layer=0, component="head_query_output", unit="pos"), gpt2)


def test_bad_tracer(gpt2):
    with pytest.raises(ValueError, match="tracer must be one of"):
        pv.IntervenableModel(_cfg(layer=0), gpt2, tracer="jit")


def test_position_past_sequence(im, batch):
    base, src = batch
    with pytest.raises(
        ValueError, match=r"unit_locations \(base side\).*position 8 is out of range: the base has 8 positions"
    ):
        im(base=base, sources=[src], unit_locations={"sources->base": (0, 8)})
    with pytest.raises(
        ValueError, match=r"unit_locations \(source side\).*position 9 is out of range: sources\[0\] has 8"
    ):
        im(base=base, sources=[src], unit_locations={"sources->base": (9, 0)})


def test_locations_batch_and_nesting(im, batch):
    base, src = batch
    with pytest.raises(ValueError, match="1 per-example entries for a batch of 2"):
        im(base=base, sources=[src], unit_locations={"sources->base": ([[[0]]], [[[0]]])})
    with pytest.raises(ValueError, match="2 entries but the model has 1 interventions"):
        im(base=base, sources=[src], unit_locations={"sources->base": ([[[0]], [[0]]], [[[0]], [[0]]])})
    with pytest.raises(ValueError, match="same number of units"):
        im(base=base, sources=[src], unit_locations={"sources->base": ([[[0], [0, 1]]], [[[0], [0, 1]]])})
    with pytest.raises(ValueError, match="depth 2"):
        im(base=base, sources=[src], unit_locations={"sources->base": ([[[[0]], [[1]]]], [[[[0]], [[1]]]])})
    with pytest.raises(ValueError, match="unknown key 'source->base'"):
        im(base=base, sources=[src], unit_locations={"source->base": 1})
    with pytest.raises(TypeError, match="unit_locations must be a dict"):
        im(base=base, sources=[src], unit_locations=[1])


def test_source_count(gpt2, batch):
    base, src = batch
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=0, intervention_type=pv.VanillaIntervention),
            pv.RepresentationConfig(layer=1, intervention_type=pv.VanillaIntervention),
        ]
    )
    im2 = pv.IntervenableModel(cfg, gpt2)
    with pytest.raises(ValueError, match="sources: got 3, expected 2"):
        im2(base=base, sources=[src, src, src], unit_locations={"sources->base": 1})


def test_source_batch_and_length_mismatch(im, batch):
    base, src = batch
    with pytest.raises(ValueError, match="batch size 1 but the base has 2"):
        im(base=base, sources=[{"input_ids": src["input_ids"][:1]}], unit_locations={"sources->base": 1})
    short = {"input_ids": src["input_ids"][:, :5]}
    with pytest.raises(ValueError, match="unit_locations is None"):
        im(base=base, sources=[short])


def test_bad_inputs(im, batch):
    base, src = batch
    with pytest.raises(TypeError, match="base must be a dict"):
        im(base=base["input_ids"], sources=[src])
    with pytest.raises(ValueError, match="unsupported model inputs"):
        im(base={**base, "foo": base["input_ids"]}, sources=[src])
    with pytest.raises(ValueError, match="needs 'input_ids' or 'inputs_embeds'"):
        im(base={"attention_mask": base["input_ids"]}, sources=[src])


def test_source_representations_errors(im, batch):
    base, _ = batch
    with pytest.raises(ValueError, match="unknown intervention key"):
        im(base=base, source_representations={"nope": torch.zeros(24)}, unit_locations={"base": 1})
    with pytest.raises(TypeError, match="source_representations must be"):
        im(base=base, source_representations=3, unit_locations={"base": 1})


def test_missing_source_locations(im, batch):
    base, src = batch
    with pytest.raises(ValueError, match="no source-side locations"):
        im(base=base, sources=[src], unit_locations={"sources->base": (None, 2)})


def test_config_validation():
    with pytest.raises(ValueError, match="specified for all"):
        pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(layer=0, intervention_type=pv.VanillaIntervention),
                pv.RepresentationConfig(layer=1),
            ]
        )
    with pytest.raises(ValueError, match="mode must be"):
        pv.IntervenableConfig(mode="sideways")
    with pytest.raises(TypeError, match="config must be"):
        pv.IntervenableModel("block_output", torch.nn.Linear(2, 2))


def test_attention_weight_needs_eager():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=32)
    cfg._attn_implementation = "sdpa"
    m = GPT2LMHeadModel(cfg).eval()
    with pytest.raises(ValueError, match="needs eager attention"):
        pv.IntervenableModel(_cfg(layer=0, component="attention_weight", intervention_type=pv.CollectIntervention), m)


def test_site_resolving_to_several_nodes(llama):
    # Llama's rotary embedding module returns (cos, sin): two tensors leave its region
    with pytest.raises(ValueError, match=r"resolves to 2 nodes \(candidates: \["):
        pv.IntervenableModel(_cfg(component="model.rotary_emb.output"), llama)


def test_site_resolving_to_no_node():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=32)
    cfg._attn_implementation = "sdpa"  # sdpa never calls attn_dropout
    m = GPT2LMHeadModel(cfg).eval()
    with pytest.raises(ValueError, match="has no nodes in the traced graph"):
        pv.IntervenableModel(_cfg(component="transformer.h[0].attn.attn_dropout.input"), m)


def test_intervention_without_any_source_is_a_clean_run(im, batch):
    base, _ = batch
    # pyvene's "clean run": with no sources, interventions that read one are skipped
    _, out = im(base=base, unit_locations={"base": 1})
    torch.testing.assert_close(out.logits, im.model(**base).logits)
    # an explicit None source still skips it, as in pyvene
    _, out = im(base=base, sources=[None], unit_locations={"sources->base": 1})
    assert out.logits.shape[0] == 2
