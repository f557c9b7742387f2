"""More of issue 23 against its references: ``token_type_ids`` in generate (pyvene 0.1.8, which hands them
to HF ``generate``, and HF ``generate`` itself), ``compile=True`` with the model in train mode (a cheap
torch.compile backend; eager outputs and the dropout rate as references), and pyvene's intervention-training
tutorial flow run side by side through both libraries (losses per step and trained weights).
"""

import pytest
import torch
from conftest import make_gpt2 as _make_gpt2

import fxvene as fv

pv = pytest.importorskip("pyvene")

NO_EOS = dict(do_sample=False, eos_token_id=None, pad_token_id=0)


def make_gpt2():
    return _make_gpt2(n_layer=2)  # the same tiny GPT-2 (and graph-cache entries) as test_generate_options


def _typed_base():
    """Two prompts, the second left-padded, with token types 0/1 (GPT-2 embeds them with its token table)."""
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(1, 50, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    types = torch.randint(0, 2, (2, 6), generator=g)
    types[:, -1] = torch.tensor([1, 3])  # HF repeats the last column for every new token
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _add_cfg(lib):
    return {"layer": 1, "component": "mlp_output", "intervention_type": lib.AdditionIntervention}


def _vanilla_cfg(lib):
    return {"layer": 0, "component": "block_output", "intervention_type": lib.VanillaIntervention}


@pytest.fixture(scope="module")
def pair():
    return make_gpt2(), make_gpt2()


# ------------------------------------------------------------------------------------------------ token types


@pytest.mark.parametrize("use_cache", [True, False])
def test_token_type_ids_generate_equals_pyvene(pair, use_cache):
    """An addition on every decode step and a source run (with its own token types) patched into the prompt:
    the tokens of pyvene 0.1.8 (HF generate with the token types and pyvene's hooks), with and without the
    KV cache; the token types change the tokens, so they do reach the graphs."""
    fmodel, pmodel = pair
    base = _typed_base()
    vec = torch.randn(24, generator=torch.Generator().manual_seed(3)) * 2.0
    kw = dict(max_new_tokens=5, use_cache=use_cache, **NO_EOS)
    calls = [
        (_add_cfg, dict(source_representations=vec)),
        (
            _vanilla_cfg,
            dict(
                sources=[{k: v.flip(0) for k, v in base.items()}],
                unit_locations={"sources->base": ([[[5], [5]]], [[[3], [4]]])},
                intervene_on_prompt=True,
            ),
        ),
    ]
    outs = []
    for cfg, call in calls:
        _, fout = fv.IntervenableModel(cfg(fv), fmodel).generate(base, **call, **kw)
        _, pout = pv.IntervenableModel(cfg(pv), pmodel).generate(base, **call, **kw)
        assert torch.equal(fout, pout)
        outs.append(fout)
    untyped = {k: v for k, v in base.items() if k != "token_type_ids"}
    _, plain = pv.IntervenableModel(_add_cfg(pv), pmodel).generate(untyped, source_representations=vec, **kw)
    assert not torch.equal(plain, outs[0])


def test_token_type_ids_collect_equals_hf_generate(pair):
    """Nothing intervened (a collector): HF generate's own tokens with the token types, and the original
    output of output_original_output too."""
    fmodel, _ = pair
    base = _typed_base()
    cfg = {"layer": 1, "component": "mlp_output", "intervention_type": fv.CollectIntervention}
    (orig, _), fout = fv.IntervenableModel(cfg, fmodel).generate(
        base, max_new_tokens=5, output_original_output=True, **NO_EOS
    )
    with torch.no_grad():
        ref = fmodel.generate(**base, max_new_tokens=5, **NO_EOS)
    assert torch.equal(fout, ref) and torch.equal(orig, ref)


# ------------------------------------------------------------------------------------------------ compile, train


def test_compile_in_train_mode_runs_dropout_and_eval_is_unchanged():
    """compile=True with the model in train mode, on torch.compile's cheap "eager" backend (Dynamo captures
    the rewritten graph with its dropout nodes, no code generation): the dropout is live (two calls differ,
    and both differ from eval mode; under one seed the call equals pyvene's train-mode run), and back in eval
    mode the compiled outputs equal pyvene's eager run within 1e-6."""
    from _tiny import make_tiny

    p = 0.1
    model = make_tiny("gpt2", n_layer=1, attn_pdrop=p, resid_pdrop=p, embd_pdrop=p)
    cfg = lambda lib: {"layer": 0, "component": "mlp_output", "intervention_type": lib.AdditionIntervention}  # noqa: E731
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 64, (4, 16), generator=g)
    base = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    call = dict(unit_locations={"base": [[[3]] * 4]}, source_representations=torch.randn(model.config.n_embd))
    fim = fv.IntervenableModel(cfg(fv), model, compile={"backend": "eager"})
    pim = pv.IntervenableModel(cfg(pv), model)

    def run(im, seed=0):
        torch.manual_seed(seed)
        with torch.no_grad():
            return im(base, **call)[1].logits

    ref_eval = run(pim)
    model.train()
    try:
        ref_train, t1, t2 = run(pim), run(fim), run(fim, seed=1)
    finally:
        model.eval()
    ev = run(fim)
    assert not torch.allclose(t1, ref_eval) and not torch.allclose(t1, t2)
    torch.testing.assert_close(t1, ref_train, atol=1e-6, rtol=0)
    torch.testing.assert_close(ev, ref_eval, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ tutorial flow


def _tutorial_run(lib, model, examples, order):
    """pyvene's Intervention_Training tutorial, scaled down: per-example records as ``datasets`` gives them
    with_format("torch") (the last position as ``source_0->base.{0,1}.pos``, subspace 0), torch DataLoaders,
    its collator, loss (shifted cross-entropy, -100 ignored) and metric, a rank-1 DAS direction at the last
    block's output with its dummy subspace partition, then ``train_alignment`` with the tutorial's defaults
    (but few epochs) and ``eval_alignment``."""
    from torch.utils.data import DataLoader

    vocab = model.config.vocab_size
    train = DataLoader([examples[i] for i in order], batch_size=4)
    test = DataLoader(examples, batch_size=4)

    def inputs_collator(inputs):
        for k, v in inputs.items():
            if "->" in k:
                inputs[k] = v.tolist()
            elif "subspace" in k:
                inputs[k] = [v.tolist()]
        return inputs

    losses = []

    def compute_loss(logits, labels):
        loss = torch.nn.CrossEntropyLoss()(logits[..., :-1, :].reshape(-1, vocab), labels[..., 1:].reshape(-1))
        losses.append(loss.item())
        return loss

    def compute_metrics(eval_preds, eval_labels):
        total = correct = 0
        for pred, label in zip(eval_preds, eval_labels):
            hit = label[:, -1] == torch.argmax(pred[:, -2], dim=-1)
            total, correct = total + len(hit), correct + hit.sum().tolist()
        return round(correct / total, 2)

    torch.manual_seed(1)
    rep = lib.RepresentationConfig(
        model.config.n_layer - 1, "block_output", "pos", 1, low_rank_dimension=1, subspace_partition=[[0, 1]]
    )
    cfg = lib.IntervenableConfig(
        model_type=type(model), representations=[rep], intervention_types=lib.LowRankRotatedSpaceIntervention
    )
    im = lib.IntervenableModel(cfg, model)
    im.disable_model_gradients()
    torch.manual_seed(2)
    im.train_alignment(
        train_dataloader=train,
        compute_loss=compute_loss,
        compute_metrics=compute_metrics,
        inputs_collator=inputs_collator,
        epochs=3,
    )
    weights = [p.detach().clone() for p in im.get_trainable_parameters()]
    acc = im.eval_alignment(eval_dataloader=test, compute_metrics=compute_metrics, inputs_collator=inputs_collator)
    return losses, weights, acc


def test_pyvene_intervention_training_tutorial_flow():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=4, vocab_size=50, n_positions=32, resid_pdrop=0.1)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg)  # in train mode: the loop puts it in eval mode, as pyvene's does
    g = torch.Generator().manual_seed(5)
    seq, last = 10, 9
    examples = []
    for _ in range(8):
        labels = torch.full((seq,), -100)
        labels[-1] = int(torch.randint(0, 50, (1,), generator=g))
        ids, src = torch.randint(0, 50, (seq,), generator=g), torch.randint(0, 50, (seq,), generator=g)
        examples.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones(seq, dtype=torch.long),
                "source_input_ids": src,
                "source_attention_mask": torch.ones(seq, dtype=torch.long),
                "labels": labels,
                "source_0->base.0.pos": torch.tensor([last]),
                "source_0->base.1.pos": torch.tensor([last]),
                "subspaces": torch.tensor([0]),
            }
        )
    order = torch.randperm(8, generator=g).tolist()
    ref = _tutorial_run(pv, model, examples, order)
    model.train()
    got = _tutorial_run(fv, model, examples, order)
    assert len(got[0]) == 6 and got[0][0] != got[0][-1]
    assert got[0] == pytest.approx(ref[0], abs=1e-5)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert got[2] == ref[2]
