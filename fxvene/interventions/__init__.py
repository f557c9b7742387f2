"""fxvene's intervention classes: ``from fxvene.interventions import VanillaIntervention``.

Names, constructor keywords, parameter and buffer names, initialisation and seeded
outputs are pyvene 0.1.8's, so state dicts and saved directories move between the two.
The code lives in this package, one module per concept (``layers``: the rotations and autoencoder
they learn):

* ``swap``: the subspace swap (which coordinates, interchange/add/subtract/collect);
* ``base``: ``Intervention``, the marker base classes, ``InterventionOutput``, ``LambdaIntervention``;
* ``basic``: swaps, zero, collect, skip and noise in the native basis;
* ``rotated``: learned rotations (DAS, boundless, sigmoid masks, low rank), PCA, the soft boundaries;
* ``autoencoder``: latent-space swaps through an autoencoder or a JumpReLU SAE;
* ``sae``: SAELens-format sparse autoencoders spliced into a site (``load_sae``), features as subspaces.

Where fxvene differs from pyvene, it is a fix or an extension: per-example ``subspaces``
apply per example on unflattened tensors too (pyvene uses their union); ``NoiseIntervention``
takes any number of positions, ``noise_level`` and ``seed``; low-rank per-example subspaces
work without a partition; ``AutoencoderIntervention`` supports ``backward()``;
``JumpReLUAutoencoderIntervention`` accepts ``keep_last_dim``; ``set_source_representation``
works on an intervention built without a constant source.

May import: nothing else of fxvene (torch only): the classes, their layers and the swap helpers live here.
"""

from fxvene.interventions.autoencoder import AutoencoderIntervention, JumpReLUAutoencoderIntervention
from fxvene.interventions.base import (
    BasisAgnosticIntervention,
    ConstantSourceIntervention,
    DistributedRepresentationIntervention,
    Intervention,
    InterventionOutput,
    LambdaIntervention,
    LocalistRepresentationIntervention,
    SharedWeightsTrainableIntervention,
    SourcelessIntervention,
    TrainableIntervention,
)
from fxvene.interventions.basic import (
    AdditionIntervention,
    CollectIntervention,
    NoiseIntervention,
    SkipIntervention,
    SubtractionIntervention,
    VanillaIntervention,
    ZeroIntervention,
)
from fxvene.interventions.layers import AutoencoderLayer, LowRankRotateLayer, RotateLayer, SubspaceLowRankRotateLayer  # noqa: F401
from fxvene.interventions.rotated import (
    BoundlessRotatedSpaceIntervention,
    LowRankRotatedSpaceIntervention,
    PCARotatedSpaceIntervention,
    RotatedSpaceIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
)
from fxvene.interventions.sae import SAEFeatures, SAEIntervention, load_sae
from fxvene.interventions.swap import (
    _can_cast_tensor,
    _can_use_fast,
    _do_intervention_by_swap,
    broadcast_tensor_v1,
    broadcast_tensor_v2,
)

__all__ = [
    "InterventionOutput",
    "Intervention",
    "LocalistRepresentationIntervention",
    "DistributedRepresentationIntervention",
    "TrainableIntervention",
    "ConstantSourceIntervention",
    "SourcelessIntervention",
    "BasisAgnosticIntervention",
    "SharedWeightsTrainableIntervention",
    "ZeroIntervention",
    "CollectIntervention",
    "SkipIntervention",
    "VanillaIntervention",
    "AdditionIntervention",
    "SubtractionIntervention",
    "RotatedSpaceIntervention",
    "BoundlessRotatedSpaceIntervention",
    "SigmoidMaskRotatedSpaceIntervention",
    "SigmoidMaskIntervention",
    "LowRankRotatedSpaceIntervention",
    "PCARotatedSpaceIntervention",
    "NoiseIntervention",
    "AutoencoderIntervention",
    "JumpReLUAutoencoderIntervention",
    "SAEIntervention",
    "SAEFeatures",
    "load_sae",
    "LambdaIntervention",
    "broadcast_tensor_v1",
    "broadcast_tensor_v2",
    "_can_cast_tensor",
    "_can_use_fast",
    "_do_intervention_by_swap",
]

# The classes are fxvene.interventions.X to the outside: str(type(...)) is what a saved
# config records, and loading resolves names in this module.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
