"""Tracing frontends: exact outputs, shared weights, traced once, clear errors."""

import pytest
import torch
from conftest import frontends, make_gpt2, make_llama
from transformers import GPT2LMHeadModel, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

import fxvene as pv
from fxvene.graph import tracing


def _tiny(name):
    torch.manual_seed(0)
    if name == "gpt2":
        return make_gpt2()
    if name == "llama":
        return make_llama()
    kw = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=50,
        max_position_embeddings=64,
    )
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
            cfg = pv.IntervenableConfig(
                representations=[
                    pv.RepresentationConfig(
                        layer=layer, component="block_output", intervention_type=pv.VanillaIntervention
                    )
                ]
            )
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


# ------------------------------------------------------------------------- one frontend decision


def _sdpa_gpt2(seed=7):
    from transformers import GPT2Config

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=24, n_head=4, vocab_size=50, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()  # default attention: SDPA where torch has it


def test_auto_decides_up_front_without_a_failed_hf_fx_attempt(monkeypatch):
    m = _sdpa_gpt2()
    impl = m.config._attn_implementation
    calls = []
    orig = tracing._trace_hf_fx
    monkeypatch.setattr(tracing, "_trace_hf_fx", lambda *a, **k: calls.append(1) or orig(*a, **k))
    tg = tracing.trace(m, tracer="auto")
    if impl != "eager" or not tracing.hf_fx_available():
        assert tg.frontend == "export" and calls == []
    frontend, why = tracing.choose_frontend(make_gpt2(n_layer=1, seed=8))
    assert frontend == ("hf_fx" if tracing.hf_fx_available() else "export") and why
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            tg.wrap_outputs(tg.gm(input_ids=ids, attention_mask=torch.ones_like(ids))).logits,
            m(input_ids=ids).logits,
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.skipif(not tracing.hf_fx_available(), reason="HF's fx tracer exists in transformers 4.x only")
def test_explicit_hf_fx_on_sdpa_says_why():
    m = _sdpa_gpt2(seed=9)
    if m.config._attn_implementation == "eager":
        pytest.skip("no SDPA attention here")
    with pytest.raises(tracing.TracingError, match="exact for eager attention only; use tracer='auto' or 'export'"):
        tracing.trace(m, tracer="hf_fx")


NO_NOISE = """
import warnings, torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
import fxvene as pv
torch.manual_seed(0)
tok = dict(bos_token_id=0, eos_token_id=0)  # inside the tiny vocabulary (else transformers 5 warns)
models = [GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=24, n_head=4, vocab_size=50, n_positions=64, **tok)).eval(),
          GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=24, n_head=4, vocab_size=50, n_positions=64,
                                     attn_implementation="eager", **tok)).eval(),
          LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=48, vocab_size=50,
                                       max_position_embeddings=64, pad_token_id=0, **tok)).eval()]
ids = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(1))
warnings.simplefilter("error")  # any warning from here on is an exception
for m in models:
    cfg = pv.IntervenableConfig(representations=[
        pv.RepresentationConfig(layer=1, component="block_output", intervention_type=pv.VanillaIntervention)])
    im = pv.IntervenableModel(cfg, m)
    im(base={"input_ids": ids}, sources=[{"input_ids": ids.flip(1)}], unit_locations={"sources->base": (2, 2)})
    pv.causal_trace(m, {"input_ids": ids}, [1, 2], 3, n_samples=2, progress=False)
    add = pv.IntervenableModel(pv.IntervenableConfig(representations=[pv.RepresentationConfig(
        layer=1, component="block_output", intervention_type=pv.AdditionIntervention)]), m)
    add.generate({"input_ids": ids}, source_representations=torch.zeros(m.config.hidden_size), max_new_tokens=3)
print("ok")
"""


def test_no_warning_from_fxvene_reaches_the_user(tmp_path):
    """A fresh process (transformers' and torch's one-time warnings not yet spent), warnings as
    errors: tracing (both frontends), a patch forward, causal tracing and generation print nothing
    on stderr but fxvene's own progress lines."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ,
        FXVENE_CACHE_DIR=str(tmp_path / "graphs"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.pop("FXVENE_QUIET", None)
    p = subprocess.run(
        [sys.executable, "-c", NO_NOISE], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().endswith("ok")
    noise = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("fxvene: ")]
    assert noise == [], noise


def test_cli_and_python_load_and_trace_the_same_graph(tmp_path):
    """The CLI loads a model directory as ``from_pretrained(path)`` does and shows the graph the
    Python API traces for it (same attention implementation, same frontend, same nodes)."""
    from transformers import AutoModelForCausalLM

    from fxvene.cli import app as cli

    _sdpa_gpt2(seed=10).save_pretrained(tmp_path, safe_serialization=True)
    user = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = cli.load_model(str(tmp_path))
    assert ours.config._attn_implementation == user.config._attn_implementation
    a, b = tracing.trace(user), tracing.trace(ours)
    assert a.frontend == b.frontend
    assert [(n.op, str(n.target)) for n in a.gm.graph.nodes] == [(n.op, str(n.target)) for n in b.gm.graph.nodes]
    import io

    out = io.StringIO()
    args = cli.build_parser().parse_args(["trace", str(tmp_path)])
    assert cli.cmd_trace(args, out) == 0
    assert f"frontend:   {a.frontend} " in out.getvalue()


def test_cli_demo_is_the_python_demo():
    import os

    from fxvene.cli import app as cli
    from fxvene.zoo.demo import demo_model_path, load_demo

    if not os.path.isfile(os.path.join(demo_model_path(), "config.json")):
        pytest.skip("demo model not installed")
    cli.builtin_model.cache_clear()
    ours = cli.load_model("demo")
    assert ours.config._attn_implementation == load_demo()[0].config._attn_implementation
