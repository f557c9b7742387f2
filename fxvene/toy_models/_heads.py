"""The classification loss both toy classifiers compute from ``config.problem_type``."""
import torch
from torch import nn


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
