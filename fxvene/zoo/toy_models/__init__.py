"""pyvene 0.1.8's small research models, written for fxvene: an MLP classifier and a GRU.

Same config fields, module names, parameter names and initialisation order as pyvene's, so
``torch.manual_seed(s)`` followed by the same constructor gives the same weights and outputs.
The class names are pyvene's too, so fxvene's component maps (``models/mlp.py``,
``models/gru.py``) cover pyvene-built instances as well.
"""

from fxvene.zoo.toy_models.gru import (
    GRUCell,
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    GRUModelOutput,
    GRUPreTrainedModel,
)
from fxvene.zoo.toy_models.mlp import MLPBlock, MLPConfig, MLPForClassification, MLPModel, MLPModelOutput

__all__ = [
    "GRUCell",
    "GRUConfig",
    "GRUForClassification",
    "GRULMHeadModel",
    "GRUModel",
    "GRUModelOutput",
    "GRUPreTrainedModel",
    "MLPBlock",
    "MLPConfig",
    "MLPForClassification",
    "MLPModel",
    "MLPModelOutput",
]
