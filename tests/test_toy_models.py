"""fxvene's MLP and GRU (fxvene.zoo.toy_models) against pyvene 0.1.8's: same seed, same weights, same outputs."""

import pytest
import torch

import fxvene as pv_fx
from fxvene.zoo.toy_models import GRUForClassification, GRULMHeadModel, GRUModel, MLPForClassification

MLP_CFG = dict(h_dim=8, n_layer=2, pdrop=0.0, num_classes=3, vocab_size=20, max_position_embeddings=16)
GRU_CFG = dict(h_dim=8, n_layer=2, vocab_size=20, max_position_embeddings=16)


def _pv_mlp_config(pyvene, **kw):
    from pyvene.models.mlp.modelings_mlp import MLPConfig

    return MLPConfig(**kw)


def _assert_same_weights(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("include_emb", [False, True])
def test_mlp_classifier_same_seed_same_weights_and_outputs(pyvene, include_emb):
    cfg = dict(MLP_CFG, include_emb=include_emb)
    torch.manual_seed(3)
    _, _, theirs = pyvene.create_mlp_classifier(_pv_mlp_config(pyvene, **cfg))
    torch.manual_seed(3)
    config, tok, ours = pv_fx.create_mlp_classifier(pv_fx.MLPConfig(**cfg))
    assert tok is None and isinstance(ours, MLPForClassification) and config.h_dim == 8
    _assert_same_weights(ours, theirs)
    x = torch.randn(4, 1, 8)
    out, ref = ours(inputs_embeds=x), theirs(inputs_embeds=x)
    assert isinstance(out, tuple) and len(out) == len(ref) == 1  # pyvene returns a tuple by default
    assert torch.equal(out[0], ref[0]) and out[0].shape == (4, 3)
    labels = torch.tensor([0, 2, 1, 1])
    assert torch.equal(ours(inputs_embeds=x, labels=labels)[0], theirs(inputs_embeds=x, labels=labels)[0])
    full = ours(inputs_embeds=x, output_hidden_states=True, return_dict=True)
    assert torch.equal(full.logits, ref[0]) and len(full.hidden_states) == 3
    if include_emb:
        ids, pos = torch.randint(0, 20, (4, 1)), torch.zeros(4, 1, dtype=torch.long)
        assert torch.equal(ours(input_ids=ids, position_ids=pos)[0], theirs(input_ids=ids, position_ids=pos)[0])
        emb = torch.randn(4, 1, 8)
        kept = emb.clone()
        ours(inputs_embeds=emb, position_ids=pos)
        assert torch.equal(emb, kept)  # pyvene adds position embeddings into the caller's tensor; fxvene does not


@pytest.mark.parametrize("include_emb", [False, True])
def test_gru_models_same_seed_same_weights_and_outputs(pyvene, include_emb):
    from pyvene.models.gru import modelings_gru as theirs_mod

    cfg = dict(GRU_CFG, include_emb=include_emb)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    for ours_cls, name in (
        (GRUForClassification, "GRUForClassification"),
        (GRULMHeadModel, "GRULMHeadModel"),
        (GRUModel, "GRUModel"),
    ):
        torch.manual_seed(5)
        theirs = getattr(theirs_mod, name)(theirs_mod.GRUConfig(**cfg))
        torch.manual_seed(5)
        ours = ours_cls(pv_fx.GRUConfig(**cfg))
        _assert_same_weights(ours, theirs)
        out, ref = ours(inputs_embeds=x), theirs(inputs_embeds=x)
        assert len(out) == len(ref) == 2
        for a, b in zip(out, ref):
            assert torch.equal(a, b)
        if ours_cls is GRUForClassification:  # pooled at each example's last unmasked step
            assert torch.equal(
                ours(inputs_embeds=x, attention_mask=mask)[0], theirs(inputs_embeds=x, attention_mask=mask)[0]
            )
        if include_emb:
            ids, pos = torch.randint(0, 20, (2, 5)), torch.arange(5).expand(2, 5)
            assert torch.equal(ours(input_ids=ids, position_ids=pos)[0], theirs(input_ids=ids, position_ids=pos)[0])


def test_gru_return_dict_and_losses():
    torch.manual_seed(0)
    cls = GRUForClassification(pv_fx.GRUConfig(h_dim=8, n_layer=1))
    x = torch.randn(3, 4, 8)
    out = cls(inputs_embeds=x, labels=torch.tensor([0, 1, 1]), return_dict=True)
    assert out.logits.shape == (3, 2)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 1])))
    lm = GRULMHeadModel(pv_fx.GRUConfig(h_dim=8, n_layer=1, vocab_size=11))
    ids = torch.randint(0, 11, (2, 4))
    res = lm(inputs_embeds=x[:2], labels=ids, return_dict=True)
    manual = torch.nn.functional.cross_entropy(res.logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert torch.allclose(res.loss, manual)


def test_toy_helpers_bad_input():
    with pytest.raises(TypeError, match="config must be a MLPConfig"):
        pv_fx.create_mlp_classifier(pv_fx.GRUConfig())
    with pytest.raises(TypeError, match="config must be a GRUConfig"):
        pv_fx.create_gru(dict(h_dim=8))
    torch.manual_seed(0)
    m = MLPForClassification(pv_fx.MLPConfig(h_dim=4, n_layer=1))
    with pytest.raises(ValueError, match="include_emb"):
        m(input_ids=torch.zeros(1, 1, dtype=torch.long))
    bad = pv_fx.MLPConfig(h_dim=4, n_layer=1)
    bad.problem_type = "ranking"
    with pytest.raises(ValueError, match="problem_type"):
        MLPForClassification(bad)(inputs_embeds=torch.randn(2, 1, 4), labels=torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- interventions on the MLP

MLP_COMPONENTS = ("block_input", "block_output", "mlp_activation")


@pytest.fixture(scope="module")
def mlp_pair(pyvene):
    """(pyvene's MLP classifier, fxvene's), built from the same seed: equal weights."""
    cfg = dict(h_dim=8, n_layer=2, pdrop=0.0, num_classes=3)
    torch.manual_seed(11)
    _, _, theirs = pyvene.create_mlp_classifier(_pv_mlp_config(pyvene, **cfg))
    torch.manual_seed(11)
    _, _, ours = pv_fx.create_mlp_classifier(pv_fx.MLPConfig(**cfg))
    return theirs.eval(), ours.eval()


def _clone(inputs):
    return {k: v.clone() for k, v in inputs.items()}


def _mlp_inputs(seed, b=4):
    g = torch.Generator().manual_seed(seed)
    return {"inputs_embeds": torch.randn(b, 1, 8, generator=g)}, {"inputs_embeds": torch.randn(b, 1, 8, generator=g)}


def test_mlp_collect_every_component_matches_pyvene(pyvene, mlp_pair):
    theirs, ours = mlp_pair
    reps = [{"layer": layer, "component": c, "intervention_type": None} for layer in (0, 1) for c in MLP_COMPONENTS]
    base, _ = _mlp_inputs(0)
    got = {}
    for lib, model in ((pyvene, theirs), (pv_fx, ours)):
        config = [dict(r, intervention_type=lib.CollectIntervention) for r in reps]
        im = lib.IntervenableModel(config, model=model)
        got[lib.__name__] = im(base=base, unit_locations={"base": 0})[0][1]
    assert len(got["fxvene"]) == len(got["pyvene"]) == 6
    for a, b in zip(got["fxvene"], got["pyvene"]):
        assert a.shape == b.shape == (4, 1, 8)
        assert torch.equal(a, b)


@pytest.mark.parametrize("component", MLP_COMPONENTS)
def test_mlp_vanilla_patch_every_component_matches_pyvene(pyvene, mlp_pair, component):
    theirs, ours = mlp_pair
    base, source = _mlp_inputs(1)
    for layer in (0, 1):
        outs = []
        for lib, model in ((pyvene, theirs), (pv_fx, ours)):
            im = lib.IntervenableModel(
                {"layer": layer, "component": component, "intervention_type": lib.VanillaIntervention}, model=model
            )
            # clones: pyvene writes block_input patches into the caller's inputs_embeds (eval dropout
            # passes the tensor through and its pre-hook scatters in place)
            _, full = im(base=_clone(base), sources=[source], unit_locations={"sources->base": 0})
            _, part = im(
                base=_clone(base), sources=[source], unit_locations={"sources->base": 0}, subspaces=[[[0, 2, 5]] * 4]
            )
            outs.append((full[0], part[0]))
        (pf, pp), (ff, fp) = outs
        assert isinstance(ff, torch.Tensor) and ff.shape == (4, 3)
        assert torch.allclose(ff, pf, atol=1e-6) and torch.allclose(fp, pp, atol=1e-6)
        assert not torch.allclose(ff, ours(**base)[0])  # the patch changed something


def test_mlp_das_rotated_space_training_matches_pyvene(pyvene, mlp_pair):
    """Seed tutorial DAS on the MLP: two linked RotatedSpace interventions at block_output (the
    tutorial's config), subspaces per source, a few Adam steps; same losses and rotation as pyvene."""
    theirs, ours = mlp_pair
    g = torch.Generator().manual_seed(2)
    base = {"inputs_embeds": torch.randn(6, 1, 8, generator=g)}
    s1, s2 = ({"inputs_embeds": torch.randn(6, 1, 8, generator=g)} for _ in range(2))
    labels = torch.randint(0, 3, (6,), generator=g)
    runs = {}
    for lib, model in ((pyvene, theirs), (pv_fx, ours)):
        rep = dict(layer=0, component="block_output", unit="pos", max_number_of_units=1, intervention_link_key=0)
        config = lib.IntervenableConfig(
            model_type=type(model),
            representations=[lib.RepresentationConfig(**rep), lib.RepresentationConfig(**rep)],
            intervention_types=lib.RotatedSpaceIntervention,
        )
        torch.manual_seed(7)
        im = lib.IntervenableModel(config, model, use_fast=True)
        im.disable_model_gradients()
        iv = next(iter(im.interventions.values()))
        iv = iv[0] if isinstance(iv, tuple) else iv
        opt = torch.optim.Adam(iv.rotate_layer.parameters(), lr=0.01)
        losses = []
        for _ in range(3):
            _, out = im(
                base,
                [s1, s2],
                {"sources->base": ([[[0]] * 6, [[0]] * 6], [[[0]] * 6, [[0]] * 6])},
                subspaces=[[[0, 1, 2, 3]] * 6, [[4, 5, 6, 7]] * 6],
            )
            loss = torch.nn.functional.cross_entropy(out[0], labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        runs[lib.__name__] = (losses, iv.rotate_layer.weight.detach().clone())
    assert runs["fxvene"][0] == pytest.approx(runs["pyvene"][0], abs=1e-6)
    assert len(set(runs["fxvene"][0])) == 3  # it trains
    assert torch.allclose(runs["fxvene"][1], runs["pyvene"][1], atol=1e-6)


# ----------------------------------------------------------------------------- interventions on the GRU (unit "t")

GRU_COMPONENTS = (
    "cell_input",
    "cell_output",
    "x2h_output",
    "h2h_output",
    "reset_gate_input",
    "update_gate_input",
    "new_gate_input",
    "reset_gate_output",
    "update_gate_output",
    "new_gate_output",
    "reset_x2h_output",
    "update_x2h_output",
    "new_x2h_output",
    "reset_h2h_output",
    "update_h2h_output",
    "new_h2h_output",
)
STEPS = 8  # the length fxvene traces with first: one export serves every test


@pytest.fixture(scope="module")
def gru_pair(pyvene):
    cfg = dict(h_dim=6, n_layer=2)
    torch.manual_seed(4)
    _, _, theirs = pyvene.create_gru_classifier(pyvene.GRUConfig(**cfg))
    torch.manual_seed(4)
    _, _, ours = pv_fx.create_gru_classifier(pv_fx.GRUConfig(**cfg))
    return theirs, ours


def _gru_inputs(seed, b=1):
    g = torch.Generator().manual_seed(seed)
    return (
        {"inputs_embeds": torch.randn(b, STEPS, 6, generator=g)},
        {"inputs_embeds": torch.randn(b, STEPS, 6, generator=g)},
    )


def _hooked(model, module, inputs, fn):
    """Run ``model`` with ``fn(step, output)`` as a forward hook on ``module`` (steps counted from 0)."""
    step = [0]

    def hook(m, args, out):
        t = step[0]
        step[0] += 1
        return fn(t, out)

    h = module.register_forward_hook(hook)
    try:
        return model(**inputs)
    finally:
        h.remove()


def test_gru_time_step_patch_matches_manual_hooks(gru_pair):
    """Time step t is the cell's t-th call; only the listed steps change, per example."""
    _, ours = gru_pair
    base, source = _gru_inputs(0, b=2)
    cell = ours.gru.cells[0]
    kept = []
    _hooked(ours, cell, source, lambda t, o: kept.append(o.clone()))
    im = pv_fx.IntervenableModel(
        {"layer": 0, "component": "cell_output", "unit": "t", "intervention_type": pv_fx.VanillaIntervention},
        model=ours,
    )
    _, out = im(base=base, sources=[source], unit_locations={"sources->base": ([[[6], [2]]], [[[3], [5]]])})
    pairs = {0: (6, 3), 1: (2, 5)}

    def patch(t, o):
        o = o.clone()
        for row, (src, dst) in pairs.items():
            if t == dst:
                o[row] = kept[src][row]
        return o

    ref = _hooked(ours, cell, base, patch)
    assert torch.allclose(out[0], ref[0], atol=1e-6)
    assert not torch.allclose(out[0], ours(**base)[0])
    zero = pv_fx.IntervenableModel(
        {"layer": 1, "component": "cell_output", "unit": "t", "intervention_type": pv_fx.ZeroIntervention}, model=ours
    )
    _, z = zero(base=base, unit_locations={"base": 3})
    zref = _hooked(ours, ours.gru.cells[1], base, lambda t, o: torch.zeros_like(o) if t == 3 else None)
    assert torch.allclose(z[0], zref[0], atol=1e-6)


def test_gru_collect_and_vanilla_every_component_match_pyvene(pyvene, gru_pair):
    """With every step listed, fxvene's unit "t" gives pyvene's numbers and Collect pyvene's list of
    per-step tensors (pyvene also acts at the steps it is not given: it feeds zeros as the source there,
    and Collect returns every step)."""
    theirs, ours = gru_pair
    base, source = _gru_inputs(1)
    every = [list(range(STEPS))]
    for component in GRU_COMPONENTS:
        # cell_input of layer 1 is layer 0's new state, and pyvene's pre-hook writes the patch into that
        # tensor in place, so layer 0's recurrence sees it too; fxvene changes only what the cell sees.
        # Layer 0's cell input is a slice of the inputs, read once, where both agree.
        layer = 0 if component == "cell_input" else 1
        got = {}
        for lib, model in ((pyvene, theirs), (pv_fx, ours)):
            rep = {"layer": layer, "component": component, "unit": "t"}
            col = lib.IntervenableModel(dict(rep, intervention_type=lib.CollectIntervention), model=model)
            collected = col(base=_clone(base), unit_locations={"base": [every]})[0][1]
            van = lib.IntervenableModel(dict(rep, intervention_type=lib.VanillaIntervention), model=model)
            _, patched = van(
                base=_clone(base),
                sources=[_clone(source)],
                unit_locations={"sources->base": ([every], [every])},
                subspaces=[[[0, 1, 2]]],
            )
            got[lib.__name__] = (collected, patched[0])
        (pc, pp), (fc, fp) = got["pyvene"], got["fxvene"]
        # pyvene's list of one (batch, dim) tensor per step
        assert len(pc) == len(fc) == STEPS and all(f.shape == p.shape for f, p in zip(fc, pc)), component
        assert all(torch.allclose(f, p, atol=1e-6) for f, p in zip(fc, pc)), component
        assert torch.allclose(fp, pp, atol=1e-6), component
        assert not torch.allclose(fp, ours(**base)[0]), component


def test_gru_zero_every_step_matches_pyvene(pyvene, gru_pair):
    """pyvene's 101 tutorial: Zero at cell_output with {"base": 3} zeroes every step in pyvene 0.1.8
    (constant-source interventions ignore the time step); fxvene gives that when every step is listed."""
    theirs, ours = gru_pair
    base, _ = _gru_inputs(2)
    _, ref = pyvene.IntervenableModel(
        {"component": "cell_output", "unit": "t", "intervention_type": pyvene.ZeroIntervention}, model=theirs
    )(base=_clone(base), unit_locations={"base": 3})
    _, out = pv_fx.IntervenableModel(
        {"component": "cell_output", "unit": "t", "intervention_type": pv_fx.ZeroIntervention}, model=ours
    )(base=base, unit_locations={"base": [[list(range(STEPS))]]})
    assert torch.allclose(out[0], ref[0], atol=1e-6)


def test_gru_other_lengths_trace_again_and_bad_steps(gru_pair):
    _, ours = gru_pair
    im = pv_fx.IntervenableModel(
        {"layer": 0, "component": "cell_output", "unit": "t", "intervention_type": pv_fx.ZeroIntervention}, model=ours
    )
    short = {"inputs_embeds": torch.randn(1, 3, 6)}
    _, out = im(base=short, unit_locations={"base": 1})
    ref = _hooked(ours, ours.gru.cells[0], short, lambda t, o: torch.zeros_like(o) if t == 1 else None)
    assert torch.allclose(out[0], ref[0], atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        im(base=short, unit_locations={"base": 3})
    with pytest.raises(ValueError, match="resolves to 8 nodes"):  # one per step: unit "pos" cannot pick one
        pv_fx.IntervenableModel(
            {"layer": 0, "component": "cell_output", "unit": "pos", "intervention_type": pv_fx.ZeroIntervention},
            model=ours,
        )


def test_mlp_in_training_mode_traces_without_dropout_and_padded_mask_is_refused(pyvene):
    """pyvene's default MLPConfig has pdrop=0.3 and a fresh model is in training mode: the graph is
    traced in eval mode (the wrap puts the model in eval, as pyvene's does) and the user's modes are
    restored by the tracer. The MLP's forward takes no attention_mask: a padded one is refused."""
    torch.manual_seed(0)
    _, _, mlp = pv_fx.create_mlp_classifier(pv_fx.MLPConfig(h_dim=8, n_layer=1, num_classes=2))
    assert mlp.training
    traced = pv_fx.trace(mlp, ("inputs_embeds", "attention_mask"))
    assert mlp.training and all(m.training for m in mlp.modules())  # modes restored
    x = torch.randn(3, 1, 8)
    with torch.no_grad():
        assert torch.equal(traced.gm(inputs_embeds=x)[0], mlp.eval()(inputs_embeds=x)[0])
    im = pv_fx.IntervenableModel(
        {"layer": 0, "component": "block_output", "intervention_type": pv_fx.ZeroIntervention}, model=mlp
    )
    _, a = im(base={"inputs_embeds": x}, unit_locations={"base": 0})
    _, b = im(base={"inputs_embeds": x}, unit_locations={"base": 0})
    assert torch.equal(a[0], b[0])  # no dropout in the graph
    with pytest.raises(ValueError, match="attention_mask: MLPForClassification.forward takes no 'attention_mask'"):
        im(base={"inputs_embeds": x, "attention_mask": torch.tensor([[1], [0], [1]])}, unit_locations={"base": 0})


def test_gru_distributed_intervention_acts_one_step_at_a_time(gru_pair):
    """A RotatedSpace intervention at unit "t" sees one step (width h_dim) per call, however many steps
    are listed; swapping every rotated dimension is a plain swap, so it equals per-step hooks."""
    _, ours = gru_pair
    base, source = _gru_inputs(3, b=2)
    cell = ours.gru.cells[1]
    kept = []
    _hooked(ours, cell, source, lambda t, o: kept.append(o.clone()))
    torch.manual_seed(0)
    im = pv_fx.IntervenableModel(
        {"layer": 1, "component": "cell_output", "unit": "t", "intervention_type": pv_fx.RotatedSpaceIntervention},
        model=ours,
    )
    _, out = im(base=base, sources=[source], unit_locations={"sources->base": ([[[1, 2], [3, 4]]], [[[5, 6], [6, 7]]])})
    plan = {0: {5: 1, 6: 2}, 1: {6: 3, 7: 4}}  # row -> {base step: source step}

    def patch(t, o):
        o = o.clone()
        for row, steps in plan.items():
            if t in steps:
                o[row] = kept[steps[t]][row]
        return o

    ref = _hooked(ours, cell, base, patch)
    assert torch.allclose(out[0], ref[0], atol=1e-5)


def test_gru_collect_listed_steps_sites_and_graph_diff(gru_pair):
    """Collect at unit "t" returns pyvene's type: a list of one (batch, dim) tensor per listed step
    (each example's k-th listed step); sites() and graph_diff() show the per-step nodes."""
    _, ours = gru_pair
    base, _ = _gru_inputs(5, b=2)
    kept = []
    _hooked(ours, ours.gru.cells[1], base, lambda t, o: kept.append(o.clone()))
    im = pv_fx.IntervenableModel(
        {"layer": 1, "component": "cell_output", "unit": "t", "intervention_type": pv_fx.CollectIntervention},
        model=ours,
    )
    collected = im(base=base, unit_locations={"base": [[[1, 4], [6, 2]]]})[0][1]
    assert isinstance(collected, list) and len(collected) == 2
    for k, steps in enumerate(([1, 6], [4, 2])):  # the k-th listed step of each example
        assert torch.equal(collected[k], torch.stack([kept[t][row] for row, t in enumerate(steps)]))
    every = im(base=base, unit_locations=None)[0][1]
    assert len(every) == STEPS and all(torch.equal(c, kept[t]) for t, c in enumerate(every))

    (row,) = im.sites()
    assert row.ok and row.unit == "t" and len(row.steps) == STEPS and row.node == row.steps[0]
    assert row.module == "gru.cells.1" and row.shape == (2, STEPS, 6)
    van = pv_fx.IntervenableModel(
        {"layer": 1, "component": "cell_output", "unit": "t", "intervention_type": pv_fx.VanillaIntervention},
        model=ours,
    )
    (vrow,) = van.sites()
    assert vrow.steps == row.steps
    d = van.graph_diff()
    assert d.sites == list(row.steps)  # a setter at every step
    assert "gru.cells.1" in d.summary()
