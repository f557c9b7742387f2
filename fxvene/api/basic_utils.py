"""Helpers pyvene exports at the top level (``pv.set_seed``, ``pv.GET_LOC``, ...).

Same names, signatures and results as pyvene 0.1.8's, except that ``get_type_from_string``
resolves only fxvene's own intervention classes (it never imports a module named in a
file) and ``embed_to_distrib`` raises for a model that is not GPT-2 (pyvene returns None).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fxvene.interventions.rotated import harmonic_sigmoid_boundary, sigmoid_boundary  # pyvene's names

__all__ = [
    "lsm",
    "sm",
    "get_type_from_string",
    "create_directory",
    "embed_to_distrib",
    "set_seed",
    "sigmoid_boundary",
    "harmonic_sigmoid_boundary",
    "count_parameters",
    "random_permutation_matrix",
    "closeness_to_permutation_loss",
    "format_token",
    "top_vals",
    "get_list_depth",
    "get_batch_size",
    "GET_LOC",
]

# (log-)softmax over the vocabulary axis of a (batch, positions, vocab) tensor
lsm = nn.LogSoftmax(dim=2)
sm = nn.Softmax(dim=2)

# ---------------------------------------------------------------- saved type strings

# Modules a saved intervention type may name; each name resolves to fxvene.interventions.X.
ALLOWED_TYPE_MODULES = frozenset(
    {"pyvene", "pyvene.models.interventions", "pyvene.models.modeling_utils", "fxvene", "fxvene.interventions"}
)
ALLOWED_TYPE_NAMES = frozenset(
    {
        "Intervention",
        "TrainableIntervention",
        "ConstantSourceIntervention",
        "SourcelessIntervention",
        "BasisAgnosticIntervention",
        "SharedWeightsTrainableIntervention",
        "LocalistRepresentationIntervention",
        "DistributedRepresentationIntervention",
        "SkipIntervention",
        "VanillaIntervention",
        "AdditionIntervention",
        "SubtractionIntervention",
        "ZeroIntervention",
        "CollectIntervention",
        "NoiseIntervention",
        "RotatedSpaceIntervention",
        "LowRankRotatedSpaceIntervention",
        "BoundlessRotatedSpaceIntervention",
        "SigmoidMaskRotatedSpaceIntervention",
        "SigmoidMaskIntervention",
        "PCARotatedSpaceIntervention",
        "AutoencoderIntervention",
        "JumpReLUAutoencoderIntervention",
        "SAEIntervention",
        "SAEFeatures",
        "LambdaIntervention",
    }
)


def get_type_from_string(type_str: str) -> type:
    """The fxvene class a saved type string names.

    Accepts ``"<class 'pyvene.models.interventions.X'>"``, ``"pyvene.models.interventions.X"``,
    ``"fxvene.interventions.X"``, ``"pyvene.X"`` or ``"fxvene.X"`` for a built-in intervention
    class ``X``; anything else is a ``ValueError``.
    """
    if not isinstance(type_str, str):
        raise ValueError(f"intervention type must be a string, got {type(type_str).__name__}")
    dotted = type_str.strip()
    if dotted.startswith("<class '") and dotted.endswith("'>"):
        dotted = dotted[len("<class '") : -len("'>")]
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"unsupported intervention type string: {type_str!r}")
    if module_name not in ALLOWED_TYPE_MODULES or class_name not in ALLOWED_TYPE_NAMES:
        raise ValueError(
            f"unsupported intervention type string: {type_str!r} "
            "(only fxvene/pyvene built-in intervention classes can be loaded by name)"
        )
    from fxvene import interventions  # imported here: interventions imports this module

    return getattr(interventions, class_name)


# ---------------------------------------------------------------- files, seeds, counting


def create_directory(path: str) -> None:
    """Make ``path`` (and its parents) unless it exists; say which happened."""
    if os.path.exists(path):
        print(f"{path}: already exists")
        return
    os.makedirs(path)
    print(f"{path}: created")


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def count_parameters(model: nn.Module) -> int:
    """How many scalars ``model`` trains (parameters with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- soft masks and permutations


def random_permutation_matrix(n: int) -> torch.Tensor:
    """An ``n x n`` permutation matrix drawn with ``torch.randperm``."""
    return torch.eye(n)[torch.randperm(n)]


def closeness_to_permutation_loss(rotation: torch.Tensor) -> torch.Tensor:
    """0 for a permutation matrix: the mean distance of row and column sums from 1, plus the
    mean of ``r (1 - r)`` over the entries (0 only for entries 0 or 1)."""
    rows_off = torch.abs(rotation.sum(dim=1) - 1.0).mean()
    cols_off = torch.abs(rotation.sum(dim=0) - 1.0).mean()
    not_binary = (rotation * (1 - rotation)).mean()
    return 0.5 * (rows_off + cols_off) + not_binary


# ---------------------------------------------------------------- reading a model's predictions


def embed_to_distrib(model: nn.Module, embed: torch.Tensor, log: bool = False, logits: bool = False) -> torch.Tensor:
    """Project a GPT-2 hidden state onto the vocabulary through the tied embedding ``wte``:
    the logits, or their (log-)softmax over the last axis of a 3-D input."""
    architecture = model.config.architectures[0]
    if "gpt2" not in architecture.lower():
        raise NotImplementedError(f"embed_to_distrib supports GPT-2 models only, got {architecture}")
    with torch.inference_mode():
        scores = torch.matmul(embed, model.wte.weight.t())
        if logits:
            return scores
        return (lsm if log else sm)(scores)


def format_token(tokenizer: Any, tok: int | torch.Tensor) -> str:
    """The decoded token with spaces shown as ``_`` and newlines as ``\\n``."""
    return tokenizer.decode(tok).replace(" ", "_").replace("\n", "\\n")


def top_vals(tokenizer: Any, res: torch.Tensor, n: int = 10, return_results: bool = False):
    """The ``n`` largest entries of a vocabulary distribution as (token, value) pairs:
    returned with ``return_results``, printed one a line otherwise."""
    values, indices = torch.topk(res, n)
    pairs = [(format_token(tokenizer, i.item()), v.item()) for v, i in zip(values, indices)]
    if return_results:
        return pairs
    for token, value in pairs:
        print(f"{token:<20} {value}")


# ---------------------------------------------------------------- nested inputs


def get_list_depth(lst: Any) -> int:
    """How deeply lists nest in ``lst`` (0 for a non-list, 1 for a flat or empty list)."""
    if not isinstance(lst, list):
        return 0
    return 1 + max(map(get_list_depth, lst), default=0)


def get_batch_size(model_input: torch.Tensor | Mapping[str, torch.Tensor]) -> int:
    """The first dimension of a tensor, or of the first tensor in a dict of inputs."""
    if isinstance(model_input, torch.Tensor):
        return model_input.shape[0]
    first = next(iter(model_input.values()))
    return first.shape[0]


def GET_LOC(LOC: Sequence[int], unit: str = "h.pos", batch_size: int = 1) -> list:
    """``unit_locations`` for one (head, position) pair on every example:
    ``[[[[head]] * batch_size, [[position]] * batch_size]]``."""
    if unit != "h.pos":
        raise NotImplementedError(f"GET_LOC builds h.pos locations only, got unit={unit!r}")
    head, position = LOC[0], LOC[1]
    return [[[[head]] * batch_size, [[position]] * batch_size]]
