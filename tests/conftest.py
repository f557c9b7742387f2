"""Shared fixtures: tiny random-weight GPT-2 and Llama (GQA) models, built offline."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)  # tiny models: threads only add overhead (and contention in CI)


def make_gpt2(n_layer=4, n_embd=24, n_head=4, vocab=50, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=64,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg).eval()


def make_llama(n_layer=3, hidden=32, heads=4, kv_heads=2, vocab=50, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        num_hidden_layers=n_layer, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
        intermediate_size=48, vocab_size=vocab, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def gpt2():
    return make_gpt2()


@pytest.fixture(scope="session")
def llama():
    return make_llama()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return (
        {"input_ids": torch.randint(0, 50, (2, 8), generator=g)},
        {"input_ids": torch.randint(0, 50, (2, 8), generator=g)},
    )


def frontends():
    """Frontends this transformers line has: hf_fx exists in transformers 4.x only."""
    from fxvene.tracing import hf_fx_available

    return ["hf_fx", "export"] if hf_fx_available() else ["export"]
