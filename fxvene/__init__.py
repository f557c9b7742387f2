"""fxvene: pyvene's API with a compiler engine (torch.fx graph rewriting).

``import fxvene as pv`` and run pyvene 0.1.8 code unchanged.

Importing the package is cheap: torch, transformers and the engine load on first use of a
name (PEP 562 module ``__getattr__``), so ``fxvene --help`` and ``from fxvene.zoo.demo import
demo_model_path`` never pay for them. ``pv.IntervenableModel``, ``from fxvene import X`` and
``dir(fxvene)`` behave as with eager imports.
"""

from importlib import import_module as _import_module  # bound here: tests may patch importlib.import_module

from fxvene._version import __version__

# public name -> the submodule that defines it (loaded on first access)
_BASIC_UTILS = (
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
)  # pyvene exports its basic_utils at top level (fxvene.api.basic_utils.__all__; a test keeps them equal)
_INTERVENTIONS = (
    "AdditionIntervention",
    "AutoencoderIntervention",
    "BasisAgnosticIntervention",
    "BoundlessRotatedSpaceIntervention",
    "CollectIntervention",
    "ConstantSourceIntervention",
    "DistributedRepresentationIntervention",
    "Intervention",
    "InterventionOutput",
    "JumpReLUAutoencoderIntervention",
    "LambdaIntervention",
    "LocalistRepresentationIntervention",
    "LowRankRotatedSpaceIntervention",
    "NoiseIntervention",
    "PCARotatedSpaceIntervention",
    "RotatedSpaceIntervention",
    "SharedWeightsTrainableIntervention",
    "SigmoidMaskIntervention",
    "SigmoidMaskRotatedSpaceIntervention",
    "SkipIntervention",
    "SourcelessIntervention",
    "SubtractionIntervention",
    "TrainableIntervention",
    "VanillaIntervention",
    "ZeroIntervention",
    "_do_intervention_by_swap",
)
_MODEL_HELPERS = (
    "create_gpt2",
    "create_gpt2_lm",
    "create_gpt_neo",
    "create_gpt_neox",
    "create_llama",
    "create_olmo",
    "create_gru",
    "create_gru_lm",
    "create_gru_classifier",
    "create_mlp_classifier",
    "GRUConfig",
    "MLPConfig",
)  # pyvene's model helpers (its __init__ exports them); fxvene.zoo.helpers
_LAZY = {
    **{name: "fxvene.api.basic_utils" for name in _BASIC_UTILS},
    **{name: "fxvene.interventions" for name in _INTERVENTIONS},
    "IntervenableConfig": "fxvene.api.configuration",
    "RepresentationConfig": "fxvene.api.configuration",
    "IntervenableModel": "fxvene.api.intervenable",
    "image_token_positions": "fxvene.api.image_tokens",
    "IntervenableModelOutput": "fxvene.api.intervenable",
    "demo_model_path": "fxvene.zoo.demo",
    "load_demo": "fxvene.zoo.demo",
    "TracingError": "fxvene.graph.tracing",
    "trace": "fxvene.graph.tracing",
    "causal_trace": "fxvene.sweeps.sweep",
    "image_patch_trace": "fxvene.sweeps.patch_trace",
    "PatchTraceResult": "fxvene.sweeps.patch_trace",
    "patching_sweep": "fxvene.sweeps.sweep",
    "plot_causal_trace": "fxvene.sweeps.results",
    "SweepResult": "fxvene.sweeps.results",
    "CausalTraceResult": "fxvene.sweeps.results",
    "clear_graph_cache": "fxvene.graph.cache",
    "placement_plan": "fxvene.graph.placement",
    "pipeline_intervenable": "fxvene.sweeps.pipeline",
    "pipeline_model": "fxvene.sweeps.pipeline",
    "PipelineIntervenableModel": "fxvene.sweeps.pipeline",
    "stage_layers": "fxvene.sweeps.pipeline",
    "set_verbosity": "fxvene.graph.progress",
    "build_intervenable_model": "fxvene.api.intervenable",
    "CausalModel": "fxvene.causal.model",
    **{name: "fxvene.zoo.helpers" for name in _MODEL_HELPERS},
    "attribution_patching": "fxvene.methods.attribution",
    "path_patching": "fxvene.methods.path_patching",
    "load_sae": "fxvene.interventions.sae",
    "SAEIntervention": "fxvene.interventions.sae",
    "SAEFeatures": "fxvene.interventions.sae",
    "feature_sweep": "fxvene.sweeps.features",
    "feature_attribution": "fxvene.sweeps.features",
}

__all__ = sorted(n for n in _LAZY if not n.startswith("_")) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fxvene' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
