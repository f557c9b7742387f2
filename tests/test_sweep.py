"""Sweeps (issue 4): slice/readout passes, patching grids and ROME causal tracing.

Oracles: the HF model's own forward and pyvene 0.1.8's per-cell loops.
"""

import numpy as np
import pytest
import pyvene
import torch
from _matrix import cell
from conftest import frontends, make_gpt2

import fxvene as pv
from fxvene.graph.sites import resolve_site
from fxvene.graph.tracing import export_graph, trace
from fxvene.passes.locate import module_paths
from fxvene.passes.slice import boundary_after, heavy_nodes, segment
from fxvene.passes.sweep import readout
from fxvene.sweeps.core import PYVENE_NOISE_LEVEL, window_layers
from fxvene.sweeps.results import plot_causal_trace
from fxvene.sweeps.sweep import causal_trace, patching_sweep

PROMPT = torch.tensor([[5, 9, 13, 2, 44, 7]])
TARGET = 11


@pytest.fixture(scope="module")
def gpt4():
    return make_gpt2(n_layer=4)


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


# ------------------------------------------------------------------------------- passes


@pytest.mark.parametrize("frontend", frontends())
def test_segment_pass_reproduces_forward_and_drops_lower_blocks(gpt2, frontend):
    traced = trace(gpt2, tracer=frontend)
    gm = traced.gm
    cut = boundary_after(gm, resolve_site(traced, gpt2, "block_output", 1).node)
    pre, _, outs = segment(gm, None, cut)
    seg, ins, none = segment(gm, cut, None)
    assert ins == outs and none is None
    # nothing of blocks 0 and 1 is left in the sliced graph (only its light mask/size inputs)
    heavy = heavy_nodes(seg)
    for n in seg.graph.nodes:
        paths = module_paths(n)
        assert not any(p.startswith(("transformer.h.0", "transformer.h.1")) for p in paths if n.name in heavy), n.name
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        mid = pre(input_ids=ids, attention_mask=mask)
        kw = {f"fxv_in_{k}": v for k, v in zip(ins, mid)}
        for name in seg.meta.get("fxvene_shape_inputs", ()):
            v = dict(zip(ins, mid)).get(name)
            kw["fxv_shape_" + name] = torch.empty(()).expand(3, 7, 24) if v is None else v
        out = seg(input_ids=ids, attention_mask=mask, **kw)
    torch.testing.assert_close(out[0], _hf_logits(gpt2, ids), atol=1e-5, rtol=1e-5)
    # the input graph is untouched
    assert len(list(gm.graph.nodes)) == len(list(trace(gpt2, tracer=frontend).gm.graph.nodes))


def test_segment_pass_keeps_in_place_fills_of_light_views():
    """A light value filled in place through a view (``mask[:, :2] = m``, export: slice + copy_) is
    recomputed in full by a segment that starts after it."""

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x, m):
            mask = torch.zeros(x.shape[0], 4)
            mask[:, :2] = m[:, :2]  # before the cut: the segment must redo it
            h = self.lin(x)
            return (self.lin(h) + mask,)

    toy = Toy()
    x, m = torch.randn(3, 4), torch.randn(3, 4)
    gm = torch.export.export(toy, (x, m)).module()
    export_graph(gm)  # as fxvene's export frontend leaves it
    gm.recompile()
    first = next(n for n in gm.graph.nodes if n.op == "call_function" and "linear" in str(n.target))
    seg, ins, _ = segment(gm, boundary_after(gm, first.name), None)
    assert ins == [first.name]
    with torch.no_grad():
        out = seg(x, m, **{f"fxv_in_{first.name}": toy.lin(x)})
        torch.testing.assert_close(out[0], toy(x, m)[0])


@pytest.mark.parametrize("frontend", frontends())
def test_readout_pass_last_position_and_tokens(gpt2, frontend):
    gm = trace(gpt2, tracer=frontend).gm
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    ref = _hf_logits(gpt2, ids)
    last = readout(gm)
    with torch.no_grad():
        got = last(input_ids=ids, attention_mask=torch.ones_like(ids))[0]
    assert got.shape == (2, 50)
    torch.testing.assert_close(got, ref[:, -1], atol=1e-5, rtol=1e-5)
    tok = readout(gm, tokens=True)
    with torch.no_grad():
        got = tok(input_ids=ids, attention_mask=torch.ones_like(ids), fxv_tokens=torch.tensor([3, 7, 11]))[0]
    torch.testing.assert_close(got, ref[:, -1, [3, 7, 11]], atol=1e-5, rtol=1e-5)
    # no node computes logits for every position any more
    for n in tok.graph.nodes:
        v = n.meta.get("val")
        assert not (isinstance(v, torch.Tensor) and v.dim() == 3 and v.shape[-1] == 50), n.name


# ------------------------------------------------------------------------------- patching sweeps


def _pyvene_patch(model, comp, layer, pos, base, src):
    iv = pyvene.IntervenableModel(pyvene.IntervenableConfig([pyvene.RepresentationConfig(layer, comp)]), model)
    _, out = iv(base, [src], unit_locations={"sources->base": pos})
    return out.logits[:, -1]


@cell("gpt2", "patching_sweep")
@pytest.mark.parametrize("frontend", frontends())
def test_patching_sweep_equals_pyvene_per_cell(gpt4, frontend):
    g = torch.Generator().manual_seed(3)
    base = {"input_ids": torch.randint(0, 50, (2, 6), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (2, 6), generator=g)}
    comps = ["block_output", "mlp_activation", "attention_output"]
    r = patching_sweep(gpt4, base, src, components=comps, tracer=frontend, progress=False)
    assert r.values.shape == (3, 4, 6, 2, 50)
    torch.testing.assert_close(r.base, _hf_logits(gpt4, base["input_ids"])[:, -1], atol=1e-5, rtol=1e-5)
    for ci, comp in enumerate(comps):
        for layer in range(4):
            for pos in (0, 3, 5):
                ref = _pyvene_patch(gpt4, comp, layer, pos, base, src)
                torch.testing.assert_close(r.values[ci, layer, pos], ref, atol=1e-5, rtol=1e-5)


def test_patching_sweep_llama_and_tokens(llama):
    g = torch.Generator().manual_seed(4)
    base = {"input_ids": torch.randint(0, 50, (1, 5), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (1, 5), generator=g)}
    r = patching_sweep(llama, base, src, components="block_output", tokens=[4, 9], progress=False)
    assert r.values.shape == (1, 3, 5, 1, 2)
    for layer in range(3):
        for pos in range(5):
            ref = _pyvene_patch(llama, "block_output", layer, pos, base, src)[:, [4, 9]]
            torch.testing.assert_close(r.values[0, layer, pos], ref, atol=1e-5, rtol=1e-5)
    p = patching_sweep(llama, base, src, components="block_output", tokens=[4, 9], metric="prob", progress=False)
    ref = torch.softmax(_pyvene_patch(llama, "block_output", 1, 2, base, src), -1)[:, [4, 9]]
    torch.testing.assert_close(p.values[0, 1, 2], ref, atol=1e-6, rtol=1e-5)


def test_head_sweep_equals_pyvene(gpt4):
    g = torch.Generator().manual_seed(5)
    base = {"input_ids": torch.randint(0, 50, (1, 5), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (1, 5), generator=g)}
    r = patching_sweep(
        gpt4, base, src, components="head_attention_value_output", layers=[1, 3], positions=[2, 4], progress=False
    )
    assert r.values.shape == (1, 2, 2, 4, 1, 50)
    for li, layer in enumerate([1, 3]):
        for pi, pos in enumerate([2, 4]):
            for h in range(4):
                rep = pyvene.RepresentationConfig(layer, "head_attention_value_output", "h.pos")
                iv = pyvene.IntervenableModel(pyvene.IntervenableConfig([rep]), gpt4)
                loc = [[[[h]], [[pos]]]]
                _, out = iv(base, [src], unit_locations={"sources->base": (loc, loc)})
                torch.testing.assert_close(r.values[0, li, pi, h], out.logits[:, -1], atol=1e-5, rtol=1e-5)


def test_chunking_gives_the_same_results(gpt4):
    g = torch.Generator().manual_seed(6)
    base = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    full = patching_sweep(gpt4, base, src, components=["block_output", "mlp_activation"], progress=False)
    for max_rows in (1, 7):
        part = patching_sweep(
            gpt4, base, src, components=["block_output", "mlp_activation"], max_rows=max_rows, progress=False
        )
        torch.testing.assert_close(part.values, full.values, atol=1e-6, rtol=1e-6)
    ct = causal_trace(gpt4, {"input_ids": PROMPT}, [0, 1], TARGET, n_samples=3, window=2, progress=False)
    ct7 = causal_trace(gpt4, {"input_ids": PROMPT}, [0, 1], TARGET, n_samples=3, window=2, max_rows=7, progress=False)
    torch.testing.assert_close(ct7.probs, ct.probs, atol=1e-7, rtol=1e-6)


# ------------------------------------------------------------------------------- causal tracing


def _pyvene_trace_cell(model, stream, layer, pos, window, n_layers, prompt=PROMPT):
    lays = [layer] if stream == "block_output" else window_layers(layer, window, n_layers)
    reps = [pyvene.RepresentationConfig(0, "block_input")] + [pyvene.RepresentationConfig(i, stream) for i in lays]
    cfg = pyvene.IntervenableConfig(
        representations=reps, intervention_types=[pyvene.NoiseIntervention] + [pyvene.VanillaIntervention] * len(lays)
    )
    iv = pyvene.IntervenableModel(cfg, model)
    n = len(lays)
    base = {"input_ids": prompt}
    _, out = iv(
        base, [None] + [base] * n, {"sources->base": ([None] + [[[pos]]] * n, [[[0, 1, 2, 3]]] + [[[pos]]] * n)}
    )
    return torch.softmax(out.logits[0, -1], -1)[TARGET].item()


TRACE_STREAMS = ("block_output", "mlp_activation", "attention_output")


@pytest.fixture(scope="module")
def pyvene_trace(gpt4):
    """pyvene 0.1.8's causal trace of PROMPT on ``gpt4``, one IntervenableModel per cell (streams x
    positions x layers, window 3): the reference of every causal-trace test below that traces the same
    prompt with the same seed (per frontend, compiled), computed once."""
    ref = np.zeros((3, 6, 4))
    for si, st in enumerate(TRACE_STREAMS):
        for p in range(6):
            for l in range(4):
                ref[si, p, l] = _pyvene_trace_cell(gpt4, st, l, p, 3, 4)
    return ref


@cell("gpt2", "causal_trace")
@pytest.mark.parametrize("frontend", frontends())
def test_causal_trace_equals_pyvene_loop(gpt4, frontend, pyvene_trace):
    r = causal_trace(
        gpt4,
        {"input_ids": PROMPT},
        [0, 1, 2, 3],
        TARGET,
        noise_level=PYVENE_NOISE_LEVEL,
        n_samples=1,
        seed=1,
        window=3,
        tracer=frontend,
        progress=False,
    )
    assert r.probs.shape == (3, 6, 4)
    assert tuple(r.streams) == TRACE_STREAMS
    np.testing.assert_allclose(r.probs.numpy(), pyvene_trace, atol=1e-4)
    clean = torch.softmax(_hf_logits(gpt4, PROMPT)[0, -1], -1)[TARGET].item()
    assert abs(r.clean_prob - clean) < 1e-6
    # restoring the last layer's block output at the last position restores the clean output
    assert abs(r.probs[0, -1, -1].item() - clean) < 1e-6


def test_causal_trace_samples_average_and_default_noise(gpt4):
    one = causal_trace(
        gpt4,
        {"input_ids": PROMPT},
        [1, 2],
        TARGET,
        n_samples=1,
        seed=1,
        window=2,
        streams="block_output",
        progress=False,
    )
    two = causal_trace(
        gpt4,
        {"input_ids": PROMPT},
        [1, 2],
        TARGET,
        n_samples=2,
        seed=1,
        window=2,
        streams="block_output",
        progress=False,
    )
    std = float(gpt4.get_input_embeddings().weight.std())
    assert abs(two.noise_level - 3 * std) < 1e-6
    # hand-written corrupted forward for sample 1: noise rows 2..3 of RandomState(1).randn(2, 2, d)
    noise = np.random.RandomState(1).randn(2, 2, 24)
    with torch.no_grad():
        emb = gpt4.transformer.wte(PROMPT)  # the model adds the position embeddings itself
        probs = []
        for s in range(2):
            e = emb.clone()
            e[:, 1:3] = (e[:, 1:3].double() + torch.from_numpy(noise[s]) * two.noise_level).float()
            probs.append(torch.softmax(gpt4(inputs_embeds=e).logits[0, -1], -1)[TARGET].item())
    assert abs(two.corrupted_prob - np.mean(probs)) < 1e-5
    assert abs(one.corrupted_prob - probs[0]) < 1e-5


def test_seed_tutorial_2_runs_any_prompt_length(gpt4):
    """Tutorial 2 as written: Noise@block_input L0 + Vanilla@block_output L, ``sources=[clean]``,
    no unit_locations. Without locations the Vanilla restores the whole block output from the
    clean run, so every layer gives the clean probability; fxvene's Noise covers every position
    (pyvene's only works for exactly 4)."""
    for length in (4, 7):
        clean_inputs = {"input_ids": torch.arange(3, 3 + length)[None]}
        clean_prob = torch.softmax(_hf_logits(gpt4, clean_inputs["input_ids"])[0, -1], -1)[TARGET].item()
        results = []
        for restore_layer in range(gpt4.config.n_layer):
            config = pv.IntervenableConfig(
                representations=[
                    pv.RepresentationConfig(layer=0, component="block_input", intervention_type=pv.NoiseIntervention),
                    pv.RepresentationConfig(
                        layer=restore_layer, component="block_output", intervention_type=pv.VanillaIntervention
                    ),
                ]
            )
            intervenable = pv.IntervenableModel(config, gpt4)
            _, outputs = intervenable(base=clean_inputs, sources=[clean_inputs])
            results.append(torch.softmax(outputs.logits[0, -1], dim=-1)[TARGET].item())
            if length == 4:  # pyvene runs this length: same numbers
                pcfg = pyvene.IntervenableConfig(
                    representations=[
                        pyvene.RepresentationConfig(
                            layer=0, component="block_input", intervention_type=pyvene.NoiseIntervention
                        ),
                        pyvene.RepresentationConfig(
                            layer=restore_layer, component="block_output", intervention_type=pyvene.VanillaIntervention
                        ),
                    ]
                )
                _, pout = pyvene.IntervenableModel(pcfg, gpt4)(base=clean_inputs, sources=[clean_inputs, clean_inputs])
                assert abs(torch.softmax(pout.logits[0, -1], -1)[TARGET].item() - results[-1]) < 1e-5
        np.testing.assert_allclose(results, clean_prob, atol=1e-5)


def test_plot_causal_trace(gpt4, tmp_path):
    pytest.importorskip("matplotlib")
    r = causal_trace(gpt4, {"input_ids": PROMPT}, [0, 1], TARGET, n_samples=1, window=2, progress=False)
    path = tmp_path / "trace.png"
    plot_causal_trace(r, tokens=[f"t{i}" for i in range(6)], path=str(path))
    assert path.stat().st_size > 1000


# ------------------------------------------------------------------------------- causal prefix


def test_chunk_step_graph_matches_hf_with_a_cached_past(llama):
    """The graph prefix-reusing sweeps run: an S-token chunk after P cached positions gives the
    logits of the whole sequence (HF's own forward); also with no past (P=0) and one-token chunks."""
    from fxvene.api.generation import flat_cache, step_graph

    sg = step_graph(llama, "chunk")
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = _hf_logits(llama, ids)[:, -1]
        for p in (0, 1, 4, 6):
            if p:
                pkv = llama(input_ids=ids[:, :p], use_cache=True).past_key_values
                past = [t for kv in pkv for t in kv] if isinstance(pkv, tuple) else flat_cache(pkv)
            else:
                past = [torch.zeros(2, 2, 0, 8)] * sg.n_kv
            got = sg.gm(ids[:, p:], mask, torch.arange(p, 7).expand(2, -1), *past)[0]
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_prefix_rows_run_only_the_positions_from_the_patched_one(gpt4):
    """A cell restoring block_output of layer 1 at position 2 recomputes nothing below layer 1 and
    only positions 2.. above it (the last block's tail: only the last position); same number as pyvene."""
    from fxvene.sweeps.engine import SweepEngine

    g = torch.Generator().manual_seed(9)
    base = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    eng = SweepEngine(gpt4, [("block_output", l) for l in range(4)], prefix=True)
    assert eng.prefix
    seen = []
    for i, seg in enumerate(eng.segments):  # the packed variants (a row in a lane of its own length) too
        seg.fn = (lambda fn, i: lambda **kw: (seen.append((i, kw["input_ids"].shape[1])), fn(**kw))[1])(seg.fn, i)
        if seg.pfn is not None:
            seg.pfn = (lambda fn, i: lambda **kw: (seen.append((i, kw["input_ids"].shape[1])), fn(**kw))[1])(seg.pfn, i)
    b, s = eng.prepare(base), eng.prepare(src)
    seen.clear()
    loc = np.full((1, 4), -1)
    loc[0, 1] = 2
    out = eng.run_rows(b, s, {"sample": np.array([0]), "loc": loc, "head": None}, progress=False)
    assert seen[0][0] == eng.seg_of_site[1]
    assert {n for i, n in seen if not eng.segments[i].tail} == {4}
    assert {n for i, n in seen if eng.segments[i].tail} == {1}
    torch.testing.assert_close(out, _pyvene_patch(gpt4, "block_output", 1, 2, base, src), atol=1e-5, rtol=1e-5)


def test_prefix_causal_trace_llama_equals_pyvene_loop(llama):
    """Rotary positions: rows that start at position p must rotate positions p.. (not 0..)."""
    prompt = torch.tensor([[5, 9, 13, 2, 44, 7]])
    r = causal_trace(
        llama,
        {"input_ids": prompt},
        [0, 1, 2, 3],
        TARGET,
        noise_level=PYVENE_NOISE_LEVEL,
        n_samples=1,
        seed=1,
        window=3,
        prefix=True,
        progress=False,
    )
    ref = np.zeros((3, 6, 3))
    for si, st in enumerate(r.streams):
        for p in range(6):
            for l in range(3):
                ref[si, p, l] = _pyvene_trace_cell(llama, st, l, p, 3, 3, prompt)
    np.testing.assert_allclose(r.probs.numpy(), ref, atol=1e-4)


@pytest.mark.parametrize("quantum", [3, 8])
def test_prefix_row_groups_starting_before_the_patched_position_equal_pyvene(gpt4, monkeypatch, quantum):
    """Rows are grouped by first patched position rounded down to a multiple of ``offset_quantum``: a
    row may recompute a few unchanged positions before its patch (8: every row starts at 0)."""
    from fxvene.sweeps.engine import SweepEngine

    monkeypatch.setattr(SweepEngine, "offset_quantum", quantum)
    g = torch.Generator().manual_seed(11)
    base = {"input_ids": torch.randint(0, 50, (1, 8), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (1, 8), generator=g)}
    comps = ["block_output", "mlp_activation"]
    r = patching_sweep(gpt4, base, src, components=comps, layers=[1, 2], prefix=True, progress=False)
    for ci, comp in enumerate(comps):
        for li, layer in enumerate([1, 2]):
            for pos in range(8):
                ref = _pyvene_patch(gpt4, comp, layer, pos, base, src)
                torch.testing.assert_close(r.values[ci, li, pos], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("costs,quantum", [((1.0, 0.0, 1.0), 7), ((0.0, 1.0, 0.0), 1), ((1.0, 0.5, 3.0), None)])
def test_prefix_plan_chosen_by_cost_equals_pyvene(gpt4, monkeypatch, costs, quantum):
    """The row groups are chosen by expected cost (a fixed cost per segment call, a cost per
    row-position, a fixed cost of the LM-head call): calls only -> one group of full-length rows; positions only -> one group per
    start position; both -> in between. Every choice gives pyvene's numbers."""
    from fxvene.sweeps.engine import SweepEngine

    monkeypatch.setattr(SweepEngine, "_costs", lambda self, base: costs)
    monkeypatch.setattr(SweepEngine, "pack", False)  # the start-position groups, not lanes
    g = torch.Generator().manual_seed(13)
    base = {"input_ids": torch.randint(0, 50, (1, 7), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (1, 7), generator=g)}
    eng = SweepEngine(gpt4, [("block_output", l) for l in range(4)], prefix=True)
    b, s = eng.prepare(base), eng.prepare(src)
    cells = [(l, p) for l in range(4) for p in range(7)]
    loc = np.full((len(cells), 4), -1)
    for r, (l, p) in enumerate(cells):
        loc[r, l] = p
    out = eng.run_rows(b, s, {"sample": np.zeros(len(cells), dtype=np.int64), "loc": loc, "head": None}, progress=False)
    if quantum is not None:
        assert eng.last_quantum == quantum
    else:
        assert 1 <= eng.last_quantum <= 7
    for r, (l, p) in enumerate(cells):
        torch.testing.assert_close(
            out[r : r + 1], _pyvene_patch(gpt4, "block_output", l, p, base, src), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_sweep_left_padded_batch_equals_pyvene(which, prefix, gpt4, llama):
    """Padding masks are light values every segment recomputes, in-place fills included (transformers
    4.47 fills a slice of the causal mask in place)."""
    model = gpt4 if which == "gpt2" else llama
    g = torch.Generator().manual_seed(10)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    base = {"input_ids": torch.randint(0, 50, (2, 6), generator=g), "attention_mask": mask}
    src = {"input_ids": torch.randint(0, 50, (2, 6), generator=g), "attention_mask": mask.flip(0)}
    comps = ["block_output", "attention_output"]
    r = patching_sweep(
        model, base, src, components=comps, layers=[0, 2], prefix=prefix, tracer="export", progress=False
    )
    for ci, comp in enumerate(comps):
        for li, layer in enumerate([0, 2]):
            for pos in range(6):
                ref = _pyvene_patch(model, comp, layer, pos, base, src)
                torch.testing.assert_close(r.values[ci, li, pos], ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- errors


def test_bad_inputs_raise(gpt4):
    x = {"input_ids": PROMPT}
    with pytest.raises(ValueError, match="subject_positions"):
        causal_trace(gpt4, x, [0, 9], TARGET)
    with pytest.raises(ValueError, match="subject_positions"):
        causal_trace(gpt4, x, [], TARGET)
    with pytest.raises(ValueError, match="target_token"):
        causal_trace(gpt4, x, [0], 50)
    with pytest.raises(ValueError, match="n_samples"):
        causal_trace(gpt4, x, [0], TARGET, n_samples=0)
    with pytest.raises(ValueError, match="streams"):
        causal_trace(gpt4, x, [0], TARGET, streams=("nope",))
    with pytest.raises(ValueError, match="window"):
        causal_trace(gpt4, x, [0], TARGET, window=0)
    with pytest.raises(ValueError, match="batch"):
        causal_trace(gpt4, {"input_ids": PROMPT.expand(2, 6)}, [0], TARGET)
    with pytest.raises(ValueError, match="layers"):
        causal_trace(gpt4, x, [0], TARGET, layers=[4])
    with pytest.raises(TypeError, match="inputs"):
        causal_trace(gpt4, PROMPT, [0], TARGET)
    src7 = {"input_ids": torch.zeros(1, 7, dtype=torch.long)}
    with pytest.raises(ValueError, match="same length"):
        patching_sweep(gpt4, x, src7)
    with pytest.raises(ValueError, match="positions"):
        patching_sweep(gpt4, x, x, positions=[6])
    with pytest.raises(ValueError, match="tokens"):
        patching_sweep(gpt4, x, x, tokens=[50])
    with pytest.raises(ValueError, match="metric"):
        patching_sweep(gpt4, x, x, metric="kl")
    with pytest.raises(ValueError, match="unknown component"):
        patching_sweep(gpt4, x, x, components="nope")
    with pytest.raises(ValueError, match="heads"):
        patching_sweep(gpt4, x, x, heads=[0])
    with pytest.raises(TypeError, match="plot_causal_trace|CausalTraceResult"):
        plot_causal_trace(object())
    with pytest.raises(ValueError, match="prefix"):
        patching_sweep(gpt4, x, x, prefix="yes")
    with pytest.raises(TypeError, match="compile"):
        patching_sweep(gpt4, x, x, compile="yes")
    with pytest.raises(ValueError, match="prefix=True.*export"):
        causal_trace(gpt4, x, [0], TARGET, tracer="hf_fx", prefix=True)


# ------------------------------------------------------------------------------- compiled sweeps


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_compiled_prefix_sweep_equals_pyvene_and_compiles_once(which, gpt4, llama, capfd):
    """compile=True with the causal prefix (issue 11): every segment is compiled once, on the first
    call, with rows unbacked and positions dynamic; a second prompt of another length and a finer
    grid (other row counts, start positions, past lengths) reuse the code; pyvene's numbers."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    model = gpt4 if which == "gpt2" else llama
    n_layers = 4 if which == "gpt2" else 3
    torch._dynamo.reset()
    cnt = CompileCounter()
    comps = ["block_output", "attention_output"]
    g = torch.Generator().manual_seed(12)
    frames = None
    for seq, positions in [(6, None), (8, [0, 3, 7]), (5, [4])]:
        base = {"input_ids": torch.randint(0, 50, (1, seq), generator=g)}
        src = {"input_ids": torch.randint(0, 50, (1, seq), generator=g)}
        r = patching_sweep(
            model,
            base,
            src,
            components=comps,
            layers=[0, n_layers - 1],
            positions=positions,
            prefix=True,
            compile={"backend": cnt},
            progress=False,
        )
        for ci, comp in enumerate(comps):
            for li, layer in enumerate([0, n_layers - 1]):
                for pi, pos in enumerate(positions or range(seq)):
                    ref = _pyvene_patch(model, comp, layer, pos, base, src)
                    torch.testing.assert_close(r.values[ci, li, pi], ref, atol=1e-5, rtol=1e-5)
        if frames is None:
            frames = cnt.frame_count
            assert frames > 0
            assert "compiling the sweep" in capfd.readouterr().err
    assert cnt.frame_count == frames, "a new prompt length or grid recompiled a segment"
    assert "compiling" not in capfd.readouterr().err


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's own
def test_inductor_prefix_sweep_one_row_reaches_the_tail_equals_pyvene():
    """The default backend (inductor) on a batch-1 prompt: the tail segments get one-position rows that
    are views with the full length's strides; inductor once emitted a guard on an unbound stride symbol
    there (NameError at run time). Every cell equals pyvene's."""
    import torch._dynamo

    torch._dynamo.reset()
    model = make_gpt2(n_layer=2)
    g = torch.Generator().manual_seed(5)
    base = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (1, 6), generator=g)}
    r = patching_sweep(
        model,
        base,
        src,
        components=["block_output"],
        layers=[0],
        positions=[2, 5],
        prefix=True,
        compile=True,
        progress=False,
    )
    for pi, pos in enumerate([2, 5]):
        ref = _pyvene_patch(model, "block_output", 0, pos, base, src)
        torch.testing.assert_close(r.values[0, 0, pi], ref, atol=1e-5, rtol=1e-5)


def test_compiled_causal_trace_with_prefix_equals_pyvene_loop(gpt4, pyvene_trace):
    import torch._dynamo

    torch._dynamo.reset()
    r = causal_trace(
        gpt4,
        {"input_ids": PROMPT},
        [0, 1, 2, 3],
        TARGET,
        noise_level=PYVENE_NOISE_LEVEL,
        n_samples=1,
        seed=1,
        window=3,
        prefix=True,
        compile={"backend": "eager"},
        progress=False,
    )
    assert tuple(r.streams) == TRACE_STREAMS
    np.testing.assert_allclose(r.probs.numpy(), pyvene_trace, atol=1e-4)
