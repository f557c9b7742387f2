"""Training mode reaches the intervened forward (issue 23, item 1).

With the model in train mode (``enable_model_gradients``, ``model.train()``, ``IntervenableModel.train()``)
every dropout of the model is live in fxvene's graphs and draws torch's random numbers in the order of
pyvene 0.1.8's hook-based run: the original-output forward, each source forward (whole), the base
forward, an intervention's own dropout where it is called. Under one ``torch.manual_seed`` (eager, CPU,
float32) the outputs and the random state after the call equal pyvene's, for GPT-2, Llama, GPT-NeoX and
T5 with non-zero dropout, in parallel and serial mode; back in eval mode they equal pyvene's eval-mode numbers. Sweeps run in eval
mode and say so once. (``compile=True`` in train mode: tests/test_fidelity_more.py, on torch.compile's cheap "eager" backend;
inductor's random numbers are its own, see docs/differences.md.)
"""

import pytest
import torch
from _tiny import make_tiny
from transformers import T5Config, T5ForConditionalGeneration

import fxvene as pv

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

# one layer each (an export per mode and family is this file's cost)
DROPOUT = {
    "gpt2": dict(n_layer=1, attn_pdrop=0.1, resid_pdrop=0.1, embd_pdrop=0.1),
    "llama": dict(num_hidden_layers=1, attention_dropout=0.1),
    "gpt_neox": dict(num_hidden_layers=1, hidden_dropout=0.1, attention_dropout=0.1),
}


def _t5(pyvene):
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        dropout_rate=0.1,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    model = T5ForConditionalGeneration(cfg).eval()
    # pyvene has no T5 map; its 101 tutorial adds this one by hand (fxvene ships it)
    pyvene.type_to_module_mapping[type(model)] = {
        "mlp_output": ("encoder.block[%s].layer[1]", pyvene.models.constants.CONST_OUTPUT_HOOK)
    }
    pyvene.type_to_dimension_mapping[type(model)] = {"mlp_output": ("d_model",)}
    return model


def _inputs(family):
    g = torch.Generator().manual_seed(0)

    def one():
        ids = torch.randint(3, 64, (2, 7), generator=g)
        x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if family == "t5":
            x["decoder_input_ids"] = torch.randint(3, 64, (2, 3), generator=g)
        return x

    return one(), one(), one()


def _reps(lib, family):
    if family == "t5":
        return [{"layer": 0, "component": "mlp_output", "intervention_type": lib.VanillaIntervention}]
    # two groups: two source forwards before the base forward
    return [
        {"layer": 0, "component": "mlp_output", "intervention_type": lib.VanillaIntervention, "group_key": 0},
        {"layer": 0, "component": "block_output", "intervention_type": lib.VanillaIntervention, "group_key": 1},
    ]


def _call(im, family, base, s1, s2):
    """One seeded call with the original output; returns (original, intervened, next random draw)."""
    if family == "t5":
        sources, locs = [s1], {"sources->base": ([[[2]] * 2], [[[4]] * 2])}
    else:
        sources, locs = [s1, s2], {"sources->base": ([[[2]] * 2, [[5]] * 2], [[[4]] * 2, [[1]] * 2])}
    torch.manual_seed(7)
    orig, out = im(base, sources, locs, output_original_output=True)
    return orig.logits, out.logits, torch.rand(3)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "t5"])
def test_train_mode_draws_pyvenes_dropout_and_eval_mode_is_unchanged(pyvene, family):
    if family == "t5":
        model = _t5(pyvene)
    else:
        model = make_tiny(family, **DROPOUT[family])
    base, s1, s2 = _inputs(family)
    try:
        ims = [lib.IntervenableModel(lib.IntervenableConfig(_reps(lib, family)), model) for lib in (pyvene, pv)]
        ims[0].enable_model_gradients()
        ims[1].enable_model_gradients()
        ref, got = (_call(im, family, base, s1, s2) for im in ims)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=0)
        assert model.training
        ims[0].disable_model_gradients()
        ims[1].disable_model_gradients()
        eref, egot = (_call(im, family, base, s1, s2) for im in ims)
        for r, g in zip(eref, egot):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=0)
        # the dropout was live: train-mode logits are not the eval-mode ones
        assert not torch.allclose(got[1], egot[1])
        torch.testing.assert_close(egot[0], model(**base).logits, atol=1e-6, rtol=0)
    finally:
        if family == "t5":
            del pyvene.type_to_module_mapping[type(model)], pyvene.type_to_dimension_mapping[type(model)]


@pytest.fixture(scope="module")
def gpt2():
    return make_tiny("gpt2", **DROPOUT["gpt2"])


def test_model_train_and_intervenable_train_switch_the_graph(pyvene, gpt2):
    """``model.train()`` / ``IntervenableModel.train()`` (not only ``enable_model_gradients``) give the
    dropout-live run; a Collect reads the dropped-out value pyvene's hook reads."""
    base, s1, _ = _inputs("gpt2")
    reps = [
        {"layer": 0, "component": "mlp_output", "intervention_type": "CollectIntervention"},
        {"layer": 0, "component": "block_output", "intervention_type": "VanillaIntervention"},
    ]
    outs = []
    for lib in (pyvene, pv):
        cfg = lib.IntervenableConfig([dict(r, intervention_type=getattr(lib, r["intervention_type"])) for r in reps])
        im = lib.IntervenableModel(cfg, gpt2)
        res = []
        for switch in (lambda: gpt2.train(), lambda: im.train(), lambda: im.eval()):
            switch()
            torch.manual_seed(3)
            (_, collected), out = im(base, [None, s1], {"sources->base": ([None, [[1]] * 2], [[[3]] * 2, [[2]] * 2])})
            res.append((collected[0], out.logits))
        outs.append(res)
    gpt2.eval()
    for (rc, rl), (gc, gl) in zip(*outs):
        torch.testing.assert_close(gc, rc, atol=1e-6, rtol=0)
        torch.testing.assert_close(gl, rl, atol=1e-6, rtol=0)
    assert not torch.allclose(outs[1][0][1], outs[1][2][1])


def test_serial_mode_source_runs_draw_as_pyvenes(pyvene, gpt2):
    """Serial mode: each group's setters act on the next source forward; every forward is whole."""
    base, s1, s2 = _inputs("gpt2")
    locs = {"source_0->source_1": ([[[2]] * 2], [[[3]] * 2]), "source_1->base": ([[[3]] * 2], [[[5]] * 2])}
    outs = []
    for lib in (pyvene, pv):
        cfg = lib.IntervenableConfig(_reps(lib, "gpt2"), mode="serial")
        im = lib.IntervenableModel(cfg, gpt2)
        im.enable_model_gradients()
        torch.manual_seed(4)
        _, out = im(base, [s1, s2], locs)
        outs.append((out.logits, torch.rand(2)))
        im.disable_model_gradients()
    for r, g in zip(*outs):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=0)


def _loreft_like(lib):
    """pyreft's LoReFT shape, built on each library's own base class: h + W(dropout(h)), its own dropout."""

    class DroppedEdit(lib.SourcelessIntervention, lib.TrainableIntervention):
        def __init__(self, **kwargs):
            super().__init__(**kwargs, keep_last_dim=True)
            torch.manual_seed(11)
            self.proj = torch.nn.Linear(32, 32)
            self.dropout = torch.nn.Dropout(0.3)

        def forward(self, base, source=None, subspaces=None):
            return base + self.proj(self.dropout(base))

    return DroppedEdit(embed_dim=32)


def test_an_interventions_own_dropout_draws_where_pyvene_calls_it(pyvene, gpt2):
    """An intervention with its own dropout (as pyreft's LoReFT), model and intervention in train mode:
    its draws interleave with the model's dropout as in pyvene's hooks."""
    base, _, _ = _inputs("gpt2")
    outs = []
    for lib in (pyvene, pv):
        cfg = lib.IntervenableConfig([{"layer": 0, "component": "block_output", "intervention": _loreft_like(lib)}])
        im = lib.IntervenableModel(cfg, gpt2)
        im.enable_model_gradients()
        torch.manual_seed(5)
        _, out = im(base, unit_locations={"base": 3})
        outs.append((out.logits, torch.rand(2)))
        im.disable_model_gradients()
    for r, g in zip(*outs):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=0)


def test_sweeps_run_in_eval_mode_and_say_so_once(pyvene, gpt2):
    base, s1, _ = _inputs("gpt2")
    base, s1 = {"input_ids": base["input_ids"][:1]}, {"input_ids": s1["input_ids"][:1]}
    gpt2.train()
    try:
        with pytest.warns(UserWarning, match="patching_sweep runs the model in eval mode"):
            r = pv.patching_sweep(gpt2, base, s1, layers=[0], positions=[2], prefix=False, progress=False)
        assert gpt2.training and all(m.training for m in gpt2.modules())
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pv.patching_sweep(gpt2, base, s1, layers=[0], positions=[2], prefix=False, progress=False)
    finally:
        gpt2.eval()
    cfg = pyvene.IntervenableConfig(
        [{"layer": 0, "component": "block_output", "intervention_type": pyvene.VanillaIntervention}]
    )
    _, ref = pyvene.IntervenableModel(cfg, gpt2)(base, [s1], {"sources->base": 2})
    torch.testing.assert_close(r.values[0, 0, 0, 0], ref.logits[0, -1], atol=1e-5, rtol=1e-5)
