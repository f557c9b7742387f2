"""Tracing frontends: exact outputs, shared weights, traced once, clear errors."""
import pytest
import torch
from transformers import GPT2LMHeadModel, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

import fxvene as pv
from fxvene import tracing
from conftest import frontends, make_gpt2, make_llama


def _tiny(name):
    torch.manual_seed(0)
    if name == "gpt2":
        return make_gpt2()
    if name == "llama":
        return make_llama()
    kw = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=48, vocab_size=50, max_position_embeddings=64)
    if name == "mistral":
        return MistralForCausalLM(MistralConfig(**kw)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**kw)).eval()


@pytest.mark.parametrize("frontend", frontends())
@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "qwen2"])
def test_untouched_graph_equals_model(name, frontend):
    model = _tiny(name)
    tg = tracing.trace(model, tracer=frontend)
    assert tg.frontend == frontend
    assert tracing.shares_parameters(tg.gm, model)
    named = dict(model.named_parameters(remove_duplicate=False))
    for n, p in tg.gm.named_parameters():
        assert p.data_ptr() == named[n].data_ptr(), n
    # shapes other than the tracing example (batch and sequence are dynamic), with padding
    ids = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, :4] = 0
    with torch.no_grad():
        got = tg.wrap_outputs(tg.gm(input_ids=ids, attention_mask=mask))
        ref = model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)


def test_traced_once_per_model(gpt2):
    calls = []
    orig = tracing._trace_export
    tracing._trace_export = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        m = make_gpt2(n_layer=2, seed=3)
        for layer in range(2):
            cfg = pv.IntervenableConfig(representations=[
                pv.RepresentationConfig(layer=layer, component="block_output", intervention_type=pv.VanillaIntervention)])
            pv.IntervenableModel(cfg, m, tracer="export")
        assert calls == [1]
    finally:
        tracing._trace_export = orig


@pytest.mark.skipif(not tracing.hf_fx_available(), reason="HF's fx tracer exists in transformers 4.x only")
def test_hf_fx_leaves_user_config_alone():
    m = make_gpt2(n_layer=1, seed=4)
    m.config.use_cache = True
    tracing.trace(m, tracer="hf_fx")
    assert m.config.use_cache is True


class _Untraceable(GPT2LMHeadModel):
    def forward(self, input_ids=None, attention_mask=None, **kw):
        if int(input_ids.max()) > 1000:  # data-dependent Python control flow
            input_ids = input_ids * 0
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kw)


def test_untraceable_model_reports_every_frontend():
    base = make_gpt2(n_layer=1, seed=5)
    m = _Untraceable(base.config).eval()
    with pytest.raises(tracing.TracingError) as e:
        tracing.trace(m, tracer="auto")
    msg = str(e.value)
    assert "could not trace _Untraceable" in msg
    assert "export:" in msg
    if tracing.hf_fx_available():
        assert "hf_fx:" in msg


def test_auto_prefers_hf_fx_where_available():
    m = make_gpt2(n_layer=1, seed=6)
    tg = tracing.trace(m, tracer="auto")
    assert tg.frontend == ("hf_fx" if tracing.hf_fx_available() else "export")
