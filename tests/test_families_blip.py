"""BLIP (issue 24): BlipForQuestionAnswering (family ``blip``) and BlipForImageTextRetrieval (``blip_itm``),
models/blip.py. The text encoder carries pyvene 0.1.8's BLIP names, unprefixed; ``vision_*`` is the vision
tower (CLS + 16 patches), ``decoder_*`` the question-answering class's answer decoder, ``cross_attention_*``
the text encoder's cross-attention to the image (its keys/values over image positions).

Oracles: forward hooks on the HF modules (paths written here from HF's BLIP code, the same on transformers
4.47 and 5.x) and, on 4.47.1, pyvene 0.1.8 for the components its BLIP maps name. One model per class for the
module (one export each). BlipForQuestionAnswering returns no answer logits (HF drops the decoder's output
without labels), so an edit of its text stacks is checked in a component collected after it.
"""

import pytest
import torch
import transformers
from _hooks import capture, head_view, hooks
from _matrix import cell
from _tiny import make_blip

import fxvene as pv

TF4 = int(transformers.__version__.split(".")[0]) < 5
FAMILIES = ("blip", "blip_itm")
HEADS = {"blip": "qa", "blip_itm": "itm"}
B, T, D = 2, 5, 6  # batch, question tokens, answer tokens
N_IMG = 17  # CLS + (8 / 2) ** 2 patches
_MODELS = {}


def model_for(family):
    if family not in _MODELS:
        _MODELS[family] = make_blip(HEADS[family])
    return _MODELS[family]


def _params(feature, families=FAMILIES):
    return [pytest.param(f, marks=cell(f, feature), id=f) for f in families]


def _inputs(family, seed, batch=B):
    g = torch.Generator().manual_seed(seed)
    d = {"input_ids": torch.randint(4, 64, (batch, T), generator=g)}
    if family == "blip":
        d["decoder_input_ids"] = torch.randint(4, 64, (batch, D), generator=g)
    d["pixel_values"] = torch.randn(batch, 3, 8, 8, generator=g)
    return d


def _text(lay, prefix, t):
    th, tn = t.hidden_size, t.num_attention_heads
    out = {}
    for name, px, mod in (("attention", "", "attention"), ("cross_attention", "cross_attention_", "crossattention")):
        a = f"{lay}.{mod}"
        out[f"{prefix}{name}_input"] = (a, "input", None)
        out[f"{prefix}{name}_output"] = (f"{a}.output", "output", None)
        out[f"{prefix}{px}attention_value_output"] = (f"{a}.output.dense", "input", None)
        out[f"{prefix}{px}head_attention_value_output"] = (f"{a}.output.dense", "input", tn)
        for p in ("query", "key", "value"):
            out[f"{prefix}{px}{p}_output"] = (f"{a}.self.{p}", "output", None)
            out[f"{prefix}{px}head_{p}_output"] = (f"{a}.self.{p}", "output", tn)
    out.update(
        {
            f"{prefix}block_input": (lay, "input", None),
            f"{prefix}block_output": (lay, "output", None),
            f"{prefix}mlp_input": (f"{lay}.intermediate", "input", None),
            f"{prefix}mlp_activation": (f"{lay}.intermediate.dense", "output", None),
            f"{prefix}mlp_output": (f"{lay}.output", "output", None),
        }
    )
    assert th % tn == 0
    return out


def table(model, layer):
    """component -> (HF module path, port, heads or None; a qkv slot for the vision tower's q/k/v)."""
    t, vc = model.config.text_config, model.config.vision_config
    out = _text(f"text_encoder.encoder.layer.{layer}", "", t)
    vt = f"vision_model.encoder.layers.{layer}"
    va, vh = f"{vt}.self_attn", vc.num_attention_heads
    out.update(
        {
            "vision_block_input": (vt, "input", None),
            "vision_block_output": (vt, "output", None),
            "vision_mlp_input": (f"{vt}.mlp", "input", None),
            "vision_mlp_activation": (f"{vt}.mlp.activation_fn", "output", None),
            "vision_mlp_output": (f"{vt}.mlp", "output", None),
            "vision_attention_input": (va, "input", None),
            "vision_attention_output": (va, "output", None),
            "vision_attention_value_output": (f"{va}.projection", "input", None),
            "vision_head_attention_value_output": (f"{va}.projection", "input", vh),
        }
    )
    for slot, p in enumerate(("query", "key", "value")):
        out[f"vision_{p}_output"] = (f"{va}.qkv", "output", ("qkv", slot, None))
        out[f"vision_head_{p}_output"] = (f"{va}.qkv", "output", ("qkv", slot, vh))
    if type(model).__name__ == "BlipForQuestionAnswering":
        out.update(_text(f"text_decoder.bert.encoder.layer.{layer}", "decoder_", t))
    else:
        out["itm_output"] = ("itm_head", "output", None)
    return out


def _view(x, heads):
    """The hooked tensor as the component sees it: a third of the fused qkv, then split into heads."""
    if isinstance(heads, tuple):  # the vision tower's fused qkv: [q | k | v], each heads x head_dim
        _, slot, n = heads
        w = x.shape[-1] // 3
        x = x[..., slot * w : (slot + 1) * w]
        return x if n is None else head_view(x, n)
    return x if heads is None else head_view(x, heads)


def _width(component):
    """Positions a component's units index: image (CLS + patches), answer tokens, or question tokens."""
    over_keys = component.partition("cross_attention_")[2] in ("key_output", "value_output")
    over_keys = over_keys or component.partition("cross_attention_")[2] in ("head_key_output", "head_value_output")
    if component.startswith("vision_") or component.startswith("cross_attention_") and over_keys:
        return N_IMG
    if component.startswith("decoder_"):
        return T if over_keys else D
    return T


def _unit(component):
    return "h" if "head_" in component else "pos"


def test_blip_specs_cover_the_classes():
    """Each family's spec is exactly the hook table (both classes found by class name)."""
    from fxvene.models import family_for

    for family in FAMILIES:
        model = model_for(family)
        fam, prefix = family_for(model)
        assert (fam.name, prefix) == (family, "")
        assert set(fam.components) == set(table(model, 0)), family


# ------------------------------------------------------------------------------------- components


@pytest.mark.parametrize("family", _params("components"))
def test_collect_every_component_equals_hooks(family):
    """One forward on two image+question rows collects every component at layer 0 (and a few at layer 1);
    each equals the HF module's hooked tensor, over the positions the component indexes (question tokens,
    CLS + patches, answer tokens; the cross-attention's keys over the image, the decoder's over the question).
    (The answer decoder's last block output feeds nothing HF's forward returns: it is not in the graph.)"""
    model = model_for(family)
    sites = {(c, 0): v for c, v in table(model, 0).items()}
    for c in ("block_output", "vision_block_output", "cross_attention_key_output", "head_value_output"):
        sites[(c, 1)] = table(model, 1)[c]
    reps = [
        pv.RepresentationConfig(layer=layer, component=c, unit=_unit(c), intervention_type=pv.CollectIntervention)
        for c, layer in sites
    ]
    base = _inputs(family, 1)
    (_, collected), _ = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), model)(base=base)
    store = {}
    with hooks(model, [(p, port, capture(store, key)) for key, (p, port, _) in sites.items()]), torch.no_grad():
        model(**base)
    assert len(collected) == len(sites)
    for key, got in zip(sites, collected):
        c = key[0]
        want = store[key] if c == "itm_output" else _view(store[key], sites[key][2])
        if c != "itm_output":
            assert want.shape[-2] == _width(c), key
        torch.testing.assert_close(got, want, msg=str(key))


# ------------------------------------------------------------------------------------- intervene

POS = ([[1, 3], [0, 4]], [[2, 3], [4, 0]])  # (base, source) positions, valid in every stack (>= 3 positions)
HB, HS = [[0, 1], [1, 0]], [[1, 0], [0, 1]]  # heads (base, source)
INTERVENED = (
    "block_output",
    "cross_attention_key_output",  # over image positions
    "head_value_output",
    "vision_head_value_output",  # a third of the fused qkv, split into heads
    "decoder_cross_attention_head_key_output",  # over question positions
)


def _patch(x, src, heads, add=False):
    """Vanilla (or Addition) by hand: base units <- source units (positions, or heads x positions)."""
    bpos, spos = POS
    x = x.clone()
    for i in range(x.shape[0]):
        if heads is None:
            x[i, bpos[i]] = src[i, spos[i]] + (x[i, bpos[i]] if add else 0)
            continue
        n, lo, w = heads, 0, x.shape[-1]
        if isinstance(heads, tuple):  # a slot of the fused qkv
            w = x.shape[-1] // 3
            n, lo = heads[2], heads[1] * w
        hd = w // n
        for hb, hs in zip(HB[i], HS[i]):
            for pb, ps in zip(bpos[i], spos[i]):
                x[i, pb, lo + hb * hd : lo + (hb + 1) * hd] = src[i, ps, lo + hs * hd : lo + (hs + 1) * hd]
    return x


def _run_and_reference(family, component, itype, add=False):
    """(fxvene's observed tensors, the hooked HF model's) for one edit at layer 0 from a source run. What a run
    shows: ITM's scores; for question answering the vision tower's output and the answer decoder's layer-0 block
    (collected beside the edit: the class returns no answer logits)."""
    model = model_for(family)
    base, src = _inputs(family, 21), _inputs(family, 22)
    path, port, heads = table(model, 0)[component]
    bpos, spos = POS
    if heads is None:
        locs, unit = ([spos], [bpos]), "pos"
    else:
        locs, unit = ([[HS, spos]], [[HB, bpos]]), "h.pos"
    reps = [
        pv.RepresentationConfig(layer=0, component=component, unit=unit, max_number_of_units=2, intervention_type=itype)
    ]
    qa = family == "blip"
    if qa:
        reps.append(
            pv.RepresentationConfig(layer=0, component="decoder_block_output", intervention_type=pv.CollectIntervention)
        )
        locs = (locs[0] + [None], locs[1] + [[list(range(D))] * B])
    im = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), model)
    first, out = im(base, [src], unit_locations={"sources->base": locs})
    store = {}
    with hooks(model, [(path, port, capture(store, "s"))]), torch.no_grad():
        model(**src)
    dec = table(model, 0)["decoder_block_output"][0] if qa else None
    specs = [(path, port, lambda x: _patch(x, store["s"], heads, add))]
    if qa:
        specs.append((dec, "output", capture(store, "dec")))
    with hooks(model, specs), torch.no_grad():
        ref = model(**base)
    if qa:
        return [out.last_hidden_state, first[1][0]], [ref.last_hidden_state, store["dec"]]
    return [out.itm_score], [ref.itm_score]


@pytest.mark.parametrize("family", _params("intervene"))
def test_vanilla_and_addition_from_a_source_equal_hooked_edits(family):
    """Vanilla from a source image+question at text, cross-attention (keys over patches), vision (a head of the
    fused qkv) and decoder sites, and Addition at the MLP outputs, each equal the HF model with a hook that
    writes the same units; each edit changes what the run shows."""
    model = model_for(family)
    with torch.no_grad():
        clean = model(**_inputs(family, 21))
    clean = clean.itm_score if family == "blip_itm" else clean.last_hidden_state
    seen = {}
    if family == "blip":  # the answer decoder's layer-0 block, unedited
        with hooks(model, [(table(model, 0)["decoder_block_output"][0], "output", capture(seen, "dec"))]):
            with torch.no_grad():
                model(**_inputs(family, 21))
    for c, itype, add in [(c, pv.VanillaIntervention, False) for c in INTERVENED] + [
        ("mlp_output", pv.AdditionIntervention, True),
        ("vision_mlp_output", pv.AdditionIntervention, True),
    ]:
        if c not in table(model, 0):
            continue
        got, want = _run_and_reference(family, c, itype, add)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=c)
        if family == "blip_itm" or c.startswith("vision_"):
            assert not torch.allclose(got[0], clean), c
        if family == "blip":
            assert not torch.allclose(got[1], seen["dec"]), c


# ------------------------------------------------------------------------------------- trainable


@pytest.mark.parametrize("family", _params("trainable"))
def test_rotated_space_gradients_reach_only_the_intervention(family):
    """RotatedSpace at a layer-0 site (ITM: the text block, scored by its matching head; question answering: the
    vision block, scored on the vision output): loss and the rotation's gradient equal the HF model's with a hook
    that applies the same module; no model parameter gets a gradient; an SGD step changes the rotation."""
    model = model_for(family)
    itm = family == "blip_itm"
    comp = "block_output" if itm else "vision_block_output"
    path, port, _ = table(model, 0)[comp]
    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(layer=0, component=comp, intervention_type=pv.RotatedSpaceIntervention)
            ]
        ),
        model,
    )
    iv = next(iter(im.interventions.values()))
    iv = iv[0] if isinstance(iv, tuple) else iv
    base, src = _inputs(family, 41), _inputs(family, 42)
    bpos, spos = [[3], [2]], [[1], [4]]
    locs = {"sources->base": ([spos], [bpos])}

    def loss_of(out):
        if itm:
            return torch.nn.functional.cross_entropy(out.itm_score, torch.tensor([0, 1]))
        return out.last_hidden_state.square().mean()

    _, out = im(base, [src], unit_locations=locs)
    loss = loss_of(out)
    params = [p for p in iv.parameters() if p.requires_grad]
    assert params
    for p in model.parameters():
        p.grad = None
    loss.backward()
    g = [p.grad.clone() for p in params]
    assert all(p.grad is None for p in model.parameters())
    store = {}
    with hooks(model, [(path, port, capture(store, "s"))]), torch.no_grad():
        model(**src)
    d = store["s"].shape[-1]

    def apply(x):
        bi = torch.arange(B)[:, None]
        new = iv(x[bi, torch.tensor(bpos)].reshape(B, d), store["s"][bi, torch.tensor(spos)].reshape(B, d))
        y = x.clone()
        y[bi, torch.tensor(bpos)] = new.reshape(B, 1, d)
        return y

    with hooks(model, [(path, port, apply)]):
        ref_loss = loss_of(model(**base))
    g_ref = torch.autograd.grad(ref_loss, params)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert sum(float(a.abs().sum()) for a in g) > 0
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.5)
    opt.step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params))


# ------------------------------------------------------------------------------------- pyvene 0.1.8

PYVENE_COMPONENTS = (
    "block_input",
    "block_output",
    "mlp_activation",
    "mlp_output",
    "mlp_input",
    "attention_value_output",
    "attention_output",
    "attention_input",
)

# pyvene 0.1.8's BLIP dimension table gives attention_value_output the head width (hidden / heads), and pyvene
# then cuts the hidden vector into units of that width (position 1 reads features 8..15 of position 0): pyvene
# gets the module path its map names for it
PYVENE_PATHS = {"attention_value_output": "text_encoder.encoder.layer[1].attention.output.dense.input"}


# pyvene 0.1.8's BLIP maps name the text encoder's modules (the same paths on both lines); pyvene 0.1.8 runs
# on transformers 4 only here (its venv): the cell exists on that line
@pytest.mark.parametrize("family", _params("pyvene_diff", FAMILIES if TF4 else ()))
def test_every_pyvene_component_equals_pyvene(family):
    """Collect of each component pyvene 0.1.8's BLIP map names, and (ITM, whose scores read the text encoder)
    Vanilla from a source, against pyvene 0.1.8 on the same class. ``make_blip`` sets ``image_text_hidden_size``
    and ``projection_dim`` to the text widths, which pyvene's dimension table reads."""
    pyvene = pytest.importorskip("pyvene")
    model = model_for(family)
    pmodel = make_blip(HEADS[family])  # pyvene leaves hooks on the model it wraps
    base, src = _inputs(family, 10), _inputs(family, 11)
    pos = [1, 4]
    ul = {"sources->base": ([[pos] * B], [[pos] * B])}
    reps = [
        pyvene.RepresentationConfig(
            1, PYVENE_PATHS.get(c, c), "pos", max_number_of_units=2, intervention_type=pyvene.CollectIntervention
        )
        for c in PYVENE_COMPONENTS
    ]
    (_, p_coll), _ = pyvene.IntervenableModel(pyvene.IntervenableConfig(reps), pmodel)(
        base=base, unit_locations={"base": [[pos] * B] * len(reps)}
    )
    reps = [
        pv.RepresentationConfig(1, c, "pos", max_number_of_units=2, intervention_type=pv.CollectIntervention)
        for c in PYVENE_COMPONENTS
    ]
    (_, coll), _ = pv.IntervenableModel(pv.IntervenableConfig(reps), model)(
        base=base, unit_locations={"base": [[pos] * B] * len(reps)}
    )
    assert len(coll) == len(p_coll) == len(PYVENE_COMPONENTS)
    for c, got, want in zip(PYVENE_COMPONENTS, coll, p_coll):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=c)
    if family != "blip_itm":
        return
    for c in PYVENE_COMPONENTS:
        prep = pyvene.RepresentationConfig(1, PYVENE_PATHS.get(c, c), "pos", max_number_of_units=2)
        _, pout = pyvene.IntervenableModel(pyvene.IntervenableConfig([prep]), pmodel)(base, [src], unit_locations=ul)
        rep = pv.RepresentationConfig(1, c, "pos", max_number_of_units=2)
        _, out = pv.IntervenableModel(pv.IntervenableConfig([rep]), model)(base, [src], unit_locations=ul)
        torch.testing.assert_close(out.itm_score, pout.itm_score, atol=1e-6, rtol=1e-5, msg=c)


# ------------------------------------------------------------------------------------- graph


@pytest.mark.parametrize("family", _params("graph_diff"))
def test_graph_diff_names_the_cross_attention_site(family):
    """The rewritten graph adds the site's nodes and removes none; the site node lies in the HF module the
    component names (the text encoder's cross-attention key projection, over the image)."""
    model = model_for(family)
    comp = "cross_attention_key_output"
    cfg = pv.IntervenableConfig(
        representations=[pv.RepresentationConfig(layer=1, component=comp, intervention_type=pv.VanillaIntervention)]
    )
    im = pv.IntervenableModel(cfg, model)
    d = im.graph_diff()
    assert sorted(d.added) == ["fxv_loc_0", "fxv_site_0", "fxv_src_0"]
    assert d.removed == []
    site = next(n for n in d.old.graph.nodes if n.name == im.sites()[0].node)
    path = table(model, 1)[comp][0]
    stack = site.meta["nn_module_stack"]
    assert any(path in str(v) for v in stack.values()) or path in repr(stack)
    assert set(d.rewired) == {u.name for u in site.users}
