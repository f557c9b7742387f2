"""Sequence-classification heads (pad-token pooling) and the T5 encoder-decoder trace and intervene:
each patch equals the same patch made by a forward hook on the Hugging Face model; T5's tutorial call
(pyvene's 101, with the map pyvene's users add by hand) equals pyvene 0.1.8."""

import pytest
import torch
from _tiny import AVAILABLE, make_tiny
from transformers import T5Config, T5ForConditionalGeneration

import fxvene as pv


def _hooked(model, module, inputs, patch, pre=False):
    """``model(**inputs)`` with ``patch(tensor)`` applied to ``module``'s output (or first input)."""
    if pre:
        h = module.register_forward_pre_hook(lambda m, a: (patch(a[0]),) + tuple(a[1:]))
    else:
        h = module.register_forward_hook(
            lambda m, a, o: (patch(o[0]),) + tuple(o[1:]) if isinstance(o, tuple) else patch(o)
        )
    try:
        return model(**inputs)
    finally:
        h.remove()


def _recorded(model, module, inputs, pre=False):
    got = {}

    def keep(t):
        got["v"] = t.clone()
        return t

    _hooked(model, module, inputs, keep, pre=pre)
    return got["v"]


def _swap(src, src_pos, dst_pos):
    def patch(t):
        t = t.clone()
        t[:, dst_pos] = src[:, src_pos]
        return t

    return patch


@pytest.mark.parametrize("family", [f for f in ("gpt2", "gemma", "qwen2") if f in AVAILABLE])
def test_sequence_classifier_patch_equals_hook(family):
    """Pooling at the last non-pad token (HF's pad_token_id rule) follows the intervened run's own ids.
    (Qwen2 stands for the Llama code, which Qwen2ForSequenceClassification shares.)"""
    model = make_tiny(family, head="seq_cls")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (2, 7), generator=g)
    ids[1, 5:] = model.config.pad_token_id  # row 1 is padded: pooled at position 4
    base = {"input_ids": ids, "attention_mask": (ids != model.config.pad_token_id).long()}
    source = {"input_ids": torch.randint(3, 64, (2, 7), generator=g)}
    block = (model.transformer.h if family == "gpt2" else model.model.layers)[0]
    im = pv.IntervenableModel(
        {"layer": 0, "component": "block_output", "intervention_type": pv.VanillaIntervention}, model=model
    )
    _, out = im(base=base, sources=[source], unit_locations={"sources->base": (2, 1)})
    ref = _hooked(model, block, base, _swap(_recorded(model, block, source), 2, 1))
    assert out.logits.shape == (2, 2)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
    assert not torch.allclose(out.logits, model(**base).logits)


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return T5ForConditionalGeneration(cfg).eval()


# (component, layer, module path, port): encoder and decoder sites
T5_SITES = [
    ("block_output", 1, "encoder.block.1", "output"),
    ("mlp_output", 0, "encoder.block.0.layer.1", "output"),
    ("attention_output", 0, "encoder.block.0.layer.0.SelfAttention.o", "output"),
    ("block_input", 1, "encoder.block.1", "input"),
    ("decoder_block_output", 0, "decoder.block.0", "output"),
    ("decoder_cross_attention_output", 0, "decoder.block.0.layer.1.EncDecAttention.o", "output"),
    ("decoder_mlp_activation", 1, "decoder.block.1.layer.2.DenseReluDense.act", "output"),
]


def test_t5_encoder_and_decoder_patches_equal_hooks(t5):
    g = torch.Generator().manual_seed(1)
    base = {
        "input_ids": torch.randint(1, 64, (2, 6), generator=g),
        "decoder_input_ids": torch.randint(1, 64, (2, 3), generator=g),
    }
    source = {
        "input_ids": torch.randint(1, 64, (2, 6), generator=g),
        "decoder_input_ids": torch.randint(1, 64, (2, 3), generator=g),
    }
    clean = t5(**base).logits
    for component, layer, path, port in T5_SITES:
        module = t5.get_submodule(path)
        im = pv.IntervenableModel(
            {"layer": layer, "component": component, "intervention_type": pv.VanillaIntervention}, model=t5
        )
        _, out = im(base=base, sources=[source], unit_locations={"sources->base": (2, 1)})
        ref = _hooked(
            t5, module, base, _swap(_recorded(t5, module, source, pre=port == "input"), 2, 1), pre=port == "input"
        )
        assert torch.allclose(out.logits, ref.logits, atol=1e-5), component
        assert not torch.allclose(out.logits, clean), component


def test_t5_tutorial_call_matches_pyvene(pyvene, t5):
    """pyvene's 101 T5 example: a zero source_representation at mlp_output (pyvene needs the user's map
    in its global dicts; fxvene ships it), base with decoder_input_ids, {"base": 3}."""
    pyvene.type_to_module_mapping[type(t5)] = {
        "mlp_output": ("encoder.block[%s].layer[1]", pyvene.models.constants.CONST_OUTPUT_HOOK)
    }
    pyvene.type_to_dimension_mapping[type(t5)] = {"mlp_output": ("d_model",)}
    try:
        base = {
            "input_ids": torch.tensor([[5, 9, 13, 21, 7, 1]]),
            "attention_mask": torch.ones(1, 6, dtype=torch.long),
            "decoder_input_ids": torch.tensor([[1]]),
        }
        outs = []
        for lib in (pyvene, pv):
            im = lib.IntervenableModel(
                {"layer": 0, "component": "mlp_output", "source_representation": torch.zeros(t5.config.d_model)},
                model=t5,
            )
            outs.append(im(dict(base), unit_locations={"base": 3})[1].logits)
    finally:
        del pyvene.type_to_module_mapping[type(t5)], pyvene.type_to_dimension_mapping[type(t5)]
    assert torch.allclose(outs[1], outs[0], atol=1e-6)
    assert not torch.allclose(outs[1], t5(**base).logits)


def test_untraceable_or_inputless_model_gets_one_clear_error():
    class NoLead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = T5Config(d_model=4)
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(ValueError, match="takes no 'input_ids'"):
        pv.IntervenableModel({"component": "lin.output", "intervention_type": pv.ZeroIntervention}, model=NoLead())
