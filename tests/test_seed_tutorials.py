"""Seed tutorials 1, 4 and 5, exactly as the user wrote them, with ``import fxvene as pv`` and a local
random-weight GPT-2 (plus an offline tokenizer) in place of the hub's "gpt2"."""

import re

import torch

TUTORIAL_1 = """
import pyvene as pv
from transformers import AutoModelForCausalLM, AutoTokenizer
import torch

# 1. Load model
model = AutoModelForCausalLM.from_pretrained("gpt2")
tokenizer = AutoTokenizer.from_pretrained("gpt2")

# 2. Prepare inputs
base_prompt = "The Colosseum is in the city of"
source_prompt = "The Eiffel Tower is in the city of"

base_inputs = tokenizer(base_prompt, return_tensors="pt")
source_inputs = tokenizer(source_prompt, return_tensors="pt")

# 3. Define intervention (patch layer 8)
config = pv.IntervenableConfig(
    representations=[
        pv.RepresentationConfig(
            layer=8,
            component="block_output",
            intervention_type=pv.VanillaIntervention,
        )
    ]
)

intervenable = pv.IntervenableModel(config, model)

# 4. Run intervention
_, patched_outputs = intervenable(
    base=base_inputs,
    sources=[source_inputs],
)

# 5. Check predictions
patched_logits = patched_outputs.logits
probs = torch.softmax(patched_logits[0, -1], dim=-1)

rome_token = tokenizer.encode(" Rome")[0]
paris_token = tokenizer.encode(" Paris")[0]

print(f"P(Rome): {probs[rome_token].item():.4f}")
print(f"P(Paris): {probs[paris_token].item():.4f}")
"""

TUTORIAL_4 = """
import pyvene as pv
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("gpt2")
tokenizer = AutoTokenizer.from_pretrained("gpt2")

# 1. Setup
base_prompt = "John and Mary went to the store"
source_prompt = "Alice and Bob went to the store"

base_inputs = tokenizer(base_prompt, return_tensors="pt")
source_inputs = tokenizer(source_prompt, return_tensors="pt")

# 2. Position-specific config
config = pv.IntervenableConfig(
    representations=[
        pv.RepresentationConfig(
            layer=5,
            component="block_output",
            intervention_type=pv.VanillaIntervention,
            unit="pos",
            max_number_of_units=1,  # Single position
        )
    ]
)

intervenable = pv.IntervenableModel(config, model)

# 3. Intervene at position 0 only (first name)
_, outputs = intervenable(
    base=base_inputs,
    sources=[source_inputs],
    unit_locations={"sources->base": ([[[0]]], [[[0]]])},
)

# 4. Intervene at multiple positions
_, outputs = intervenable(
    base=base_inputs,
    sources=[source_inputs],
    unit_locations={"sources->base": ([[[0, 2]]], [[[0, 2]]])},
)
"""

TUTORIAL_5 = """
import pyvene as pv
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("gpt2")
tokenizer = AutoTokenizer.from_pretrained("gpt2")

# 1. Config with CollectIntervention
config = pv.IntervenableConfig(
    representations=[
        pv.RepresentationConfig(
            layer=5,
            component="block_output",
            intervention_type=pv.CollectIntervention,
        ),
        pv.RepresentationConfig(
            layer=10,
            component="attention_output",
            intervention_type=pv.CollectIntervention,
        ),
    ]
)

intervenable = pv.IntervenableModel(config, model)

# 2. Run and collect
inputs = tokenizer("Hello world", return_tensors="pt")
_, collected = intervenable(base=inputs)

# 3. Access collected activations
layer5_output = collected[0]
layer10_attn = collected[1]

print(f"Layer 5 block output shape: {layer5_output.shape}")
print(f"Layer 10 attention output shape: {layer10_attn.shape}")
"""


def run_tutorial(code, model_dir, capsys):
    code = code.replace("import pyvene as pv", "import fxvene as pv").replace('"gpt2"', repr(model_dir))
    ns = {}
    exec(compile(code, "<tutorial>", "exec"), ns)  # noqa: S102 - the user's tutorial code
    return ns, capsys.readouterr().out


def test_tutorial_1_activation_patching(tutorial_model_dir, capsys):
    ns, out = run_tutorial(TUTORIAL_1, tutorial_model_dir, capsys)
    m = re.search(r"P\(Rome\): ([0-9.]+)\nP\(Paris\): ([0-9.]+)", out)
    assert m, out
    # Goal: swapping layer-8 activations makes the base run behave like the source run. With every
    # position patched at layer 8, the base's prediction must be the source's own prediction.
    model, tok = ns["model"], ns["tokenizer"]
    src_logits = model(**ns["source_inputs"]).logits[0, -1]
    base_logits = model(**ns["base_inputs"]).logits[0, -1]
    patched = ns["patched_logits"][0, -1]
    torch.testing.assert_close(patched, src_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(patched, base_logits, atol=1e-3)
    assert abs(float(m.group(1)) - torch.softmax(src_logits, -1)[ns["rome_token"]].item()) < 1e-4
    assert tok.decode([ns["rome_token"]]).strip() == "Rome"


def test_tutorial_4_position_specific(tutorial_model_dir, capsys):
    ns, _ = run_tutorial(TUTORIAL_4, tutorial_model_dir, capsys)
    model = ns["model"]
    base, src = ns["base_inputs"], ns["source_inputs"]
    clean = model(**base).logits
    patched = ns["outputs"].logits
    # Goal: only the chosen positions are patched. Causally, positions before 0 are unchanged
    # (there are none) and the hidden state at layer 5 changes exactly at positions 0 and 2.
    hs_src = model(**src, output_hidden_states=True).hidden_states[6]

    def hook(mod, args, out):  # a block returns a tuple in transformers 4.x, a tensor in 5.x
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, [0, 2]] = hs_src[:, [0, 2]]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = model.transformer.h[5].register_forward_hook(hook)
    try:
        expected = model(**base).logits
    finally:
        handle.remove()
    torch.testing.assert_close(patched, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(patched, clean)


def test_tutorial_5_collecting(tutorial_model_dir, capsys):
    ns, out = run_tutorial(TUTORIAL_5, tutorial_model_dir, capsys)
    assert "Layer 5 block output shape: torch.Size([1, 2, 64])" in out
    assert "Layer 10 attention output shape: torch.Size([1, 2, 64])" in out
    model = ns["model"]
    hs = model(**ns["inputs"], output_hidden_states=True).hidden_states
    torch.testing.assert_close(ns["layer5_output"], hs[6], atol=1e-5, rtol=1e-5)
