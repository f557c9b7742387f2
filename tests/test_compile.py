"""Compile once (issues 4 and 11): calls that differ only in data or sizes cause zero recompiles,
batch 1 included (torch specialises size 1 unless the batch dim is marked unbacked: fxvene/graph/compile.py).

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


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_no_recompile_from_batch_one_and_back(which, gpt2, llama, capfd):
    """Batch 1 -> 2 -> 7 -> 1 and new sequence lengths: torch specialises sizes 0 and 1 unless told
    otherwise; the first call (batch 1) must compile a graph that serves every later batch and length."""
    model = gpt2 if which == "gpt2" else llama
    torch._dynamo.reset()
    counters.clear()
    cnt = CompileCounter()
    iv = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), model).compile(backend=cnt)
    g = torch.Generator().manual_seed(2)
    frames = None
    for b, s, p in [(1, 6, 1), (2, 6, 3), (7, 9, 2), (1, 7, 5), (2, 4, 0), (1, 6, 2)]:
        base = {"input_ids": torch.randint(0, 50, (b, s), generator=g)}
        src = {"input_ids": torch.randint(0, 50, (b, s), generator=g)}
        _, out = iv(base, [src], unit_locations={"sources->base": p})
        torch.testing.assert_close(out.logits, _pyvene(model, "block_output", 1, base, src, p), atol=1e-5, rtol=1e-5)
        # the caller's tensors are not left marked dynamic for another torch.compile
        assert not hasattr(base["input_ids"], "_dynamo_unbacked_indices")
        if frames is None:
            frames = cnt.frame_count
            graphs = counters["stats"]["unique_graphs"]
            assert frames >= 2
            assert "compiling the intervened graph" in capfd.readouterr().err  # says so, once
    assert cnt.frame_count == frames, "a new batch size (or length) recompiled"
    assert counters["stats"]["unique_graphs"] == graphs
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert "compiling" not in capfd.readouterr().err


def test_no_recompile_with_source_representations_and_broadcast(gpt2):
    """Intervention data as tensors: per-example source_representations across batch sizes, and a
    steering vector that broadcasts over the batch, give pyvene's numbers without recompiling."""
    torch._dynamo.reset()
    cnt = CompileCounter()
    iv = pv.IntervenableModel(pv.RepresentationConfig(2, "mlp_output"), gpt2).compile(backend=cnt)
    ref = pyvene.IntervenableModel(pyvene.IntervenableConfig([pyvene.RepresentationConfig(2, "mlp_output")]), gpt2)
    g = torch.Generator().manual_seed(3)
    frames = None
    for b, s in [(2, 6), (3, 8), (7, 5)]:
        base = {"input_ids": torch.randint(0, 50, (b, s), generator=g)}
        rep = torch.randn(b, 1, 24, generator=g)
        _, out = iv(base, source_representations=rep, unit_locations={"base": 1})
        _, want = ref(base, source_representations=rep, unit_locations={"base": 1})
        torch.testing.assert_close(out.logits, want.logits, atol=1e-5, rtol=1e-5)
        frames = cnt.frame_count if frames is None else frames
    assert cnt.frame_count == frames


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
        ref_iv = pyvene.IntervenableModel(
            pyvene.IntervenableConfig([pyvene.RepresentationConfig(2, "mlp_output")]), gpt2
        )
        _, ref = ref_iv(base, source_representations=srcrep, unit_locations={"base": 2})
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert len(iv.__dict__.get("_compiled_graphs", {})) == 1


def test_compile_rejects_bad_options(gpt2):
    with pytest.raises(TypeError, match="compile"):
        pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), gpt2, compile="yes")
