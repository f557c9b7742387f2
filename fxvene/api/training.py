"""pyvene 0.1.8's intervention-training loop: ``train_alignment`` and ``eval_alignment``.

Both read batches of token ids: ``input_ids`` (the base), ``source_input_ids`` (one source),
``labels``, the unit locations under pyvene's batch keys (``"source_0->base.0.pos"`` for the
source side of the first representation, ``".1.pos"`` for its base side; one key per part of the
unit, ``.h`` and ``.pos`` for ``"h.pos"``) and optionally ``subspaces``. Each batch runs the
ordinary intervened forward of ``fxvene.api.intervenable.IntervenableModel`` (fxvene's own
training path: a differentiable rewritten graph).

What the loop does, as pyvene 0.1.8 does it (so the same seeds give the same losses and metrics):

* the model is put in eval mode before the loop (model dropout off; an intervention keeps its own
  mode), whatever ``enable_model_gradients`` left;
* Adam over ``get_trainable_parameters`` at ``lr`` (default 1e-3) unless ``optimizer=`` is given;
* a linear schedule with warm-up (``transformers.get_linear_schedule_with_warmup``) unless
  ``scheduler=`` is given, over ``len(train_dataloader) * epochs`` steps, whose warm-up is always
  10% of those steps: a ``warm_up_steps=`` argument is read and then ignored, as in pyvene. With a
  warm-up the first optimizer step has learning rate 0;
* the loss is divided by ``gradient_accumulation_steps``; the optimizer steps on step 0 and then on
  every multiple of it (with accumulation > 1, not on step 0);
* after each optimizer step the interventions' gradients are cleared (the model's are not) and the
  temperature of boundless-rotation and sigmoid-mask interventions follows a linear schedule from
  50 to 0.1 over the steps (bfloat16 values, as pyvene computes them);
* ``epochs`` defaults to 10 (a positive int: pyvene fails on others); the progress bar shows the loss (2 decimals) and
  what ``compute_metrics`` returned.

``eval_alignment`` runs the batches under ``torch.no_grad()`` in the model's current mode and returns
the batch-size-weighted mean of ``compute_metrics``' results.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm, trange

from fxvene.interventions import (
    BoundlessRotatedSpaceIntervention,
    SigmoidMaskIntervention,
    TrainableIntervention,
)


def batch_unit_locations(intervenable, inputs):
    """pyvene's unit locations of one training batch (``_batch_process_unit_location``): in parallel
    mode ``{"sources->base": (source side, base side)}`` with one entry per representation, the
    i-th read from ``"source_i->base.0.<part>"`` / ``"source_i->base.1.<part>"``; in serial mode one
    pair per representation, under pyvene's own keys (``"source_i->source{i+1}"``, then
    ``"source_last->base"``)."""
    if not isinstance(inputs, dict):
        raise TypeError(f"inputs: each batch must be a dict of tensors, got {type(inputs).__name__}")
    if not any("->" in k for k in inputs):
        raise ValueError(
            "inputs: a batch needs unit locations under pyvene's keys, e.g. 'source_0->base.0.pos' and "
            f"'source_0->base.1.pos'; got keys {sorted(inputs)[:6]}"
        )
    reps = list(intervenable.representations.values())

    def sides(prefix, rep):
        parts = rep.unit.split(".")
        missing = [f"{prefix}.{s}.{p}" for s in (0, 1) for p in parts if f"{prefix}.{s}.{p}" not in inputs]
        if missing:
            raise ValueError(f"inputs: the batch has no {missing[0]!r} (unit {rep.unit!r} of a representation)")
        src = [inputs[f"{prefix}.0.{p}"] for p in parts]
        dst = [inputs[f"{prefix}.1.{p}"] for p in parts]
        return (src[0], dst[0]) if len(parts) == 1 else (src, dst)

    if intervenable.mode == "parallel":
        pairs = [sides(f"source_{i}->base", rep) for i, rep in enumerate(reps)]
        return {"sources->base": ([p[0] for p in pairs], [p[1] for p in pairs])}
    out = {}
    for i, rep in enumerate(reps):
        # pyvene's serial keys: no underscore before the next source's number
        prefix = f"source_{i}->base" if i + 1 == len(reps) else f"source_{i}->source{i + 1}"
        src, dst = sides(prefix, rep)
        out[prefix] = ([src], [dst])
    return out


def _run_batch(intervenable, inputs):
    for name in ("input_ids", "source_input_ids", "labels"):
        if name not in inputs:
            raise ValueError(f"inputs: each batch needs {name!r} (pyvene's training batch keys); got {sorted(inputs)}")
    locations = batch_unit_locations(intervenable, inputs)
    _, out = intervenable(
        {"input_ids": inputs["input_ids"]},
        [{"input_ids": inputs["source_input_ids"]}],
        locations,
        subspaces=inputs.get("subspaces"),
    )
    return out.logits


def _tempered(intervenable, temperature):
    """pyvene's loop anneals only boundless-rotation and sigmoid-mask interventions."""
    for iv in intervenable.interventions.values():
        if isinstance(iv, (BoundlessRotatedSpaceIntervention, SigmoidMaskIntervention)):
            iv.set_temperature(temperature)


def _clear_intervention_grads(intervenable):
    for iv in intervenable.interventions.values():
        if isinstance(iv, TrainableIntervention):
            iv.zero_grad()


def _check_callables(**named):
    for name, fn in named.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


class AlignmentTraining:
    """``train_alignment`` / ``eval_alignment`` of ``fxvene.api.intervenable.IntervenableModel``
    (a mixin)."""

    def train_alignment(self, train_dataloader, compute_loss, compute_metrics, inputs_collator, **kwargs):
        """Train the interventions on ``train_dataloader`` with pyvene 0.1.8's loop (module docstring).
        ``kwargs``: ``lr``, ``epochs``, ``gradient_accumulation_steps``, ``optimizer``, ``scheduler``
        (``warm_up_steps`` is accepted and, as in pyvene, ignored). Returns None."""
        _check_callables(compute_loss=compute_loss, compute_metrics=compute_metrics, inputs_collator=inputs_collator)
        from transformers import get_linear_schedule_with_warmup

        lr = kwargs.get("lr", 1e-3)
        epochs = kwargs.get("epochs", 10)
        accumulate = kwargs.get("gradient_accumulation_steps", 1)
        if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
            raise ValueError(f"gradient_accumulation_steps must be a positive int, got {accumulate!r}")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        total = int(len(train_dataloader) * epochs)
        optimizer = kwargs.get("optimizer")
        if optimizer is None:
            optimizer = torch.optim.Adam([{"params": self.get_trainable_parameters()}], lr=lr)
        scheduler = kwargs.get("scheduler")
        if scheduler is None:  # the warm-up pyvene really uses: 10% of the steps
            scheduler = get_linear_schedule_with_warmup(
                optimizer, num_warmup_steps=0.1 * total, num_training_steps=total
            )
        temperatures = torch.linspace(50.0, 0.1, len(train_dataloader) * epochs).to(torch.bfloat16)
        temperatures = temperatures.to(self.get_device())

        self.model.eval()  # as pyvene: the loop runs without model dropout
        bar = trange(0, int(epochs), desc="Epoch")
        step = 0
        for _ in bar:
            for inputs in train_dataloader:
                if inputs_collator is not None:
                    inputs = inputs_collator(inputs)
                logits = _run_batch(self, inputs)
                metrics = compute_metrics([logits], [inputs["labels"]])
                loss = compute_loss(logits, inputs["labels"])
                bar.set_postfix({"loss": round(loss.item(), 2), "acc": metrics})
                if accumulate > 1:
                    loss = loss / accumulate
                loss.backward()
                if step % accumulate == 0 and not (accumulate > 1 and step == 0):
                    optimizer.step()
                    scheduler.step()
                    _clear_intervention_grads(self)
                    _tempered(self, temperatures[step])
                step += 1

    def eval_alignment(self, eval_dataloader, compute_metrics, inputs_collator, **kwargs):
        """Run ``eval_dataloader`` without gradients; the batch-size-weighted mean of ``compute_metrics``
        (pyvene 0.1.8's ``eval_alignment``)."""
        _check_callables(compute_metrics=compute_metrics, inputs_collator=inputs_collator)
        values, weights = [], []
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        with torch.no_grad():
            for inputs in tqdm(eval_dataloader, desc="Evaluating", leave=False):
                if inputs_collator is not None:
                    inputs = inputs_collator(inputs)
                logits = _run_batch(self, inputs)
                values.append(compute_metrics([logits], [inputs["labels"]]))
                weights.append(inputs["input_ids"].shape[0])
        if not weights:
            raise ValueError("eval_dataloader: no batches to evaluate")
        return sum(v * w for v, w in zip(values, weights)) / sum(weights)

    def _batch_process_unit_location(self, inputs):
        """pyvene's name for ``batch_unit_locations`` (tutorial code calls it)."""
        return batch_unit_locations(self, inputs)


__all__ = ["AlignmentTraining", "batch_unit_locations"]
