"""generate's options against HF generate and pyvene 0.1.8 (issue 28, items 8-10): the default length
(no max_length / max_new_tokens) on each transformers line, use_cache=False (pyvene's tokens), and forward's
use_cache=True with inputs_embeds.

pyvene's generate is ``model.generate(**base, **kwargs)`` with its hooks registered, so where no
intervention acts HF generate is its oracle too.
"""

import pytest
import torch
from conftest import make_gpt2 as _make_gpt2

import fxvene as fv

pv = pytest.importorskip("pyvene")


def make_gpt2():
    return _make_gpt2(n_layer=2)  # one on-disk graph-cache entry for every model of this file


NO_EOS = dict(do_sample=False, eos_token_id=None, pad_token_id=0)


def _base(seq=6, seed=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (1, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _add_cfg(lib):
    return {"layer": 1, "component": "mlp_output", "intervention_type": lib.AdditionIntervention}


def _collect_cfg(lib=fv):
    return {"layer": 1, "component": "mlp_output", "intervention_type": lib.CollectIntervention}


def _vec(scale=1.5):
    return torch.randn(24, generator=torch.Generator().manual_seed(3)) * scale


def _hf(model, base, **kw):
    with torch.no_grad():
        return model.generate(**base, **kw)


# ------------------------------------------------------------------------------------------------ item 9


def test_default_length_is_pyvenes():
    """No max_length / max_new_tokens: HF's default, 20 new tokens (a 6-token prompt gives 26), as pyvene."""
    base, vec = _base(), _vec()
    _, fout = fv.IntervenableModel(_add_cfg(fv), make_gpt2()).generate(base, source_representations=vec, **NO_EOS)
    _, pout = pv.IntervenableModel(_add_cfg(pv), make_gpt2()).generate(base, source_representations=vec, **NO_EOS)
    assert pout.shape == (1, 26)
    assert torch.equal(fout, pout)


@pytest.mark.parametrize(
    "gc_max_length,kw",
    [
        (None, {}),  # the default, capped at the model's 64 positions (prompt 50: 14 new tokens)
        (12, {}),  # a generation config's own max_length: the total length on both lines
        (20, {}),  # 20 set in the config: new tokens on transformers 4 (== GenerationConfig's), total on 5
        (None, dict(max_length=20)),  # an argument: the total length
    ],
)
def test_length_rules_equal_hf(gc_max_length, kw):
    model = make_gpt2()
    if gc_max_length is not None:
        model.generation_config.max_length = gc_max_length
    base = _base(seq=50) if gc_max_length is None and not kw else _base()
    (_, _), fout = fv.IntervenableModel(_collect_cfg(), model).generate(base, **kw, **NO_EOS)
    ref = _hf(model, base, **kw, **NO_EOS)
    assert fout.shape == ref.shape
    assert torch.equal(fout, ref)


# ------------------------------------------------------------------------------------------------ item 10


def test_use_cache_false_equals_pyvene():
    """Without the cache every forward runs the whole sequence, so pyvene's default {"base": 0} hits the
    first prompt token at every step: fxvene runs HF's loop on its graphs and gives pyvene's tokens."""
    base, vec = _base(), _vec()
    kw = dict(source_representations=vec, use_cache=False, max_new_tokens=3, **NO_EOS)
    _, fout = fv.IntervenableModel(_add_cfg(fv), make_gpt2()).generate(base, **kw)
    _, pout = pv.IntervenableModel(_add_cfg(pv), make_gpt2()).generate(base, **kw)
    assert torch.equal(fout, pout)


def test_use_cache_false_in_the_model_config():
    """A model whose generation config says use_cache=False: HF (and so pyvene) generates without the cache,
    and so does fxvene; use_cache=True overrides it in both."""
    fmodel, pmodel = make_gpt2(), make_gpt2()
    for m in (fmodel, pmodel):
        m.generation_config.use_cache = False
    base, vec = _base(), _vec()
    fim, pim = fv.IntervenableModel(_add_cfg(fv), fmodel), pv.IntervenableModel(_add_cfg(pv), pmodel)
    kw = dict(max_new_tokens=5, source_representations=vec, **NO_EOS)
    for extra in ({}, {"use_cache": True}):
        _, fout = fim.generate(base, **kw, **extra)
        _, pout = pim.generate(base, **kw, **extra)
        assert torch.equal(fout, pout)


# ------------------------------------------------------------------------------------------------ item 8


def test_forward_use_cache_with_inputs_embeds_equals_pyvene():
    """forward(use_cache=True) on inputs_embeds returns the intervened run's keys/values, as pyvene's
    (the prompt forward of a KV-cache graph exported on inputs_embeds)."""
    from fxvene.graph.step_graphs import flat_cache

    fmodel, pmodel = make_gpt2(), make_gpt2()
    ids = _base()["input_ids"].repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    with torch.no_grad():
        base = {"inputs_embeds": fmodel.get_input_embeddings()(ids), "attention_mask": mask}
    kw = dict(source_representations=_vec(), unit_locations={"base": 3}, use_cache=True)
    cfg = lambda lib: {"layer": 0, "component": "block_output", "intervention_type": lib.AdditionIntervention}  # noqa: E731
    _, fo = fv.IntervenableModel(cfg(fv), fmodel).forward(base, **kw)
    _, po = pv.IntervenableModel(cfg(pv), pmodel).forward(base, **kw)
    assert type(fo.past_key_values) is type(po.past_key_values)
    got, want = flat_cache(fo.past_key_values), flat_cache(po.past_key_values)
    assert len(got) == len(want) == 2 * fmodel.config.n_layer
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fo.logits, po.logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        clean = flat_cache(fmodel(**base, use_cache=True).past_key_values)
    assert not torch.allclose(got[-1], clean[-1])  # the intervention reaches the cache of later layers
