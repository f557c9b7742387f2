"""Saving and loading interventions: safetensors + JSON, never pickle.

Round trips (fxvene -> fxvene, pyvene 0.1.8 dir -> fxvene) must reproduce outputs bit for bit;
the oracle for "bit for bit" is the object that was saved (and, for pyvene directories, pyvene
itself running the same inputs).
"""

import json
import os
import shutil

import pytest
import torch
from conftest import batch_ids

import fxvene as pv
from fxvene.api.serialization import intervention_state_dict, read_weights

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

B = 2


def _ids(seed, vocab=50, n=8):
    return batch_ids(seed, vocab, n, B)


def _reps(lib):
    """LowRank, linked Rotated with a partition, a constant source, Boundless, SigmoidMask, Collect, Zero."""
    R = lib.RepresentationConfig
    return [
        R(
            layer=1,
            component="block_output",
            intervention_type=lib.LowRankRotatedSpaceIntervention,
            low_rank_dimension=4,
        ),
        R(
            layer=2,
            component="block_output",
            intervention_type=lib.RotatedSpaceIntervention,
            subspace_partition=[[0, 8], [8, 24]],
            intervention_link_key=0,
        ),
        R(
            layer=2,
            component="block_output",
            intervention_type=lib.RotatedSpaceIntervention,
            subspace_partition=[[0, 8], [8, 24]],
            intervention_link_key=0,
        ),
        R(
            layer=0,
            component="mlp_output",
            intervention_type=lib.AdditionIntervention,
            source_representation=torch.randn(24, generator=torch.Generator().manual_seed(7)),
        ),
        R(
            layer=0,
            component="attention_output",
            intervention_type=lib.BoundlessRotatedSpaceIntervention,
            max_number_of_units=2,
        ),
        R(layer=3, component="block_output", intervention_type=lib.SigmoidMaskIntervention),
    ]


N = 6
LOCS = {
    "sources->base": (
        [[[3]] * B, [[3]] * B, [[3]] * B, None, [[1, 2]] * B, [[6]] * B],
        [[[5]] * B, [[5]] * B, [[5]] * B, [[4]] * B, [[2, 6]] * B, [[7]] * B],
    )
}
SUBS = [None, [[0]] * B, [[1]] * B, None, None, None]


def _build(lib, model, seed=0, **kw):
    torch.manual_seed(seed)
    return lib.IntervenableModel(lib.IntervenableConfig(representations=_reps(lib)), model, **kw)


def _train(im, steps=3):
    opt = torch.optim.Adam(im.get_trainable_parameters(), lr=0.05)
    b, s = _ids(1), _ids(2)
    for _ in range(steps):
        opt.zero_grad()
        _, out = im(b, [s], LOCS, subspaces=SUBS)
        out.logits.pow(2).mean().backward()
        opt.step()
    return opt


def _run(im):
    with torch.no_grad():
        _, out = im(_ids(1), [_ids(2)], LOCS, subspaces=SUBS)
    return out.logits


def test_roundtrip_bit_for_bit_and_format(gpt2, tmp_path):
    im = _build(pv, gpt2)
    _train(im)
    ref = _run(im)
    d = tmp_path / "saved"
    im.save(str(d))

    files = sorted(os.listdir(d))
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["sorted_keys"] == im.sorted_keys
    assert cfg["intervention_types"] == [str(type(im.interventions[k])) for k in im.sorted_keys]
    assert cfg["intervention_types"][0] == "<class 'fxvene.interventions.LowRankRotatedSpaceIntervention'>"
    assert cfg["intervention_dimensions"] == [24, 24, 24, 24, 48, 24]  # Boundless: 24 x max_number_of_units
    assert cfg["intervention_constant_sources"] == [False, False, False, True, False, False]
    assert cfg["representations"][3][11] is None and cfg["representations"][3][12] is True  # hidden source
    # one file per trainable / constant-source intervention, rotations stored as the weight only
    assert files == ["config.json"] + sorted(f"intkey_{k}.safetensors" for k in im.sorted_keys)
    low = read_weights(d / f"intkey_{im.sorted_keys[0]}.safetensors")
    assert set(low) == {"embed_dim", "interchange_dim", "rotate_layer.weight"}
    assert torch.equal(low["rotate_layer.weight"], im.interventions[im.sorted_keys[0]].rotate_layer.weight)
    bnd = read_weights(d / f"intkey_{im.sorted_keys[4]}.safetensors")
    assert not any("parametrizations" in k for k in bnd) and bnd["rotate_layer.weight"].shape == (48, 48)

    loaded = pv.IntervenableModel.load(str(d), gpt2)
    assert loaded.sorted_keys == im.sorted_keys
    assert torch.equal(_run(loaded), ref)
    # linked interventions are linked again (one module, counted once)
    k1, k2 = loaded.sorted_keys[1:3]
    assert loaded.interventions[k1] is loaded.interventions[k2]
    assert loaded.count_parameters() == im.count_parameters()
    # the loaded rotation is still a trainable orthogonal parametrization
    _train(loaded, steps=1)
    w = loaded.interventions[k1].rotate_layer.weight
    assert torch.allclose(w.T @ w, torch.eye(24), atol=1e-5)
    assert not torch.equal(_run(loaded), ref)


def test_roundtrip_instance_interventions_and_attributes(gpt2, tmp_path):
    """Interventions given as instances (rep.low_rank_dimension None), keep_last_dim, Autoencoder index dims."""
    torch.manual_seed(0)
    low = pv.LowRankRotatedSpaceIntervention(embed_dim=24, low_rank_dimension=3, keep_last_dim=True)
    ae = pv.AutoencoderIntervention(embed_dim=24, latent_dim=6)
    ae.set_interchange_dim([1, 3])
    reps = [
        pv.RepresentationConfig(layer=1, component="block_output", intervention=low),
        pv.RepresentationConfig(layer=2, component="mlp_output", intervention=ae),
    ]
    im = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), gpt2)
    locs = {"sources->base": ([[[2, 3]] * B, [[4]] * B], [[[5, 6]] * B, [[1]] * B])}
    b, s = _ids(3), _ids(4)
    with torch.no_grad():
        ref = im(b, [s], locs)[1].logits
    im.save(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["representations"][0][4] == 3 and cfg["representations"][1][13] == 6
    assert cfg["intervention_dimensions"][1] == [1, 3]
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2)
    k0, k1 = loaded.sorted_keys
    assert loaded.interventions[k0].keep_last_dim is True
    assert loaded.interventions[k1].interchange_dim.tolist() == [1, 3]
    with torch.no_grad():
        assert torch.equal(loaded(b, [s], locs)[1].logits, ref)


def test_load_pyvene_directory(gpt2, pyvene, tmp_path):
    """A directory written by pyvene 0.1.8 (config.json + intkey_*.bin) loads; outputs equal pyvene's."""
    pim = _build(pyvene, gpt2)
    _train(pim)
    ref = _run(pim)
    pim.save(str(tmp_path))
    assert any(f.endswith(".bin") for f in os.listdir(tmp_path))
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2)
    assert type(loaded.interventions[loaded.sorted_keys[0]]) is pv.LowRankRotatedSpaceIntervention
    assert torch.equal(_run(loaded), ref)
    # and fxvene re-saves it in its own format, still bit for bit
    again = tmp_path / "again"
    loaded.save(str(again))
    assert torch.equal(_run(pv.IntervenableModel.load(str(again), gpt2)), ref)


def test_save_intervention_load_intervention(gpt2, pyvene, tmp_path):
    im = _build(pv, gpt2)
    _train(im)
    ref = _run(im)
    im.save_intervention(str(tmp_path / "fx"), include_model=False)
    assert not (tmp_path / "fx" / "config.json").exists()
    fresh = _build(pv, gpt2, seed=123)
    assert not torch.equal(_run(fresh), ref)
    params_before = [id(p) for p in fresh.get_trainable_parameters()]
    opt = torch.optim.Adam(fresh.get_trainable_parameters(), lr=0.01)
    fresh.load_intervention(str(tmp_path / "fx"), include_model=False)
    assert [id(p) for p in fresh.get_trainable_parameters()] == params_before  # in place: optimizers stay valid
    assert torch.equal(_run(fresh), ref)
    opt.zero_grad()
    _, out = fresh(_ids(1), [_ids(2)], LOCS, subspaces=SUBS)
    out.logits.pow(2).mean().backward()
    opt.step()

    # pyvene's save_intervention (.bin) into an fxvene object (pyvene's own load_intervention forces cuda:0)
    pim = _build(pyvene, gpt2, seed=5)
    _train(pim, steps=2)
    pim.save_intervention(str(tmp_path / "pv"), include_model=False)
    other = _build(pv, gpt2, seed=9)
    other.load_intervention(str(tmp_path / "pv"), include_model=False)
    trainable = [k for k in other.sorted_keys if isinstance(other.interventions[k], pv.TrainableIntervention)]
    for k in trainable:
        for (n, a), (_, b) in zip(
            other.interventions[k].state_dict().items(), pim.interventions[k].state_dict().items()
        ):
            assert torch.equal(a, b), (k, n)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="intkey_"):
        other.load_intervention(str(tmp_path / "empty"), include_model=False)


def test_include_model_roundtrip(tmp_path):
    from conftest import make_gpt2

    model = make_gpt2(n_layer=2)
    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(
                    layer=1, component="block_output", intervention_type=pv.RotatedSpaceIntervention
                )
            ]
        ),
        model,
    )
    im.enable_model_gradients()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(1.0)
    im.save(str(tmp_path), include_model=True)
    assert (tmp_path / "pytorch_model.safetensors").exists()
    other = make_gpt2(n_layer=2)
    loaded = pv.IntervenableModel.load(str(tmp_path), other, include_model=True)
    for (n, a), (_, b) in zip(model.named_parameters(), loaded.model.named_parameters()):
        assert torch.equal(a, b), n


class _Payload:
    """Unpickling this creates a marker file (an arbitrary call)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pyvene_like_dir(directory, model, pyvene):
    torch.manual_seed(0)
    cfg = pyvene.IntervenableConfig(
        representations=[
            pyvene.RepresentationConfig(
                layer=1,
                component="block_output",
                intervention_type=pyvene.LowRankRotatedSpaceIntervention,
                low_rank_dimension=4,
            )
        ]
    )
    pim = pyvene.IntervenableModel(cfg, model)
    pim.save(str(directory))
    return pim.sorted_keys[0]


def test_malicious_pickle_is_refused(gpt2, pyvene, tmp_path):
    key = _pyvene_like_dir(tmp_path, gpt2, pyvene)
    marker = tmp_path / "PWNED"
    path = tmp_path / f"intkey_{key}.bin"
    state = torch.load(path, weights_only=True)
    state["rotate_layer.parametrizations.weight.original"] = _Payload(str(marker))
    torch.save(state, path)
    # the payload really is live: a plain unpickle would run it
    assert not marker.exists()

    with pytest.raises(ValueError, match="refused"):
        pv.IntervenableModel.load(str(tmp_path), gpt2)
    assert not marker.exists()
    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(
                    layer=1,
                    component="block_output",
                    intervention_type=pv.LowRankRotatedSpaceIntervention,
                    low_rank_dimension=4,
                )
            ]
        ),
        gpt2,
    )
    with pytest.raises(ValueError, match="refused"):
        im.load_intervention(str(tmp_path), include_model=False)
    assert not marker.exists()
    # the same payload as the model file
    torch.save({"x": _Payload(str(marker))}, tmp_path / "pytorch_model.bin")
    shutil.copy(tmp_path / "pytorch_model.bin", tmp_path / "only_model.bin")
    with pytest.raises(ValueError, match="refused"):
        read_weights(tmp_path / "only_model.bin")
    assert not marker.exists()


def test_payload_fires_without_weights_only(tmp_path):
    """Control for the test above: the crafted file does execute code under a plain unpickle."""
    marker = tmp_path / "PWNED"
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.bin")
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker.exists()


def test_type_strings_are_allow_listed(gpt2, pyvene, tmp_path):
    _pyvene_like_dir(tmp_path, gpt2, pyvene)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for bad in [
        "<class 'subprocess.Popen'>",
        "<class 'os.system'>",
        "builtins.eval",
        "<class 'pyvene.models.interventions.os'>",
        "<class '__main__.Anything'>",
    ]:
        cfg["intervention_types"] = [bad]
        cfg_path.write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match="unsupported intervention type"):
            pv.IntervenableModel.load(str(tmp_path), gpt2)


class MyScale(pv.TrainableIntervention, pv.LocalistRepresentationIntervention):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scale = torch.nn.Parameter(torch.ones(int(self.embed_dim)))

    def forward(self, base, source, subspaces=None, **kwargs):
        return base * self.scale + source * 0


def test_custom_intervention_type_needs_an_imported_or_explicit_class(gpt2, tmp_path):
    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[pv.RepresentationConfig(layer=0, component="block_output", intervention_type=MyScale)]
        ),
        gpt2,
    )
    with torch.no_grad():
        im.interventions[im.sorted_keys[0]].scale.mul_(1.5)
        ref = im(_ids(1), [_ids(2)], {"sources->base": 4})[1].logits
    im.save(str(tmp_path))
    # this test module is imported, so its Intervention subclass resolves (as pyreft's does)
    with torch.no_grad():
        assert torch.equal(
            pv.IntervenableModel.load(str(tmp_path), gpt2)(_ids(1), [_ids(2)], {"sources->base": 4})[1].logits, ref
        )
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    cfg["intervention_types"] = ["<class 'not_imported_anywhere.MyScale'>"]  # nothing is imported on load
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported intervention type"):
        pv.IntervenableModel.load(str(tmp_path), gpt2)
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2, custom_types={"not_imported_anywhere.MyScale": MyScale})
    with torch.no_grad():
        assert torch.equal(loaded(_ids(1), [_ids(2)], {"sources->base": 4})[1].logits, ref)


def test_collect_and_noise_load(gpt2, tmp_path):
    """Constant-source interventions without a stored tensor (pyvene 0.1.8 fails to reload these)."""
    reps = [
        pv.RepresentationConfig(layer=0, component="block_input", intervention_type=pv.NoiseIntervention),
        pv.RepresentationConfig(layer=2, component="block_output", intervention_type=pv.CollectIntervention),
    ]
    im = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), gpt2)
    locs = {"base": ([[[0, 1, 2, 3]] * B, [[5]] * B])}
    (_, ref_c), ref = im(_ids(1), unit_locations=locs)
    im.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json"]
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2)
    (_, got_c), got = loaded(_ids(1), unit_locations=locs)
    assert torch.equal(got.logits, ref.logits) and torch.equal(got_c[0], ref_c[0])


def test_bad_inputs(gpt2, tmp_path):
    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[pv.RepresentationConfig(layer=0, component="block_output", intervention=lambda b, s: b)]
        ),
        gpt2,
    )
    with pytest.raises(TypeError, match="function"):
        im.save(str(tmp_path / "lam"))
    assert not (tmp_path / "lam" / "config.json").exists()
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        pv.IntervenableModel.load(str(tmp_path / "no" / "such" / "dir"), gpt2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        pv.IntervenableModel.load(str(tmp_path / "empty"), gpt2)
    with pytest.raises(TypeError, match="load_directory"):
        pv.IntervenableModel.load(3, gpt2)
    with pytest.raises(ValueError, match="unsupported weights file"):
        read_weights(tmp_path / "x.pkl")


def test_weights_are_read_on_cpu_then_moved(gpt2, pyvene, tmp_path, monkeypatch):
    """No device is hard-coded: .bin files are read with map_location='cpu', safetensors with device='cpu',
    and the interventions are then moved to the model's device."""
    _pyvene_like_dir(tmp_path, gpt2, pyvene)
    seen = []
    real = torch.load

    def spy(*a, **k):
        seen.append((k.get("map_location"), k.get("weights_only")))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    moved = []
    real_to = torch.nn.Module.to

    def spy_to(self, *a, **k):
        if isinstance(self, pv.Intervention):
            moved.append(a[0] if a else k.get("device"))
        return real_to(self, *a, **k)

    monkeypatch.setattr(torch.nn.Module, "to", spy_to)
    pv.IntervenableModel.load(str(tmp_path), gpt2)
    assert seen == [("cpu", True)]
    assert moved == [torch.device("cpu")]  # the model's device


def test_intervention_state_dict_collapses_only_parametrizations():
    torch.manual_seed(0)
    iv = pv.SigmoidMaskRotatedSpaceIntervention(embed_dim=6)
    sd = intervention_state_dict(iv)
    assert set(sd) == {"embed_dim", "interchange_dim", "masks", "temperature", "rotate_layer.weight"}
    assert all(t.device.type == "cpu" for t in sd.values())
