"""What running pyvene 0.1.8's own test suite on fxvene (compat/pyvene_suite.py) found, checked against
the installed pyvene 0.1.8 (CI has no copy of pyvene's tests): a location list shorter than the
interventions raises pyvene's IndexError; vanilla interventions on head streams at several heads and
positions give pyvene's numbers (pyvene's own test of this compares with a manual GPT-2 forward that
lacks the causal mask on transformers 5, so it cannot judge there); the harness's ``pyvene`` alias;
the model helpers' local checkpoints (FXVENE_MODELS_DIR)."""

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
        out.append(
            lib.create_mlp_classifier(
                cfg_cls(h_dim=3, n_layer=1, pdrop=0.0, num_classes=5, include_bias=False, squeeze_output=False)
            )[2]
        )
    return out


def test_too_few_locations_raise_pyvenes_index_error():
    """pyvene's InterventionWithMLPTestCase.test_with_subspace_negative: two linked interventions, one
    location entry. pyvene raises IndexError (list index out of range); fxvene's error is a ValueError
    naming unit_locations that is also an IndexError."""
    b = 4
    g = torch.Generator().manual_seed(0)
    base, source = ({"inputs_embeds": torch.rand(b, 1, 3, generator=g)} for _ in range(2))
    for lib, model in zip((pv, fv), _mlp_pair()):
        reps = [
            lib.RepresentationConfig(
                0, "mlp_activation", "pos", 1, subspace_partition=[[1, 3], [0, 1]], intervention_link_key=0
            )
            for _ in range(2)
        ]
        im = lib.IntervenableModel(
            lib.IntervenableConfig(representations=reps, intervention_types=lib.VanillaIntervention), model
        )
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
                intervention_types=lib.VanillaIntervention,
            )
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
    res = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "compat")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_models_dir_serves_hub_names_offline(tmp_path, monkeypatch):
    """FXVENE_MODELS_DIR: the helpers load a hub name from a local copy there (how the harness runs
    pyvene's ``pv.create_gpt2()`` calls offline); names without a copy are left to the hub."""
    from transformers import GPT2Config

    from tests.conftest import build_offline_tokenizer

    saved, tok = make_gpt2(), build_offline_tokenizer()
    for name, model in (("gpt2", saved.transformer), ("org/lm", saved)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    monkeypatch.setenv("FXVENE_MODELS_DIR", str(tmp_path))
    config, tokenizer, model = fv.create_gpt2()
    assert type(model).__name__ == "GPT2Model" and config._attn_implementation == "eager"
    assert torch.equal(model.wte.weight, saved.transformer.wte.weight)
    assert tokenizer("Rome Paris")["input_ids"] == tok("Rome Paris")["input_ids"]
    _, _, lm = fv.create_gpt2_lm("org/lm")
    assert torch.equal(lm.lm_head.weight, saved.lm_head.weight)
    _, tokenizer, fresh = fv.create_gpt2_lm(config=GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=60))
    assert fresh.config.n_embd == 8 and len(tokenizer) == len(tok)  # random weights, the local tokenizer
    monkeypatch.setenv("FXVENE_MODELS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="FXVENE_MODELS_DIR must be a directory"):
        fv.create_gpt2()


def test_lambda_on_attention_dropout_input(gpt2, pv_gpt2):
    """pyvene's test_customized_intervention_function_get: a lambda on the string component
    ``h[L].attn.attn_dropout.input`` sees the attention weights, as pyvene's hook does, and equals the
    ``attention_weight`` Collect. transformers >= 4.48 never calls GPT-2's attn_dropout module (pyvene's
    hook never fires there): fxvene says the module has no nodes."""
    base = _prompts()[0]
    calls = []
    hook = gpt2.transformer.h[1].attn.attn_dropout.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        gpt2(**base)
    hook.remove()
    component = "transformer.h[1].attn.attn_dropout.input"
    if not calls:
        with pytest.raises(ValueError, match="attn_dropout' has no nodes"):
            fv.IntervenableModel({"component": component, "intervention": lambda b, s: b}, model=gpt2)
        return
    seen = {}
    for lib, model in ((pv, pv_gpt2), (fv, gpt2)):
        lib.IntervenableModel(
            {
                "component": component,
                "intervention": lambda b, s, k=lib.__name__: seen.setdefault(k, b.detach().clone()),
            },
            model=model,
        )(base)
    torch.testing.assert_close(seen["fxvene"], seen["pyvene"])
    collected = fv.IntervenableModel(
        {"layer": 1, "component": "attention_weight", "intervention_type": fv.CollectIntervention}, model=gpt2
    )(base=base, unit_locations={"base": [[list(range(4))]]})[0][-1][0]
    torch.testing.assert_close(collected, seen["fxvene"])


# ------------------------------------------------- pyvene's IntervenableBasicTestCase flows, with numbers
# pyvene's suite runs these on its hub GPT-2 and asserts little; here each gives pyvene's numbers on the
# session's tiny GPT-2 (n_embd 24: its partitions [[0, 128], [128, 256]] become [[0, 8], [8, 16]]).


def _prompts(n=3):
    g = torch.Generator().manual_seed(11)
    return [{"input_ids": torch.randint(0, 50, (1, 5), generator=g)} for _ in range(n)]


def _multiplier(lib):
    class MultiplierIntervention(lib.ConstantSourceIntervention):
        def __init__(self, embed_dim, **kwargs):
            super().__init__()

        def forward(self, base, source=None, subspaces=None):
            return base * 99.0

    return MultiplierIntervention


def _flow(name, lib, model):
    """pyvene's flow ``name``: the tensors it produces (logits, or collected activations)."""
    base, src, src2 = _prompts()
    im = lambda config, **kw: lib.IntervenableModel(config, model=model, **kw)  # noqa: E731
    logits = lambda out: [out[1].logits]  # noqa: E731
    part = [[0, 8], [8, 16]]
    if name == "source_representation":
        return logits(
            im({"layer": 0, "component": "mlp_output", "source_representation": torch.zeros(24)})(
                base=base, unit_locations={"base": 3}
            )
        )
    if name == "parallel_constant_sources":
        config = lib.IntervenableConfig(
            [{"layer": i, "component": "mlp_output", "source_representation": torch.zeros(24)} for i in range(4)],
            mode="parallel",
        )
        return logits(im(config)(base=base, unit_locations={"base": 3}))
    if name == "source_representations_in_call":
        return logits(
            im({"layer": 0, "component": "mlp_output"})(
                base=base, source_representations=torch.zeros(24), unit_locations={"base": 3}
            )
        )
    if name == "addition_multi_token":
        config = lib.IntervenableConfig({"layer": 0, "component": "mlp_input"}, lib.AdditionIntervention)
        return logits(
            im(config)(
                base=base, unit_locations={"base": [[[0, 1, 2, 3]]]}, source_representations=torch.linspace(-1, 1, 24)
            )
        )
    if name == "collect_after_vanilla":
        config = lib.IntervenableConfig(
            {"layer": 1, "component": "block_output", "intervention_type": lib.VanillaIntervention}
        )
        config.add_intervention({"layer": 3, "component": "block_output", "intervention_type": lib.CollectIntervention})
        return im(config)(base=base, sources=[src, None], unit_locations={"sources->base": 3})[0][-1]
    if name == "collect_one_head_one_position":
        config = lib.IntervenableConfig(
            {
                "layer": 2,
                "component": "head_attention_value_output",
                "unit": "h.pos",
                "intervention_type": lib.CollectIntervention,
            }
        )
        return im(config)(base=base, unit_locations={"base": lib.GET_LOC((3, 3))}, subspaces=[0])[0][-1]
    if name == "new_intervention_type":
        return logits(im({"intervention_type": _multiplier(lib)})(base=base, unit_locations={"base": 3}))
    if name == "grouping":
        config = lib.IntervenableConfig(
            [
                {"layer": 0, "component": "block_output", "group_key": 0},
                {"layer": 2, "component": "block_output", "group_key": 0},
            ],
            intervention_types=lib.VanillaIntervention,
        )
        return logits(im(config)(base, [src], {"sources->base": ([[[3]], [[4]]], [[[3]], [[4]]])}))
    if name == "subspace_partition":
        config = lib.IntervenableConfig(
            [{"layer": 0, "component": "block_output", "subspace_partition": part}],
            intervention_types=lib.VanillaIntervention,
        )
        return logits(im(config)(base, [src], {"sources->base": 4}, subspaces=1))
    if name == "multisource_parallel":
        config = lib.IntervenableConfig(
            [{"layer": 0, "component": "block_output", "subspace_partition": part}] * 2,
            intervention_types=lib.VanillaIntervention,
            mode="parallel",
        )
        return logits(im(config)(base, [src, src2], {"sources->base": 4}, subspaces=[[[0]], [[1]]]))
    if name == "multisource_serial":
        config = lib.IntervenableConfig(
            [
                {"layer": 0, "component": "block_output", "subspace_partition": part},
                {"layer": 2, "component": "block_output", "subspace_partition": part},
            ],
            intervention_types=lib.VanillaIntervention,
            mode="serial",
        )
        return logits(
            im(config)(base, [src, src2], {"source_0->source_1": 3, "source_1->base": 4}, subspaces=[[[0]], [[1]]])
        )
    if name == "lambda_zero_out":
        mask = torch.ones(1, 5, 24)
        mask[:, 3, :] = 0.0
        return logits(
            im({"component": "transformer.h[0].mlp.output", "intervention": lambda b, s: b * mask})(base=base)
        )
    raise KeyError(name)


FLOWS = (
    "source_representation",
    "parallel_constant_sources",
    "source_representations_in_call",
    "addition_multi_token",
    "collect_after_vanilla",
    "collect_one_head_one_position",
    "new_intervention_type",
    "grouping",
    "subspace_partition",
    "multisource_parallel",
    "multisource_serial",
    "lambda_zero_out",
)


@pytest.mark.parametrize("name", FLOWS)
def test_basic_flows_give_pyvenes_numbers(gpt2, pv_gpt2, name):
    theirs, ours = _flow(name, pv, pv_gpt2), _flow(name, fv, gpt2)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    if name not in ("collect_after_vanilla", "collect_one_head_one_position"):
        with torch.no_grad():
            assert not torch.allclose(ours[0], gpt2(**_prompts()[0]).logits)  # the flow changed something
