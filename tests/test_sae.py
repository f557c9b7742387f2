"""Sparse autoencoders (fxvene/interventions/sae.py, models/aliases.py): SAELens-format and Gemma Scope
SAEs checked against SAELens's own outputs (fixtures written by scripts/make_sae_fixtures.py) and
against hand-written formulas; the splice, feature edits and Collect checked against HF forward hooks."""

import json
import os

import numpy as np
import pytest
import torch
from _hooks import hooks
from safetensors.torch import load_file, save_file

import fxvene as pv
from fxvene.models.aliases import place

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "sae")
CASES = (
    sorted(c for c in os.listdir(FIXTURES) if os.path.isdir(os.path.join(FIXTURES, c)))
    if os.path.isdir(FIXTURES)
    else []
)
D_IN, D_SAE = 24, 32  # the tiny GPT-2's width
SITE = "transformer.h.1"  # block_input of layer 1 = blocks.1.hook_resid_pre
FEATS, VALUE = [1, 4, 9, 30], 0.75


# ---------------------------------------------------------------------- the hand-written SAE


def hand_encode(w, arch, x, k=None, b_dec_in=True, norm="none", rescale=False, center=False):
    """(acts, stats) of SAELens's formulas, written out."""
    mu = x.mean(-1, keepdim=True) if center else torch.zeros_like(x[..., :1])
    x = x - mu
    stats = {"mu": mu}
    if norm == "constant_norm_rescale":
        c = (D_IN**0.5) / x.norm(dim=-1, keepdim=True)
        x, stats["c"] = x * c, c
    elif norm == "layer_norm":
        m = x.mean(-1, keepdim=True)
        s = (x - m).std(-1, keepdim=True)
        x, stats["m"], stats["s"] = (x - m) / (s + 1e-5), m, s
    if b_dec_in:
        x = x - w["b_dec"]
    if arch == "gated":
        on = (x @ w["W_enc"] + w["b_gate"] > 0).float()
        return on * torch.relu(x @ (w["W_enc"] * torch.exp(w["r_mag"])) + w["b_mag"]), stats
    pre = x @ w["W_enc"] + w["b_enc"]
    if arch == "jumprelu":
        return torch.where(pre > w["threshold"], torch.relu(pre), torch.zeros_like(pre)), stats
    if arch == "topk":
        if rescale:
            pre = pre * w["W_dec"].norm(dim=-1)
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, pre.topk(k, dim=-1).indices, True)
        return torch.where(keep, torch.relu(pre), torch.zeros_like(pre)), stats
    return torch.relu(pre), stats


def hand_decode(w, acts, stats, arch="standard", norm="none", rescale=False):
    if arch == "topk" and rescale:
        acts = acts / w["W_dec"].norm(dim=-1)
    y = acts @ w["W_dec"] + w["b_dec"]
    if norm == "constant_norm_rescale":
        y = y / stats["c"]
    elif norm == "layer_norm":
        y = y * stats["s"] + stats["m"]
    return y + stats["mu"]


def rand_weights(arch, seed, d_in=D_IN, d_sae=D_SAE):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3, "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.3}
    w["b_dec"] = torch.randn(d_in, generator=g) * 0.1
    if arch == "gated":
        w.update({n: torch.randn(d_sae, generator=g) * 0.2 for n in ("b_gate", "b_mag", "r_mag")})
    else:
        w["b_enc"] = torch.randn(d_sae, generator=g) * 0.2
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g) * 0.3
    return w


def write_sae(directory, arch, w, layout="v6", hook="blocks.1.hook_resid_pre", **cfg):
    """A SAELens directory: SAELens 6's cfg layout (metadata) or the flat one of SAELens <= 5."""
    os.makedirs(directory, exist_ok=True)
    save_file(w, os.path.join(directory, "sae_weights.safetensors"))
    meta = {"hook_name": hook, "model_name": "gpt2", "model_from_pretrained_kwargs": {"center_writing_weights": False}}
    meta.update(cfg.pop("meta", {}))
    base = {"d_in": w["W_enc"].shape[0], "d_sae": w["W_enc"].shape[1], "dtype": "float32", **cfg}
    if layout == "v6":
        body = {"architecture": arch, **base, "metadata": meta}
    else:  # flat: hook_point, activation_fn_str, topk as an activation
        body = {**base, **{("hook_point" if k == "hook_name" else k): v for k, v in meta.items()}}
        if arch == "topk":
            body.update(activation_fn_str="topk", activation_fn_kwargs={"k": body.pop("k")})
        elif arch != "standard":
            body["architecture"] = arch
    with open(os.path.join(directory, "cfg.json"), "w") as f:
        json.dump(body, f)
    return str(directory)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 5, D_IN, generator=torch.Generator().manual_seed(3)) * 2 + 0.5


# ---------------------------------------------------------------------- SAELens's own outputs (fixtures)


@pytest.mark.parametrize("case", CASES)
def test_matches_saelens_reference(case):
    d = os.path.join(FIXTURES, case)
    ref = load_file(os.path.join(d, "reference.safetensors"))
    sae = pv.load_sae(d, center=False)  # SAELens itself never centres: TransformerLens does, in the model
    with torch.no_grad():
        acts = sae.encode(ref["x"])
        torch.testing.assert_close(acts, ref["acts"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(acts), ref["recon"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(ref["x"]), ref["out_error"], atol=1e-5, rtol=1e-5)
        for edit in ("ablate", "set", "clamp", "scale"):
            sae.set_edit(edit, VALUE, FEATS)
            torch.testing.assert_close(sae(ref["x"]), ref[f"out_{edit}"], atol=1e-5, rtol=1e-5, msg=edit)
        sae.set_edit(None).error = False
        torch.testing.assert_close(sae(ref["x"]), ref["recon"], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- hand formulas, both cfg layouts, npz

ARCHS = [
    ("standard", {}, "v5"),
    ("standard", {"normalize_activations": "layer_norm"}, "v6"),
    ("jumprelu", {"apply_b_dec_to_input": False}, "v6"),
    ("jumprelu", {}, "v5"),
    ("topk", {"k": 5}, "v5"),
    ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True}, "v6"),
    ("gated", {"normalize_activations": "constant_norm_rescale"}, "v6"),
    ("gated", {}, "v5"),
]


@pytest.mark.parametrize("arch,cfg,layout", ARCHS)
def test_hand_formula(tmp_path, x, arch, cfg, layout):
    w = rand_weights(arch, seed=len(arch) + len(cfg))
    sae = pv.load_sae(write_sae(tmp_path / "sae", arch, w, layout, **cfg))
    assert (sae.architecture, sae.hook_name, sae.center) == (arch, "blocks.1.hook_resid_pre", False)
    kw = dict(
        k=cfg.get("k"),
        b_dec_in=cfg.get("apply_b_dec_to_input", True),
        norm=cfg.get("normalize_activations", "none"),
        rescale=cfg.get("rescale_acts_by_decoder_norm", False),
    )
    acts, stats = hand_encode(w, arch, x, **kw)
    recon = hand_decode(w, acts, stats, arch, kw["norm"], kw["rescale"])
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(sae.encode(x)), recon, atol=1e-5, rtol=1e-5)
        edited = acts.clone()
        edited[..., FEATS] = 0
        want = hand_decode(w, edited, stats, arch, kw["norm"], kw["rescale"]) + (x - recon)
        torch.testing.assert_close(sae.set_edit("ablate", features=FEATS)(x), want, atol=1e-5, rtol=1e-5)


def test_gemma_scope_npz(tmp_path, x):
    w = rand_weights("jumprelu", seed=7)
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in w.items()})
    for path in (tmp_path, tmp_path / "params.npz"):
        sae = pv.load_sae(path, error=False)
        assert (sae.architecture, sae.apply_b_dec_to_input, sae.hook_name) == ("jumprelu", False, None)
        acts, stats = hand_encode(w, "jumprelu", x, b_dec_in=False)
        with torch.no_grad():
            torch.testing.assert_close(sae.encode(x), acts, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(sae(x), hand_decode(w, acts, stats), atol=1e-5, rtol=1e-5)


def _write_v6_meta(directory, w, meta):
    d = write_sae(directory, "standard", w)
    with open(os.path.join(d, "cfg.json")) as f:
        body = json.load(f)
    body["metadata"] = meta  # exactly this metadata: an absent key means TransformerLens's defaults
    with open(os.path.join(d, "cfg.json"), "w") as f:
        json.dump(body, f)
    return d


def test_centring_follows_the_config(tmp_path, x):
    w = rand_weights("standard", seed=11)
    resid = {"hook_name": "blocks.1.hook_resid_pre", "model_name": "gpt2"}
    cases = [
        (resid, True),  # no model_from_pretrained_kwargs: TransformerLens's defaults centre the residual stream
        ({**resid, "model_from_pretrained_kwargs": {"center_writing_weights": True}}, True),
        ({**resid, "model_from_pretrained_kwargs": {"center_writing_weights": False}}, False),  # SAELens's default
        ({**resid, "model_from_pretrained_kwargs": {"fold_ln": False}}, True),
        ({**resid, "model_name": "gemma-2-2b"}, False),  # RMSNorm: TransformerLens does not centre
        ({**resid, "model_class_name": "AutoModelForCausalLM"}, False),  # not a TransformerLens model
        ({"hook_name": "blocks.1.attn.hook_z", "model_name": "gpt2"}, False),  # no write into the residual
    ]
    for i, (meta, centred) in enumerate(cases):
        assert pv.load_sae(_write_v6_meta(tmp_path / str(i), w, meta)).center is centred, meta
    sae = pv.load_sae(tmp_path / "0", error=False)
    acts, stats = hand_encode(w, "standard", x, center=True)
    with torch.no_grad():
        torch.testing.assert_close(sae(x), hand_decode(w, acts, stats), atol=1e-5, rtol=1e-5)
        plain = hand_decode(w, *hand_encode(w, "standard", x))
        assert (sae(x) - plain).abs().max() > 1e-2  # the difference centring makes


def test_gradients_through_the_error_term(tmp_path, x):
    w = rand_weights("standard", seed=5)
    d = write_sae(tmp_path / "s", "standard", w)
    for detach in (True, False):
        sae = pv.load_sae(d, detach_error=detach)
        xi = x.clone().requires_grad_(True)
        (sae(xi) * torch.arange(D_IN)).sum().backward()
        xh = x.clone().requires_grad_(True)
        acts, stats = hand_encode(w, "standard", xh)
        recon = hand_decode(w, acts, stats)
        err = xh - recon
        ((recon + (err.detach() if detach else err)) * torch.arange(D_IN)).sum().backward()
        torch.testing.assert_close(xi.grad, xh.grad, atol=1e-5, rtol=1e-5)
    assert torch.allclose(xi.grad, torch.arange(D_IN).float().expand_as(x))  # undetached: the identity


# ---------------------------------------------------------------------- in the model, against HF hooks


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    return write_sae(tmp_path_factory.mktemp("sae") / "jumprelu", "jumprelu", rand_weights("jumprelu", seed=1))


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(2))


def grab(store, key):
    def fn(t):
        store[key] = t.clone()

    return fn


def _logits(gpt2, ids, fn=None):
    with torch.no_grad(), hooks(gpt2, [(SITE, "input", fn)] if fn else []):
        return gpt2(input_ids=ids).logits


def test_splice_with_error_term_leaves_outputs_unchanged(gpt2, ids, sae_dir):
    sae = pv.load_sae(sae_dir)
    im = pv.IntervenableModel(pv.RepresentationConfig(component=None, intervention=sae), gpt2)
    assert list(im.representations.values())[0][:2] == (1, "block_input")  # layer and component from hook_name
    with torch.no_grad():
        _, out = im({"input_ids": ids})
        _, some = im({"input_ids": ids}, unit_locations={"base": [[[1, 4], [0, 2]]]})
    ref = _logits(gpt2, ids)
    assert (out.logits - ref).abs().max() <= 1e-5
    assert (some.logits - ref).abs().max() <= 1e-5


def test_reconstruction_and_edits_match_hooks(gpt2, ids, sae_dir):
    w = load_file(os.path.join(sae_dir, "sae_weights.safetensors"))
    sae = pv.load_sae(sae_dir, error=False)
    im = pv.IntervenableModel(pv.RepresentationConfig(component="blocks.1.hook_resid_pre", intervention=sae), gpt2)
    pos = [[1, 4], [0, 2]]

    def at_positions(fn):
        def hook(x):
            y = x.clone()
            for b, ps in enumerate(pos):
                y[b, ps] = fn(x[b, ps])
            return y

        return hook

    def recon(x):
        acts, stats = hand_encode(w, "jumprelu", x)
        return hand_decode(w, acts, stats)

    with torch.no_grad():
        _, out = im({"input_ids": ids}, unit_locations={"base": [pos]})
    torch.testing.assert_close(out.logits, _logits(gpt2, ids, at_positions(recon)), atol=1e-5, rtol=1e-5)

    targets = {
        "ablate": lambda a: torch.zeros_like(a),
        "set": lambda a: torch.full_like(a, VALUE),
        "clamp": lambda a: a.clamp(max=VALUE),
        "scale": lambda a: a * VALUE,
    }
    sae.error = True
    for edit, target in targets.items():

        def edited(x, target=target, feats=(3, 8)):
            acts, stats = hand_encode(w, "jumprelu", x)
            new = acts.clone()
            new[..., list(feats)] = target(acts)[..., list(feats)]
            return hand_decode(w, new, stats) + (x - hand_decode(w, acts, stats))

        sae.set_edit(edit, VALUE)
        with torch.no_grad():  # the features as subspaces, per example
            _, out = im({"input_ids": ids}, unit_locations={"base": [pos]}, subspaces=[[[3, 8], [3, 8]]])
        torch.testing.assert_close(out.logits, _logits(gpt2, ids, at_positions(edited)), atol=1e-5, rtol=1e-5)


def test_patch_features_from_a_source_run(gpt2, ids, sae_dir):
    w = load_file(os.path.join(sae_dir, "sae_weights.safetensors"))
    sae = pv.load_sae(sae_dir, edit="patch", features=[2, 5, 7])
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_input", intervention=sae), gpt2)
    src = torch.flip(ids, dims=[1])
    store = {}
    _logits(gpt2, src, grab(store, "x"))
    with torch.no_grad():
        _, out = im(
            {"input_ids": ids}, [{"input_ids": src}], unit_locations={"sources->base": ([[[3]] * 2], [[[3]] * 2])}
        )

    def patched(x):
        acts, stats = hand_encode(w, "jumprelu", x[:, 3])
        s_acts = hand_encode(w, "jumprelu", store["x"][:, 3])[0]
        new = acts.clone()
        new[:, [2, 5, 7]] = s_acts[:, [2, 5, 7]]
        y = x.clone()
        y[:, 3] = hand_decode(w, new, stats) + (x[:, 3] - hand_decode(w, acts, stats))
        return y

    torch.testing.assert_close(out.logits, _logits(gpt2, ids, patched), atol=1e-5, rtol=1e-5)


def test_collect_feature_activations(gpt2, ids, sae_dir):
    w = load_file(os.path.join(sae_dir, "sae_weights.safetensors"))
    sae = pv.load_sae(sae_dir)
    store = {}
    _logits(gpt2, ids, grab(store, "x"))
    want = hand_encode(w, "jumprelu", store["x"])[0]
    for top_k in (None, 3):
        im = pv.IntervenableModel(
            pv.RepresentationConfig(component="blocks.1.hook_resid_pre", intervention=sae.collect(top_k)), gpt2
        )
        with torch.no_grad():
            (_, got), _ = im({"input_ids": ids})
        if top_k is None:
            torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-5)  # (batch, positions, d_sae)
        else:
            values, indices = got[0]
            torch.testing.assert_close(values, want.topk(3, dim=-1).values, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(want.gather(-1, indices), values, atol=1e-5, rtol=1e-5)


def test_aliases_name_the_same_sites(gpt2, ids):
    store = {}
    places = (("transformer.h.2.mlp", "output", "mlp"), ("transformer.h.0", "output", "post"))
    for path, port, key in places + (("transformer.h.1.ln_2", "input", "mid"),):
        with torch.no_grad(), hooks(gpt2, [(path, port, grab(store, key))]):
            gpt2(input_ids=ids)
    for name, key in (
        ("blocks.2.hook_mlp_out", "mlp"),
        ("blocks.0.hook_resid_post", "post"),
        ("blocks.1.hook_resid_mid", "mid"),
    ):
        im = pv.IntervenableModel(pv.RepresentationConfig(component=name, intervention=pv.CollectIntervention()), gpt2)
        (_, got), _ = im({"input_ids": ids})
        torch.testing.assert_close(got[0], store[key])


def test_save_and_load_round_trip(gpt2, ids, sae_dir, tmp_path):
    sae = pv.load_sae(sae_dir, edit="scale", value=[2.0, 0.0, -1.0], features=[0, 3, 9])
    sae.save(tmp_path / "sae")
    again = pv.load_sae(tmp_path / "sae")
    assert again.settings() == sae.settings()
    x = torch.randn(2, 4, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(again(x), sae(x))
    im = pv.IntervenableModel(pv.RepresentationConfig(component=sae.hook_name, intervention=sae), gpt2)
    im.save(str(tmp_path / "im"))
    assert sorted(os.listdir(tmp_path / "im")) == [
        "config.json",
        "intkey_layer_1_comp_block_input_unit_pos_nunit_1#0.safetensors",
    ]
    loaded = pv.IntervenableModel.load(str(tmp_path / "im"), gpt2)
    with torch.no_grad():
        want = im({"input_ids": ids})[1].logits
        got = loaded({"input_ids": ids})[1].logits
    torch.testing.assert_close(got, want)
    assert (want - _logits(gpt2, ids)).abs().max() > 1e-4  # the edit is saved too


def test_feature_sweep_equals_a_hooked_loop(gpt2, ids, sae_dir):
    w = load_file(os.path.join(sae_dir, "sae_weights.safetensors"))
    sae = pv.load_sae(sae_dir)
    base, src = ids[:1], ids[1:]
    feats, poss, toks = [0, 3, 11], [1, 4], [5, 17]
    store = {}
    _logits(gpt2, src, grab(store, "src"))
    got = pv.feature_sweep(gpt2, {"input_ids": base}, sae, feats, poss, tokens=toks, max_rows=4)
    got_patch = pv.feature_sweep(gpt2, {"input_ids": base}, sae, feats, poss, "patch", {"input_ids": src}, max_rows=5)
    assert sae.edit is None  # the SAE is left as it was
    for i, f in enumerate(feats):
        for j, p in enumerate(poss):
            for edit, out in (("ablate", got), ("patch", got_patch)):

                def one(x, f=f, p=p, edit=edit):
                    acts, stats = hand_encode(w, "jumprelu", x[:, p])
                    new = acts.clone()
                    new[:, f] = 0 if edit == "ablate" else hand_encode(w, "jumprelu", store["src"][:, p])[0][:, f]
                    y = x.clone()
                    y[:, p] = hand_decode(w, new, stats) + x[:, p] - hand_decode(w, acts, stats)
                    return y

                want = _logits(gpt2, base, one)[0, -1]
                torch.testing.assert_close(out[i, j], want[toks] if edit == "ablate" else want, atol=1e-5, rtol=1e-5)


def test_feature_attribution_equals_hooked_gradients(gpt2, ids, sae_dir):
    w = load_file(os.path.join(sae_dir, "sae_weights.safetensors"))
    sae = pv.load_sae(sae_dir)
    base, target = ids[:1], 7
    got = pv.feature_attribution(gpt2, {"input_ids": base}, sae, target, k=3)
    leaf = {}

    def splice(x):
        acts, stats = hand_encode(w, "jumprelu", x)
        leaf["a"] = acts.detach().requires_grad_(True)
        return hand_decode(w, leaf["a"], stats) + (x - hand_decode(w, acts, stats)).detach()

    with hooks(gpt2, [(SITE, "input", splice)]):
        logit = gpt2(input_ids=base).logits[0, -1, target]
    (grad,) = torch.autograd.grad(logit, leaf["a"])
    scores = (-leaf["a"] * grad)[0].detach()
    torch.testing.assert_close(got["scores"], scores, atol=1e-5, rtol=1e-4)
    want_top = scores.abs().flatten().topk(3).indices.tolist()
    assert [p * D_SAE + f for p, f in got["top"]] == want_top
    for (p, f), exact in zip(got["top"], got["exact"]):

        def ablate(x, p=p, f=f):
            acts, stats = hand_encode(w, "jumprelu", x[:, p])
            new = acts.clone()
            new[:, f] = 0
            y = x.clone()
            y[:, p] = hand_decode(w, new, stats) + x[:, p] - hand_decode(w, acts, stats)
            return y

        change = _logits(gpt2, base, ablate)[0, -1, target] - logit.detach()
        torch.testing.assert_close(exact, change, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- bad input


def test_bad_input(tmp_path, sae_dir, gpt2):
    with pytest.raises(ValueError, match="edit must be one of"):
        pv.load_sae(sae_dir, edit="boost")
    with pytest.raises(ValueError, match="needs value"):
        pv.load_sae(sae_dir, edit="set")
    with pytest.raises(ValueError, match="features: 99 is out of range"):
        pv.load_sae(sae_dir, edit="ablate", features=[99])
    with pytest.raises(ValueError, match="no cfg.json"):
        pv.load_sae(tmp_path)
    with pytest.raises(TypeError, match="path must be"):
        pv.load_sae(3)
    with pytest.raises(ValueError, match="unknown hook 'hook_foo'; known: hook_resid_pre"):
        pv.IntervenableConfig(pv.RepresentationConfig(component="blocks.1.hook_foo"))
    with pytest.raises(ValueError, match="names layer 1 but layer=3"):
        pv.IntervenableConfig(pv.RepresentationConfig(3, "blocks.1.hook_resid_pre"))
    with pytest.raises(ValueError, match="no known place in a gptj model; use .*h\\[2\\].ln_2.input"):
        place("blocks.2.hook_resid_mid", "gptj", "transformer.")  # parallel attention and MLP: no resid_mid
    with pytest.raises(ValueError, match="'mlp.hook_post' has no single place in a mixtral model"):
        place("blocks.0.mlp.hook_post", "mixtral", "model.")
    with pytest.raises(
        ValueError, match="source_component 'blocks.0.hook_resid_post' names layer 0 but source_layer=2"
    ):
        rep = pv.RepresentationConfig(1, "block_output", source_component="blocks.0.hook_resid_post", source_layer=2)
        pv.IntervenableModel(rep, gpt2)
    with pytest.raises(ValueError, match="source: give a source prompt with edit='patch'"):
        pv.feature_sweep(None, {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, pv.load_sae(sae_dir), edit="patch")
    with pytest.raises(ValueError, match="features: 40 is not a feature"):
        pv.feature_sweep(None, {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, pv.load_sae(sae_dir), [40])
    with pytest.raises(ValueError, match="max_rows must be a positive int or None, got 0"):
        pv.feature_sweep(None, {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, pv.load_sae(sae_dir), max_rows=0)
    with pytest.raises(ValueError, match="top_k must be an int in 1..32 or None, got True"):
        pv.load_sae(sae_dir).collect(top_k=True)
    with pytest.raises(TypeError, match="sae must be an SAEIntervention"):
        pv.SAEFeatures(None)
    with pytest.raises(ValueError, match="needs a source run"):
        pv.load_sae(sae_dir, edit="patch")(torch.zeros(1, 2, D_IN))
