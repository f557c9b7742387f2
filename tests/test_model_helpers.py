"""pyvene's model helpers (create_gpt2, create_llama, ...): signatures, defaults and return order
``(config, tokenizer, model)``; the Hugging Face ones load local checkpoints saved from tiny configs
(the hub is not reachable in tests) with the real loading code."""

import inspect

import pytest
import torch
from _tiny import make_tiny, tiny_config
from conftest import build_offline_tokenizer
from transformers import GPT2LMHeadModel, GPT2Model, GPTNeoForCausalLM, GPTNeoXForCausalLM, LlamaForCausalLM

import fxvene as pv


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> local directory with a tiny random checkpoint and an offline tokenizer."""
    tok = build_offline_tokenizer()
    dirs = {}
    for family in ("gpt2", "gpt_neo", "gpt_neox", "llama", "olmo"):
        d = tmp_path_factory.mktemp(family)
        make_tiny(family, attn="sdpa" if family == "gpt2" else "eager").save_pretrained(d)
        tok.save_pretrained(d)
        dirs[family] = str(d)
    return dirs


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k].float(), sb[k].float()) for k in sa if k in sb) and set(sa) <= set(sb)


def test_signatures_match_pyvene(pyvene):
    for name in (
        "create_gpt2",
        "create_gpt2_lm",
        "create_gpt_neo",
        "create_gpt_neox",
        "create_llama",
        "create_olmo",
        "create_gru",
        "create_gru_lm",
        "create_gru_classifier",
        "create_mlp_classifier",
    ):
        ours, theirs = inspect.signature(getattr(pv, name)), inspect.signature(getattr(pyvene, name))
        assert list(ours.parameters) == list(theirs.parameters), name
        for p in ours.parameters.values():
            assert p.default == theirs.parameters[p.name].default, (name, p.name)


def test_gpt2_helpers_load_local_checkpoints_eager(checkpoints, tmp_path):
    d = checkpoints["gpt2"]
    ref = GPT2LMHeadModel.from_pretrained(d)
    config, tok, model = pv.create_gpt2(d, cache_dir=str(tmp_path))
    assert type(model) is GPT2Model and config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"  # pyvene's attention_weight needs eager attention
    assert _same_weights(model, ref.transformer)
    assert tok("Paris")["input_ids"] == build_offline_tokenizer()("Paris")["input_ids"]
    config, tok, lm = pv.create_gpt2_lm(d)
    assert type(lm) is GPT2LMHeadModel and _same_weights(lm, ref) and config._attn_implementation == "eager"
    ids = torch.tensor([[3, 4, 5]])
    assert torch.allclose(lm(ids).logits, ref(ids).logits, atol=1e-5)
    cfg = tiny_config("gpt2", attn="sdpa")
    config, tok, fresh = pv.create_gpt2_lm(d, config=cfg)  # random weights from the config, tokenizer from name
    assert config is cfg and config._attn_implementation == "eager" and tok is not None
    assert fresh.config.n_layer == 2 and not _same_weights(fresh, ref)


def test_other_hf_helpers_load_local_checkpoints(checkpoints):
    config, tok, neo = pv.create_gpt_neo(checkpoints["gpt_neo"])
    assert type(neo) is GPTNeoForCausalLM and config.num_layers == 2 and tok is not None
    assert _same_weights(neo, GPTNeoForCausalLM.from_pretrained(checkpoints["gpt_neo"]))
    config, tok, neox = pv.create_gpt_neox(checkpoints["gpt_neox"])
    assert type(neox) is GPTNeoXForCausalLM and _same_weights(
        neox, GPTNeoXForCausalLM.from_pretrained(checkpoints["gpt_neox"])
    )
    config, tok, llama = pv.create_llama(checkpoints["llama"])
    assert type(llama) is LlamaForCausalLM and llama.dtype == torch.bfloat16  # pyvene's default dtype
    ref = LlamaForCausalLM.from_pretrained(checkpoints["llama"])
    assert _same_weights(llama, ref.to(torch.bfloat16))
    config, tok, llama32 = pv.create_llama(checkpoints["llama"], dtype=torch.float32)
    assert llama32.dtype == torch.float32 and _same_weights(
        llama32, LlamaForCausalLM.from_pretrained(checkpoints["llama"])
    )
    cfg = tiny_config("llama")
    config, tok, fresh = pv.create_llama(checkpoints["llama"], config=cfg)
    assert config is cfg and fresh.dtype == torch.float32 and tok is not None
    config, tok, olmo = pv.create_olmo(checkpoints["olmo"])
    assert type(olmo).__name__ == "OlmoForCausalLM" and olmo.dtype == torch.bfloat16
    config, tok, fresh = pv.create_olmo(checkpoints["olmo"], config=tiny_config("olmo"))
    assert type(fresh).__name__ == "OlmoForCausalLM" and fresh.dtype == torch.float32


def test_hf_helpers_bad_input(tmp_path):
    with pytest.raises(TypeError, match="name must be a hub model name or a local directory"):
        pv.create_gpt2(3)
    with pytest.raises((OSError, ValueError)):  # an empty directory is no checkpoint (transformers' own error)
        pv.create_gpt_neox(str(tmp_path))
