"""A directory saved before the package was cut into subpackages still loads.

tests/fixtures/saved_7fc9949 was written by ``IntervenableModel.save`` at commit 7fc9949 (fxvene's flat
layout: ``fxvene/intervenable.py``, ``fxvene/_interventions/``); its config names intervention classes as
``fxvene.interventions.X``. Loading it today must give the same classes, the same representations and, for
the trainable interventions, exactly the weights stored in its safetensors files.
"""

import json
import pathlib

import torch
import transformers
from safetensors.torch import load_file

import fxvene as pv
from fxvene.api.serialization import intervention_state_dict

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "saved_7fc9949"
TYPES = [
    pv.VanillaIntervention,
    pv.LowRankRotatedSpaceIntervention,
    pv.RotatedSpaceIntervention,
    pv.BoundlessRotatedSpaceIntervention,
    pv.AdditionIntervention,
]


def _model():
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=64, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_the_fixture_names_the_old_module_paths():
    saved = json.loads((FIXTURE / "config.json").read_text())
    assert saved["intervention_types"][0] == "<class 'fxvene.interventions.VanillaIntervention'>"
    assert len(list(FIXTURE.glob("*.safetensors"))) == 3


def test_a_directory_saved_by_the_flat_layout_loads():
    model = _model()
    loaded = pv.IntervenableModel.load(str(FIXTURE), model)
    ivs = [loaded.interventions[k] for k in loaded.sorted_keys]
    assert [type(iv) for iv in ivs] == TYPES
    reps = [loaded.representations[k] for k in loaded.sorted_keys]
    assert [(r.layer, r.component, r.unit) for r in reps] == [
        (0, "block_output", "pos"),
        (1, "mlp_output", "pos"),
        (1, "attention_output", "pos"),
        (0, "mlp_input", "pos"),
        (1, "block_output", "pos"),
    ]
    assert reps[1].low_rank_dimension == 4
    # every stored tensor is the loaded intervention's state, bit for bit
    for path in FIXTURE.glob("*.safetensors"):
        stored = load_file(str(path))
        key = next(k for k in loaded.sorted_keys if path.name.startswith(f"intkey_{k}"))
        state = intervention_state_dict(loaded.interventions[key])  # the saved form (parametrizations resolved)
        assert stored.keys() <= state.keys(), (path.name, sorted(stored), sorted(state))
        for name, tensor in stored.items():
            assert torch.equal(state[name], tensor), (path.name, name)
    # and the loaded model runs a call with all five (one source serves every group)
    base = {"input_ids": torch.tensor([[3, 4, 5, 6]])}
    source = {"input_ids": torch.tensor([[7, 8, 9, 10]])}
    _, out = loaded(base, [source], {"sources->base": 1})
    assert out.logits.shape == (1, 4, 64) and torch.isfinite(out.logits).all()
