"""pyreft 0.1.0's README flow on a tiny model, run in its own interpreter by tests/test_pyreft.py.

``python tests/_pyreft_flow.py <pyvene|fxvene> <out.json>``: with ``fxvene``, ``import pyvene``
resolves to fxvene (a ``sys.modules`` alias installed before pyreft is imported). For the tests'
tiny GPT-2 and tiny Llama (conftest's, seeded, the same in both runs): LoReFT at one layer, ``get_reft_model``, the
trainable-parameter line, a few ``ReftTrainerForCausalLM`` steps with ``weight_decay=0.06`` (every
loss), greedy ``generate(..., early_stopping=True)``, ``save`` and ``ReftModel.load``. Writes what
it saw as JSON (floats exact).
"""

import contextlib
import io
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def _alias_pyvene():
    import fxvene

    sys.modules["pyvene"] = fxvene


def _conftest():
    """tests/conftest.py, keeping the graph cache directory this process was given (the test
    session's: conftest would point a process of its own at a fresh one)."""
    sys.path.insert(0, os.path.dirname(HERE))
    given = os.environ.get("FXVENE_CACHE_DIR")
    import tests.conftest as conftest

    if given is not None:
        os.environ["FXVENE_CACHE_DIR"] = given
    return conftest


def _tokenizer():
    build_offline_tokenizer = _conftest().build_offline_tokenizer

    tok = build_offline_tokenizer()
    tok.pad_token = tok.eos_token
    tok.model_max_length = 64
    tok.model_input_names = ["input_ids", "attention_mask"]  # no token_type_ids (GPT-2 would embed them)
    return tok


def _model(family):
    """conftest's session models (same configs): their graphs are in the test session's graph cache
    (FXVENE_CACHE_DIR, inherited) once other tests have traced them."""
    conftest = _conftest()
    return conftest.make_gpt2() if family == "gpt2" else conftest.make_llama()


PROMPTS = [
    "The Eiffel Tower is in the city of",
    "The Space Needle is in",
    "Alice and Bob went to the",
    "Today I feel very",
]
ANSWERS = [" Paris", " downtown Seattle", " store", " happy"]


def run(family, pyreft, out_dir):
    import torch
    import transformers

    tok = _tokenizer()
    model = _model(family)
    assert len(tok) <= model.config.vocab_size
    hidden = model.config.hidden_size
    torch.manual_seed(1)
    reft_config = pyreft.ReftConfig(
        representations={
            "layer": 1,
            "component": "block_output",
            "low_rank_dimension": 2,
            "intervention": pyreft.LoreftIntervention(embed_dim=hidden, low_rank_dimension=2, dtype=torch.float32),
        }
    )
    reft_model = pyreft.get_reft_model(model, reft_config)
    reft_model.set_device("cpu")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        reft_model.print_trainable_parameters()

    data_module = pyreft.make_last_position_supervised_data_module(tok, model, PROMPTS, ANSWERS)
    args = transformers.TrainingArguments(
        output_dir=os.path.join(out_dir, f"train-{family}"),
        per_device_train_batch_size=2,
        learning_rate=4e-2,
        weight_decay=0.06,
        max_steps=4,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=42,
        disable_tqdm=True,
    )
    losses = []

    class Trainer(pyreft.ReftTrainerForCausalLM):
        # pyreft 0.1.0's compute_loss predates the num_items_in_batch argument newer Trainers pass
        def compute_loss(self, intervenable, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(intervenable, inputs, return_outputs)
            losses.append(float(loss.detach()))
            return loss

    trainer = Trainer(model=reft_model, processing_class=tok, args=args, **data_module)
    decay = set(trainer.get_decay_parameter_names(reft_model))
    names = [n for n, _ in reft_model.named_parameters()]
    trainer.train()

    iv = reft_model.interventions[reft_model.sorted_keys[0]]
    rot = iv.rotate_layer.weight.detach()
    prompt = tok(PROMPTS[0], return_tensors="pt")
    loc = prompt["input_ids"].shape[-1] - 1

    def generate(m):
        _, out = m.generate(
            prompt,
            unit_locations={"sources->base": (None, [[[loc]]])},
            intervene_on_prompt=True,
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            early_stopping=True,
        )
        return out[0].tolist()

    with torch.no_grad():
        gen = generate(reft_model)
    save_dir = os.path.join(out_dir, f"saved-{family}")
    reft_model.save(save_directory=save_dir)
    loaded = pyreft.ReftModel.load(save_dir, model)
    liv = loaded.interventions[loaded.sorted_keys[0]]
    liv.to(torch.float32)  # LoreftIntervention rebuilds learned_source in bfloat16 unless given a dtype
    with torch.no_grad():
        loaded_gen = generate(loaded)
    return {
        "printed": printed.getvalue().strip(),
        "names": names,
        "decayed": [n for n in names if n in decay],
        "losses": losses,
        "rotation": rot.flatten().tolist(),
        "gram_error": float((rot.T @ rot - torch.eye(rot.shape[1])).abs().max()),
        "generation": gen,
        "prompt_length": prompt["input_ids"].shape[-1],
        "loaded_type": type(loaded).__name__,
        "loaded_rotation": liv.rotate_layer.weight.detach().flatten().tolist(),
        "loaded_generation": loaded_gen,
    }


def main():
    lib, out = sys.argv[1], sys.argv[2]
    if lib == "fxvene":
        _alias_pyvene()
    import pyreft

    assert (sys.modules["pyvene"].__name__ == "fxvene") == (lib == "fxvene")
    with tempfile.TemporaryDirectory() as d:
        res = {family: run(family, pyreft, d) for family in ("gpt2", "llama")}
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
