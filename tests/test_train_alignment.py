"""pyvene 0.1.8's training loop (issue 23, item 2): ``train_alignment`` / ``eval_alignment`` give pyvene's
losses, metrics and trained weights under the same seeds: the minimal case (2-layer GPT-2, n_embd 16,
LowRankRotatedSpace rank 1 at layer 1 block_output, one batch of 4, ``source_0->base`` positions [[5]] x 4,
one epoch), a longer run through the warm-up schedule pyvene really uses, the model put in eval mode
before the loop, and the bad-input errors."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import fxvene as pv

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2, n_embd=16, n_head=4, vocab_size=50, n_positions=32, resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1
    )
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg).eval()


def _batches(n, seed=0, b=4, seq=8):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append(
            {
                "input_ids": torch.randint(0, 50, (b, seq), generator=g),
                "source_input_ids": torch.randint(0, 50, (b, seq), generator=g),
                "labels": torch.randint(0, 50, (b, seq), generator=g),
                "source_0->base.0.pos": [[5]] * b,
                "source_0->base.1.pos": [[5]] * b,
            }
        )
    return out


def _loss(seen):
    def compute_loss(logits, labels):
        loss = torch.nn.functional.cross_entropy(logits[:, -1], labels[:, -1])
        seen.append(loss.item())
        return loss

    return compute_loss


def _metrics(seen):
    def compute_metrics(preds, labels):
        acc = (preds[0][:, -1].argmax(-1) == labels[0][:, -1]).float().mean().item()
        seen.append(acc)
        return acc

    return compute_metrics


def _build(lib, model):
    torch.manual_seed(1)
    cfg = lib.IntervenableConfig(
        [
            {
                "layer": 1,
                "component": "block_output",
                "low_rank_dimension": 1,
                "intervention_type": lib.LowRankRotatedSpaceIntervention,
            }
        ]
    )
    return lib.IntervenableModel(cfg, model)


def _run(lib, model, train, evals, **kwargs):
    im = _build(lib, model)
    model.train()  # pyvene's loop puts the model in eval mode before it starts
    losses, metrics = [], []
    torch.manual_seed(2)
    im.train_alignment(train, _loss(losses), _metrics(metrics), None, **kwargs)
    assert not model.training
    weights = [p.detach().clone() for p in im.get_trainable_parameters()]
    result = im.eval_alignment(evals, _metrics([]), None)
    return losses, metrics, weights, result


@pytest.mark.parametrize(
    "n_batches,kwargs",
    [
        (1, dict(epochs=1)),  # the minimal case: warm-up 0.1 steps, so the one step has learning rate 0
        (3, dict(epochs=2, lr=0.05, warm_up_steps=0)),  # warm_up_steps is ignored, as in pyvene
        (3, dict(epochs=2, lr=0.05, gradient_accumulation_steps=2)),
    ],
)
def test_train_and_eval_alignment_equal_pyvene(pyvene, gpt2, n_batches, kwargs):
    train, evals = _batches(n_batches), _batches(2, seed=9)
    evals[1] = {k: (v[:2] if isinstance(v, (list, torch.Tensor)) else v) for k, v in evals[1].items()}
    ref = _run(pyvene, gpt2, train, evals, **kwargs)
    got = _run(pv, gpt2, train, evals, **kwargs)
    assert got[0] == pytest.approx(ref[0], abs=1e-6)
    assert got[1] == ref[1]
    assert len(got[0]) == n_batches * int(kwargs["epochs"])
    if n_batches > 1:
        assert got[0][0] != got[0][-1]  # the rotation learned
    for g, r in zip(got[2], ref[2]):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=0)
    assert got[3] == pytest.approx(ref[3], abs=1e-9)


def test_collator_and_locations_as_pyvene_builds_them(pyvene, gpt2):
    """``inputs_collator`` runs on every batch; ``_batch_process_unit_location`` gives pyvene's dict."""
    raw = _batches(1)[0]
    im = _build(pv, gpt2)
    ref = _build(pyvene, gpt2)._batch_process_unit_location(raw)
    assert im._batch_process_unit_location(raw) == ref
    calls = []

    def collate(batch):
        calls.append(1)
        return batch

    im.eval_alignment([raw, raw], lambda p, l: 1.0, collate)
    assert len(calls) == 2


def test_bad_training_input_is_named(gpt2):
    im = _build(pv, gpt2)
    batch = _batches(1)[0]
    with pytest.raises(ValueError, match="source_0->base.1.pos"):
        im.eval_alignment([{k: v for k, v in batch.items() if k != "source_0->base.1.pos"}], lambda p, l: 1.0, None)
    with pytest.raises(ValueError, match="'source_input_ids'"):
        im.eval_alignment([{k: v for k, v in batch.items() if k != "source_input_ids"}], lambda p, l: 1.0, None)
    with pytest.raises(TypeError, match="compute_loss must be callable"):
        im.train_alignment([batch], "loss", lambda p, l: 1.0, None)
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be a positive int"):
        im.train_alignment([batch], _loss([]), _metrics([]), None, gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        im.train_alignment([batch], _loss([]), _metrics([]), None, epochs=1.5)
    with pytest.raises(ValueError, match="eval_dataloader: no batches"):
        im.eval_alignment([], lambda p, l: 1.0, None)
