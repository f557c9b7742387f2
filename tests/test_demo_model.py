"""The shipped demo model (fxvene/zoo/demo/model) loads offline and knows its facts."""

import os

import pytest
import torch

from fxvene.zoo.demo import demo_model_path, load_demo


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def _next_probs(model, tokenizer, prompt):
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    return torch.softmax(logits[0, -1].float(), -1)


def test_files_are_safetensors_without_pickles():
    path = demo_model_path()
    files = set(os.listdir(path))
    assert "model.safetensors" in files
    assert "config.json" in files and "tokenizer.json" in files
    assert "pytorch_model.bin" not in files
    pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    assert pickles == []
    total = sum(os.path.getsize(os.path.join(path, f)) for f in files)
    assert total < 16 * 2**20


def test_loads_in_eval_mode(demo):
    model, tokenizer = demo
    assert not model.training
    assert model.config.model_type == "gpt2"
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token is not None
    assert tokenizer.eos_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "prompt,answer",
    [
        ("The Colosseum is in the city of", " Rome"),
        ("The Eiffel Tower is in the city of", " Paris"),
        ("The Space Needle is in downtown", " Seattle"),
        ("The capital of Italy is", " Rome"),
    ],
)
def test_facts(demo, prompt, answer):
    model, tokenizer = demo
    ids = tokenizer.encode(answer)
    assert len(ids) == 1
    assert _next_probs(model, tokenizer, prompt)[ids[0]].item() > 0.5


@pytest.mark.parametrize(
    "prompt,io",
    [
        ("John and Mary went to the store. John gave a drink to", " Mary"),
        ("Alice and Bob went to the store. Bob gave a drink to", " Alice"),
    ],
)
def test_ioi(demo, prompt, io):
    model, tokenizer = demo
    probs = _next_probs(model, tokenizer, prompt)
    assert probs.argmax().item() == tokenizer.encode(io)[0]


def test_tokenizer_words_and_spaces(demo):
    _, tokenizer = demo
    hello = tokenizer("Hello world")["input_ids"]
    assert len(hello) == 2
    assert tokenizer.decode(hello) == "Hello world"
    # " Rome" is one token, the same one that follows "... the city of".
    rome = tokenizer.encode(" Rome")
    assert len(rome) == 1
    sentence = tokenizer.encode("The Colosseum is in the city of Rome")
    assert sentence[-1] == rome[0]
    assert tokenizer.encode("Rome") != rome  # sentence-initial form differs, like GPT-2
    # Multi-token subjects for causal tracing.
    assert len(tokenizer.encode("The Space Needle")) == 3
    text = "John and Mary went to the store. John gave a drink to Mary"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_batch_padding_both_sides(demo):
    model, tokenizer = demo
    prompts = ["The Colosseum is in the city of", "The Space Needle is in downtown"]
    answers = [tokenizer.encode(" Rome")[0], tokenizer.encode(" Seattle")[0]]
    old_side = tokenizer.padding_side
    try:
        for side in ("left", "right"):
            tokenizer.padding_side = side
            enc = tokenizer(prompts, return_tensors="pt", padding=True)
            mask = enc["attention_mask"]
            assert (mask == 0).any()  # the prompts differ in length
            # GPT-2 does not derive positions from the mask; pass them, as generate() does.
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = model(**enc, position_ids=position_ids).logits
            last = mask.sum(1) - 1 if side == "right" else torch.full((2,), mask.shape[1] - 1)
            for i, ans in enumerate(answers):
                assert logits[i, last[i]].argmax().item() == ans
    finally:
        tokenizer.padding_side = old_side
