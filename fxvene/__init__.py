"""fxvene: pyvene's API with a compiler engine (torch.fx graph rewriting).

``import fxvene as pv`` and run pyvene 0.1.8 code unchanged.
"""
from fxvene.basic_utils import *  # noqa: F401,F403  (pyvene exports these at top level)
from fxvene.configuration import IntervenableConfig, RepresentationConfig
from fxvene.intervenable import IntervenableModel, IntervenableModelOutput
from fxvene.interventions import (
    AdditionIntervention,
    AutoencoderIntervention,
    BasisAgnosticIntervention,
    BoundlessRotatedSpaceIntervention,
    CollectIntervention,
    ConstantSourceIntervention,
    DistributedRepresentationIntervention,
    Intervention,
    InterventionOutput,
    JumpReLUAutoencoderIntervention,
    LambdaIntervention,
    LocalistRepresentationIntervention,
    LowRankRotatedSpaceIntervention,
    NoiseIntervention,
    PCARotatedSpaceIntervention,
    RotatedSpaceIntervention,
    SharedWeightsTrainableIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
    SkipIntervention,
    SourcelessIntervention,
    SubtractionIntervention,
    TrainableIntervention,
    VanillaIntervention,
    ZeroIntervention,
    _do_intervention_by_swap,
)
from fxvene.demo import demo_model_path, load_demo
from fxvene.tracing import TracingError, trace

__version__ = "0.1.0"
# issue 4: batched sweeps and ROME causal tracing (fxvene/sweep.py)
from fxvene.sweep import causal_trace, patching_sweep, plot_causal_trace  # noqa: E402
