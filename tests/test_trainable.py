"""Training through the rewritten graph (DAS family).

* Differential against pyvene 0.1.8: the same config built under the same seed gives the same
  outputs and the same gradients on every intervention parameter, on GPT-2 and Llama, with
  subspaces, subspace_partition, linked interventions, keep_last_dim, max_number_of_units > 1
  and head units (both frontends where the transformers line has them).
* Gradients reach exactly the intervention parameters; wrapping freezes the model and calls
  ``model.eval()``.
* A ``torch.compile``'d training step equals the eager step and does not recompile.
* Seed tutorial 3 runs as written.
"""

import re

import pytest
import torch
from _matrix import cell
from conftest import batch_ids, frontends, make_gpt2

import fxvene as pv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

B = 2


def _ids(seed, vocab=50, n=8):
    return batch_ids(seed, vocab, n, B)


def _P(src, base):
    return {"sources->base": (src, base)}


def _randomize(im, seed=5, std=0.3):
    torch.manual_seed(seed)
    with torch.no_grad():
        for iv in im.interventions.values():
            for p in iv.parameters():
                if p.dtype.is_floating_point:
                    torch.nn.init.normal_(p, std=std)


def _sigmask_setup(im):
    torch.manual_seed(5)
    for iv in im.interventions.values():
        torch.nn.init.normal_(iv.mask)


def _jumprelu_setup(im):
    _randomize(im)
    for iv in im.interventions.values():
        iv.set_interchange_dim(4)


def _boundless_setup(im):
    im.set_temperature(torch.tensor(5.0))


def _keep_last_dim(lib):
    torch.manual_seed(11)
    return lib.RotatedSpaceIntervention(embed_dim=24, keep_last_dim=True)


# (model, representations (intervention types by name), unit_locations, subspaces, setup)
CASES = {
    "rotated": (
        "gpt2",
        [dict(layer=1, component="block_output", t="RotatedSpaceIntervention")],
        _P([[[3]] * B], [[[5]] * B]),
        None,
        None,
    ),
    "rotated_partition": (
        "gpt2",
        [dict(layer=1, component="block_output", t="RotatedSpaceIntervention", subspace_partition=[[0, 12], [12, 24]])],
        _P([[[3]] * B], [[[5]] * B]),
        [[[1]] * B],
        None,
    ),
    "rotated_partition_per_example": (
        "gpt2",
        [dict(layer=2, component="block_output", t="RotatedSpaceIntervention", subspace_partition=[[0, 12], [12, 24]])],
        _P([[[3]] * B], [[[5]] * B]),
        [[[0], [1]]],
        None,
    ),
    "rotated_linked": (
        "gpt2",
        [
            dict(
                layer=1,
                component="block_output",
                t="RotatedSpaceIntervention",
                subspace_partition=[[0, 8], [8, 24]],
                intervention_link_key=0,
            ),
            dict(
                layer=1,
                component="block_output",
                t="RotatedSpaceIntervention",
                subspace_partition=[[0, 8], [8, 24]],
                intervention_link_key=0,
            ),
        ],
        _P([[[3]] * B, [[2]] * B], [[[5]] * B, [[5]] * B]),
        [[[0]] * B, [[1]] * B],
        None,
    ),
    "rotated_keep_last_dim": (
        "gpt2",
        [dict(layer=1, component="block_output", intervention=_keep_last_dim)],
        _P([[[2, 3]] * B], [[[5, 6]] * B]),
        None,
        None,
    ),
    "rotated_heads": (
        "gpt2",
        [
            dict(
                layer=1,
                component="head_attention_value_output",
                unit="h.pos",
                t="RotatedSpaceIntervention",
                max_number_of_units=2,
            )
        ],
        _P([[[[0, 2]] * B, [[3]] * B]], [[[[1, 2]] * B, [[4]] * B]]),
        None,
        None,
    ),
    "lowrank_nunit2": (
        "gpt2",
        [
            dict(
                layer=2,
                component="mlp_output",
                t="LowRankRotatedSpaceIntervention",
                low_rank_dimension=4,
                max_number_of_units=2,
            )
        ],
        _P([[[3, 4]] * B], [[[5, 6]] * B]),
        None,
        None,
    ),
    "lowrank_partition": (
        "gpt2",
        [
            dict(
                layer=2,
                component="mlp_output",
                t="LowRankRotatedSpaceIntervention",
                low_rank_dimension=4,
                subspace_partition=[[0, 2], [2, 4]],
            )
        ],
        _P([[[3]] * B], [[[5]] * B]),
        [[[0], [1]]],
        None,
    ),
    "boundless_nunit2": (
        "gpt2",
        [dict(layer=0, component="attention_output", t="BoundlessRotatedSpaceIntervention", max_number_of_units=2)],
        _P([[[1, 4]] * B], [[[2, 6]] * B]),
        None,
        _boundless_setup,
    ),
    "sigmoid_mask_rotated": (
        "gpt2",
        [dict(layer=3, component="block_input", t="SigmoidMaskRotatedSpaceIntervention")],
        _P([[[0]] * B], [[[7]] * B]),
        None,
        None,
    ),
    "sigmoid_mask": (
        "gpt2",
        [dict(layer=3, component="block_output", t="SigmoidMaskIntervention")],
        _P([[[0, 1]] * B], [[[6, 7]] * B]),
        None,
        _sigmask_setup,
    ),
    "jumprelu": (
        "gpt2",
        [dict(layer=1, component="block_output", t="JumpReLUAutoencoderIntervention", low_rank_dimension=6)],
        _P([[[2, 3]] * B], [[[5, 6]] * B]),
        None,
        _jumprelu_setup,
    ),
    "llama_rotated": (
        "llama",
        [dict(layer=1, component="block_output", t="RotatedSpaceIntervention")],
        _P([[[3]] * B], [[[5]] * B]),
        None,
        None,
    ),
    "llama_lowrank_attention": (
        "llama",
        [
            dict(
                layer=0,
                component="attention_output",
                t="LowRankRotatedSpaceIntervention",
                low_rank_dimension=3,
                max_number_of_units=2,
            )
        ],
        _P([[[3, 4]] * B], [[[5, 6]] * B]),
        None,
        None,
    ),
    "llama_boundless_mlp": (
        "llama",
        [dict(layer=2, component="mlp_output", t="BoundlessRotatedSpaceIntervention")],
        _P([[[3]] * B], [[[5]] * B]),
        None,
        None,
    ),
    "llama_sigmoid_mask_rotated_linked": (
        "llama",
        [
            dict(layer=1, component="mlp_output", t="SigmoidMaskRotatedSpaceIntervention", intervention_link_key="a"),
            dict(layer=1, component="mlp_output", t="SigmoidMaskRotatedSpaceIntervention", intervention_link_key="a"),
        ],
        _P([[[1]] * B, [[2]] * B], [[[5]] * B, [[5]] * B]),
        None,
        None,
    ),
    "llama_rotated_value_heads": (
        "llama",
        [
            dict(
                layer=1,
                component="head_value_output",
                unit="h.pos",
                t="RotatedSpaceIntervention",
                max_number_of_units=2,
            )
        ],
        _P([[[[0, 1]] * B, [[3]] * B]], [[[[0, 1]] * B, [[3]] * B]]),
        None,
        None,
    ),
}
# the second frontend (export, where hf_fx is the default) runs this subset
SECOND_FRONTEND = [
    "rotated_linked",
    "rotated_heads",
    "lowrank_nunit2",
    "boundless_nunit2",
    "jumprelu",
    "llama_rotated_value_heads",
]


def _config(lib, reps):
    out = []
    for r in reps:
        r = dict(r)
        if "t" in r:
            r["intervention_type"] = getattr(lib, r.pop("t"))
        if callable(r.get("intervention")) and not isinstance(r["intervention"], torch.nn.Module):
            r["intervention"] = r["intervention"](lib)
        out.append(lib.RepresentationConfig(**r))
    return lib.IntervenableConfig(representations=out)


def _run(lib, model, case, **kw):
    _, reps, locs, subspaces, setup = case
    torch.manual_seed(0)
    im = lib.IntervenableModel(_config(lib, reps), model, **kw)
    if setup is not None:
        setup(im)
    _, out = im(_ids(1), [_ids(2)], locs, subspaces=subspaces)
    loss = -out.logits.log_softmax(-1)[..., 3].mean()  # every position
    loss.backward()
    grads, embed = {}, {}
    for k, iv in im.interventions.items():
        embed[k] = int(iv.embed_dim)
        for n, p in iv.named_parameters():
            grads[f"{k}.{n}"] = None if p.grad is None else p.grad.clone()
    model_grads = [n for n, p in model.named_parameters() if p.grad is not None or p.requires_grad]
    return out.logits.detach(), grads, embed, model_grads, im


_PYVENE_CACHE = {}


def _pyvene_result(pyvene, models, name):
    if name not in _PYVENE_CACHE:
        case = CASES[name]
        _PYVENE_CACHE[name] = _run(pyvene, models[case[0]], case)[:4]
    return _PYVENE_CACHE[name]


@pytest.fixture(scope="module")
def models(gpt2, llama):
    return {"gpt2": gpt2, "llama": llama}


def _params():
    fes = frontends()

    def marks(n):
        return [cell("gpt2", "trainable")] if CASES[n][0] == "gpt2" else []

    out = [pytest.param(n, "auto", id=f"{n}-auto", marks=marks(n)) for n in CASES]
    if len(fes) > 1:
        out += [pytest.param(n, "export", id=f"{n}-export", marks=marks(n)) for n in SECOND_FRONTEND]
    return out


@pytest.mark.parametrize("name,tracer", _params())
def test_same_outputs_and_gradients_as_pyvene(pyvene, models, name, tracer):
    p_logits, p_grads, p_embed, p_model = _pyvene_result(pyvene, models, name)
    f_logits, f_grads, f_embed, f_model, im = _run(pv, models[CASES[name][0]], CASES[name], tracer=tracer)
    assert f_embed == p_embed  # flattening rule: embed_dim = component dim x max_number_of_units
    assert torch.equal(f_logits, p_logits)
    assert list(f_grads) == list(p_grads)
    for k in p_grads:
        if p_grads[k] is None:
            assert f_grads[k] is None, k
        else:
            assert f_grads[k] is not None, k
            torch.testing.assert_close(f_grads[k], p_grads[k], rtol=1e-5, atol=1e-7, msg=k)
    # gradients reach the intervention and nothing of the frozen model
    assert f_model == [] and p_model == []
    assert any(g is not None and g.abs().sum() > 0 for g in f_grads.values())
    for p in im.get_trainable_parameters():
        p.grad = None


def test_flattening_rule_embed_dims(gpt2, llama):
    R = pv.RepresentationConfig
    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[
                R(
                    layer=0,
                    component="block_output",
                    max_number_of_units=3,
                    intervention_type=pv.RotatedSpaceIntervention,
                ),
                R(
                    layer=0,
                    component="head_attention_value_output",
                    unit="h.pos",
                    max_number_of_units=2,
                    intervention_type=pv.RotatedSpaceIntervention,
                ),
                R(
                    layer=0,
                    component="mlp_activation",
                    intervention_type=pv.LowRankRotatedSpaceIntervention,
                    low_rank_dimension=2,
                ),
            ]
        ),
        gpt2,
    )
    assert [int(iv.embed_dim) for iv in im.interventions.values()] == [72, 12, 96]
    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[
                R(
                    layer=0,
                    component="head_key_output",
                    unit="h.pos",
                    max_number_of_units=2,
                    intervention_type=pv.BoundlessRotatedSpaceIntervention,
                )
            ]
        ),
        llama,
    )
    assert [int(iv.embed_dim) for iv in im.interventions.values()] == [16]


def _block_output(model, layer, inputs):
    """GPT-2 block ``layer``'s output hidden state, read with a forward hook. (Not output_hidden_states:
    transformers 5 records those with forward hooks, which pyvene 0.1.8 removes from the shared model.)"""
    got = []

    def hook(mod, args, output):
        got.append((output[0] if isinstance(output, tuple) else output).detach())

    handle = model.transformer.h[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return got[0]


def _ae_case():
    return [dict(layer=1, component="block_output", t="AutoencoderIntervention", latent_dim=6)]


def test_autoencoder_outputs_match_pyvene_and_gradients_match_hand_forward(pyvene, gpt2):
    """pyvene's AutoencoderIntervention writes into its ReLU output in place, so its backward fails;
    outputs are compared with pyvene, gradients with a hand-written forward hook."""
    locs = _P([[[3]] * B], [[[5]] * B])
    ims = {}
    for lib in (pyvene, pv):
        torch.manual_seed(0)
        ims[lib] = lib.IntervenableModel(_config(lib, _ae_case()), gpt2)
        ims[lib].interventions[ims[lib].sorted_keys[0]].set_interchange_dim([1, 3])
    with torch.no_grad():
        p_out = ims[pyvene](_ids(1), [_ids(2)], locs)[1].logits
    im = ims[pv]
    _, out = im(_ids(1), [_ids(2)], locs)
    assert torch.equal(out.logits, p_out)
    target = torch.tensor([3, 7])
    torch.nn.functional.cross_entropy(out.logits[:, -1], target).backward()
    iv = im.interventions[im.sorted_keys[0]]
    got = {n: p.grad.clone() for n, p in iv.named_parameters()}
    iv.zero_grad(set_to_none=True)

    # by hand: block 1's output at position 5 <- decode(encode(base) with latents [1, 3] from the source)
    src_h = _block_output(gpt2, 1, _ids(2))[:, 3]
    enc, dec = iv.autoencoder.encoder[0], iv.autoencoder.decoder[0]

    def ae(x):
        return torch.relu((x - dec.bias) @ enc.weight.T + enc.bias)

    def hook(mod, args, output):
        h = output[0] if isinstance(output, tuple) else output
        lb, ls = ae(h[:, 5]), ae(src_h)
        mask = torch.zeros(6, dtype=torch.bool)
        mask[[1, 3]] = True
        new = torch.where(mask, ls, lb) @ dec.weight.T + dec.bias
        h = torch.cat([h[:, :5], new.unsqueeze(1), h[:, 6:]], dim=1)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    handle = gpt2.transformer.h[1].register_forward_hook(hook)
    try:
        ref_logits = gpt2(**_ids(1)).logits
    finally:
        handle.remove()
    torch.testing.assert_close(out.logits, ref_logits, rtol=1e-5, atol=1e-6)
    torch.nn.functional.cross_entropy(ref_logits[:, -1], target).backward()
    for n, p in iv.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert [n for n, p in gpt2.named_parameters() if p.grad is not None] == []


def test_linked_parameters_counted_once(pyvene, gpt2):
    case = CASES["rotated_linked"]
    ims = {}
    for lib in (pyvene, pv):
        torch.manual_seed(0)
        ims[lib] = lib.IntervenableModel(_config(lib, case[1]), gpt2)
    p, f = ims[pyvene], ims[pv]
    assert f.count_parameters() == p.count_parameters() == 24 * 24
    # pyvene lists the shared rotation once per key; fxvene lists each parameter once (an optimizer
    # built from pyvene's list would update the shared weights twice per step)
    assert len(p.get_trainable_parameters()) == 2 and len({id(x) for x in p.get_trainable_parameters()}) == 1
    assert len(f.get_trainable_parameters()) == 1
    k0, k1 = f.sorted_keys
    assert f.interventions[k0] is f.interventions[k1]


def test_linked_interventions_at_different_locations(pyvene, gpt2):
    """Linked interventions share weights and each acts on its own locations.

    pyvene 0.1.8 differs here (not copied): once a linked intervention has fired, every later
    linked key takes the first one's *output* as its base ("hot activations",
    intervenable_base.py:461-474) instead of gathering at its own locations, so the state computed
    at position 5 is written into position 6. Where the linked keys share site and positions (the
    DAS usage) the two agree (see the differential cases above). The oracle: pyvene with two
    unlinked interventions holding the same weights."""
    reps = [
        dict(layer=1, component="block_output", t="BoundlessRotatedSpaceIntervention", intervention_link_key=0),
        dict(layer=1, component="block_output", t="BoundlessRotatedSpaceIntervention", intervention_link_key=0),
    ]
    locs = _P([[[1]] * B, [[2]] * B], [[[5]] * B, [[6]] * B])
    torch.manual_seed(0)
    im = pv.IntervenableModel(_config(pv, reps), gpt2)
    _randomize(im, std=0.1)
    unlinked = [{k: v for k, v in r.items() if k != "intervention_link_key"} for r in reps]
    torch.manual_seed(0)
    pim = pyvene.IntervenableModel(_config(pyvene, unlinked), gpt2)
    shared = im.interventions[im.sorted_keys[0]].state_dict()
    for k in pim.sorted_keys:
        pim.interventions[k].load_state_dict(shared)
    with torch.no_grad():
        got = im(_ids(1), [_ids(2)], locs)[1].logits
        ref = pim(_ids(1), [_ids(2)], locs)[1].logits
    assert torch.equal(got, ref)


def test_wrapping_freezes_the_model_and_enable_model_gradients_matches_pyvene(pyvene):
    grads = {}
    for lib in (pyvene, pv):
        model = make_gpt2(n_layer=2)
        model.train()
        torch.manual_seed(0)
        im = lib.IntervenableModel(_config(lib, CASES["rotated"][1]), model)
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        n_iv = len(im.get_trainable_parameters())
        im.enable_model_gradients()
        assert model.training and len(im.get_trainable_parameters()) == n_iv + len(list(model.parameters()))
        _, out = im(_ids(1), [_ids(2)], CASES["rotated"][2])
        out.logits.pow(2).mean().backward()
        grads[lib] = {n: p.grad.clone() for n, p in model.named_parameters()}
        im.disable_model_gradients()
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert list(grads[pv]) == list(grads[pyvene])
    for n in grads[pv]:
        torch.testing.assert_close(grads[pv][n], grads[pyvene][n], rtol=1e-5, atol=1e-7, msg=n)


# ------------------------------------------------------------------------------------ compile


def test_compiled_training_step_equals_eager_and_does_not_recompile():
    """torch.compile with Dynamo + AOTAutograd (the "aot_eager" backend: the joint forward/backward
    graph is captured, functionalized and partitioned; kernels then run eagerly). Inductor's C++
    codegen would add ~50 s of CPU time to this file."""
    import torch._dynamo
    from torch._dynamo.backends.registry import lookup_backend

    model = make_gpt2(n_layer=1)
    compiles = []
    aot_eager = lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        compiles.append(gm)
        return aot_eager(gm, example_inputs)

    def build():
        torch.manual_seed(0)
        return pv.IntervenableModel(
            pv.IntervenableConfig(
                representations=[
                    pv.RepresentationConfig(
                        layer=0,
                        component="block_output",
                        intervention_type=pv.LowRankRotatedSpaceIntervention,
                        low_rank_dimension=4,
                        max_number_of_units=2,
                    )
                ]
            ),
            model,
        )

    eager, comp = build(), build().compile(backend=backend, dynamic=False)  # fxvene compiles the rewritten graphs
    opts = {m: torch.optim.Adam(m.get_trainable_parameters(), lr=1e-2) for m in (eager, comp)}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    after_first = None
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        base = {"input_ids": torch.randint(0, 50, (B, 8), generator=g)}
        src = {"input_ids": torch.randint(0, 50, (B, 8), generator=g)}
        locs = _P([[[step % 3, 4]] * B], [[[5, (step + 2) % 8]] * B])  # new positions every step
        res = {}
        for m in (eager, comp):
            opts[m].zero_grad()
            _, out = m(base, [src], locs)
            loss = -out.logits[:, -1].log_softmax(-1)[:, 3].mean()
            loss.backward()
            gr = [p.grad.clone() for p in m.get_trainable_parameters()]
            opts[m].step()
            res[m] = (loss.detach(), gr, [p.detach().clone() for p in m.get_trainable_parameters()])
        torch.testing.assert_close(res[comp][0], res[eager][0], rtol=1e-5, atol=1e-6)
        for a, b in zip(res[comp][1] + res[comp][2], res[eager][1] + res[eager][2]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        if after_first is None:
            after_first = (len(compiles), torch._dynamo.utils.counters["stats"]["unique_graphs"])
    # the truncated source graph and the intervened base graph are compiled once each in the first
    # step, then reused by every later step although positions and tokens change
    assert after_first == (2, 2)
    assert (len(compiles), torch._dynamo.utils.counters["stats"]["unique_graphs"]) == after_first
    assert sum(torch._dynamo.utils.counters["recompiles"].values()) == 0
    assert not torch._dynamo.utils.counters["graph_break"]
    assert comp.model is model and not any(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------------------------ seed tutorial 3

TUTORIAL_3 = """
import pyvene as pv
from transformers import AutoModelForCausalLM, AutoTokenizer
import torch

model = AutoModelForCausalLM.from_pretrained("gpt2")
tokenizer = AutoTokenizer.from_pretrained("gpt2")

# 1. Define trainable intervention
config = pv.IntervenableConfig(
    representations=[
        pv.RepresentationConfig(
            layer=6,
            component="block_output",
            intervention_type=pv.LowRankRotatedSpaceIntervention,
            low_rank_dimension=64,  # Learn 64-dim subspace
        )
    ]
)

intervenable = pv.IntervenableModel(config, model)

# 2. Setup optimizer
optimizer = torch.optim.Adam(
    intervenable.get_trainable_parameters(),
    lr=1e-3
)

# 3. Training data (simplified example)
# Goal: Make model predict "Paris" instead of "Rome"
base_prompt = "The capital of Italy is"
target_token = tokenizer.encode(" Paris")[0]

base_inputs = tokenizer(base_prompt, return_tensors="pt")

# 4. Training loop
for step in range(100):
    optimizer.zero_grad()

    _, outputs = intervenable(
        base=base_inputs,
        sources=[base_inputs],  # Self-intervention
    )

    # Loss: maximize probability of target token
    logits = outputs.logits[0, -1]
    loss = -torch.log_softmax(logits, dim=-1)[target_token]

    loss.backward()
    optimizer.step()

    if step % 20 == 0:
        prob = torch.softmax(logits.detach(), dim=-1)[target_token].item()
        print(f"Step {step}: loss={loss.item():.4f}, P(Paris)={prob:.4f}")

# 5. Analyze learned rotation
rotation = intervenable.interventions["layer.6.comp.block_output.unit.pos.nunit.1#0"][0]
print(f"Learned rotation shape: {rotation.rotate_layer.weight.shape}")
"""


@pytest.fixture(scope="module")
def tutorial3_dir(request):
    """The shipped demo model where it exists (12 layers, width 128), else conftest's local random GPT-2
    (12 layers, width 64) with an offline word-level tokenizer."""
    import os

    from fxvene.zoo.demo import demo_model_path

    path = demo_model_path()
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    return request.getfixturevalue("tutorial_model_dir")


def _exec_tutorial(code, model_dir, lib="fxvene"):
    code = code.replace("import pyvene as pv", f"import {lib} as pv").replace('"gpt2"', repr(model_dir))
    ns = {}
    exec(compile(code, "<tutorial 3>", "exec"), ns)  # noqa: S102 - the user's tutorial code
    return ns


def test_tutorial_3_runs_as_written(tutorial3_dir, capsys):
    ns = _exec_tutorial(TUTORIAL_3, tutorial3_dir)
    out = capsys.readouterr().out
    steps = re.findall(r"Step (\d+): loss=([0-9.]+), P\(Paris\)=([0-9.]+)", out)
    assert [int(s) for s, _, _ in steps] == [0, 20, 40, 60, 80]
    width = ns["model"].config.n_embd
    assert f"Learned rotation shape: torch.Size([{width}, 64])" in out
    im = ns["intervenable"]
    key = "layer_6_comp_block_output_unit_pos_nunit_1#0"
    assert ns["rotation"] is im.interventions[key]  # the dotted pre-0.1.7 key gives the (intervention, handle) pair
    # source = base: the low-rank swap is the identity, the gradient is exactly zero, nothing is learned
    assert len({loss for _, loss, _ in steps}) == 1
    plain = ns["model"](**ns["base_inputs"]).logits
    assert torch.equal(ns["outputs"].logits, plain)
    assert all(p.grad is not None and not p.grad.any() for p in im.get_trainable_parameters())


def test_tutorial_3_fails_in_pyvene(tutorial3_dir, pyvene):
    """pyvene 0.1.8 flattens the whole (1, seq, d) block output to (1, seq*d) for a distributed
    intervention of embed_dim d and fails with a shape error; fxvene intervenes at every position."""
    code = TUTORIAL_3.replace("range(100)", "range(1)")
    with pytest.raises(RuntimeError, match="shape|size"):
        _exec_tutorial(code, tutorial3_dir, lib="pyvene")


def test_unit_locations_none_applies_at_every_position(gpt2):
    """With no unit_locations a distributed intervention acts on every position of the whole tensor;
    this equals applying it position by position by hand (a forward hook)."""
    torch.manual_seed(0)
    im = pv.IntervenableModel(
        pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(
                    layer=2,
                    component="block_output",
                    intervention_type=pv.LowRankRotatedSpaceIntervention,
                    low_rank_dimension=5,
                )
            ]
        ),
        gpt2,
    )
    iv = im.interventions[im.sorted_keys[0]]
    base, src = _ids(1), _ids(2)
    with torch.no_grad():
        _, out = im(base, [src])
    src_h = _block_output(gpt2, 2, src)

    def hook(mod, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = torch.stack([iv(h[:, p], src_h[:, p]) for p in range(h.shape[1])], dim=1)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    handle = gpt2.transformer.h[2].register_forward_hook(hook)
    try:
        with torch.no_grad():
            ref = gpt2(**base).logits
    finally:
        handle.remove()
    torch.testing.assert_close(out.logits, ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(out.logits, gpt2(**base).logits, atol=1e-3)
