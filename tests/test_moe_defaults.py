"""Defaults that follow the family (issue 24, item 6): Mixtral and Qwen2-MoE have no single MLP activation
module, so ``causal_trace`` with its default streams traces the MoE block's output as the MLP panel.

Each trace with default arguments (one prompt, and a dataset of that prompt) is compared with a trace
written out with HF forward hooks: the input embeddings of the subject noised (ROME's Gaussian, numpy
``RandomState(seed)``, 3 x the std of the embedding matrix), and the clean output of the restored module
(decoder layer, MoE block, attention) written back at one position, per cell. ``prefix=False`` only
keeps the test from exporting a KV-cache graph (the prefix reuse computes the same numbers).
"""

import numpy as np
import pytest
import torch
from _tiny import AVAILABLE, make_tiny

import fxvene as pv
from fxvene.models import family_for
from fxvene.models.defaults import TRACE_STREAMS, stream_changes, trace_streams

FAMILIES = [f for f in ("mixtral", "qwen2_moe") if f in AVAILABLE]
IDS = [3, 9, 12, 5, 7, 20]
SUBJECT = [1, 2]
TARGET = 11


@pytest.fixture(scope="module", params=FAMILIES)
def moe(request):
    return request.param, make_tiny(request.param)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, value):
    return (value,) + tuple(out[1:]) if isinstance(out, tuple) else value


def _modules(model):
    layers = model.model.layers

    def moe_block(l):
        return getattr(layers[l], "block_sparse_moe", None) or layers[l].mlp

    return {
        "block_output": lambda l: layers[l],
        "mlp_output": moe_block,
        "attention_output": lambda l: layers[l].self_attn,
    }


def hook_trace(model, streams, n_samples=10, window=10, seed=1):
    """ROME's causal trace with forward hooks, every position and layer: ``probs[stream, position, layer]``."""
    mods = _modules(model)
    n_layers = model.config.num_hidden_layers
    ids = torch.tensor([IDS])
    clean, handles = {}, []
    for st in streams:
        for l in range(n_layers):
            record = lambda m, i, o, k=(st, l): clean.__setitem__(k, _first(o).detach().clone())  # noqa: E731
            handles.append(mods[st](l).register_forward_hook(record))
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    emb = model.get_input_embeddings()
    level = 3 * float(emb.weight.detach().float().std())
    noise = torch.from_numpy(np.random.RandomState(seed).randn(n_samples, len(SUBJECT), emb.weight.shape[1]))

    def corrupt(m, i, o):
        o = o.clone()
        o[:, SUBJECT] = (o[:, SUBJECT].double() + noise * level).to(o.dtype)
        return o

    probs = torch.zeros(len(streams), len(IDS), n_layers)
    for si, st in enumerate(streams):
        for p in range(len(IDS)):
            for l in range(n_layers):
                lays = (
                    [l] if st == "block_output" else range(max(0, l - window // 2), min(n_layers, l - (-window // 2)))
                )
                handles = [emb.register_forward_hook(corrupt)]
                for lay in lays:

                    def restore(m, i, o, k=(st, lay), p=p):
                        x = _first(o).clone()
                        x[:, p] = clean[k][0, p]
                        return _with_first(o, x)

                    handles.append(mods[st](lay).register_forward_hook(restore))
                with torch.no_grad():
                    logits = model(input_ids=ids.expand(n_samples, -1)).logits[:, -1]
                for h in handles:
                    h.remove()
                probs[si, p, l] = torch.softmax(logits.float(), -1)[:, TARGET].mean()
    return probs


def test_default_streams_follow_the_family(moe):
    """The MoE families have no mlp_activation: the MLP panel is mlp_output; the dense Llama keeps pyvene's."""
    name, model = moe
    fam, _ = family_for(model)
    assert "mlp_activation" not in fam.components
    assert trace_streams(fam.components) == ("block_output", "mlp_output", "attention_output")
    assert stream_changes(fam.components) == {"mlp_activation": "mlp_output"}
    llama, _ = family_for(make_tiny("llama"))
    assert trace_streams(llama.components) == TRACE_STREAMS
    assert stream_changes(llama.components) == {}


def test_causal_trace_defaults_equal_hooks(moe):
    """``pv.causal_trace(model, inputs, subject_positions=..., target_token=...)`` with every other argument
    at its default runs on the MoE family and equals the hook-written trace of the streams it chose."""
    name, model = moe
    res = pv.causal_trace(
        model, {"input_ids": torch.tensor([IDS])}, subject_positions=SUBJECT, target_token=TARGET, prefix=False
    )
    assert list(res.streams) == ["block_output", "mlp_output", "attention_output"]
    assert "mlp_output (window 10)" in repr(res)  # the summary says which stream stands for the MLP
    ref = hook_trace(model, res.streams)
    torch.testing.assert_close(res.probs.float(), ref, atol=1e-5, rtol=1e-4)


def test_dataset_trace_defaults_equal_hooks(moe):
    """The dataset call (what ``fxvene trace-facts`` runs) takes the same default streams."""
    name, model = moe
    facts = [{"input_ids": IDS, "subject_positions": SUBJECT, "target_token": TARGET}]
    res = pv.causal_trace(model, facts, only_correct=False, prefix=False)
    (one,) = res.results
    assert list(one.streams) == ["block_output", "mlp_output", "attention_output"]
    torch.testing.assert_close(one.probs.float(), hook_trace(model, one.streams), atol=1e-5, rtol=1e-4)
