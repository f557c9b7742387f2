"""Shared fixtures: tiny random-weight GPT-2 and Llama (GQA) models, built offline."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

# _matrix: the support matrix (FXVENE_MATRIX_OUT writes the marked tests' outcomes);
# _messages: every fxvene error a bad-input test's pytest.raises catches fits in 3 lines and 300 characters
pytest_plugins = ["_matrix", "_messages", "_tiers"]  # _tiers: the fast set is -m "not slow"

torch.set_num_threads(1)  # tiny models: threads only add overhead (and contention in CI)

# the on-disk graph cache of this test session (and of the subprocesses it starts): never ~/.cache
os.environ["FXVENE_CACHE_DIR"] = tempfile.mkdtemp(prefix="fxvene-test-cache-")
atexit.register(shutil.rmtree, os.environ["FXVENE_CACHE_DIR"], True)


def make_gpt2(n_layer=4, n_embd=24, n_head=4, vocab=50, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        vocab_size=vocab,
        n_positions=64,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg).eval()


def make_llama(n_layer=3, hidden=32, heads=4, kv_heads=2, vocab=50, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        num_hidden_layers=n_layer,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=48,
        vocab_size=vocab,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def batch_ids(seed, vocab=50, n=8, b=2):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, vocab, (b, n), generator=g)}


@pytest.fixture(scope="module")
def pyvene():
    """The differential-test oracle (optional extra)."""
    return pytest.importorskip("pyvene")


@pytest.fixture(scope="session")
def gpt2():
    return make_gpt2()


@pytest.fixture(scope="session")
def pv_gpt2():
    """The same tiny GPT-2 as ``gpt2``, for tests that wrap it with pyvene: pyvene 0.1.8 removes every
    forward hook of a model it wraps, including those transformers 5 uses for output_hidden_states."""
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
    from fxvene.graph.tracing import hf_fx_available

    return ["hf_fx", "export"] if hf_fx_available() else ["export"]


TUTORIAL_WORDS = (
    "The Eiffel Tower Space Needle is in the city of downtown Rome Paris Seattle capital Italy France "
    "John and Mary went to store Alice Bob gave a drink Hello world I am very happy sad Today feel . , !"
).split()


def build_offline_tokenizer():
    """A WordPiece tokenizer made from a hand-written vocabulary (no download). "Colosseum" splits
    into two pieces, so the two prompts of seed tutorial 1 have the same length, as with GPT-2's BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, "Col": 2, "##osseum": 3}
    for w in TUTORIAL_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="[UNK]"
    )


@pytest.fixture(scope="session")
def tutorial_model_dir(tmp_path_factory):
    """A local random-weight 12-layer GPT-2 plus an offline tokenizer, saved like a hub checkpoint."""
    tok = build_offline_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=12, n_embd=64, n_head=4, vocab_size=len(tok), n_positions=64, bos_token_id=0, eos_token_id=0
    )
    d = tmp_path_factory.mktemp("gpt2-local")
    GPT2LMHeadModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)
