"""What the two toy models share: their config base and the classification loss they compute
from ``config.problem_type``."""

import inspect

import torch
from torch import nn
from transformers import PretrainedConfig


class FieldsConfig(PretrainedConfig):
    """A config whose fields are exactly the named parameters of its subclass's ``__init__`` (the
    signature carries pyvene's field names, order and defaults); ``_keep(locals())`` stores them."""

    def _keep(self, given):
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and param.kind is param.POSITIONAL_OR_KEYWORD:
                setattr(self, name, given[name])


def classification_loss(config, logits, labels, n_classes):
    """pyvene's rule: regression for one class, single-label for integer labels, else multi-label.
    An unset ``problem_type`` is decided from the labels and stored on the config (as HF heads do)."""
    if config.problem_type is None:
        if n_classes == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    kind = config.problem_type
    if kind == "regression":
        if n_classes == 1:
            return nn.functional.mse_loss(logits.squeeze(), labels.squeeze())
        return nn.functional.mse_loss(logits, labels)
    if kind == "single_label_classification":
        return nn.functional.cross_entropy(logits.view(-1, n_classes), labels.view(-1))
    if kind == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(
        f"config.problem_type must be 'regression', 'single_label_classification' or "
        f"'multi_label_classification', got {kind!r}"
    )
