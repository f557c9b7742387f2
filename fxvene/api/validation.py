"""Checks of what a user passes to an IntervenableModel, done before the model is touched or run.

One place per concept: the model (``check_model``), an intervention choice
(``check_intervention_type``, ``check_intervention``), model inputs (``check_inputs``,
also used by ``generate`` and the sweeps). The checks of one call's unit locations, widths and
subspaces are in ``fxvene.api.unit_checks``. Every failure is a ``ValueError`` or ``TypeError``
that names the argument, what was given and what was expected; nothing is changed before it is
raised.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import torch
import torch.nn as nn

from fxvene.graph.errors import clip, known
from fxvene.graph.tracing import TracingError

INPUT_KEYS = (
    "input_ids",
    "inputs_embeds",
    "input_features",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "decoder_input_ids",
    "decoder_attention_mask",
    "pixel_values",
)  # decoder_*: encoder-decoder models (T5); pixel_values: image models (ResNet, ConvNeXt, ViT);
# input_features: speech encoder-decoders (Whisper)
_ID_KEYS = ("input_ids", "token_type_ids", "position_ids", "decoder_input_ids")


class UnsupportedModelError(TracingError, ValueError):
    """No frontend can trace the model: a ``TracingError`` and, as a bad argument, a ``ValueError``."""


# the supported classes are many: a message names two and points to the command that lists them all
_SUPPORTED = "a transformers model such as GPT2LMHeadModel or LlamaForCausalLM (`fxvene components --list` lists all)"


def _shape(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


# ------------------------------------------------------------------------------------ the model


def is_abstract_component(component):
    return isinstance(component, str) and "." not in component and "[" not in component


def check_model(model, representations):
    """Before tracing: ``model`` is a Hugging Face-style model (an ``nn.Module`` with a
    ``config``), and abstract components (``"block_output"``) name a family fxvene maps."""
    from fxvene.models import family_for, why_underived

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a Hugging Face model (torch.nn.Module with a .config), got {type(model).__name__}; "
            f"pass {_SUPPORTED}"
        )
    if getattr(model, "config", None) is None:
        raise TypeError(
            f"model: {type(model).__name__} has no .config, so it is not a Hugging Face model fxvene can wrap; "
            f"pass {_SUPPORTED}"
        )
    fam, _ = family_for(model)
    if fam is None:
        for i, rep in enumerate(representations):
            if is_abstract_component(rep.component):
                why = why_underived(model)
                raise ValueError(
                    f"representations[{i}].component={rep.component!r}: {type(model).__name__} has no component map"
                    + (f" ({clip(why, 90)})" if why else "")
                    + "; use a string component such as 'model.layers[0].mlp.output' (`fxvene components --list`: "
                    "the mapped classes)"
                )
    if not any(p.numel() for p in model.parameters()):
        raise ValueError(f"model: {type(model).__name__} has no parameters; expected a Hugging Face model")


def unsupported(model, err):
    """The error for a model no frontend could trace (``err``: the tracer's report)."""
    todo = "Use a class `fxvene components --list` names, or a model torch.export can trace."
    e = UnsupportedModelError(f"model: {err}" if getattr(err, "hint", None) else f"model: {err}\n{todo}")
    e.attempts = getattr(err, "attempts", {})  # each tracer's whole error
    return e


# ------------------------------------------------------------------------------------ interventions


def _intervention_bases():
    from fxvene import interventions as I

    return (
        I.Intervention,
        I.LambdaIntervention,
        I.LocalistRepresentationIntervention,
        I.DistributedRepresentationIntervention,
    )


def _builtin_names():
    from fxvene import interventions as I

    return sorted(
        n
        for n in dir(I)
        if n.endswith("Intervention") and isinstance(getattr(I, n), type) and issubclass(getattr(I, n), nn.Module)
    )


def _resolve_name(name, what):
    from fxvene import interventions as I
    from fxvene.api.basic_utils import get_type_from_string

    s = name.strip()
    if s.startswith("<class '") and s.endswith("'>"):
        s = s[len("<class '") : -len("'>")]
    try:
        if "." in s:
            return get_type_from_string(s)
        if s in _builtin_names():
            return getattr(I, s)
    except ValueError:
        pass
    usable = [
        n
        for n in _builtin_names()
        if "forward" in vars(getattr(I, n)) and n not in ("Intervention", "LambdaIntervention")
    ]
    raise ValueError(
        f"{what}={name!r} names no intervention class; pass one (e.g. pv.VanillaIntervention) or a built-in's "
        f"name ({known(s, usable, 120)})"
    )


def check_intervention_type(itype, what):
    """``intervention_type``: an Intervention class (or a built-in's name), or a function that
    builds one (pyvene calls it with the representation's fields). Returns the class/function."""
    if isinstance(itype, str):
        itype = _resolve_name(itype, what)
    if isinstance(itype, type):
        if not issubclass(itype, _intervention_bases()):
            raise TypeError(
                f"{what}={itype.__name__}: not an intervention class; expected a subclass of fxvene.Intervention "
                "(e.g. pv.VanillaIntervention) or a function"
            )
        return itype
    if isinstance(itype, nn.Module):
        raise TypeError(
            f"{what}: got an instance of {type(itype).__name__}; intervention_type takes a class "
            "(pass an instance as intervention=...)"
        )
    if isinstance(itype, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)) or (
        callable(itype) and not isinstance(itype, (int, float, bool))
    ):
        return itype
    raise TypeError(
        f"{what}={itype!r} ({type(itype).__name__}): expected an intervention class such as pv.VanillaIntervention"
    )


def check_intervention(iv, what):
    """``intervention``: an Intervention instance or a plain function ``f(base, source)``."""
    if isinstance(iv, types.FunctionType):
        return iv
    if isinstance(iv, type):
        raise TypeError(
            f"{what}: got the class {iv.__name__}; intervention takes an instance (or pass intervention_type="
            f"{iv.__name__})"
        )
    if isinstance(iv, nn.Module) and not isinstance(iv, _intervention_bases()):
        raise TypeError(
            f"{what}: {type(iv).__name__} is a plain nn.Module, not an intervention; subclass "
            "fxvene.Intervention (forward(base, source, subspaces)) or pass a function f(base, source)"
        )
    if not isinstance(iv, nn.Module):
        raise TypeError(f"{what}={iv!r} ({type(iv).__name__}): expected an Intervention instance or a function")
    return iv


_NEEDS = {"AutoencoderIntervention": "latent_dim", "JumpReLUAutoencoderIntervention": "low_rank_dimension"}


def check_fields(rep, itype, i):
    """Fields of ``rep`` that a built-in ``intervention_type`` reads, before it is built."""
    for field in ("low_rank_dimension", "latent_dim"):
        v = getattr(rep, field)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"representations[{i}].{field}={v!r}: expected a positive int")
    part = rep.subspace_partition
    if part is not None and not (
        isinstance(part, (list, tuple))
        and part
        and all(
            isinstance(p, (list, tuple)) and p and all(isinstance(c, int) and not isinstance(c, bool) for c in p)
            for p in part
        )
    ):
        raise TypeError(
            f"representations[{i}].subspace_partition={part!r}: expected a list of [start, end) pairs or of "
            "column-index lists, e.g. [[0, 12], [12, 24]]"
        )
    if not (isinstance(itype, type) and itype.__module__.startswith("fxvene.")):
        return  # a user's class reads what it likes
    name = itype.__name__
    if name == "PCARotatedSpaceIntervention":
        raise ValueError(
            f"representations[{i}].intervention_type=PCARotatedSpaceIntervention needs a fitted PCA (pca, pca_mean, "
            "pca_std), which a representation cannot carry: pass intervention=PCARotatedSpaceIntervention(embed_dim=..., "
            "pca=..., pca_mean=..., pca_std=...) instead"
        )
    if name in _NEEDS and getattr(rep, _NEEDS[name]) is None:
        raise ValueError(f"representations[{i}].{_NEEDS[name]} is required by {name} (got None)")


def check_built(iv, itype, what):
    """What ``intervention_type(**fields)`` returned."""
    if isinstance(iv, types.FunctionType):
        return iv
    if not isinstance(iv, _intervention_bases()):
        name = getattr(itype, "__name__", repr(itype))
        raise TypeError(f"{what}: {name}(...) returned {type(iv).__name__}, not an intervention or a function")
    return iv


# ------------------------------------------------------------------------------------ inputs


def check_inputs(inputs, what, vocab_size=None, need=None):
    """A dict of model inputs (a tokenizer's output) -> (dict without None values, signature).

    ``input_ids`` (integer, (batch, seq), ids in the vocabulary) or ``inputs_embeds``
    (floating, (batch, seq, ...)); ``attention_mask``, ``token_type_ids`` of the same
    (batch, seq); ``position_ids`` (batch or 1, seq). Batch and sequence must not be empty.
    """
    if isinstance(inputs, CheckedInputs):
        return inputs, inputs.signature
    if not (isinstance(inputs, Mapping) or (hasattr(inputs, "keys") and hasattr(inputs, "__getitem__"))):
        raise TypeError(
            f"{what} must be a dict of model inputs (e.g. a tokenizer's output), got {type(inputs).__name__}"
        )
    d = {k: inputs[k] for k in inputs.keys() if inputs[k] is not None}
    unknown = [k for k in d if k not in INPUT_KEYS]
    if unknown:
        raise ValueError(f"{what}: unsupported model inputs {unknown}; fxvene accepts {INPUT_KEYS}")
    for k, v in d.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what}[{k!r}] must be a torch.Tensor, got {type(v).__name__}")
    lead = "input_ids" if "input_ids" in d else "inputs_embeds" if "inputs_embeds" in d else None
    if lead is None and need is None and "pixel_values" in d:
        return _checked_pixels(d, what)
    if lead is None and need is None and "input_features" in d:
        return _checked_features(d, what)
    if lead is None or (need is not None and lead != need):
        raise ValueError(f"{what} needs {need!r}" if need else f"{what} needs 'input_ids' or 'inputs_embeds'")
    if "input_ids" in d and "inputs_embeds" in d:
        raise ValueError(f"{what}: give either 'input_ids' or 'inputs_embeds', not both")
    t = d[lead]
    if lead == "input_ids":
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{what}['input_ids'] must hold integer token ids, got dtype {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{what}['input_ids'] must be a (batch, seq) tensor, got shape {_shape(t)}")
    else:
        if not t.dtype.is_floating_point:
            raise TypeError(f"{what}['inputs_embeds'] must be a floating tensor, got dtype {t.dtype}")
        if t.dim() < 2:
            raise ValueError(
                f"{what}['inputs_embeds'] must be a batched tensor (batch, seq, ...), got shape {_shape(t)}"
            )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what}[{lead!r}] is empty (shape {_shape(t)}); expected at least one example and one token")
    bs = tuple(t.shape[:2])
    for k in ("attention_mask", "token_type_ids"):
        if k in d and tuple(d[k].shape) != bs:
            raise ValueError(f"{what}[{k!r}] has shape {_shape(d[k])}, expected {bs} like {what}[{lead!r}]")
    if "position_ids" in d:
        p = d["position_ids"]
        if p.dim() != 2 or p.shape[1] != bs[1] or p.shape[0] not in (1, bs[0]):
            raise ValueError(f"{what}['position_ids'] has shape {_shape(p)}, expected ({bs[0]} or 1, {bs[1]})")
    for k in _ID_KEYS[1:]:
        if k in d and (d[k].dtype.is_floating_point or d[k].dtype == torch.bool):
            raise TypeError(f"{what}[{k!r}] must be an integer tensor, got dtype {d[k].dtype}")
    if "attention_mask" in d and d["attention_mask"].dtype.is_complex:
        raise TypeError(f"{what}['attention_mask'] must be an integer, bool or float tensor")
    if lead == "input_ids" and vocab_size is not None:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what}['input_ids'] holds token id {bad}, outside the model's vocabulary [0, {vocab_size})"
            )
    if "attention_mask" not in d:
        d["attention_mask"] = torch.ones(bs, dtype=torch.long, device=t.device)
    d = CheckedInputs(d)
    d.signature = tuple(k for k in INPUT_KEYS if k in d)
    return d, d.signature


def _checked_pixels(d, what):
    """An image model's inputs: ``pixel_values`` (floating, (batch, channels, height, width)) alone."""
    t = d["pixel_values"]
    if not t.dtype.is_floating_point:
        raise TypeError(f"{what}['pixel_values'] must be a floating tensor, got dtype {t.dtype}")
    if t.dim() != 4 or 0 in t.shape:
        raise ValueError(f"{what}['pixel_values'] must be a (batch, channels, height, width) tensor, got {_shape(t)}")
    extra = sorted(k for k in d if k != "pixel_values")
    if extra:
        raise ValueError(f"{what}: an image model takes 'pixel_values' alone here, got also {extra}")
    d = CheckedInputs(d)
    d.signature = ("pixel_values",)
    return d, d.signature


def _checked_features(d, what):
    """A speech encoder-decoder's inputs (Whisper): ``input_features`` (floating, (batch, mel bins,
    frames)) and the decoder's ``decoder_input_ids`` / ``decoder_attention_mask``."""
    t = d["input_features"]
    if not t.dtype.is_floating_point:
        raise TypeError(f"{what}['input_features'] must be a floating tensor, got dtype {t.dtype}")
    if t.dim() != 3 or 0 in t.shape:
        raise ValueError(f"{what}['input_features'] must be a (batch, mel bins, frames) tensor, got {_shape(t)}")
    extra = sorted(k for k in d if k not in ("input_features", "decoder_input_ids", "decoder_attention_mask"))
    if extra:
        raise ValueError(f"{what}: 'input_features' goes with 'decoder_input_ids' only here, got also {extra}")
    dec = d.get("decoder_input_ids")
    if dec is not None and (dec.dtype.is_floating_point or dec.dtype == torch.bool or dec.dim() != 2):
        raise TypeError(f"{what}['decoder_input_ids'] must be an integer (batch, seq) tensor, got {dec.dtype}")
    d = CheckedInputs(d)
    d.signature = tuple(k for k in INPUT_KEYS if k in d)
    return d, d.signature


class CheckedInputs(dict):
    """Model inputs ``check_inputs`` has passed (checking them again is a no-op)."""

    signature: tuple = ()


def sequence_length(d, component=None):
    """The positions of a call's inputs: the lead tensor's second dimension, or None for an image
    (its positions, CLS + patches for a ViT, are the model's; they are checked when the graph runs).
    An encoder-decoder's ``component`` picks the stack: a ``decoder_*`` component counts the decoder's
    tokens (its cross-attention keys/values the encoder's), a module path is not checked here."""
    if "decoder_input_ids" in d and component is not None:
        if not is_abstract_component(component):
            return None
        if component.startswith("decoder_") and not _over_encoder(component):
            return d["decoder_input_ids"].shape[1]
    if "pixel_values" in d and component is not None and _over_image(component):
        return None  # a vision tower's patches (LLaVA, BLIP), or BLIP's text-to-image cross-attention keys
    image = ("pixel_values" in d or "input_features" in d) and "input_ids" not in d and "inputs_embeds" not in d
    return None if image else lead_tensor(d).shape[1]


def _over_image(component):
    """A component whose positions are an image's (CLS + patches): the vision tower's, and the keys/values of
    a text stack's cross-attention to the image (BLIP's unprefixed ``cross_attention_*``)."""
    return component.startswith("vision_") or (component.startswith("cross_attention_") and _over_encoder(component))


def _over_encoder(component):
    """A decoder cross-attention's keys/values (and their head views): computed from the encoder's output."""
    _, cross, rest = component.partition("cross_attention_")
    return bool(cross) and rest in ("key_output", "value_output", "head_key_output", "head_value_output")


def lead_tensor(d):
    if "input_ids" in d:
        return d["input_ids"]
    if "inputs_embeds" in d:
        return d["inputs_embeds"]
    return d["input_features"] if "input_features" in d else d["pixel_values"]
