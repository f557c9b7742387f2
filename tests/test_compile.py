"""Compile once (issue 4): calls that differ only in data or sizes cause zero recompiles.

Recompiles are counted with torch's own counters (a CompileCounter backend: every frame
Dynamo compiles calls it once; ``torch._dynamo.utils.counters``). Outputs are compared with
pyvene 0.1.8 on the same calls. One AOTAutograd compile checks the functionalized graph's numbers.
"""
import pytest
import pyvene
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import fxvene as pv


def _pyvene(model, comp, layer, base, src, pos):
    iv = pyvene.IntervenableModel(pyvene.IntervenableConfig([pyvene.RepresentationConfig(layer, comp)]), model)
    _, out = iv(base, [src], unit_locations={"sources->base": pos})
    return out.logits


def test_zero_recompiles_across_values_locations_batch_and_length(gpt2):
    torch._dynamo.reset()
    counters.clear()
    cnt = CompileCounter()
    iv = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), gpt2).compile(backend=cnt)
    g = torch.Generator().manual_seed(0)
    frames = None
    for b, s, p in [(2, 6, 1), (2, 6, 3), (4, 9, 2), (3, 7, 5), (8, 12, 0), (2, 5, 4)]:
        base = {"input_ids": torch.randint(0, 50, (b, s), generator=g)}
        src = {"input_ids": torch.randint(0, 50, (b, s), generator=g)}
        _, out = iv(base, [src], unit_locations={"sources->base": p})
        torch.testing.assert_close(out.logits, _pyvene(gpt2, "block_output", 1, base, src, p), atol=1e-5, rtol=1e-5)
        if frames is None:
            frames = cnt.frame_count
            graphs = counters["stats"]["unique_graphs"]
            assert frames >= 2  # the source graph and the base graph were compiled
    assert cnt.frame_count == frames, "a call that changed only data or sizes recompiled"
    # no graph breaks either (the swap slices with interchange_dim as a Python int, not a tensor's .item())
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == graphs


def test_compile_option_and_inductor_numbers(gpt2):
    """``IntervenableModel(..., compile={...})``: one compile through AOTAutograd (functionalized,
    as inductor sees it; inductor's own codegen costs ~90 s on 2 CPU cores and runs in benchmarks/)."""
    torch._dynamo.reset()
    iv = pv.IntervenableModel(pv.RepresentationConfig(2, "mlp_output"), gpt2, compile={"backend": "aot_eager"})
    g = torch.Generator().manual_seed(1)
    for b, s in [(2, 6), (3, 8)]:
        base = {"input_ids": torch.randint(0, 50, (b, s), generator=g)}
        srcrep = torch.randn(b, 1, 24, generator=g)
        _, out = iv(base, source_representations=srcrep, unit_locations={"base": 2})
        ref_iv = pyvene.IntervenableModel(pyvene.IntervenableConfig([pyvene.RepresentationConfig(2, "mlp_output")]), gpt2)
        _, ref = ref_iv(base, source_representations=srcrep, unit_locations={"base": 2})
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert len(iv.__dict__.get("_compiled_graphs", {})) == 1


def test_compile_rejects_bad_options(gpt2):
    with pytest.raises(TypeError, match="compile"):
        pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), gpt2, compile="yes")
