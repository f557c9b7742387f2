"""Saving and loading interventions without pickle.

Layout of a directory written by ``save`` (``IntervenableModel.save``)::

    config.json                      pyvene 0.1.8's layout: representations (positional lists),
                                     intervention_types ("<class '...'>"), mode, sorted_keys,
                                     intervention_dimensions, intervention_constant_sources,
                                     plus fxvene's ``intervention_attributes`` and ``weights_format``
    intkey_{key}.safetensors         one per trainable intervention or constant source
    pytorch_model.safetensors        with include_model=True: the model's grad-enabled parameters

Differences from pyvene 0.1.8, all deliberate:

* Weights are safetensors, never pickle. An orthogonal parametrization (the rotation of the DAS
  family) is stored as the parameter itself (``rotate_layer.weight``), not as its two internal
  tensors (``...parametrizations.weight.original`` and ``...weight.0.base``); loading puts the
  stored matrix back exactly (outputs are bit-for-bit those of the saved model).
* A directory written by pyvene (``config.json`` + ``intkey_*.bin``) loads through
  ``torch.load(weights_only=True)``, which refuses any pickle that would import or call code;
  such a file is reported as a ``ValueError`` naming it.
* Intervention types are resolved through ``fxvene.api.basic_utils.get_type_from_string`` (an
  allow-list of built-in classes), then ``custom_types=[MyIntervention]``, then classes *already
  imported* (a module in ``sys.modules``) that subclass fxvene's ``Intervention`` - e.g.
  ``pyreft.interventions.LoreftIntervention`` once pyreft is imported. Nothing named in a file is
  ever imported.
* An intervention that defines its own ``state_dict`` / ``load_state_dict`` (pyreft's) is saved
  and loaded through them as they are; a ``load_state_dict`` that returns None is trusted.
* Tensors are read onto the CPU and then moved to the model's device (pyvene's
  ``load_intervention`` hard-codes ``cuda:0``).
* Collect / Noise (constant-source interventions without a stored source) load; pyvene looks
  for a weights file that it never wrote.
* ``low_rank_dimension`` / ``latent_dim`` of an intervention given as an instance are written
  into the saved representation, and ``keep_last_dim`` / ``use_fast`` are kept, so such
  interventions can be rebuilt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from torch.nn.utils import parametrize

from fxvene.api.basic_utils import get_type_from_string
from fxvene.api.configuration import EXTENSION_FIELDS, PYVENE_FIELDS, IntervenableConfig, RepresentationConfig
from fxvene.graph.errors import clip, short_path

__all__ = [
    "save",
    "load",
    "save_intervention",
    "load_intervention",
    "intervention_state_dict",
    "load_intervention_state",
    "read_weights",
    "CONFIG_NAME",
    "MODEL_WEIGHTS_NAME",
]


class MissingFileError(FileNotFoundError, ValueError):
    """A directory or weights file the call needs is not there (a ``FileNotFoundError`` and,
    like every other bad argument, a ``ValueError``)."""


CONFIG_NAME = "config.json"
MODEL_WEIGHTS_NAME = "pytorch_model.safetensors"
_PYVENE_MODEL_WEIGHTS_NAME = "pytorch_model.bin"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- tensors


def _parametrized_tensors(module):
    """(module_prefix, module, tensor_name) for every parametrized tensor inside ``module``."""
    out = []
    for name, sub in module.named_modules():
        if parametrize.is_parametrized(sub):
            prefix = f"{name}." if name else ""
            for t in sub.parametrizations.keys():
                out.append((prefix, sub, t))
    return out


def intervention_state_dict(intervention):
    """The intervention's state dict with each parametrized tensor stored as its value.

    For the orthogonal rotations of the DAS family this gives ``rotate_layer.weight`` (the
    orthogonal matrix) instead of ``rotate_layer.parametrizations.weight.original`` and
    ``rotate_layer.parametrizations.weight.0.base``. Tensors are detached CPU copies.
    """
    sd = intervention.state_dict()
    collapsed = {}
    internal = []
    for prefix, mod, t in _parametrized_tensors(intervention):
        inner = f"{prefix}parametrizations.{t}."
        if not any(k.startswith(inner) for k in sd):
            continue  # a state_dict of the class's own making (pyreft's) does not hold the internals
        internal.append(inner)
        with torch.no_grad():
            collapsed[f"{prefix}{t}"] = getattr(mod, t).detach()
    out = {}
    for k, v in sd.items():
        if any(k.startswith(p) for p in internal):
            continue
        out[k] = v
    out.update(collapsed)
    return {k: v.detach().cpu().contiguous().clone() for k, v in out.items() if isinstance(v, torch.Tensor)}


def _assign_parametrized(module, name, value):
    """Make ``getattr(module, name)`` equal ``value`` exactly, keeping the Parameter objects."""
    plist = module.parametrizations[name]
    original = plist.original
    value = value.to(device=original.device, dtype=original.dtype)
    if tuple(value.shape) != tuple(getattr(module, name).shape):
        raise ValueError(
            f"{name}: stored shape {tuple(value.shape)} does not match {tuple(getattr(module, name).shape)}"
        )
    orth_cls = getattr(torch.nn.utils.parametrizations, "_Orthogonal", None)
    orth = plist[0] if len(plist) == 1 else None
    maps = getattr(torch.nn.utils.parametrizations, "_OrthMaps", None)
    if (
        orth_cls is not None
        and isinstance(orth, orth_cls)
        and hasattr(orth, "base")
        and maps is not None
        and orth.orthogonal_map in (maps.matrix_exp, maps.cayley, maps.householder)
    ):
        # The trivialization computes base @ f(original). With `original` = -I (what right_inverse
        # returns) f gives exactly the first k columns of the identity for all three maps
        # (matrix_exp/cayley: A = 0; householder: reflections e_i with the sign of the diagonal),
        # so the weight is exactly `base`'s first k columns. right_inverse itself
        # re-orthogonalizes a non-square value with a QR of [value, randn] (not exact, and it draws
        # from the global RNG); we complete the value to an orthogonal base instead.
        with torch.no_grad():
            q = value.mT if value.shape[-2] < value.shape[-1] else value
            n, k = q.shape[-2], q.shape[-1]
            if n == k:
                base = q.clone()
            else:
                full, _ = torch.linalg.qr(q, mode="complete")
                base = torch.cat([q, full[..., :, k:]], dim=-1)
            neg_id = torch.zeros_like(original)
            neg_id.diagonal(dim1=-2, dim2=-1).fill_(-1.0)
            original.copy_(neg_id)
            if isinstance(orth.base, torch.Tensor) and orth.base.shape == base.shape:
                orth.base.copy_(base)
            else:
                orth.base = base.contiguous()
        return
    with torch.no_grad():  # any other parametrization: its right_inverse
        setattr(module, name, value)


def load_intervention_state(intervention, state, what="intervention"):
    """Load ``state`` (either layout: collapsed ``rotate_layer.weight`` or pyvene's
    ``...parametrizations.weight.original`` / ``...weight.0.base``) into ``intervention``
    in place. Unknown or missing tensors raise ``ValueError`` naming ``what``."""
    state = dict(state)
    internal = []
    for prefix, mod, t in _parametrized_tensors(intervention):
        key = f"{prefix}{t}"
        internal.append(f"{prefix}parametrizations.{t}.")
        if key in state:
            try:
                _assign_parametrized(mod, t, state.pop(key))
            except (ValueError, RuntimeError) as e:
                raise ValueError(f"{what}: cannot load {key!r}: {clip(e, 150)}") from None
            # the internals now hold the stored value; a file that has both layouts is ambiguous
            dup = [k for k in state if k.startswith(internal[-1])]
            if dup:
                raise ValueError(f"{what}: {key!r} is stored both as a value and as internals {dup}")
            internal[-1] = (internal[-1], True)
        else:
            internal[-1] = (internal[-1], False)
    device = _module_device(intervention)
    if "source_representation" in state and "source_representation" not in intervention._buffers:
        intervention.set_source_representation(state.pop("source_representation").clone().to(device))
    own = intervention.state_dict()
    if (
        "interchange_dim" in state
        and "interchange_dim" in own
        and own["interchange_dim"].shape != state["interchange_dim"].shape
    ):
        intervention.set_interchange_dim(state.pop("interchange_dim").clone().to(own["interchange_dim"].device))
    try:
        result = intervention.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{what}: stored tensors do not fit: {clip(e, 150)}") from None
    if isinstance(getattr(intervention, "interchange_dim", None), torch.Tensor) and hasattr(intervention, "_swap_dim"):
        intervention.set_interchange_dim(intervention.interchange_dim)  # refresh its int mirror
    if result is None:  # the class's own loader (pyreft's returns nothing): it decides what fits
        return
    missing, unexpected = result
    assigned = tuple(p for p, done in internal if done)
    missing = [k for k in missing if not k.startswith(assigned)] if assigned else list(missing)
    if missing or unexpected:
        raise ValueError(
            f"{what}: stored weights do not match the intervention (missing {missing}, unexpected {list(unexpected)})"
        )
    # tensors loaded by load_state_dict live where the intervention lives already


def _module_device(module):
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def read_weights(path):
    """Read a weights file onto the CPU without running code.

    ``.safetensors`` through safetensors; ``.bin`` (pyvene's ``torch.save`` files) through
    ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - report which file, whatever the reader says
            raise ValueError(
                f"{short_path(path)}: not a readable safetensors file ({type(e).__name__}: {clip(e, 80)})"
            ) from e
    if path.endswith(".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle.UnpicklingError and friends
            raise ValueError(
                f"{short_path(path)}: refused to load: not a plain tensor file that torch.load(weights_only=True) "
                f"accepts ({type(e).__name__}: {clip(e, 60)}); save weights with safetensors"
            ) from e
        if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise ValueError(f"{short_path(path)}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
        return dict(obj)
    raise ValueError(f"{short_path(path)}: unsupported weights file (expected .safetensors or .bin)")


def _write_weights(tensors, path, metadata=None):
    from safetensors.torch import save_file

    md = {"format": "pt"}
    md.update(metadata or {})
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, path, metadata=md)


def _file_in(directory, name):
    if os.path.basename(name) != name or name in ("", ".", ".."):
        raise ValueError(f"intervention key gives an unsafe file name {name!r}")
    return os.path.join(directory, name)


def _intkey_file(directory, key, ext):
    return _file_in(directory, f"intkey_{key}.{ext}")


def _find_intkey_file(directory, key):
    for ext in ("safetensors", "bin"):
        p = _intkey_file(directory, key, ext)
        if os.path.isfile(p):
            return p
    return None


def _model_device(model):
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------- config


def _type_string(cls):
    return str(cls)


def _has_state(intervention):
    from fxvene.interventions import TrainableIntervention

    return (
        isinstance(intervention, TrainableIntervention)
        or getattr(intervention, "source_representation", None) is not None
        or bool(getattr(intervention, "saves_state", False))  # e.g. SAEFeatures: a collector holding an SAE
    )


def _inferred_fields(intervention):
    """low_rank_dimension / latent_dim an intervention instance was built with."""
    out = {}
    rl = getattr(intervention, "rotate_layer", None)
    if rl is not None and type(intervention).__name__ == "LowRankRotatedSpaceIntervention":
        out["low_rank_dimension"] = int(rl.weight.shape[-1])
    if hasattr(intervention, "W_enc") and isinstance(intervention.W_enc, torch.Tensor):
        out["low_rank_dimension"] = int(intervention.W_enc.shape[-1])
    ae = getattr(intervention, "autoencoder", None)
    if ae is not None and hasattr(ae, "latent_dim"):
        out["latent_dim"] = int(ae.latent_dim)
    return out


def _jsonable(value, what):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} = {value!r} cannot be written to JSON") from None
    return value


def _serialize_representation(rep, intervention, i):
    d = {}
    inferred = _inferred_fields(intervention) if intervention is not None else {}
    for k, v in rep._asdict().items():
        if k == "hidden_source_representation":
            continue
        if k == "source_representation":
            d["hidden_source_representation"] = True if (v is not None or rep.hidden_source_representation) else None
            d[k] = None
        elif k in ("intervention_type", "intervention"):
            d[k] = None
        elif k in inferred and v is None:
            d[k] = inferred[k]
        else:
            d[k] = _jsonable(v, f"representations[{i}].{k}")
    d.setdefault("hidden_source_representation", None)
    # fxvene's extension fields (source_layer, source_component) are written only when set, so
    # a config without them keeps pyvene 0.1.8's 14 positional entries
    fields = PYVENE_FIELDS if all(d[f] is None for f in EXTENSION_FIELDS) else RepresentationConfig._fields
    return [d[f] for f in fields]


def _interchange_dim_json(intervention):
    dim = getattr(intervention, "interchange_dim", None)
    if dim is None:
        return None
    if isinstance(dim, torch.Tensor):
        return dim.tolist()
    return dim


def save(intervenable, save_directory, save_to_hf_hub=False, hf_repo_name="my-awesome-model", include_model=False):
    """Write ``config.json`` and safetensors weights for ``intervenable`` into ``save_directory``."""
    from fxvene.interventions import LambdaIntervention

    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"save_directory must be a path, got {type(save_directory).__name__}")
    save_directory = os.fspath(save_directory)
    keys = list(intervenable.sorted_keys)
    ivs = [intervenable.interventions[k] for k in keys]
    for k, iv in zip(keys, ivs):
        if isinstance(iv, LambdaIntervention) or not isinstance(iv, torch.nn.Module):
            raise TypeError(
                f"intervention {k!r} is a function (LambdaIntervention); only intervention classes can be saved"
            )
    written = getattr(intervenable, "_as_written", {})  # TransformerLens names stay as the config spells them
    reps = [
        _serialize_representation(written.get(k, intervenable.representations[k]), iv, i)
        for i, (k, iv) in enumerate(zip(keys, ivs))
    ]
    config = {
        "representations": reps,
        "intervention_types": [_type_string(type(iv)) for iv in ivs],
        "mode": intervenable.mode,
        "sorted_keys": keys,
        "model_type": str(getattr(intervenable, "model_type", None)),
        "intervention_dimensions": [_interchange_dim_json(iv) for iv in ivs],
        "intervention_constant_sources": [bool(getattr(iv, "is_source_constant", False)) for iv in ivs],
        "intervention_attributes": [
            {
                "keep_last_dim": bool(getattr(iv, "keep_last_dim", False)),
                "use_fast": bool(getattr(iv, "use_fast", False)),
            }
            for iv in ivs
        ],
        "weights_format": "safetensors",
        "fxvene_format_version": FORMAT_VERSION,
    }
    try:
        import transformers

        config["transformers_version"] = transformers.__version__
    except Exception:  # noqa: BLE001
        pass
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"  # fails before anything is written
    os.makedirs(save_directory, exist_ok=True)
    for k, iv in zip(keys, ivs):
        if _has_state(iv):
            _write_weights(
                intervention_state_dict(iv),
                _intkey_file(save_directory, k, "safetensors"),
                {"fxvene_key": k, "intervention_type": _type_string(type(iv))},
            )
    if include_model:
        _save_model_params(intervenable.model, save_directory)
    with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
        f.write(text)
    if save_to_hf_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(hf_repo_name, exist_ok=True)
        api.upload_folder(folder_path=save_directory, repo_id=hf_repo_name, repo_type="model")


def _save_model_params(model, directory):
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    _write_weights(params, os.path.join(directory, MODEL_WEIGHTS_NAME))


def _load_model_params(model, directory):
    path = os.path.join(directory, MODEL_WEIGHTS_NAME)
    if not os.path.isfile(path):
        path = os.path.join(directory, _PYVENE_MODEL_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"include_model=True but {directory!r} has neither {MODEL_WEIGHTS_NAME} nor {_PYVENE_MODEL_WEIGHTS_NAME}"
        )
    sd = read_weights(path)
    own = dict(model.named_parameters())
    unknown = [k for k in sd if k not in own]
    if unknown:
        raise ValueError(f"{short_path(path)}: parameters {unknown[:5]} are not parameters of {type(model).__name__}")
    for k, v in sd.items():  # every shape first: a bad file changes nothing
        if own[k].shape != v.shape:
            raise ValueError(
                f"{short_path(path)}: {k} has shape {tuple(v.shape)}, the model's is {tuple(own[k].shape)}"
            )
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v.to(dtype=own[k].dtype))


def _resolve_type(type_str, custom):
    s = type_str.strip() if isinstance(type_str, str) else type_str
    bare = None
    if isinstance(s, str):
        bare = s[len("<class '") : -len("'>")] if s.startswith("<class '") and s.endswith("'>") else s
        if bare in custom:
            return custom[bare]
    try:
        return get_type_from_string(type_str)
    except ValueError as e:
        cls = _imported_intervention_class(bare) if bare else None
        if cls is None:
            raise ValueError(
                f"{e} (a class of your own: import its module before loading, or pass custom_types=[YourIntervention])"
            ) from None
        return cls


def _imported_intervention_class(dotted):
    """The class ``dotted`` names if its module is already imported and it subclasses fxvene's
    ``Intervention``; None otherwise. Never imports anything."""
    import sys

    from fxvene.interventions import Intervention

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        obj = module
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, type) and issubclass(obj, Intervention):
            return obj
    return None


def _custom_map(custom_types):
    if custom_types is None:
        return {}
    if isinstance(custom_types, Mapping):
        items = list(custom_types.items())
    elif isinstance(custom_types, (list, tuple, set)):
        items = [(f"{c.__module__}.{c.__qualname__}", c) for c in custom_types]
    else:
        raise TypeError("custom_types must be a list of intervention classes or a dict {type string: class}")
    out = {}
    for name, cls in items:
        if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
            raise TypeError(f"custom_types: {cls!r} is not an nn.Module class")
        name = str(name)
        if name.startswith("<class '") and name.endswith("'>"):
            name = name[len("<class '") : -len("'>")]
        out[name] = cls
    return out


def _read_config(load_directory):
    path = os.path.join(load_directory, CONFIG_NAME)
    if not os.path.isdir(load_directory):
        raise MissingFileError(f"load_directory {load_directory!r} is not a directory")
    if not os.path.isfile(path):
        raise MissingFileError(
            f"load_directory {load_directory!r} has no {CONFIG_NAME}; expected a directory "
            "written by IntervenableModel.save (fxvene or pyvene)"
        )
    with open(path) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{short_path(path)}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{short_path(path)}: expected a JSON object")
    for field in ("representations", "intervention_types"):
        if field not in cfg:
            raise ValueError(f"{short_path(path)}: missing {field!r}")
    n = len(cfg["representations"])
    if not isinstance(cfg["intervention_types"], list) or len(cfg["intervention_types"]) != n:
        raise ValueError(f"{short_path(path)}: intervention_types must list one type per representation ({n})")
    for field in ("intervention_dimensions", "intervention_constant_sources"):
        v = cfg.get(field)
        if v is not None and (not isinstance(v, list) or len(v) != n):
            raise ValueError(f"{short_path(path)}: {field} must list one entry per representation ({n})")
    return cfg


def _representation(raw, i):
    if isinstance(raw, dict):
        unknown = [k for k in raw if k not in RepresentationConfig._fields]
        if unknown:
            raise ValueError(f"config.json: representations[{i}] has unknown fields {unknown}")
        return RepresentationConfig(**raw)
    if isinstance(raw, list) and len(raw) <= len(RepresentationConfig._fields):
        return RepresentationConfig(*raw)
    raise ValueError(f"config.json: representations[{i}] must be a list or an object, got {raw!r}")


def load(
    cls,
    load_directory,
    model,
    local_directory=None,
    from_huggingface_hub=False,
    include_model=False,
    custom_types=None,
    **kwargs,
):
    """Rebuild an ``IntervenableModel`` (``cls``, the class that calls this) on ``model`` from a directory
    written by fxvene or by pyvene 0.1.8.

    ``custom_types``: user intervention classes the config may name (a list of classes, or a dict
    from the saved type string to the class). Everything else must be a built-in intervention.
    ``kwargs`` (``tracer``, ``use_fast``) go to the ``IntervenableModel`` constructor.
    """
    from fxvene.interventions import SourcelessIntervention, TrainableIntervention, ZeroIntervention

    if not isinstance(load_directory, (str, os.PathLike)):
        raise TypeError(f"load_directory must be a path, got {type(load_directory).__name__}")
    load_directory = os.fspath(load_directory)
    if not from_huggingface_hub and not os.path.exists(load_directory) and not _hub_like(load_directory):
        raise MissingFileError(
            f"load_directory {load_directory!r} is not a local directory (it does not exist) and not a hub repo id"
        )
    if from_huggingface_hub or not os.path.exists(load_directory):
        try:
            from huggingface_hub import snapshot_download

            load_directory = snapshot_download(
                repo_id=load_directory,
                local_dir=local_directory,
                allow_patterns=[CONFIG_NAME, "*.safetensors", "*.bin"],
            )
        except Exception as e:  # noqa: BLE001
            raise MissingFileError(
                f"load_directory {load_directory!r} is not a local directory and could not be fetched "
                f"from the Hugging Face hub ({type(e).__name__}: {clip(e, 100)})"
            ) from None
    cfg = _read_config(load_directory)
    custom = _custom_map(custom_types)
    types = [_resolve_type(t, custom) for t in cfg["intervention_types"]]
    reps = [_representation(r, i) for i, r in enumerate(cfg["representations"])]
    config = IntervenableConfig(representations=reps, intervention_types=types, mode=cfg.get("mode", "parallel"))
    intervenable = cls(config, model, **kwargs)
    saved_keys = cfg.get("sorted_keys")
    if saved_keys is not None and list(saved_keys) != list(intervenable.sorted_keys):
        raise ValueError(
            f"config.json: sorted_keys {saved_keys} do not match the keys rebuilt on this model {intervenable.sorted_keys}"
        )
    dims = cfg.get("intervention_dimensions") or [None] * len(reps)
    consts = cfg.get("intervention_constant_sources") or [None] * len(reps)
    attrs = cfg.get("intervention_attributes") or [{}] * len(reps)
    device = _model_device(model)
    done = set()
    for i, key in enumerate(intervenable.sorted_keys):
        iv = intervenable.interventions[key]
        if consts[i] is not None:
            iv.is_source_constant = bool(consts[i])
        for a in ("keep_last_dim", "use_fast"):
            if isinstance(attrs[i], dict) and a in attrs[i]:
                setattr(iv, a, bool(attrs[i][a]))
        if dims[i] is not None and hasattr(iv, "set_interchange_dim"):
            iv.set_interchange_dim(dims[i])
        path = _find_intkey_file(load_directory, key)
        wants_source = (
            bool(consts[i])
            and not isinstance(iv, (ZeroIntervention, SourcelessIntervention))
            and bool(reps[i].hidden_source_representation)
        )
        if isinstance(iv, TrainableIntervention) or wants_source or bool(getattr(iv, "saves_state", False)):
            if path is None:
                raise MissingFileError(
                    f"{load_directory!r}: no weights for intervention {key!r} (intkey_{key}.safetensors)"
                )
            state = read_weights(path)
            if wants_source and not isinstance(iv, TrainableIntervention):
                if "source_representation" not in state:
                    raise ValueError(f"{short_path(path)}: no source_representation tensor")
                iv.set_source_representation(state["source_representation"].clone())
            else:
                load_intervention_state(iv, state, what=path)
        if id(iv) not in done:
            done.add(id(iv))
            iv.to(device)
    if include_model:
        _load_model_params(model, load_directory)
    return intervenable


def save_intervention(intervenable, save_directory, include_model=True):
    """Weights only (no config): one safetensors file per trainable intervention, plus the model's
    grad-enabled parameters with ``include_model``."""
    from fxvene.interventions import TrainableIntervention

    save_directory = os.fspath(save_directory)
    os.makedirs(save_directory, exist_ok=True)
    for k in intervenable.sorted_keys:
        iv = intervenable.interventions[k]
        if isinstance(iv, TrainableIntervention):
            _write_weights(
                intervention_state_dict(iv),
                _intkey_file(save_directory, k, "safetensors"),
                {"fxvene_key": k, "intervention_type": _type_string(type(iv))},
            )
    if include_model:
        _save_model_params(intervenable.model, save_directory)


def load_intervention(intervenable, load_directory, include_model=True):
    """Load weights written by ``save_intervention`` (or pyvene's ``intkey_*.bin``) into the
    existing interventions, in place (Parameter objects are kept, so optimizers stay valid)."""
    from fxvene.interventions import TrainableIntervention

    if not isinstance(load_directory, (str, os.PathLike)):
        raise TypeError(f"load_directory must be a path, got {type(load_directory).__name__}")
    load_directory = os.fspath(load_directory)
    if not os.path.isdir(load_directory):
        raise MissingFileError(f"load_directory {load_directory!r} is not a directory")
    states = []
    for k in intervenable.sorted_keys:  # read every file first
        iv = intervenable.interventions[k]
        if isinstance(iv, TrainableIntervention):
            path = _find_intkey_file(load_directory, k)
            if path is None:
                raise MissingFileError(
                    f"{load_directory!r}: no weights for intervention {k!r} (intkey_{k}.safetensors)"
                )
            states.append((iv, read_weights(path), path))
    backups = [(iv, {n: t.detach().clone() for n, t in iv.state_dict().items()}) for iv, _, _ in states]
    try:
        for iv, state, path in states:
            load_intervention_state(iv, state, what=path)
        if include_model:
            _load_model_params(intervenable.model, load_directory)
    except Exception:
        for iv, snap in backups:  # a file that does not fit leaves every intervention as it was
            _restore(iv, snap)
        raise


def _restore(intervention, snapshot):
    own = intervention.state_dict()
    if (
        "interchange_dim" in snapshot
        and "interchange_dim" in own
        and own["interchange_dim"].shape != snapshot["interchange_dim"].shape
    ):
        intervention.set_interchange_dim(snapshot["interchange_dim"])
    intervention.load_state_dict(snapshot, strict=False)
    if hasattr(intervention, "set_interchange_dim") and isinstance(
        getattr(intervention, "interchange_dim", None), torch.Tensor
    ):
        intervention.set_interchange_dim(intervention.interchange_dim)


def _hub_like(name):
    """Whether ``name`` could be a Hugging Face hub repo id (``user/name`` or ``name``)."""
    import re

    return not os.path.isabs(name) and re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) is not None
