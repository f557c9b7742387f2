"""Encoder families (issue 24): BERT, RoBERTa (models/bert.py) and ESM (models/esm.py, pyvene 0.1.8's map).

Every feature is checked against Hugging Face forward hooks on the tiny masked LMs of tests/_tiny.py
(``make_encoder``), one traced graph per family shared by the module; ESM's components also against
pyvene 0.1.8 on transformers 4 (pyvene's module paths are 4.x's). The oracle table below is written from
the HF modeling code (both lines have the same paths), not from models/. Attention is bidirectional:
sweeps run without the causal prefix, and a causal trace reads the masked position (``target_position``).
"""

import pytest
import torch
import transformers
from _hooks import capture, collect_config, head_view, hooks
from _matrix import cell
from _tiny import make_encoder

import fxvene as pv
from fxvene.models import family_for
from fxvene.sweeps.core import engine_for, trace_noise, window_layers

FAMILIES = ("bert", "roberta", "esm")
PREFIX = {"bert": "bert.", "roberta": "roberta.", "esm": "esm."}
# 8 positions: the length fxvene traces at, so ESM's graph (one length on transformers 4: its rotary tables
# are cached per length) is traced once
B, S, MASK, VOCAB = 2, 8, 3, 64
TF4 = transformers.__version__.startswith("4.")

_MODELS = {}


def model_for(family):
    """The family's tiny masked LM, built once per module (its graph is traced once and reused)."""
    if family not in _MODELS:
        _MODELS[family] = make_encoder(family)
    return _MODELS[family]


@pytest.fixture(scope="module", autouse=True)
def _drop_models():
    yield
    _MODELS.clear()


def _params(feature, fams=FAMILIES):
    return [pytest.param(f, marks=cell(f, feature), id=f) for f in fams]


def _inputs(seed, b=B, s=S):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, s), generator=g)
    ids[:, MASK] = 3  # ESM's mask token (any token for BERT's random weights)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def table(family, layer):
    """component -> (HF module path, port, per-head view?) at ``layer`` of the masked LM."""
    lay = f"{PREFIX[family]}encoder.layer.{layer}"
    att = f"{lay}.attention"
    q, k, v = (f"{att}.self.{p}" for p in ("query", "key", "value"))
    if family == "esm":  # sublayer modules that add the residual themselves (pyvene's ESM map)
        ctx, attn_out = (f"{att}.output", "input"), (att, "output")
        act, mlp_out = (f"{lay}.intermediate", "output"), (f"{lay}.output", "output")
    else:  # post-norm: LayerNorm(dense(x) + residual) inside ``output``; read dense's output
        ctx, attn_out = (f"{att}.output.dense", "input"), (f"{att}.output.dense", "output")
        act, mlp_out = (f"{lay}.intermediate.intermediate_act_fn", "output"), (f"{lay}.output.dense", "output")
    return {
        "block_input": (lay, "input", False),
        "block_output": (lay, "output", False),
        "mlp_input": (f"{lay}.intermediate", "input", False),
        "mlp_activation": (*act, False),
        "mlp_output": (*mlp_out, False),
        "attention_input": (att, "input", False),
        "attention_output": (*attn_out, False),
        "attention_value_output": (*ctx, False),
        "head_attention_value_output": (*ctx, True),
        "query_output": (q, "output", False),
        "key_output": (k, "output", False),
        "value_output": (v, "output", False),
        "head_query_output": (q, "output", True),
        "head_key_output": (k, "output", True),
        "head_value_output": (v, "output", True),
    }


def _hooked(model, inputs, specs, grad=False):
    with hooks(model, specs), torch.set_grad_enabled(grad):
        return model(**inputs)


def _cfg(comp, itype, unit="pos", layer=1, **kw):
    return pv.IntervenableConfig(
        representations=[pv.RepresentationConfig(layer=layer, component=comp, unit=unit, intervention_type=itype, **kw)]
    )


def _ul(pos, heads=None):
    loc = [[heads] * B, [pos] * B] if heads is not None else [pos] * B
    return {"sources->base": ([loc], [loc])}


# ------------------------------------------------------------------------------------- components


@pytest.mark.parametrize("family", ["bert", "roberta", "esm"])
@pytest.mark.parametrize("head", ["base", "masked_lm", "seq_cls"])
def test_spec_paths_exist_in_every_model_class(family, head):
    """The family and prefix of the base model, the masked LM and the sequence classifier; every
    component's module exists in each (no tracing)."""
    model = make_encoder(family, head=head)
    fam, prefix = family_for(model)
    assert fam is not None and fam.name == family and not fam.causal, type(model).__name__
    assert prefix == ("" if head == "base" else PREFIX[family])
    assert set(fam.components) == set(table(family, 0))
    for spec in fam.components.values():
        model.get_submodule(prefix + spec.module.format(layer=1))


@pytest.mark.parametrize("family", _params("components"))
def test_collect_every_component_equals_hooks(family):
    """One forward collects every component at both layers; each equals the HF module's hooked tensor."""
    model = model_for(family)
    sites = [(c, layer) for layer in (0, 1) for c in table(family, layer)]
    base = _inputs(1)
    (_, collected), _ = pv.IntervenableModel(collect_config(sites), model)(base=base)
    store = {}
    specs = [(p, port, capture(store, (c, layer))) for c, layer in sites for p, port, _ in [table(family, layer)[c]]]
    _hooked(model, base, specs)
    for (c, layer), got in zip(sites, collected):
        want = store[c, layer]
        if table(family, layer)[c][2]:
            want = head_view(want, model.config.num_attention_heads)
        torch.testing.assert_close(got, want, atol=0, rtol=0, msg=f"{family} {c} {layer}")


# ------------------------------------------------------------------------------------- interventions


def _patch(pos, src, heads=None, n_heads=None):
    def fn(t):
        t = t.clone()
        if heads is None:
            t[:, pos] = src[:, pos]
        else:
            v, sv = head_view(t, n_heads), head_view(src, n_heads)
            for h in heads:
                v[:, h, pos] = sv[:, h, pos]
        return t

    return fn


@pytest.mark.parametrize("family", _params("intervene"))
def test_vanilla_patch_every_component_equals_hooked_patch(family):
    """Vanilla from a source at positions 1 and 4 (heads 0 and 3 of the head components) of every component at
    layer 1: equal to an HF hook writing the source run's tensor there."""
    model = model_for(family)
    nh = model.config.num_attention_heads
    base, src = _inputs(2), _inputs(3)
    pos = [1, 4]
    plain = _hooked(model, base, []).logits
    for c, (path, port, is_head) in table(family, 1).items():
        store = []
        _hooked(model, src, [(path, port, capture(store))])
        heads = [0, 3] if is_head else None
        im = pv.IntervenableModel(_cfg(c, pv.VanillaIntervention, unit="h.pos" if is_head else "pos"), model)
        _, out = im(base, [src], unit_locations=_ul(pos, heads))
        ref = _hooked(model, base, [(path, port, _patch(pos, store[0], heads, nh))]).logits
        torch.testing.assert_close(out.logits, ref, atol=1e-6, rtol=1e-5, msg=f"{family} {c}")
        if c == "value_output":  # bidirectional: values patched at positions 1 and 4 change position 0 too
            assert not torch.allclose(out.logits[:, 0], plain[:, 0]), c


@pytest.mark.parametrize("family", _params("trainable"))
def test_trainable_low_rank_rotation_equals_hook_and_only_it_learns(family):
    """LowRankRotatedSpace on block_output (layer 0, position 2): logits, loss and gradients equal the same
    module applied in an HF hook; with the model's gradients disabled, only the intervention gets them."""
    model = model_for(family)
    path, port, _ = table(family, 0)["block_output"]
    base, src = _inputs(4), _inputs(5)
    store = []
    _hooked(model, src, [(path, port, capture(store))])
    torch.manual_seed(0)
    im = pv.IntervenableModel(
        _cfg("block_output", pv.LowRankRotatedSpaceIntervention, layer=0, low_rank_dimension=2), model
    )
    im.disable_model_gradients()
    iv = next(iter(im.interventions.values()))
    iv = iv[0] if isinstance(iv, (tuple, list)) else iv
    _, out = im(base, [src], unit_locations=_ul([2]))
    loss = out.logits[:, MASK].logsumexp(-1).sum()
    loss.backward()
    params = [p for p in iv.parameters() if p.requires_grad]
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in model.parameters())
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    def put(t):
        t = t.clone()
        t[:, 2] = iv(t[:, 2].clone(), store[0][:, 2]).to(t.dtype)
        return t

    ref = _hooked(model, base, [(path, port, put)], grad=True)
    torch.testing.assert_close(out.logits.detach(), ref.logits.detach(), atol=1e-6, rtol=1e-5)
    ref.logits[:, MASK].logsumexp(-1).sum().backward()
    for g0, p in zip(grads, params):
        torch.testing.assert_close(g0, p.grad, atol=1e-6, rtol=1e-4)
    for p in params:
        p.grad = None
    model.requires_grad_(True)


# ------------------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("family", _params("patching_sweep"))
def test_patching_sweep_equals_hooked_cells_without_causal_prefix(family):
    """Every layer x position cell of block_output and attention_output, and a head sweep, equal per-cell HF
    hooks read at the last position; the engine runs full-length rows (no causal prefix: prefix=True is
    refused) because a patch changes the positions before it too."""
    model = model_for(family)
    base, src = _inputs(6, b=1), _inputs(7, b=1)
    toks = [3, 7]
    comps = ["block_output", "attention_output"]
    r = pv.patching_sweep(model, base, src, components=comps, tokens=toks, progress=False)
    assert r.values.shape == (2, 2, S, 1, 2)
    for ci, c in enumerate(comps):
        for layer in range(2):
            path, port, _ = table(family, layer)[c]
            store = []
            _hooked(model, src, [(path, port, capture(store))])
            for pos in range(S):
                ref = _hooked(model, base, [(path, port, _patch(pos, store[0]))]).logits[:, -1, toks]
                torch.testing.assert_close(r.values[ci, layer, pos], ref, atol=1e-5, rtol=1e-5)
    eng = engine_for(model, [(c, layer) for c in comps for layer in range(2)], "auto", True, False, seq=S)
    assert eng.prefix is False and "both ways" in eng.prefix_note
    with pytest.raises(ValueError, match="prefix=True needs causal attention"):
        pv.patching_sweep(model, base, src, components="block_output", tokens=toks, prefix=True, progress=False)
    path, port, _ = table(family, 1)["head_value_output"]
    store = []
    _hooked(model, src, [(path, port, capture(store))])
    nh = model.config.num_attention_heads
    r = pv.patching_sweep(
        model, base, src, components="head_value_output", layers=[1], positions=[0, 4], tokens=toks, progress=False
    )
    assert r.values.shape == (1, 1, 2, nh, 1, 2)
    for pi, pos in enumerate([0, 4]):
        for h in range(nh):
            ref = _hooked(model, base, [(path, port, _patch(pos, store[0], [h], nh))]).logits[:, -1, toks]
            torch.testing.assert_close(r.values[0, 0, pi, h], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", _params("causal_trace"))
def test_causal_trace_reads_the_masked_position(family):
    """ROME's trace of a masked-LM target: noise on the subject (positions 1, 2) at block 0's input, the
    clean state restored per stream, position and layer, the target token's probability read at the masked
    position (``target_position``); equal to HF hooks doing the same. Without ``target_position`` an
    encoder is refused."""
    model = model_for(family)
    inputs = _inputs(8, b=1)
    subj, target, level, window = [1, 2], 5, 0.7, 2
    streams = ("block_output", "mlp_activation", "attention_output")
    r = pv.causal_trace(
        model,
        inputs,
        subj,
        target,
        noise_level=level,
        n_samples=1,
        window=window,
        streams=streams,
        target_position=MASK,
        progress=False,
    )
    assert r.probs.shape == (3, S, 2)
    noise = trace_noise(1, len(subj), model.config.hidden_size, 1)[0]

    def corrupt(t):
        t = t.clone()
        t[:, subj] = (t[:, subj].double() + noise * level).to(t.dtype)
        return t

    first = (table(family, 0)["block_input"][0], "input", corrupt)

    def prob(specs):
        return torch.softmax(_hooked(model, inputs, specs).logits[0, MASK], -1)[target].item()

    clean = {}
    for st in streams:
        for layer in range(2):
            path, port, _ = table(family, layer)[st]
            store = []
            _hooked(model, inputs, [(path, port, capture(store))])
            clean[st, layer] = (path, port, store[0])
    for si, st in enumerate(streams):
        for pos in range(S):
            for layer in range(2):
                lays = [layer] if st == "block_output" else window_layers(layer, window, 2)
                specs = [first] + [(clean[st, l2][0], clean[st, l2][1], _patch(pos, clean[st, l2][2])) for l2 in lays]
                assert abs(r.probs[si, pos, layer].item() - prob(specs)) < 1e-5, (st, pos, layer)
    assert abs(r.corrupted_prob - prob([first])) < 1e-5
    assert abs(r.clean_prob - prob([])) < 1e-5
    with pytest.raises(ValueError, match="target_position: .* attends both ways"):
        pv.causal_trace(model, inputs, subj, target, n_samples=1, progress=False)
    with pytest.raises(ValueError, match="target_position: 8 is not a position"):
        pv.causal_trace(model, inputs, subj, target, n_samples=1, target_position=S, progress=False)


# ------------------------------------------------------------------------------------- graph


@pytest.mark.parametrize("family", _params("graph_diff"))
def test_unintervened_graph_equals_hf_and_graph_diff(family):
    from fxvene.graph.tracing import trace

    model = model_for(family)
    inputs = _inputs(9)
    traced = trace(model, ("input_ids", "attention_mask"))
    with torch.no_grad():
        got = traced.gm(**inputs)
        ref = model(**inputs).logits
    got = got["logits"] if isinstance(got, dict) else (got.logits if hasattr(got, "logits") else got[0])
    assert torch.equal(got, ref)
    im = pv.IntervenableModel(_cfg("block_output", pv.VanillaIntervention), model)
    d = im.graph_diff()
    assert sorted(d.added) == ["fxv_loc_0", "fxv_site_0", "fxv_src_0"] and d.removed == []
    site = next(n for n in d.old.graph.nodes if n.name == im.sites()[0].node)
    assert set(d.rewired) == {u.name for u in site.users}


@pytest.mark.parametrize("family", _params("cli", ["bert"]))
def test_cli_components_on_a_saved_masked_lm(family, tmp_path):
    """``fxvene components`` on a saved BertForMaskedLM loads the saved class (not AutoModelForCausalLM's
    decoder) and lists every component of the family, each at its HF module with the hooked tensor's shape.
    (One family: the loader is the same for RoBERTa and ESM, and each saved model is traced anew.)"""
    from _hooks import cli_components

    model = model_for(family)
    by = cli_components(model, tmp_path, 1)
    tab = table(family, 1)
    assert set(tab) <= set(by)
    ex = {"input_ids": torch.randint(4, VOCAB, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    store = {}
    _hooked(model, ex, [(path, port, capture(store, c)) for c, (path, port, _) in tab.items()])
    for c, (path, _, is_head) in tab.items():
        want = head_view(store[c], model.config.num_attention_heads) if is_head else store[c]
        assert tuple(by[c]["view"]) == tuple(want.shape), c
        assert by[c]["module"] == path, c


# ------------------------------------------------------------------------------------- pyvene 0.1.8


# pyvene 0.1.8's ESM dimension table gives these components a head count (or 1) as their width, and pyvene
# then cuts the hidden vector into units of that width (position 1 reads features 4..7 of position 0): for
# them, and for block_output (its entry is a string, not a tuple: pyvene cannot build it), pyvene gets the
# component's module path, the same module its map names
PYVENE_PATHS = {
    "block_output": "esm.encoder.layer[1].output",
    "attention_input": "esm.encoder.layer[1].attention.input",
    "attention_output": "esm.encoder.layer[1].attention.output",
    "query_output": "esm.encoder.layer[1].attention.self.query.output",
    "key_output": "esm.encoder.layer[1].attention.self.key.output",
    "value_output": "esm.encoder.layer[1].attention.self.value.output",
}


# pyvene 0.1.8's ESM map names transformers 4's module paths: the cell exists on that line only
@pytest.mark.parametrize("family", _params("pyvene_diff", ["esm"] if TF4 else []))
def test_esm_every_component_equals_pyvene(family):
    """Collect and Vanilla of every whole component of pyvene's ESM map (EsmForMaskedLM) against pyvene 0.1.8.
    Where pyvene's dimension table is wrong (``PYVENE_PATHS``) pyvene gets the module path its map names.
    Its head components fail inside pyvene 0.1.8 (no head split for ESM): the HF-hook tests above cover them."""
    pyvene = pytest.importorskip("pyvene")
    model = model_for(family)
    pmodel = make_encoder(family)  # pyvene leaves hooks on the model it wraps
    base, src = _inputs(10), _inputs(11)
    pos = [1, 4]
    for c, (_, _, is_head) in table(family, 1).items():
        if is_head:
            continue
        pc = PYVENE_PATHS.get(c, c)
        prep = pyvene.RepresentationConfig(
            1, pc, "pos", max_number_of_units=2, intervention_type=pyvene.CollectIntervention
        )
        (_, p_coll), _ = pyvene.IntervenableModel(pyvene.IntervenableConfig([prep]), pmodel)(
            base=base, unit_locations={"base": [[pos] * B]}
        )
        _, coll = pv.IntervenableModel(_cfg(c, pv.CollectIntervention), model)(
            base=base, unit_locations={"base": [[pos] * B]}
        )
        torch.testing.assert_close(coll[0], p_coll[0], atol=1e-6, rtol=1e-5, msg=c)
        prep = pyvene.RepresentationConfig(1, pc, "pos")
        _, pout = pyvene.IntervenableModel(pyvene.IntervenableConfig([prep]), pmodel)(
            base, [src], unit_locations=_ul(pos)
        )
        _, out = pv.IntervenableModel(_cfg(c, pv.VanillaIntervention), model)(base, [src], unit_locations=_ul(pos))
        torch.testing.assert_close(out.logits, pout.logits, atol=1e-6, rtol=1e-5, msg=c)
