"""SAEs, continued (fxvene/interventions/sae.py, fxvene/sweeps/features.py): gradients of the splice with and
without the error term's gradient, steering generation with a feature, a saved ``SAEFeatures`` collector, and
``feature_sweep`` on the sweep engine's causal prefix, each checked against HF forward hooks around the
hand-written SAE of tests/test_sae.py."""

import os

import torch
from _hooks import hooks
from safetensors.torch import load_file
from test_sae import SITE, grab, hand_decode, hand_encode, rand_weights, write_sae

import fxvene as pv

TARGET, FEATS, VALUE = 7, [3, 8], 2.0


def _setup(tmp_path):
    w = rand_weights("jumprelu", seed=1)
    return w, write_sae(tmp_path / "jumprelu", "jumprelu", w)


def _edit(w, x, feats=FEATS, fn=lambda a: a * VALUE, detach=True):
    """The hand-written splice: ``feats`` edited by ``fn``, plus the error term (detached as SAELens does)."""
    acts, stats = hand_encode(w, "jumprelu", x)
    new = acts.clone()
    new[..., feats] = fn(acts[..., feats])
    err = x - hand_decode(w, acts, stats)
    return hand_decode(w, new, stats) + (err.detach() if detach else err)


def test_gradients_of_the_splice_match_hooks(gpt2, tmp_path):
    """SAELens 6 computes the error term under ``no_grad``: gradients reach earlier layers through the
    reconstruction only (detach_error=True, the default); detach_error=False adds the error's own."""
    w, d = _setup(tmp_path)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(4))
    params = [gpt2.transformer.h[0].mlp.c_fc.weight, gpt2.transformer.wpe.weight]
    grads, frozen = {}, [q.requires_grad for q in params]  # IntervenableModel freezes the model, as pyvene does
    for detach in (True, False):
        sae = pv.load_sae(d, detach_error=detach, edit="scale", value=VALUE, features=FEATS)
        im = pv.IntervenableModel(pv.RepresentationConfig(component=None, intervention=sae), gpt2)
        try:
            for q in params:
                q.requires_grad_(True)
            with torch.enable_grad():
                _, out = im({"input_ids": ids})
                got = torch.autograd.grad(out.logits[:, -1, TARGET].sum(), params)
                with hooks(gpt2, [(SITE, "input", lambda x, detach=detach: _edit(w, x, detach=detach))]):
                    ref = gpt2(input_ids=ids).logits
                want = torch.autograd.grad(ref[:, -1, TARGET].sum(), params)
        finally:
            for q, f in zip(params, frozen):
                q.requires_grad_(f)
        torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
        grads[detach] = got
    assert (grads[True][0] - grads[False][0]).abs().max() > 1e-4  # the choice changes the gradients


def test_steering_generation_with_a_feature(gpt2, tmp_path):
    w, d = _setup(tmp_path)
    ids = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(5))
    sae = pv.load_sae(d, edit="set", value=4.0, features=[5, 11])
    im = pv.IntervenableModel(pv.RepresentationConfig(component="blocks.1.hook_resid_pre", intervention=sae), gpt2)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        _, got = im.generate({"input_ids": ids}, intervene_on_prompt=True, unit_locations=None, **kw)
        seen = []

        def steer(x):  # every forward: the whole prompt, then each new token over the KV cache
            seen.append(x.shape[1])
            return _edit(w, x, [5, 11], lambda a: torch.full_like(a, 4.0))

        with hooks(gpt2, [(SITE, "input", steer)]):
            want = gpt2.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        plain = gpt2.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    assert seen == [4] + [1] * 5
    assert torch.equal(got, want)
    assert not torch.equal(want, plain)  # the feature steers


def test_saved_feature_collector_is_rebuilt(gpt2, tmp_path):
    w, d = _setup(tmp_path)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(6))
    store = {}
    with torch.no_grad(), hooks(gpt2, [(SITE, "input", grab(store, "x"))]):
        gpt2(input_ids=ids)
    want = hand_encode(w, "jumprelu", store["x"])[0].topk(3, dim=-1)
    im = pv.IntervenableModel(
        pv.RepresentationConfig(component=None, intervention=pv.load_sae(d).collect(top_k=3)), gpt2
    )
    im.save(str(tmp_path / "im"))
    loaded = pv.IntervenableModel.load(str(tmp_path / "im"), gpt2)
    (iv,) = loaded.interventions.values()
    assert (type(iv).__name__, iv.top_k, iv.sae.architecture, iv.sae.d_sae) == ("SAEFeatures", 3, "jumprelu", 32)
    assert iv.hook_name == "blocks.1.hook_resid_pre"
    with torch.no_grad():
        (_, [(values, indices)]), _ = loaded({"input_ids": ids})
    torch.testing.assert_close(values, want.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(indices, want.indices)
    weights = load_file(next(os.path.join(tmp_path / "im", f) for f in os.listdir(tmp_path / "im") if "intkey" in f))
    torch.testing.assert_close(weights["sae.threshold"], w["threshold"])  # safetensors, no pickle


def test_feature_sweep_on_the_causal_prefix(gpt2, tmp_path):
    """The engine recomputes only the positions from a row's edited one on (the chunk step graph,
    exported once for generation above), over the base run's cached keys/values."""
    w, d = _setup(tmp_path)
    sae = pv.load_sae(d)
    g = torch.Generator().manual_seed(7)
    base, src = torch.randint(0, 50, (1, 6), generator=g), torch.randint(0, 50, (1, 6), generator=g)
    feats, poss = [0, 3, 11, 20], [0, 2, 5]
    store = {}
    with torch.no_grad(), hooks(gpt2, [(SITE, "input", grab(store, "src"))]):
        gpt2(input_ids=src)
    got = pv.feature_sweep(gpt2, {"input_ids": base}, sae, feats, poss, prefix=True)
    got_patch = pv.feature_sweep(gpt2, {"input_ids": base}, sae, feats, poss, "patch", {"input_ids": src}, prefix=True)
    s_acts = hand_encode(w, "jumprelu", store["src"])[0]
    for i, f in enumerate(feats):
        for j, p in enumerate(poss):
            for out, value in (
                (got, lambda a: torch.zeros_like(a)),
                (got_patch, lambda a, p=p, f=f: s_acts[:, p, [f]]),
            ):

                def one(x, p=p, f=f, value=value):
                    y = x.clone()
                    y[:, p] = _edit(w, x[:, p], [f], value)
                    return y

                with torch.no_grad(), hooks(gpt2, [(SITE, "input", one)]):
                    want = gpt2(input_ids=base).logits[0, -1]
                torch.testing.assert_close(out[i, j], want, atol=1e-5, rtol=1e-5)
