"""BART and Whisper (issue 24): encoder-decoders whose encoder carries pyvene's names, whose decoder is
prefixed ``decoder_`` and whose cross-attention is ``decoder_cross_attention_*`` (models/bart.py,
models/whisper.py). Whisper's encoder reads ``input_features``: its positions are audio frames (after the
stride-2 convolution).

Oracles: forward hooks on the HF modules, the module paths written here from HF's modeling code (the same on
transformers 4.47 and 5.x); never fxvene itself. pyvene 0.1.8 has no map for either family.
One model per family for the module (one export each).
"""

import pytest
import torch
from _hooks import capture, head_view, hooks
from _matrix import cell
from _tiny import make_encdec

import fxvene as pv

FAMILIES = ("bart", "whisper")
L = 1  # the layer the checks use (of 2)
B = 2
ENC_POS = ([[1, 3], [0, 4]], [[2, 3], [5, 0]])  # (base, source) positions over encoder tokens / audio frames
DEC_POS = ([[1, 3], [0, 2]], [[2, 3], [3, 0]])  # over the decoder's 4 tokens


def _params(feature):
    return [pytest.param(f, marks=cell(f, feature), id=f) for f in FAMILIES]


_MODELS = {}


def model_for(family):
    if family not in _MODELS:
        _MODELS[family] = make_encdec(family)
    return _MODELS[family]


def _inputs(family, seed):
    g = torch.Generator().manual_seed(seed)
    dec = torch.randint(3, 64, (B, 4), generator=g)
    if family == "whisper":
        return {"input_features": torch.randn(B, 8, 16, generator=g), "decoder_input_ids": dec}
    return {"input_ids": torch.randint(3, 64, (B, 6), generator=g), "decoder_input_ids": dec}


def _cfg(component, itype, layer=L, unit="pos", **kw):
    return pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=layer, component=component, unit=unit, intervention_type=itype, **kw)
        ]
    )


def hand_table(model, layer=L):
    """component -> (module path, port, heads config attribute), written from HF's BART/Whisper layers."""
    base = "" if type(model).__name__.endswith("Model") else "model."
    t = {}
    for stack, prefix in (("encoder", ""), ("decoder", "decoder_")):
        lay, heads = f"{base}{stack}.layers.{layer}", f"{stack}_attention_heads"
        attn = f"{lay}.self_attn"
        t.update(
            {
                f"{prefix}block_input": (lay, "input", None),
                f"{prefix}block_output": (lay, "output", None),
                f"{prefix}mlp_input": (f"{lay}.fc1", "input", None),
                f"{prefix}mlp_activation": (f"{lay}.activation_fn", "output", None),
                f"{prefix}mlp_output": (f"{lay}.fc2", "output", None),
                f"{prefix}attention_input": (attn, "input", None),
                f"{prefix}attention_output": (attn, "output", None),
                f"{prefix}attention_value_output": (f"{attn}.out_proj", "input", None),
                f"{prefix}head_attention_value_output": (f"{attn}.out_proj", "input", heads),
                f"{prefix}query_output": (f"{attn}.q_proj", "output", None),
                f"{prefix}key_output": (f"{attn}.k_proj", "output", None),
                f"{prefix}value_output": (f"{attn}.v_proj", "output", None),
                f"{prefix}head_query_output": (f"{attn}.q_proj", "output", heads),
                f"{prefix}head_key_output": (f"{attn}.k_proj", "output", heads),
                f"{prefix}head_value_output": (f"{attn}.v_proj", "output", heads),
            }
        )
    x, heads = f"{base}decoder.layers.{layer}.encoder_attn", "decoder_attention_heads"
    t.update(
        {
            "decoder_cross_attention_input": (x, "input", None),
            "decoder_cross_attention_output": (x, "output", None),
            "decoder_cross_attention_query_output": (f"{x}.q_proj", "output", None),
            "decoder_cross_attention_key_output": (f"{x}.k_proj", "output", None),  # over encoder positions
            "decoder_cross_attention_value_output": (f"{x}.v_proj", "output", None),
            "decoder_cross_attention_attention_value_output": (f"{x}.out_proj", "input", None),
            "decoder_cross_attention_head_attention_value_output": (f"{x}.out_proj", "input", heads),
            "decoder_cross_attention_head_key_output": (f"{x}.k_proj", "output", heads),
            "decoder_cross_attention_head_value_output": (f"{x}.v_proj", "output", heads),
        }
    )
    return t


def _unit(component):
    return "h" if "head_" in component else "pos"


def _over_encoder(component):
    """Whether the component's positions are the encoder's (its tokens or audio frames)."""
    return (
        not component.startswith("decoder_")
        or component.endswith(("_key_output", "_value_output"))
        and ("cross_attention" in component and "attention_value" not in component)
    )


# ------------------------------------------------------------------------------------- components


@pytest.mark.parametrize("family", _params("components"))
def test_collect_every_component_equals_hooks(family):
    """One forward collects every component (encoder, decoder, cross-attention) at layer 1 and a few at layer 0;
    each equals the HF module's hooked tensor (head views: (b, heads, s, head_dim))."""
    model = model_for(family)
    table = {(c, L): v for c, v in hand_table(model).items()}
    table.update({(c, 0): hand_table(model, 0)[c] for c in ("block_output", "decoder_cross_attention_key_output")})
    sites = list(table)
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=layer, component=c, unit=_unit(c), intervention_type=pv.CollectIntervention)
            for c, layer in sites
        ]
    )
    im = pv.IntervenableModel(cfg, model)
    inputs = _inputs(family, 11)
    (_, collected), _ = im(base=inputs)
    store = {}
    with hooks(model, [(p, port, capture(store, key)) for key, (p, port, _) in table.items()]), torch.no_grad():
        model(**inputs)
    assert len(collected) == len(sites)
    for key, got in zip(sites, collected):
        want, heads = store[key], table[key][2]
        if heads is not None:
            want = head_view(want, getattr(model.config, heads))
        assert torch.equal(got, want), key


# ------------------------------------------------------------------------------------- intervene

INTERVENED = (
    "block_output",
    "attention_output",
    "mlp_activation",
    "head_attention_value_output",
    "decoder_block_input",
    "decoder_attention_output",
    "decoder_mlp_output",
    "decoder_cross_attention_output",
    "decoder_cross_attention_key_output",
    "decoder_cross_attention_head_value_output",
)


def _patch(x, src, base_locs, src_locs, n_heads=None, heads=None):
    """Vanilla by hand: base units <- source units (pos: positions; h.pos: heads x positions)."""
    x = x.clone()
    for i in range(x.shape[0]):
        if n_heads is None:
            x[i, base_locs[i]] = src[i, src_locs[i]]
        else:
            xv, sv = head_view(x, n_heads), head_view(src, n_heads)
            for hb, hs in zip(heads[0][i], heads[1][i]):
                for pb, ps in zip(base_locs[i], src_locs[i]):
                    xv[i, hb, pb] = sv[i, hs, ps]
    return x


@pytest.mark.parametrize("family", _params("intervene"))
def test_vanilla_patch_equals_hooked_patch(family):
    """Vanilla from a source at encoder (Whisper: audio-frame positions), decoder and cross-attention sites
    (the cross-attention's keys/values at encoder positions) gives the logits of the HF model with a hook
    that copies the source's units into the base run."""
    model = model_for(family)
    table = hand_table(model)
    base, src = _inputs(family, 21), _inputs(family, 22)
    clean = model(**base).logits
    bh, sh = [[0, 1], [1, 0]], [[1, 0], [0, 1]]
    for c in INTERVENED:
        path, port, heads = table[c]
        bpos, spos = ENC_POS if _over_encoder(c) else DEC_POS
        if heads is None:
            locs, unit = {"sources->base": ([spos], [bpos])}, "pos"
        else:
            locs, unit = {"sources->base": ([[sh, spos]], [[bh, bpos]])}, "h.pos"
        im = pv.IntervenableModel(_cfg(c, pv.VanillaIntervention, unit=unit, max_number_of_units=2), model)
        _, out = im(base=base, sources=[src], unit_locations=locs)
        store = {}
        with hooks(model, [(path, port, capture(store, "s"))]), torch.no_grad():
            model(**src)
        n = getattr(model.config, heads) if heads else None
        with hooks(model, [(path, port, lambda x: _patch(x, store["s"], bpos, spos, n, (bh, sh)))]), torch.no_grad():
            ref = model(**base).logits
        torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5, msg=lambda m: f"{c}: {m}")
        assert not torch.allclose(out.logits, clean), c


@pytest.mark.parametrize("family", _params("intervene"))
def test_decoder_positions_count_the_decoders_tokens(family):
    """A decoder component's positions are the decoder's (here past the encoder's count, which BART has 3 of;
    Whisper's 8 frames); an encoder position past the encoder's is refused before the model runs."""
    model = model_for(family)
    g = torch.Generator().manual_seed(31)
    base = {"decoder_input_ids": torch.randint(3, 64, (1, 10), generator=g)}
    if family == "whisper":
        base["input_features"] = torch.randn(1, 8, 16, generator=g)
    else:
        base["input_ids"] = torch.randint(3, 64, (1, 3), generator=g)
    path = hand_table(model)["decoder_block_output"][0]
    im = pv.IntervenableModel(_cfg("decoder_block_output", pv.ZeroIntervention), model)
    _, out = im(base, unit_locations={"base": 9})

    def zero(x):
        x = x.clone()
        x[:, 9] = 0
        return x

    with hooks(model, [(path, "output", zero)]), torch.no_grad():
        ref = model(**base).logits
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    if family == "bart":
        im = pv.IntervenableModel(_cfg("block_output", pv.ZeroIntervention), model)
        with pytest.raises(ValueError, match="position 9 is out of range"):
            im(base, unit_locations={"base": 9})


# ------------------------------------------------------------------------------------- trainable


@pytest.mark.parametrize("family", _params("trainable"))
def test_low_rank_rotation_trains_like_a_hooked_model(family):
    """LowRankRotatedSpace at the decoder's cross-attention output: loss and gradient of its rotation equal the
    HF model's with a hook applying the same module at the same positions; an SGD step changes it."""
    model = model_for(family)
    d = model.config.d_model
    comp = "decoder_cross_attention_output"
    path = hand_table(model)[comp][0]
    im = pv.IntervenableModel(_cfg(comp, pv.LowRankRotatedSpaceIntervention, low_rank_dimension=2), model)
    iv = next(iter(im.interventions.values()))
    iv = iv[0] if isinstance(iv, tuple) else iv
    base, src = _inputs(family, 41), _inputs(family, 42)
    bpos, spos = [[3], [2]], [[1], [3]]
    labels = torch.tensor([5, 9])
    locs = {"sources->base": ([spos], [bpos])}
    _, out = im(base=base, sources=[src], unit_locations=locs)
    loss = torch.nn.functional.cross_entropy(out.logits[:, -1], labels)
    params = [p for p in iv.parameters() if p.requires_grad]
    assert params
    g = torch.autograd.grad(loss, params)

    store = {}
    with hooks(model, [(path, "output", capture(store, "s"))]), torch.no_grad():
        model(**src)

    def apply(x):
        bi = torch.arange(B)[:, None]
        new = iv(x[bi, torch.tensor(bpos)].reshape(B, d), store["s"][bi, torch.tensor(spos)].reshape(B, d))
        y = x.clone()
        y[bi, torch.tensor(bpos)] = new.reshape(B, 1, d)
        return y

    with hooks(model, [(path, "output", apply)]):
        ref = model(**base).logits
    ref_loss = torch.nn.functional.cross_entropy(ref[:, -1], labels)
    g_ref = torch.autograd.grad(ref_loss, params)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert sum(float(a.abs().sum()) for a in g) > 0
    before = iv.rotate_layer.weight.detach().clone()
    opt = torch.optim.SGD(params, lr=0.5)
    _, out = im(base=base, sources=[src], unit_locations=locs)
    torch.nn.functional.cross_entropy(out.logits[:, -1], labels).backward()
    opt.step()
    assert not torch.equal(before, iv.rotate_layer.weight.detach())


# ------------------------------------------------------------------------------------- graph


@pytest.mark.parametrize("family", _params("graph_diff"))
def test_graph_diff_names_the_cross_attention_site(family):
    """The rewritten graph adds the site's nodes and removes none; the site node lies in the HF module the
    component names (the cross-attention's key projection)."""
    model = model_for(family)
    comp = "decoder_cross_attention_key_output"
    im = pv.IntervenableModel(_cfg(comp, pv.VanillaIntervention), model)
    d = im.graph_diff()
    assert sorted(d.added) == ["fxv_loc_0", "fxv_site_0", "fxv_src_0"]
    assert d.removed == []
    site = next(n for n in d.old.graph.nodes if n.name == im.sites()[0].node)
    path = hand_table(model)[comp][0]
    stack = site.meta["nn_module_stack"]
    assert any(path in str(v) for v in stack.values()) or path in repr(stack)
    assert set(d.rewired) == {u.name for u in site.users}


# ------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("family", _params("cli"))
def test_cli_components_lists_encoder_decoder_and_cross_attention(family, tmp_path, monkeypatch):
    """``fxvene components DIR --json`` lists every component at its HF module with the hooked tensor's shape.
    The directory loads as the class it was saved from (not the decoder-only ``...ForCausalLM``); the listing
    runs on the module's model (one export per family)."""
    import io
    import json
    from contextlib import redirect_stdout

    from fxvene.cli import app
    from fxvene.cli.common import load_model_dir

    model = model_for(family)
    model.save_pretrained(tmp_path)
    loaded = load_model_dir(str(tmp_path))
    assert type(loaded) is type(model)
    inputs = _inputs(family, 92)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(app, "load_model", lambda spec: model)
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert app.main(["components", str(tmp_path), "--layer", str(L), "--json"]) in (0, None)
    by = {r["component"]: r for r in json.loads(buf.getvalue())}
    table = hand_table(model)
    store = {}
    with hooks(model, [(p, port, capture(store, c)) for c, (p, port, _) in table.items()]), torch.no_grad():
        model(**_cli_example(family))
    for c, (path, _port, heads) in table.items():
        want = store[c] if heads is None else head_view(store[c], getattr(model.config, heads))
        assert by[c]["error"] is None and by[c]["module"] == path, c
        assert tuple(by[c]["view"][1:]) == tuple(want.shape[1:]), c


def _cli_example(family):
    """The shapes of the CLI's example inputs (batch 2; 8 tokens, 5 decoder tokens; Whisper: its 16 frames)."""
    ids = torch.randint(3, 64, (2, 8))
    if family == "whisper":
        return {"input_features": torch.randn(2, 8, 16), "decoder_input_ids": ids[:, :5]}
    return {"input_ids": ids, "decoder_input_ids": ids[:, :5]}


# ------------------------------------------------------------------------------------- not (yet) supported


@pytest.mark.parametrize("family", FAMILIES)
def test_sweeps_refuse_encoder_decoders_clearly(family):
    """The sweeps run decoder-only step graphs; an encoder-decoder gets a ValueError that says so (not an error
    from deep inside the model or a wrong readout). Generation runs them: tests/test_generate_encdec.py."""
    model = model_for(family)
    full, src = _inputs(family, 5), _inputs(family, 6)
    with pytest.raises(ValueError, match="encoder-decoder"):
        pv.patching_sweep(model, full, src, components=("decoder_block_output",))
    with pytest.raises(ValueError, match="encoder-decoder"):
        pv.causal_trace(model, full, subject_positions=[1], target_token=5)


def test_bad_input_features_are_refused():
    """``input_features`` must be a floating (batch, mel bins, frames) tensor, with the decoder's ids only."""
    model = model_for("whisper")
    im = pv.IntervenableModel(_cfg("block_output", pv.ZeroIntervention), model)
    dec = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="input_features"):
        im({"input_features": torch.zeros(2, 8, 16, dtype=torch.long), "decoder_input_ids": dec})
    with pytest.raises(ValueError, match="input_features"):
        im({"input_features": torch.zeros(2, 16), "decoder_input_ids": dec})
    with pytest.raises(ValueError, match="token_type_ids"):
        im({"input_features": torch.zeros(2, 8, 16), "decoder_input_ids": dec, "token_type_ids": dec})
