"""Generation with interventions on encoder-decoders (BART from input_ids, Whisper short-form from
input_features): ``IntervenableModel.generate`` against Hugging Face's own cached ``generate`` with forward hooks
doing the same edit (the oracle; never fxvene itself). Tokens must be identical and scores within 1e-5.

HF's cached loop runs the decoder on the prompt (the start token) in its first forward and on one new token in
each later one, and computes the cross-attention keys/values in the first forward only; the hooks below count
forwards to act where fxvene's rules say (the prompt forward, decode steps, every forward).
"""

import pytest
import torch
from _hooks import capture, hooks
from _matrix import cell
from test_families_encdec import model_for  # the family tests' models: their traced graphs are shared

import fxvene as pv

FAMILIES = ("bart", "whisper")
NEW = 4


def _params():
    return [pytest.param(f, marks=cell(f, "generate"), id=f) for f in FAMILIES]


def _base(family, seed):
    g = torch.Generator().manual_seed(seed)
    if family == "whisper":
        return {"input_features": torch.randn(2, 8, 16, generator=g)}
    return {"input_ids": torch.randint(3, 64, (2, 6), generator=g)}


def _cfg(component, itype, layer, unit="pos", **kw):
    return pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=layer, component=component, unit=unit, intervention_type=itype, **kw)
        ]
    )


def _hf(model, base, specs):
    """HF generate (greedy, cached) with the hooks of ``specs``."""
    with hooks(model, specs), torch.no_grad():
        return model.generate(
            **base, max_new_tokens=NEW, output_scores=True, return_dict_in_generate=True, do_sample=False
        )


def _fx(im, base, **kw):
    _, out = im.generate(
        base, max_new_tokens=NEW, output_scores=True, return_dict_in_generate=True, do_sample=False, **kw
    )
    return out


def _same(out, ref):
    assert torch.equal(out.sequences, ref.sequences), (out.sequences, ref.sequences)
    assert len(out.scores) == len(ref.scores)
    for a, b in zip(out.scores, ref.scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", _params())
def test_zero_steering_equals_hf_generate(family):
    """Adding a zero vector at every forward leaves HF's greedy tokens and scores (Whisper: short-form decoding
    from input_features, its generation config's start token)."""
    model = model_for(family)
    base = _base(family, 1)
    im = pv.IntervenableModel(_cfg("decoder_block_output", pv.AdditionIntervention, 0), model)
    _same(
        _fx(im, base, intervene_on="all", source_representations=torch.zeros(model.config.d_model)),
        _hf(model, base, []),
    )


# (intervene_on, decode_steps) -> which HF forwards (0 = the prompt forward) the hook adds at
MODES = {
    "all": (dict(intervene_on="all"), lambda f: True),
    "pyvene_default": ({}, lambda f: f > 0),
    "prompt": (dict(intervene_on="prompt"), lambda f: f == 0),
    "decode_step_1": (dict(intervene_on="decode", decode_steps=[1]), lambda f: f == 2),
}


@pytest.mark.parametrize("family", _params())
def test_decoder_addition_per_step_equals_hooked_generate(family):
    """Addition of a steering vector at decoder layer 0's block output: at every forward, on decode steps only
    (pyvene's default), on the prompt only, at one decode step; each equals HF's cached generate with a hook
    adding the vector in the same forwards. The steered tokens differ from the clean ones."""
    model = model_for(family)
    base = _base(family, 2)
    v = 4 * torch.randn(model.config.d_model, generator=torch.Generator().manual_seed(3))
    im = pv.IntervenableModel(_cfg("decoder_block_output", pv.AdditionIntervention, 0), model)
    clean = _hf(model, base, []).sequences
    path = "model.decoder.layers.0"
    changed = 0
    for name, (kw, acts) in MODES.items():
        count = [0]

        def add(x, count=count, acts=acts):
            f = count[0]
            count[0] += 1
            return x + v if acts(f) else None

        ref = _hf(model, base, [(path, "output", add)])
        out = _fx(im, base, source_representations=v, **kw)
        try:
            _same(out, ref)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
        changed += not torch.equal(ref.sequences, clean)
    assert changed >= 2


@pytest.mark.parametrize("family", _params())
def test_encoder_patch_from_a_source_equals_hooked_generate(family):
    """Vanilla at encoder layer 0's block output (Whisper: audio frames), source positions into base positions,
    from a source input: the encoder runs once with the patch in HF; the tokens and scores are the same."""
    model = model_for(family)
    base, src = _base(family, 4), _base(family, 5)
    bpos, spos = [[0, 1, 2], [1, 3, 4]], [[2, 1, 0], [4, 3, 1]]
    im = pv.IntervenableModel(_cfg("block_output", pv.VanillaIntervention, 0, max_number_of_units=3), model)
    out = _fx(im, base, sources=[src], unit_locations={"sources->base": ([spos], [bpos])})
    path = "model.encoder.layers.0"
    store = {}
    with hooks(model, [(path, "output", capture(store, "s"))]), torch.no_grad():
        model.get_encoder()(**src)

    def patch(x):
        x = x.clone()
        for i in range(x.shape[0]):
            x[i, bpos[i]] = store["s"][i, spos[i]]
        return x

    ref = _hf(model, base, [(path, "output", patch)])
    _same(out, ref)
    clean = _hf(model, base, [])
    assert (ref.scores[0] - clean.scores[0]).abs().max() > 1e-4  # 10x the tolerance


@pytest.mark.parametrize("family", _params())
def test_cross_attention_values_are_edited_once_and_cached(family):
    """An Addition on the cross-attention's values (encoder positions 0 and 2 of decoder layer 1) under pyvene's
    default (decode steps only): HF computes those values in its first forward and caches them, so the hook acts
    there only; fxvene's edit applies to that cached value for every step alike."""
    model = model_for(family)
    base = _base(family, 6)
    v = 3 * torch.randn(model.config.d_model, generator=torch.Generator().manual_seed(7))
    comp = "decoder_cross_attention_value_output"
    im = pv.IntervenableModel(_cfg(comp, pv.AdditionIntervention, 1), model)
    out = _fx(im, base, source_representations=v, unit_locations={"base": [[[0, 2], [0, 2]]]})
    path = "model.decoder.layers.1.encoder_attn.v_proj"

    def add(x):
        x = x.clone()
        x[:, [0, 2]] += v
        return x

    ref = _hf(model, base, [(path, "output", add)])
    _same(out, ref)
    assert (ref.scores[-1] - _hf(model, base, []).scores[-1]).abs().max() > 1e-4


def test_a_given_decoder_prompt_is_intervened_at_its_positions():
    """``decoder_input_ids`` in ``base`` start the decoder (BART); ``intervene_on="prompt"`` at its positions 1 and
    2 equals a hook adding there in HF's first forward only."""
    model = model_for("bart")
    base = {**_base("bart", 11), "decoder_input_ids": torch.tensor([[2, 7, 9], [2, 8, 5]])}
    v = 4 * torch.randn(model.config.d_model, generator=torch.Generator().manual_seed(12))
    im = pv.IntervenableModel(_cfg("decoder_block_output", pv.AdditionIntervention, 0), model)
    out = _fx(im, base, source_representations=v, unit_locations={"base": [[[1, 2], [1, 2]]]}, intervene_on="prompt")
    count = [0]

    def add(x):
        count[0] += 1
        if count[0] > 1:
            return None
        x = x.clone()
        x[:, [1, 2]] += v
        return x

    ref = _hf(model, base, [("model.decoder.layers.0", "output", add)])
    _same(out, ref)
    assert out.sequences.shape[1] == 3 + NEW
    assert (ref.scores[0] - _hf(model, base, []).scores[0]).abs().max() > 1e-4


def test_decoder_head_units_per_step_equal_hooked_generate():
    """``h.pos`` on the decoder (head 1 of decoder layer 0's attention value output, BART): the prompt's position
    0 and every new token (intervene_on="all") get the head vector added, as a hook on ``out_proj``'s input does
    in each cached forward."""
    model = model_for("bart")
    base = _base("bart", 9)
    hd = model.config.d_model // model.config.decoder_attention_heads
    v = 4 * torch.randn(hd, generator=torch.Generator().manual_seed(10))
    im = pv.IntervenableModel(_cfg("decoder_head_attention_value_output", pv.AdditionIntervention, 0, "h.pos"), model)
    locs = {"base": [[[[1], [1]], [[0], [0]]]]}
    out = _fx(im, base, source_representations=v, unit_locations=locs, intervene_on="all")

    def add(x):
        x = x.clone()
        x.view(*x.shape[:2], -1, hd)[:, :, 1] += v
        return x

    ref = _hf(model, base, [("model.decoder.layers.0.self_attn.out_proj", "input", add)])
    _same(out, ref)
    assert (ref.scores[-1] - _hf(model, base, []).scores[-1]).abs().max() > 1e-4


def test_t5_steering_at_every_forward_equals_hooked_generate():
    """T5 takes the same path: a vector added at decoder block 0's output (its last sub-layer) in every forward
    equals the hooked HF generate."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=4,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = T5ForConditionalGeneration(cfg).eval()
    base = _base("bart", 13)
    v = 4 * torch.randn(16, generator=torch.Generator().manual_seed(14))
    im = pv.IntervenableModel(_cfg("decoder_block_output", pv.AdditionIntervention, 0), model)
    out = _fx(im, base, source_representations=v, intervene_on="all")
    ref = _hf(model, base, [("decoder.block.0.layer.2", "output", lambda x: x + v)])
    _same(out, ref)
    assert (ref.scores[-1] - _hf(model, base, []).scores[-1]).abs().max() > 1e-4


def test_encoder_decoder_generate_refuses_what_it_does_not_run():
    """Beams, a decode-step position past the new token, no source, collecting: refused up front, saying what to do."""
    model = model_for("bart")
    base = _base("bart", 8)
    im = pv.IntervenableModel(_cfg("decoder_block_output", pv.AdditionIntervention, 0), model)
    v = torch.zeros(model.config.d_model)
    with pytest.raises(ValueError, match="num_beams"):
        im.generate(base, source_representations=v, max_new_tokens=2, num_beams=2)
    prompt = {**base, "decoder_input_ids": torch.tensor([[2, 5, 6, 7]] * 2)}
    with pytest.raises(ValueError, match="decode step"):
        im.generate(prompt, source_representations=v, unit_locations={"base": 3}, max_new_tokens=2)
    with pytest.raises(ValueError, match="needs a source"):
        im.generate(base, max_new_tokens=2)
    im = pv.IntervenableModel(_cfg("decoder_block_output", pv.CollectIntervention, 0), model)
    with pytest.raises(ValueError, match="CollectIntervention"):
        im.generate(base, max_new_tokens=2)
