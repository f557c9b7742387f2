"""Quantised weights and tensor parallelism (issue 22, item 4).

* A tiny Llama quantised by torchao's int8 weight-only config (``quantize_(model, Int8WeightOnlyConfig())``:
  every ``nn.Linear`` weight becomes an ``Int8Tensor``) traces with HF's fx tracer (transformers 4) and
  torch.export, and patches at its activations exactly as forward hooks on the same quantised model do.
  Skipped where torchao is not installed (CI installs it on the transformers 4 line only: transformers 5
  imports torchao by itself, and torchao 0.18's load warnings would reach every process's stderr).
* A tiny Llama loaded with transformers' ``tp_plan="auto"`` over 2 gloo ranks (torchrun, transformers 5):
  transformers' own forward equals one process, and fxvene refuses the model with a ValueError that says
  what to use instead (never a silent wrong number).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from _hooks import capture, hooked
from conftest import make_llama
from safetensors.torch import load_file

import fxvene as pv
from fxvene.graph.tracing import hf_fx_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACERS = ["hf_fx", "export"] if hf_fx_available() else ["export"]
B = 2


def _inputs(seed, b=B, s=7):
    ids = torch.randint(1, 50, (b, s), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _cfg(component, itype, layer, **kw):
    rep = pv.RepresentationConfig(layer=layer, component=component, unit="pos", intervention_type=itype, **kw)
    return pv.IntervenableConfig(representations=[rep])


@pytest.fixture(scope="module")
def quantised():
    """(the float model, the same weights quantised to int8 weight-only by torchao)."""
    ao = pytest.importorskip("torchao.quantization", reason="torchao not installed (pip install --no-deps torchao)")
    ref, model = make_llama(n_layer=2), make_llama(n_layer=2)
    for m in (ref, model):
        m.config._attn_implementation = "eager"
    ao.quantize_(model, ao.Int8WeightOnlyConfig())
    return ref, model


def test_int8_weights_are_quantised(quantised):
    """The fixture really holds torchao int8 weights, and they change the logits (the patches below run on
    the quantised arithmetic, not on float weights)."""
    ref, model = quantised
    w = model.get_submodule("model.layers.0.mlp.up_proj").weight
    assert type(w).__name__ == "Int8Tensor" and type(w).__module__.startswith("torchao")
    with torch.no_grad():
        gap = (model(**_inputs(0)).logits - ref(**_inputs(0)).logits).abs().max()
    assert gap > 1e-4


@pytest.mark.parametrize("tracer", TRACERS)
def test_int8_patches_equal_hooks(quantised, tracer):
    """Vanilla at block 0's output from a source, Addition at block 1's MLP output, Collect at block 0's MLP
    output: each equals forward hooks on the same quantised model (<= 1e-5)."""
    _, model = quantised
    base, src = _inputs(1), _inputs(2)
    bpos, spos = [[1, 3], [0, 4]], [[2, 3], [5, 0]]
    im = pv.IntervenableModel(
        _cfg("block_output", pv.VanillaIntervention, 0, max_number_of_units=2), model, tracer=tracer
    )
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([spos], [bpos])})
    store = {}
    hooked(model, src, [("model.layers.0", "output", capture(store, "s"))])

    def patch(x):
        y = x.clone()
        for i in range(B):
            y[i, bpos[i]] = store["s"][i, spos[i]]
        return y

    want = hooked(model, base, [("model.layers.0", "output", patch)]).logits
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)
    assert (out.logits - model(**base).logits).abs().max() > 1e-4  # the patch changed something

    vec = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    im = pv.IntervenableModel(_cfg("mlp_output", pv.AdditionIntervention, 1), model, tracer=tracer)
    _, out = im(base=base, source_representations=vec, unit_locations={"base": [[[6], [6]]]})

    def add_last(x):
        y = x.clone()
        y[:, 6] = y[:, 6] + vec
        return y

    want = hooked(model, base, [("model.layers.1.mlp", "output", add_last)]).logits
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)

    im = pv.IntervenableModel(_cfg("mlp_output", pv.CollectIntervention, 0), model, tracer=tracer)
    (_, got), _ = im(base=base)
    store = {}
    hooked(model, base, [("model.layers.0.mlp", "output", capture(store, "x"))])
    torch.testing.assert_close(got[0], store["x"], atol=1e-5, rtol=1e-5)


def _has_tp():
    try:
        from transformers.distributed import DistributedConfig  # noqa: F401  (transformers 5)
    except ImportError:
        return False
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


@pytest.mark.slow
@pytest.mark.skipif(not _has_tp(), reason="transformers' DistributedConfig(tp_plan=...) is transformers 5's")
def test_tensor_parallel_is_refused_clearly(tmp_path):
    """Two gloo ranks load the tiny Llama with tp_plan="auto": its weights are DTensors, transformers' own
    forward equals the one-process model (<= 1e-5), and IntervenableModel and causal_trace raise a ValueError
    naming the DTensor weights and tp_plan and pointing to pipeline stages or accelerate's device_map."""
    model = make_llama(n_layer=2)
    model.config._attn_implementation = "eager"
    path, out = tmp_path / "llama", tmp_path / "out"
    model.save_pretrained(path)
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    env.pop("MASTER_PORT", None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU ranks, gloo
    env["PYTHONPATH"] = os.path.join(ROOT, "tests") + os.pathsep + env.get("PYTHONPATH", "")
    script = os.path.join(ROOT, "tests", "_tp_rank.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, path, out]
    r = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    with torch.no_grad():
        want = model(**_inputs(1)).logits
    for rank in (0, 1):
        torch.testing.assert_close(load_file(out / f"rank{rank}.safetensors")["logits"], want, atol=1e-5, rtol=1e-5)
        info = json.loads((out / f"rank{rank}.json").read_text())
        assert info["dtensors"] > 0
        for call, msg in info["said"].items():
            assert msg is not None, f"{call} accepted a tensor-parallel model"
            assert msg.startswith("model: LlamaForCausalLM holds DTensor weights over 2 ranks (tp_plan"), msg
            assert "pipeline_intervenable" in msg and "device_map" in msg, msg
            assert len(msg) <= 300 and msg.count("\n") <= 2, msg
