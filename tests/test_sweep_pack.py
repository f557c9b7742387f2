"""Packed sweep rows (fxvene/sweeps/packing.py, passes/pack.py): rows of different lengths laid end to
end in lanes, one call per segment, the packing mask keeping every row to its own tokens.

Oracles: pyvene 0.1.8's per-cell patches and hand-written HF forwards with hooks (noise on the first
block's input, the clean block output restored at one layer and position).
"""

import numpy as np
import pytest
import torch
from conftest import make_gpt2, make_llama
from test_sweep import _pyvene_patch

from fxvene.sweeps.core import _ENGINES
from fxvene.sweeps.engine import SweepEngine
from fxvene.sweeps.packing import lanes
from fxvene.sweeps.sweep import causal_trace, patching_sweep

TARGET = 11


@pytest.fixture(scope="module")
def models():
    gpt = make_gpt2(n_layer=3)
    eager = make_llama(n_layer=3)
    eager.config._attn_implementation = "eager"  # the softmax form of attention (the default is SDPA)
    return {"gpt2": gpt, "llama": make_llama(n_layer=3), "llama_eager": eager}


def _engine_of(model, sites):
    return next(v[1] for k, v in _ENGINES.items() if v[0]() is model and k[1] == tuple(sites))


def test_lanes_hold_every_row_once_with_no_overlap():
    rng = np.random.RandomState(0)
    R, seq = 40, 9
    first = rng.randint(0, seq, R)
    entry = rng.randint(0, 4, R)
    sample = rng.randint(0, 3, R)
    length = seq - first
    lane, slot, lane_entry, lane_sample, W = lanes(first, length, entry, sample, entry < 3, 5)
    assert W >= length.max()
    used = {}
    for r in range(R):
        if entry[r] >= 3:  # rows entering in the tail get no lane
            assert lane[r] == -1
            continue
        assert lane_entry[lane[r]] == entry[r] and lane_sample[lane[r]] == sample[r]
        assert 0 <= slot[r] and slot[r] + length[r] <= W
        for t in range(slot[r], slot[r] + length[r]):
            assert (lane[r], t) not in used
            used[(lane[r], t)] = r
    assert list(lane_entry) == sorted(lane_entry)
    # rows of 10, 9, ..., 1 tokens fill lanes of 11 exactly (10+1, 9+2, ...)
    first = np.arange(10)
    z = np.zeros(10, dtype=np.int64)
    lane, slot, lane_entry, _, W = lanes(first, 10 - first, z, z, z == 0, 1)
    assert W == 11 and len(lane_entry) == 5


def _hook_trace(model, ids, subj, noise, level, layer, pos, clean_out):
    """p(TARGET) at the last position, averaged over the noise samples: the first block's input gets
    ``noise[s] * level`` at the subject positions, block ``layer``'s output at ``pos`` is the clean one."""
    blocks = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    probs = []
    for s in range(noise.shape[0]):

        def pre(mod, args, kwargs, s=s):
            h = (args[0] if args else kwargs["hidden_states"]).clone()
            h[:, subj] = (h[:, subj].double() + torch.from_numpy(noise[s]) * level).to(h.dtype)
            return ((h,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

        def post(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[:, pos] = clean_out[layer][:, pos]
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

        hs = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True), blocks[layer].register_forward_hook(post)]
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits
        finally:
            for h in hs:
                h.remove()
        probs.append(torch.softmax(logits[0, -1], -1)[TARGET].item())
    return float(np.mean(probs))


def _clean_block_outputs(model, ids):
    blocks = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    got = {}

    def keep(i):
        return lambda m, a, o: got.__setitem__(i, (o[0] if isinstance(o, tuple) else o).clone())

    hs = [b.register_forward_hook(keep(i)) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    return got


@pytest.mark.parametrize("which", ["gpt2", "llama", "llama_eager"])
def test_packed_causal_trace_with_samples_equals_hook_forwards(models, which):
    """Two noise samples (lanes of two base examples), every layer and position; the rows of the last
    layer enter in the position-wise tail (no lane). Llama: rotary positions per packed token."""
    model = models[which]
    ids = torch.tensor([[5, 9, 13, 2, 44, 7, 30]])
    subj, level = [1, 2], 0.5
    r = causal_trace(
        model,
        {"input_ids": ids},
        subj,
        TARGET,
        noise_level=level,
        n_samples=2,
        seed=1,
        streams="block_output",
        progress=False,
    )
    assert _engine_of(model, [("block_output", layer) for layer in range(3)]).last_packed
    noise = np.random.RandomState(1).randn(2, len(subj), model.config.hidden_size)
    clean = _clean_block_outputs(model, ids)
    ref = np.array(
        [[_hook_trace(model, ids, subj, noise, level, layer, p, clean) for layer in range(3)] for p in range(7)]
    )
    np.testing.assert_allclose(r.probs[0].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("which", ["gpt2", "llama_eager"])
def test_packed_patching_batch_and_chunks_equal_pyvene(models, which):
    """A base batch of 2 against a source of 1, two components (attention_output enters mid-block), rows
    in chunks of 5 (several packed calls, lanes of both base examples)."""
    model = models[which]
    g = torch.Generator().manual_seed(21)
    base = {"input_ids": torch.randint(0, 50, (2, 5), generator=g)}
    src = {"input_ids": torch.randint(0, 50, (1, 5), generator=g)}
    comps = ["block_output", "attention_output"]
    r = patching_sweep(model, base, src, components=comps, layers=[0, 2], max_rows=5, progress=False)
    assert _engine_of(model, [(c, layer) for c in comps for layer in (0, 2)]).last_packed
    for ci, comp in enumerate(comps):
        for li, layer in enumerate([0, 2]):
            for pos in range(5):
                ref = _pyvene_patch(model, comp, layer, pos, base, {"input_ids": src["input_ids"].expand(2, -1)})
                torch.testing.assert_close(r.values[ci, li, pos], ref, atol=1e-5, rtol=1e-5)


def test_rows_are_grouped_where_they_cannot_be_packed(models):
    """Padded prompts (the graph's own padding mask) and a fixed group width keep the start-position
    groups; pack=False too."""
    model = models["gpt2"]
    base = {"input_ids": torch.tensor([[3, 4, 5, 6]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}
    src = {"input_ids": torch.tensor([[7, 8, 9, 10]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}
    patching_sweep(model, base, src, layers=[1], progress=False)
    eng = _engine_of(model, [("block_output", 1)])
    assert eng.packed_segments and not eng.last_packed
    try:
        SweepEngine.pack = False
        patching_sweep(
            model, {"input_ids": base["input_ids"]}, {"input_ids": src["input_ids"]}, layers=[1], progress=False
        )
        assert not eng.last_packed
    finally:
        SweepEngine.pack = True
