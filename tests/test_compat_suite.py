"""What running pyvene 0.1.8's own test suite on fxvene (compat/pyvene_suite.py) found, checked against
the installed pyvene 0.1.8 (CI has no copy of pyvene's tests): a location list shorter than the
interventions raises pyvene's IndexError; vanilla interventions on head streams at several heads and
positions give pyvene's numbers (pyvene's own test of this compares with a manual GPT-2 forward that
lacks the causal mask on transformers 5, so it cannot judge there); the harness's ``pyvene`` alias;
the model helpers' local checkpoints (FXVENE_MODELS_DIR)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fxvene as fv
from tests.conftest import make_gpt2

pv = pytest.importorskip("pyvene")
REPO = Path(__file__).resolve().parent.parent


def _mlp_pair():
    from pyvene.models.mlp.modelings_mlp import MLPConfig as PvMLPConfig

    out = []
    for lib, cfg_cls in ((pv, PvMLPConfig), (fv, fv.MLPConfig)):
        torch.manual_seed(0)
        out.append(lib.create_mlp_classifier(cfg_cls(h_dim=3, n_layer=1, pdrop=0.0, num_classes=5,
                                                     include_bias=False, squeeze_output=False))[2])
    return out


def test_too_few_locations_raise_pyvenes_index_error():
    """pyvene's InterventionWithMLPTestCase.test_with_subspace_negative: two linked interventions, one
    location entry. pyvene raises IndexError (list index out of range); fxvene's error is a ValueError
    naming unit_locations that is also an IndexError."""
    b = 4
    g = torch.Generator().manual_seed(0)
    base, source = ({"inputs_embeds": torch.rand(b, 1, 3, generator=g)} for _ in range(2))
    for lib, model in zip((pv, fv), _mlp_pair()):
        reps = [lib.RepresentationConfig(0, "mlp_activation", "pos", 1, subspace_partition=[[1, 3], [0, 1]],
                                         intervention_link_key=0) for _ in range(2)]
        im = lib.IntervenableModel(lib.IntervenableConfig(representations=reps,
                                                          intervention_types=lib.VanillaIntervention), model)
        with pytest.raises(IndexError) as err:
            im(base, [source], {"sources->base": ([[[0]] * b], [[[0]] * b])}, subspaces=0)
    assert isinstance(err.value, ValueError) and "unit_locations (source side) has 1 entries" in str(err.value)
    with pytest.raises(ValueError, match="has 3 entries") as err:  # too many: a ValueError only
        im(base, [source] * 2, {"sources->base": ([[[0]] * b] * 3, [[[0]] * b] * 3)})
    assert not isinstance(err.value, IndexError)


HEAD_STREAMS = ("head_attention_value_output", "head_query_output", "head_key_output", "head_value_output")


@pytest.fixture(scope="module")
def gpt2_12_heads():
    """pyvene's test geometry: n_embd 24 with GPT-2's 12 heads (head dim 2); one model per library
    (pyvene removes a wrapped model's hooks)."""
    return make_gpt2(n_embd=24, n_head=12, vocab=10), make_gpt2(n_embd=24, n_head=12, vocab=10)


@pytest.mark.parametrize("stream", HEAD_STREAMS)
def test_heads_and_positions_vanilla_match_pyvene(gpt2_12_heads, stream):
    """pyvene's InterventionWithGPT2TestCase: unit "h.pos" Vanilla at heads [3, 7] x positions [2, 6]
    and heads [4, 1] x positions [7, 2], the same heads and positions for every example."""
    fm, pm = gpt2_12_heads
    g = torch.Generator().manual_seed(len(stream))
    for layer, heads, positions in ((1, [3, 7], [2, 6]), (3, [4, 1], [7, 2])):
        b, n = 3, max(positions) + 1
        base = {"input_ids": torch.randint(0, 10, (b, n), generator=g)}
        source = {"input_ids": torch.randint(0, 10, (b, n + 1), generator=g)}
        locs = {"sources->base": ([[[heads] * b, [positions] * b]], [[[heads] * b, [positions] * b]])}
        outs = []
        for lib, model in ((pv, pm), (fv, fm)):
            config = lib.IntervenableConfig(
                representations=[lib.RepresentationConfig(layer, stream, "h.pos", len(positions))],
                intervention_types=lib.VanillaIntervention)
            outs.append(lib.IntervenableModel(config, model)(base, [source], locs)[1].logits)
        torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-5)
        with torch.no_grad():
            assert not torch.equal(outs[1], fm(**base).logits)  # (random q/k barely move the attention)


def test_suite_alias_points_pyvene_at_fxvene():
    """compat/pyvene_suite.py's alias: pyvene's public module paths resolve to fxvene's modules, the
    private ones are refused, and the installed pyvene is never imported."""
    code = """
import sys
sys.path.insert(0, sys.argv[1])
import pyvene_suite as ps
ps.install_alias()
import fxvene, pyvene
from pyvene.models.interventions import VanillaIntervention
from pyvene.models.intervenable_base import IntervenableModel
from pyvene.models.mlp.modelings_mlp import MLPConfig
from pyvene.models.gpt2.modelings_intervenable_gpt2 import create_gpt2_lm
from pyvene.models.intervention_utils import _do_intervention_by_swap
assert VanillaIntervention is fxvene.VanillaIntervention and IntervenableModel is fxvene.IntervenableModel
assert MLPConfig is fxvene.MLPConfig and create_gpt2_lm is fxvene.create_gpt2_lm
assert pyvene.CausalModel is fxvene.CausalModel and pyvene._fxvene_alias
for private in ("pyvene.models.modeling_utils", "pyvene.models.constants"):
    try:
        __import__(private)
    except ps.OutOfScope as e:
        assert private in str(e)
    else:
        raise AssertionError(private)
assert not any(getattr(m, "__file__", None) and "site-packages/pyvene" in m.__file__
               for m in list(sys.modules.values())), "the real pyvene was imported"
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code, str(REPO / "compat")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
