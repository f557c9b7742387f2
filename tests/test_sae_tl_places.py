"""TransformerLens hook names placed per family (models/aliases.py ``FAMILY_PLACES``): on a tiny Llama
(gated MLP) and a tiny Gemma 2 (post-sublayer norms), a Collect at a hook name and an SAE spliced by its
``hook_name`` are checked against HF forward hooks at the modules TransformerLens means, picked by hand:
``mlp.hook_post`` = down_proj's input (act(gate(x)) * up(x), also written out), ``hook_attn_out`` /
``hook_mlp_out`` = what the sublayer adds to the residual stream (after Gemma 2's post-norms),
``hook_resid_mid`` = the residual stream between the sublayers. GPT-2's places: tests/test_sae.py."""

import json
import os
import re

import pytest
import torch
from _hooks import hooks
from _tiny import AVAILABLE, make_tiny
from test_sae import grab, hand_decode, hand_encode, rand_weights, write_sae

import fxvene as pv
from fxvene.models import family_for
from fxvene.models.aliases import FAMILY_PLACES, place

FAMILIES = ("llama", "gemma2")
L = 1
# hook -> (module path, port) TransformerLens reads, per family (module paths of the ...ForCausalLM)
PLACES = {
    "llama": {
        "mlp.hook_post": ("model.layers.1.mlp.down_proj", "input"),
        "hook_mlp_out": ("model.layers.1.mlp", "output"),
        "hook_attn_out": ("model.layers.1.self_attn", "output"),
        "hook_resid_mid": ("model.layers.1.post_attention_layernorm", "input"),
    },
    "gemma2": {
        "mlp.hook_post": ("model.layers.1.mlp.down_proj", "input"),
        "hook_mlp_out": ("model.layers.1.post_feedforward_layernorm", "output"),
        "hook_attn_out": ("model.layers.1.post_attention_layernorm", "output"),
        "hook_resid_mid": ("model.layers.1.pre_feedforward_layernorm", "input"),
    },
}
_MODELS = {}


def model_of(family):
    if family not in _MODELS:
        _MODELS[family] = make_tiny(family)
    return _MODELS[family]


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(5))


def _read(model, ids, places):
    store = {}
    specs = [(path, port, grab(store, hook)) for hook, (path, port) in places.items()]
    specs.append((f"model.layers.{L}.mlp", "input", grab(store, "mlp_in")))
    with torch.no_grad(), hooks(model, specs):
        model(input_ids=ids)
    return store


@pytest.mark.parametrize("family", FAMILIES)
def test_collect_at_hook_names_equals_hooks(family, ids):
    model = model_of(family)
    want = _read(model, ids, PLACES[family])
    mlp = model.get_submodule(f"model.layers.{L}.mlp")
    with torch.no_grad():  # TransformerLens's hook_post of a gated MLP, written out
        torch.testing.assert_close(
            want["mlp.hook_post"], mlp.act_fn(mlp.gate_proj(want["mlp_in"])) * mlp.up_proj(want["mlp_in"])
        )
    names = [f"blocks.{L}.{hook}" for hook in PLACES[family]]
    config = pv.IntervenableConfig(
        [pv.RepresentationConfig(component=n, intervention=pv.CollectIntervention()) for n in names]
    )
    assert [(r.component, r.layer) for r in config.representations] == [(n, L) for n in names]  # kept as written
    im = pv.IntervenableModel(config, model)
    with torch.no_grad():
        (_, got), _ = im({"input_ids": ids})
    for hook, value in zip(PLACES[family], got):
        torch.testing.assert_close(value, want[hook], atol=1e-6, rtol=1e-6, msg=f"{family} {hook}")


def _sae(tmp_path, family, hook, seed):
    d_in = 48 if hook == "mlp.hook_post" else 32  # intermediate / hidden size of the tiny models
    w = rand_weights("jumprelu", seed, d_in=d_in, d_sae=40)
    meta = {"model_name": f"tiny-{family}"}
    return w, write_sae(tmp_path / f"{family}_{seed}", "jumprelu", w, hook=f"blocks.{L}.{hook}", meta=meta)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("hook", ("mlp.hook_post", "hook_mlp_out"))
def test_sae_splices_at_the_place_its_hook_names(family, hook, ids, tmp_path):
    model = model_of(family)
    w, d = _sae(tmp_path, family, hook, seed=7)
    sae = pv.load_sae(d)
    im = pv.IntervenableModel(pv.RepresentationConfig(component=None, intervention=sae), model)
    path, port = PLACES[family][hook]
    feats, pos = [2, 5, 11, 30], [[1, 4], [0, 5]]

    def ablated(x):
        acts, stats = hand_encode(w, "jumprelu", x)
        new = acts.clone()
        new[..., feats] = 0
        y = x.clone()
        for b, ps in enumerate(pos):
            y[b, ps] = (hand_decode(w, new, stats) + (x - hand_decode(w, acts, stats)))[b, ps]
        return y

    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with hooks(model, [(path, port, ablated)]):
            want = model(input_ids=ids).logits
        _, out = im({"input_ids": ids})  # the error term: nothing changes
        assert (out.logits - plain).abs().max() <= 1e-5
        sae.set_edit("ablate", features=feats)
        _, out = im({"input_ids": ids}, unit_locations={"base": [pos]})
    assert (want - plain).abs().max() > 1e-4
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)


def test_save_and_load_keep_the_hook_name(ids, tmp_path):
    model = model_of("gemma2")
    _, d = _sae(tmp_path, "gemma2", "hook_mlp_out", seed=9)
    sae = pv.load_sae(d, edit="scale", value=3.0, features=[1, 6])
    im = pv.IntervenableModel(pv.RepresentationConfig(component=sae.hook_name, intervention=sae), model)
    im.save(str(tmp_path / "im"))
    with open(tmp_path / "im" / "config.json") as f:
        assert json.load(f)["representations"][0][:2] == [L, f"blocks.{L}.hook_mlp_out"]
    assert len([f for f in os.listdir(tmp_path / "im") if f.endswith(".safetensors")]) == 1
    loaded = pv.IntervenableModel.load(str(tmp_path / "im"), model)
    with torch.no_grad():
        want = im({"input_ids": ids})[1].logits
        got = loaded({"input_ids": ids})[1].logits
    torch.testing.assert_close(got, want)
    assert (want - model(input_ids=ids).logits).abs().max() > 1e-4


# every family with its own places, read in HF's own model: the places add up to the residual stream as
# TransformerLens's do (resid_pre + attn_out = resid_mid, resid_mid + mlp_out = resid_post) and
# mlp.hook_post is the MLP's hidden activation written out (Granite scales its sublayers' outputs
# after attention_output / mlp_output, so its sums are not checked)
ROWS = [f for f in AVAILABLE if f in FAMILY_PLACES]


def _module_port(model, hook):
    fam, prefix = family_for(model)
    site, _ = place(f"blocks.{L}.{hook}", fam.name, prefix)
    if site.endswith((".input", ".output")):
        path, port = site.rsplit(".", 1)
        return re.sub(r"\[(\d+)\]", r".\1", path), port
    spec = fam.components[site]
    return prefix + spec.module.format(layer=L), spec.port


def _hidden(mlp, x):
    if hasattr(mlp, "gate_up_proj"):  # Phi-3: [gate | up]
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
        return mlp.activation_fn(gate) * up
    if hasattr(mlp, "gate_proj"):
        return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    return mlp.act(mlp.c_fc(x))  # GPT-2, GPT-Neo: ungated


@pytest.mark.parametrize("family", ROWS)
def test_family_places_are_transformer_lens_places(family):
    model = make_tiny(family)
    fam, prefix = family_for(model)
    hooks_ = ["hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_resid_mid"]
    if FAMILY_PLACES[fam.name].get("mlp.hook_post", "") is not None:
        hooks_.append("mlp.hook_post")
    mlp_path = prefix + fam.components["mlp_input"].module.format(layer=L)
    store = {}
    specs = [(*_module_port(model, h), grab(store, h)) for h in hooks_] + [(mlp_path, "input", grab(store, "mlp_in"))]
    ids = torch.randint(3, 64, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), hooks(model, specs):
        model(input_ids=ids)
    if family != "granite":
        torch.testing.assert_close(store["hook_resid_pre"] + store["hook_attn_out"], store["hook_resid_mid"])
        torch.testing.assert_close(store["hook_resid_mid"] + store["hook_mlp_out"], store["hook_resid_post"])
    if "mlp.hook_post" in store:
        with torch.no_grad():
            want = _hidden(model.get_submodule(mlp_path), store["mlp_in"])
        torch.testing.assert_close(store["mlp.hook_post"], want)
