"""Sparse autoencoders as interventions: SAELens-format SAEs (and Gemma Scope's ``params.npz``) spliced
into a site, their features addressed as ``subspaces``.

``SAEIntervention`` replaces a site's value ``x`` with the SAE's reconstruction, plus the error
term ``x - decode(encode(x))`` unless ``error=False`` (SAELens's ``use_error_term``), so that the
model's outputs are unchanged until a feature is edited. The edit (``edit="ablate" | "clamp" |
"scale" | "set" | "patch"``) acts on the features named by the call's ``subspaces`` (pyvene's
convention for its autoencoder interventions: indices into the latent), else on the SAE's
``features``, else on every feature, at the positions of ``unit_locations`` (every position
without them).

Formulas (``x`` the site's value, in the SAE's dtype; as SAELens defines them):

* centring (TransformerLens models that centred their writing weights): ``mu = mean(x, -1)``,
  ``x <- x - mu``; ``mu`` is added back after decoding;
* input normalisation: ``constant_norm_rescale`` scales ``x`` by ``sqrt(d_in) / |x|``;
  ``layer_norm`` takes ``(x - mean) / (std + 1e-5)`` and decodes as ``y * std + mean``; the other
  settings are identities at inference (their factors are folded into the weights);
* ``apply_b_dec_to_input``: ``x <- x - b_dec``;
* ``pre = x @ W_enc + b_enc``; standard: ``relu(pre)``; JumpReLU: ``relu(pre) * (pre > threshold)``;
  TopK: the ``k`` largest of ``pre`` (times ``|W_dec|`` rows with ``rescale_acts_by_decoder_norm``),
  ReLU'd, the rest 0; gated: ``(x @ W_enc + b_gate > 0) * relu(x @ (W_enc * exp(r_mag)) + b_mag)``;
* ``decode(a) = a @ W_dec + b_dec`` (TopK with ``rescale_acts_by_decoder_norm``: ``a / |W_dec|``).

Gradients: the error term is detached by default (``detach_error=True``), as SAELens computes it
under ``no_grad``; with ``detach_error=False`` gradients also flow through ``x - decode(encode(x))``.

May import: nothing else of fxvene (torch, numpy, safetensors and the standard library).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
import torch.nn as nn

from fxvene.interventions.base import LocalistRepresentationIntervention, TrainableIntervention
from fxvene.interventions.basic import CollectIntervention
from fxvene.interventions.swap import _do_intervention_by_swap

ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")
EDITS = ("ablate", "clamp", "scale", "set", "patch")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening")
CFG_NAME, WEIGHTS_NAME, NPZ_NAME = "cfg.json", "sae_weights.safetensors", "params.npz"
RESIDUAL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
# TransformerLens centres writing weights only for LayerNorm models; these families use RMSNorm
_RMS_NORM_MODELS = ("llama", "gemma", "mistral", "qwen", "olmo", "phi-3", "mixtral", "granite")
_SETTINGS = tuple(
    "architecture d_in d_sae k apply_b_dec_to_input normalize_activations rescale_acts_by_decoder_norm center "
    "hook_name error detach_error edit value features".split()
)


def _check_top_k(top_k, d_sae):
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or not 0 < top_k <= d_sae):
        raise ValueError(f"top_k must be an int in 1..{d_sae} or None, got {top_k!r}")


def _check_edit(edit, value):
    if edit is not None and edit not in EDITS:
        raise ValueError(f"edit must be one of {EDITS} or None, got {edit!r}")
    if edit in ("clamp", "scale", "set") and value is None:
        raise ValueError(f"edit={edit!r} needs value= (a number, or one per feature)")


class SAEIntervention(TrainableIntervention, LocalistRepresentationIntervention):
    """A sparse autoencoder spliced into a site (see the module docstring for the formulas).

    Built by ``load_sae`` from files, or directly with ``d_in`` / ``d_sae`` (the engine's
    ``embed_dim`` / ``low_rank_dimension`` when rebuilt from a saved config) and weights at zero.
    ``encode(x)`` / ``decode(acts)`` are SAELens's; ``set_edit(edit, value, features)`` changes the edit.
    The SAE follows its site: on the first call it moves to the site's device and dtype.
    """

    def __init__(
        self,
        d_in: int | None = None,
        d_sae: int | None = None,
        architecture: str = "standard",
        *,
        k: int | None = None,
        apply_b_dec_to_input: bool = True,
        normalize_activations: str = "none",
        rescale_acts_by_decoder_norm: bool = False,
        center: bool = False,
        hook_name: str | None = None,
        error: bool = True,
        detach_error: bool = True,
        edit: str | None = None,
        value: Any = None,
        features: Any = None,
        **kwargs: Any,
    ) -> None:
        embed_dim = kwargs.pop("embed_dim", None)  # features are chosen by subspaces, not interchange_dim
        super().__init__(**{**kwargs, "keep_last_dim": True})
        d_in = int(embed_dim) if d_in is None and embed_dim is not None else d_in
        if d_sae is None:
            d_sae = kwargs.get("low_rank_dimension")
        if not isinstance(d_in, int) or not isinstance(d_sae, int) or d_in < 1 or d_sae < 1:
            raise ValueError(f"SAEIntervention needs positive ints d_in and d_sae, got d_in={d_in!r}, d_sae={d_sae!r}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if architecture == "topk" and (not isinstance(k, int) or not 0 < k <= d_sae):
            raise ValueError(f"a topk SAE needs k, an int in 1..d_sae={d_sae}, got k={k!r}")
        if normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations must be one of {NORMALIZATIONS}, got {normalize_activations!r}")
        self._build(architecture, d_in, d_sae)
        self.k = k
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.normalize_activations = normalize_activations
        self.rescale_acts_by_decoder_norm = bool(rescale_acts_by_decoder_norm)
        self.center, self.hook_name = bool(center), hook_name
        self.error, self.detach_error = bool(error), bool(detach_error)
        self._ctx = None
        self.set_edit(edit, value, features)

    def _build(self, architecture, d_in, d_sae):
        """(Re)create the parameters of ``architecture`` at zero."""
        for name in list(self._parameters):
            del self._parameters[name]
        self.architecture, self.d_in, self.d_sae = architecture, d_in, d_sae
        names = ["W_enc", "W_dec", "b_dec"]
        names += ["b_gate", "b_mag", "r_mag"] if architecture == "gated" else ["b_enc"]
        names += ["threshold"] if architecture == "jumprelu" else []
        shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        for name in names:
            self.register_parameter(name, nn.Parameter(torch.zeros(shapes.get(name, (d_sae,)))))

    def __str__(self) -> str:
        edit = "" if self.edit is None else f", edit={self.edit!r}"
        return f"SAEIntervention({self.architecture}, {self.d_in}->{self.d_sae}{edit})"

    # ------------------------------------------------------------------ settings

    def set_edit(self, edit: str | None = None, value: Any = None, features: Any = None) -> SAEIntervention:
        """Edit ``features`` (default: the call's ``subspaces``, else all) by ``edit`` with ``value``:
        "ablate" (0), "set" (value), "clamp" (at most value), "scale" (times value), "patch" (the
        source run's activations), or None (no edit). Returns the SAE."""
        _check_edit(edit, value)
        if features is not None:
            features = [int(f) for f in (features.tolist() if isinstance(features, torch.Tensor) else features)]
            bad = [f for f in features if not 0 <= f < self.d_sae]
            if bad:
                raise ValueError(f"features: {bad[0]} is out of range for an SAE of {self.d_sae} features")
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        self.edit, self.value, self.features = edit, value, features
        self.is_source_constant = edit != "patch"  # only patching reads a source run
        return self

    def settings(self) -> dict:
        """The JSON-able settings that rebuild this SAE around its weights."""
        return {name: getattr(self, name) for name in _SETTINGS}

    # the settings travel in the state dict (as JSON bytes), so a saved IntervenableModel rebuilds the SAE
    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(list(json.dumps(self.settings()).encode()), dtype=torch.uint8)

    def set_extra_state(self, state: torch.Tensor) -> None:
        s = json.loads(bytes(state.tolist()).decode())
        if (s["architecture"], s["d_in"], s["d_sae"]) != (self.architecture, self.d_in, self.d_sae):
            self._build(s["architecture"], s["d_in"], s["d_sae"])
        for name in _SETTINGS[3:11]:
            setattr(self, name, s[name])
        self.set_edit(s["edit"], s["value"], s["features"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:  # settings first: they decide which parameters exist
            self.set_extra_state(extra)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ SAELens's encode / decode

    def follow(self, x: torch.Tensor) -> None:
        """Move the SAE to the device of ``x`` and, for a floating ``x``, to its dtype (an SAE lives
        where its site does)."""
        if self.W_enc.device != x.device or (x.is_floating_point() and self.W_enc.dtype != x.dtype):
            self.to(device=x.device, dtype=x.dtype if x.is_floating_point() else None)

    def _norm_in(self, x):
        mu = x.mean(-1, keepdim=True) if self.center else None
        if mu is not None:
            x = x - mu
        scale = shift = None
        if self.normalize_activations == "constant_norm_rescale":
            scale = x.norm(dim=-1, keepdim=True) / math.sqrt(self.d_in)
            x = x / scale
        elif self.normalize_activations == "layer_norm":
            shift = x.mean(-1, keepdim=True)
            scale = (x - shift).std(-1, keepdim=True)
            x = (x - shift) / (scale + 1e-5)
        return x, (mu, scale, shift)

    def encode_with_context(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """``(activations, context)`` of ``x`` (given in the SAE's dtype): the context is what the input's
        centring / normalisation removed (mean, scale, shift; None where unused), for
        ``decode_with_context``. Unlike ``encode``, nothing is kept on the SAE."""
        x, ctx = self._norm_in(x)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        if self.architecture == "gated":
            gate = (x @ self.W_enc + self.b_gate) > 0
            mag = torch.relu(x @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
            return gate.to(mag.dtype) * mag, ctx
        pre = x @ self.W_enc + self.b_enc
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype), ctx
        if self.architecture == "topk":
            if self.rescale_acts_by_decoder_norm:
                pre = pre * self.W_dec.norm(dim=-1)
            vals, idx = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, idx, vals.relu()), ctx
        return torch.relu(pre), ctx

    def decode_with_context(self, acts: torch.Tensor, ctx: tuple) -> torch.Tensor:
        """The reconstruction of ``acts`` with the context ``encode_with_context`` gave for the same
        positions (its tensors may be indexed alike)."""
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            acts = acts / self.W_dec.norm(dim=-1)
        y = acts @ self.W_dec + self.b_dec
        mu, scale, shift = ctx
        if self.normalize_activations == "constant_norm_rescale":
            y = y * scale
        elif self.normalize_activations == "layer_norm":
            y = y * scale + shift
        return y if mu is None else y + mu

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of ``x`` (..., d_in) -> (..., d_sae), in the SAE's dtype. Like SAELens,
        it keeps the input's normalisation for the next ``decode``."""
        acts, self._ctx = self.encode_with_context(x.to(self.W_enc.dtype))
        return acts

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """The reconstruction of feature activations (..., d_sae) -> (..., d_in) (after ``encode``
        when the SAE centres or normalises its input)."""
        ctx = self._ctx
        if ctx is None:
            if self.center or self.normalize_activations in ("constant_norm_rescale", "layer_norm"):
                raise ValueError("decode: this SAE centres or normalises its input; call encode(x) first")
            ctx = (None, None, None)
        return self.decode_with_context(acts, ctx)

    # ------------------------------------------------------------------ the splice

    def _targets(self, acts, source):
        edit, value = self.edit, self.value
        if edit == "ablate":
            return torch.zeros_like(acts)
        if edit == "patch":
            if source is None:
                raise ValueError("edit='patch' needs a source run (sources=...) to read features from")
            return self.encode_with_context(source.to(acts.dtype))[0]
        v = torch.as_tensor(value, dtype=acts.dtype, device=acts.device)
        if v.dim() == 1 and v.numel() != self.d_sae:
            if self.features is None or v.numel() != len(self.features):
                raise ValueError(f"value has {v.numel()} entries; give one number, one per feature or d_sae of them")
            v = torch.zeros(self.d_sae, dtype=acts.dtype, device=acts.device).index_copy(
                0, torch.tensor(self.features, device=acts.device), v
            )
        if edit == "set":
            return v.expand_as(acts)
        if edit == "scale":
            return acts * v
        return torch.minimum(acts, v)  # clamp: at most value

    def _edited(self, acts, source, subspaces):
        if self.edit is None:
            return acts
        if subspaces is None and self.features is not None:
            subspaces = [self.features]
        return _do_intervention_by_swap(acts.clone(), self._targets(acts, source), "interchange", None, subspaces)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        self.follow(base)
        x = base.to(self.W_enc.dtype)
        acts, ctx = self.encode_with_context(x)
        record = getattr(self, "record_features", None)
        if isinstance(record, list):  # feature attribution: the activations as a leaf to differentiate
            acts = acts.detach().requires_grad_(True)
            record.append(acts)
        out = self.decode_with_context(self._edited(acts, source, subspaces), ctx)
        if self.error:
            err = x - self.decode_with_context(acts, ctx)
            out = out + (err.detach() if self.detach_error else err)
        return out.to(base.dtype)

    def collect(self, top_k: int | None = None) -> SAEFeatures:
        """A Collect intervention that returns this SAE's feature activations at its site."""
        return SAEFeatures(self, top_k=top_k)

    # ------------------------------------------------------------------ saving

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``cfg.json`` (SAELens 6's layout, plus fxvene's settings) and ``sae_weights.safetensors``."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        cfg = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": str(self.W_enc.dtype).removeprefix("torch."),
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": "none",
            "metadata": {"hook_name": self.hook_name, "sae_lens_version": "6.0.0"},
            "fxvene": self.settings(),
        }
        if self.architecture == "topk":
            cfg.update(k=self.k, rescale_acts_by_decoder_norm=self.rescale_acts_by_decoder_norm)
        weights = {n: p.detach().cpu().contiguous() for n, p in self.named_parameters()}
        save_file(weights, os.path.join(directory, WEIGHTS_NAME))
        with open(os.path.join(directory, CFG_NAME), "w") as f:
            json.dump(cfg, f, indent=2)


class SAEFeatures(CollectIntervention):
    """Collects an SAE's feature activations at its site: (batch, positions, d_sae), only the
    ``subspaces`` columns when given, or ``(values, indices)`` of the ``top_k`` largest.

    Saved with its SAE (weights and settings) and ``top_k`` by ``IntervenableModel.save``; when
    ``load`` rebuilds it without an SAE, a placeholder of the site's width takes the saved one's
    shape, weights and settings as its state dict is loaded."""

    saves_state = True  # IntervenableModel.save writes its state dict although it trains nothing

    def __init__(self, sae: SAEIntervention | None = None, top_k: int | None = None, **kwargs: Any) -> None:
        embed_dim = kwargs.pop("embed_dim", None)  # the site's width: only for a placeholder SAE
        super().__init__(**kwargs)
        if sae is None and isinstance(embed_dim, int) and embed_dim > 0:
            sae = SAEIntervention(embed_dim, kwargs.get("low_rank_dimension") or 1)
        if not isinstance(sae, SAEIntervention):
            raise TypeError(f"sae must be an SAEIntervention (pv.load_sae), got {type(sae).__name__}")
        _check_top_k(top_k, sae.d_sae)
        self.sae, self.top_k = sae, top_k

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(list(json.dumps({"top_k": self.top_k}).encode()), dtype=torch.uint8)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.top_k = json.loads(bytes(state.tolist()).decode())["top_k"]

    @property
    def hook_name(self) -> str | None:
        """The SAE's hook name, so that ``component=None`` takes the SAE's site here too."""
        return self.sae.hook_name

    def __str__(self) -> str:
        return f"SAEFeatures(top_k={self.top_k})"

    def forward(self, base, source=None, subspaces=None, **kwargs):
        self.sae.follow(base)
        acts = self.sae.encode_with_context(base.to(self.sae.W_enc.dtype))[0]
        if subspaces is not None:
            acts = _do_intervention_by_swap(acts, None, "collect", None, subspaces)
        if self.top_k is not None:
            return tuple(acts.topk(self.top_k, dim=-1))
        return acts


# ---------------------------------------------------------------------- loading


def _centres(meta: dict, hook: str | None) -> bool:
    """Whether an SAE trained on this TransformerLens model saw a centred residual stream: a
    residual-writing hook of a ``HookedTransformer`` loaded with ``center_writing_weights`` (its
    default, also when ``model_from_pretrained_kwargs`` is absent) on a LayerNorm model."""
    if hook is None or not any(hook.endswith("." + h) for h in RESIDUAL_HOOKS):
        return False
    if meta.get("model_class_name", "HookedTransformer") != "HookedTransformer":
        return False
    if any(name in str(meta.get("model_name", "")).lower() for name in _RMS_NORM_MODELS):
        return False
    kwargs = meta.get("model_from_pretrained_kwargs")
    return bool((kwargs or {}).get("center_writing_weights", True)) if kwargs is not None else True


def read_sae_config(cfg: dict) -> tuple[dict, dict]:
    """``(settings, metadata)`` from a SAELens ``cfg.json``: SAELens 6's layout (``hook_name``,
    ``model_name``, ... under ``"metadata"``) or the flat one of SAELens <= 5 (``hook_point``,
    ``activation_fn_str``, boolean ``normalize_activations``)."""
    meta = dict(cfg.get("metadata") or {})
    for key in ("hook_name", "hook_point", "model_name", "model_class_name", "model_from_pretrained_kwargs"):
        if key in cfg and key not in meta:
            meta[key] = cfg[key]
    meta.setdefault("hook_name", meta.get("hook_point"))
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    k = cfg.get("k")
    if act == "topk" and arch == "standard":
        arch, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k", k)
    norm = cfg.get("normalize_activations", "none")
    if isinstance(norm, bool) or norm is None:
        norm = "expected_average_only_in" if norm else "none"
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise ValueError(f"cfg.json: {key} must be an int, got {cfg.get(key)!r}")
    settings = {
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        "architecture": arch,
        "k": k,
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
        "normalize_activations": norm,
        "rescale_acts_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        "hook_name": meta["hook_name"],
    }
    return settings, meta


def _read_npz(path):
    import numpy as np

    with np.load(path) as f:
        arrays = {name: torch.from_numpy(np.asarray(f[name], dtype=np.float32)) for name in f.files}
    need = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    missing = [n for n in need if n not in arrays]
    if missing:
        raise ValueError(f"{os.path.basename(path)}: Gemma Scope params.npz needs {need}; missing {missing}")
    return arrays


def load_sae(
    path: str | os.PathLike,
    *,
    error: bool = True,
    detach_error: bool = True,
    edit: str | None = None,
    value: Any = None,
    features: Any = None,
    center: bool | None = None,
    dtype: torch.dtype | None = None,
) -> SAEIntervention:
    """An ``SAEIntervention`` from a local SAELens directory (``cfg.json`` +
    ``sae_weights.safetensors``) or Gemma Scope's ``params.npz`` (a file, or a directory holding it).

    ``error``: add the error term (outputs unchanged until an edit); ``detach_error``: no gradient
    through it (SAELens). ``edit`` / ``value`` / ``features``: see ``SAEIntervention.set_edit``.
    ``center``: centre the site's value across the model dimension (None: as the SAE's config says,
    see the SAE guide). ``dtype``: the weights' dtype (default: the config's, float32 for npz).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a directory or file path, got {type(path).__name__}")
    path = os.fspath(path)
    npz = path if path.endswith(".npz") else os.path.join(path, NPZ_NAME)
    if os.path.isfile(npz) and not os.path.isfile(os.path.join(path, CFG_NAME)):
        weights = _read_npz(npz)
        settings = {
            "d_in": int(weights["W_enc"].shape[0]),
            "d_sae": int(weights["W_enc"].shape[1]),
            "architecture": "jumprelu",
            "apply_b_dec_to_input": False,
        }
        meta, file_dtype = {}, torch.float32
    else:
        cfg_path, w_path = os.path.join(path, CFG_NAME), os.path.join(path, WEIGHTS_NAME)
        for p in (cfg_path, w_path):
            if not os.path.isfile(p):
                raise ValueError(
                    f"path {path!r}: no {os.path.basename(p)} (expected a SAELens directory or params.npz)"
                )
        with open(cfg_path) as f:
            cfg = json.load(f)
        settings, meta = read_sae_config(cfg)
        from safetensors.torch import load_file

        weights = load_file(w_path)
        extra = weights.pop("scaling_factor", None)
        if extra is not None and not torch.allclose(extra, torch.ones_like(extra)):
            raise ValueError(f"{WEIGHTS_NAME}: a finetuning scaling_factor other than 1 is not supported")
        file_dtype = getattr(torch, str(cfg.get("dtype", "float32")).removeprefix("torch."), torch.float32)
        own = cfg.get("fxvene") or {}
        for key in ("center", "error", "detach_error", "edit", "value", "features"):
            if key in own:
                settings[key] = own[key]
    settings.setdefault("center", _centres(meta, settings.get("hook_name")))
    if center is not None:
        settings["center"] = bool(center)
    settings.update(error=error, detach_error=detach_error)
    if edit is not None or value is not None or features is not None:
        settings.update(edit=edit, value=value, features=features)
    sae = SAEIntervention(**settings)
    sd = dict(sae.named_parameters())
    missing = sorted(set(sd) - set(weights))
    if missing:
        raise ValueError(f"path {path!r}: the {sae.architecture} SAE's weights lack {missing}")
    for name, tensor in sd.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"path {path!r}: {name} has shape {tuple(weights[name].shape)}, expected {tuple(tensor.shape)}"
            )
    with torch.no_grad():
        for name, param in sd.items():
            param.copy_(weights[name])
    return sae.to(dtype or file_dtype)


__all__ = ["SAEIntervention", "SAEFeatures", "load_sae", "read_sae_config"]
