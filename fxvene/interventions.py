# Ported from pyvene 0.1.8 (pyvene/models/{interventions,intervention_utils,modeling_utils}.py, Apache-2.0, Stanford NLP).
"""Intervention classes, pyvene-0.1.8 compatible.

Formulas, initialisation, parameter/buffer names and constructor contract follow
pyvene 0.1.8 exactly (same ``torch.manual_seed`` -> same state dict and outputs).
Deliberate differences from pyvene, all strict bug fixes or extensions:

* ``_do_intervention_by_swap``: when ``subspaces`` rows differ (and ``use_fast`` is not
  set) each example gets its own index set. pyvene applies the union over the batch to
  every example for non-flattened (>=3-D) tensors (pyvene reference §10.5).
* ``NoiseIntervention`` works for any number of positions (pyvene: exactly 4), accepts
  ``noise_level`` as well as pyvene's misspelled ``noise_leve``, and a ``seed`` kwarg.
* ``LowRankRotatedSpaceIntervention``: per-example subspaces without a
  ``subspace_partition`` select columns directly instead of failing an assert.
* ``JumpReLUAutoencoderIntervention`` tolerates ``keep_last_dim`` among the kwargs.
* ``AutoencoderIntervention`` supports ``backward()`` (pyvene modifies the ReLU output in
  place, so autograd raises); forward values are unchanged.
* ``set_source_representation`` works on an intervention built without one (pyvene: KeyError).
"""
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from transformers.utils import ModelOutput

from .basic_utils import sigmoid_boundary
from .layers import AutoencoderLayer, LowRankRotateLayer, RotateLayer, SubspaceLowRankRotateLayer  # noqa: F401

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
    "LambdaIntervention",
    "broadcast_tensor_v1",
    "broadcast_tensor_v2",
    "_can_cast_tensor",
    "_can_use_fast",
    "_do_intervention_by_swap",
]


# --------------------------------------------------------------------------- helpers


def broadcast_tensor_v1(x, target_shape):
    """Broadcast ``x`` (last dim d) to ``target_shape`` (last dim d)."""
    if target_shape[-1] != x.shape[-1]:
        raise ValueError("The last dimension of target_shape must match the size of x")
    reshape_shape = [1] * (len(target_shape) - 1) + [x.shape[-1]]
    return x.view(*reshape_shape).expand(*target_shape)


def broadcast_tensor_v2(x, target_shape):
    if len(target_shape) < 1:
        raise ValueError("Target shape must have at least one dimension")
    return x.expand(*target_shape[:-1], x.shape[-1])


def _can_cast_tensor(subspaces):
    try:
        torch.tensor(subspaces)
    except Exception:
        return False
    return True


def _can_use_fast(subspaces):
    """True iff ``subspaces`` is a rectangular 2-level list whose rows are all equal."""
    tensorfiable = True
    row_same_val = False
    try:
        subspaces = torch.tensor(subspaces)
        row_same_val = torch.all(subspaces == subspaces[0], axis=1).all()
    except Exception:
        tensorfiable = False
    return row_same_val and tensorfiable


def _render_indices(subspace, subspace_partition):
    if subspace_partition is None:
        return subspace
    indices = []
    for sid in subspace:
        indices.extend(subspace_partition[sid])
    return indices


def _do_intervention_by_swap(
    base,
    source,
    mode="interchange",
    interchange_dim=None,
    subspaces=None,
    subspace_partition=None,
    use_fast=False,
):
    """The basic do function that guards interventions (modifies ``base`` in place).

    Same as pyvene's, except that when the rows of ``subspaces`` differ (and ``use_fast``
    is False) each example ``i`` gets exactly ``subspaces[i]``. pyvene applies the union
    over the batch to every example when ``base`` has a position axis (§10.5).
    With ``use_fast=True`` row 0 is used for every example, as in pyvene.
    """
    if mode == "collect":
        assert source is None
    else:
        # auto broadcast
        if base.shape != source.shape:
            try:
                source = broadcast_tensor_v1(source, base.shape)
            except Exception:
                raise ValueError(
                    f"source with shape {source.shape} cannot be broadcasted "
                    f"into base with shape {base.shape}."
                )
    # no subspaces: swap the first interchange_dim coordinates
    if subspaces is None:
        if mode == "interchange":
            base[..., :interchange_dim] = source[..., :interchange_dim]
        elif mode == "add":
            base[..., :interchange_dim] += source[..., :interchange_dim]
        elif mode == "subtract":
            base[..., :interchange_dim] -= source[..., :interchange_dim]
        elif mode == "collect":
            return base[..., :interchange_dim]  # return without side-effect
        return base

    if use_fast or _can_use_fast(subspaces):
        # one index set for the whole batch
        sel_subspace_indices = _render_indices(subspaces[0], subspace_partition)
        pad_idx = torch.arange(base.shape[-2]).unsqueeze(dim=-1).to(base.device)
        if mode == "interchange":
            base[..., pad_idx, sel_subspace_indices] = source[..., pad_idx, sel_subspace_indices]
        elif mode == "add":
            base[..., pad_idx, sel_subspace_indices] += source[..., pad_idx, sel_subspace_indices]
        elif mode == "subtract":
            base[..., pad_idx, sel_subspace_indices] -= source[..., pad_idx, sel_subspace_indices]
        elif mode == "collect":
            return base[..., pad_idx, sel_subspace_indices]  # return without side-effect
        return base

    # per-example index sets
    collect_base = []
    for example_i in range(len(subspaces)):
        sel_subspace_indices = _render_indices(subspaces[example_i], subspace_partition)
        if mode == "interchange":
            base[example_i, ..., sel_subspace_indices] = source[example_i, ..., sel_subspace_indices]
        elif mode == "add":
            base[example_i, ..., sel_subspace_indices] += source[example_i, ..., sel_subspace_indices]
        elif mode == "subtract":
            base[example_i, ..., sel_subspace_indices] -= source[example_i, ..., sel_subspace_indices]
        elif mode == "collect":
            collect_base += [base[example_i, ..., sel_subspace_indices]]
    if mode == "collect":
        return torch.stack(collect_base, dim=0)  # return without side-effect
    return base


# --------------------------------------------------------------------------- outputs / bases


@dataclass
class InterventionOutput(ModelOutput):
    """Output of an intervention that also exposes a latent (e.g. an autoencoder)."""

    output: Optional[Any] = None
    latent: Optional[Any] = None


class Intervention(torch.nn.Module):
    """Intervention the original representations."""

    def __init__(self, **kwargs):
        super().__init__()
        self.trainable = False
        self.is_source_constant = False

        self.keep_last_dim = kwargs["keep_last_dim"] if "keep_last_dim" in kwargs else False
        self.use_fast = kwargs["use_fast"] if "use_fast" in kwargs else False
        self.subspace_partition = (
            kwargs["subspace_partition"] if "subspace_partition" in kwargs else None
        )
        # turn [start, end) pairs into explicit index lists
        if self.subspace_partition is not None:
            expanded_subspace_partition = []
            for subspace in self.subspace_partition:
                if len(subspace) == 2 and isinstance(subspace[0], int):
                    expanded_subspace_partition.append(list(range(subspace[0], subspace[1])))
                else:
                    # it could be discrete indices.
                    expanded_subspace_partition.append(subspace)
            self.subspace_partition = expanded_subspace_partition

        if "embed_dim" in kwargs and kwargs["embed_dim"] is not None:
            self.register_buffer("embed_dim", torch.tensor(kwargs["embed_dim"]))
            self.register_buffer("interchange_dim", torch.tensor(kwargs["embed_dim"]))
            self.__dict__["_fxv_dim"] = int(kwargs["embed_dim"])
        else:
            self.embed_dim = None
            self.interchange_dim = None

        if "source_representation" in kwargs and kwargs["source_representation"] is not None:
            self.is_source_constant = True
            self.register_buffer("source_representation", kwargs["source_representation"])
        else:
            if (
                "hidden_source_representation" in kwargs
                and kwargs["hidden_source_representation"] is not None
            ):
                self.is_source_constant = True
            else:
                self.source_representation = None

    def set_source_representation(self, source_representation):
        self.is_source_constant = True
        if "source_representation" not in self._buffers and hasattr(self, "source_representation"):
            # pyvene 0.1.8 raises KeyError here because the ctor set a plain None attribute
            delattr(self, "source_representation")
        self.register_buffer("source_representation", source_representation)

    def set_interchange_dim(self, interchange_dim):
        if not isinstance(interchange_dim, torch.Tensor):
            # Convert integer or list into torch.Tensor.
            self.interchange_dim = torch.tensor(interchange_dim)
        else:
            self.interchange_dim = interchange_dim
        d = self.interchange_dim
        self.__dict__["_fxv_dim"] = int(d) if isinstance(d, torch.Tensor) and d.dim() == 0 else None

    def _swap_dim(self):
        """``interchange_dim`` for the swap: a Python int where it is a scalar. Slicing with a tensor
        bound calls ``.item()``, a graph break under ``torch.compile``; the int is refreshed on every
        eager call and by ``set_interchange_dim``."""
        d = self.interchange_dim
        if isinstance(d, torch.Tensor) and d.dim() == 0:
            if torch.compiler.is_compiling():
                cached = self.__dict__.get("_fxv_dim")
                return d if cached is None else cached
            self.__dict__["_fxv_dim"] = int(d)
            return self.__dict__["_fxv_dim"]
        return d

    @abstractmethod
    def forward(self, base, source, subspaces=None):
        pass


class LocalistRepresentationIntervention(torch.nn.Module):
    """Localist representation (receives the un-flattened tensor)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.is_repr_distributed = False


class DistributedRepresentationIntervention(torch.nn.Module):
    """Distributed representation."""

    def __init__(self, **kwargs):
        super().__init__()
        self.is_repr_distributed = True


class TrainableIntervention(Intervention):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.trainable = True
        self.is_source_constant = False

    def tie_weight(self, linked_intervention):
        pass


class ConstantSourceIntervention(Intervention):
    """Constant source."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.is_source_constant = True


class SourcelessIntervention(Intervention):
    """No source."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.is_source_constant = True


class BasisAgnosticIntervention(Intervention):
    """Intervention that will modify its basis in a uncontrolled manner."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.basis_agnostic = True


class SharedWeightsTrainableIntervention(TrainableIntervention):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.shared_weights = True


# --------------------------------------------------------------------------- localist / swap


class ZeroIntervention(ConstantSourceIntervention, LocalistRepresentationIntervention):
    """Zero-out activations."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return _do_intervention_by_swap(
            base,
            torch.zeros_like(base),
            "interchange",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
            use_fast=self.use_fast,
        )

    def __str__(self):
        return "ZeroIntervention()"


class CollectIntervention(ConstantSourceIntervention):
    """Collect activations: returns ``base[..., :interchange_dim]`` (or the subspace columns)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return _do_intervention_by_swap(
            base,
            source,
            "collect",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
            use_fast=self.use_fast,
        )

    def __str__(self):
        return "CollectIntervention()"


class SkipIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Skip the current intervening layer's computation (source is the module input)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def forward(self, base, source, subspaces=None, **kwargs):
        return _do_intervention_by_swap(
            base,
            source,
            "interchange",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
            use_fast=self.use_fast,
        )

    def __str__(self):
        return "SkipIntervention()"


class VanillaIntervention(Intervention, LocalistRepresentationIntervention):
    """Interchange: ``base[..., :k] = source[..., :k]``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def forward(self, base, source, subspaces=None, **kwargs):
        return _do_intervention_by_swap(
            base,
            source if self.source_representation is None else self.source_representation,
            "interchange",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
            use_fast=self.use_fast,
        )

    def __str__(self):
        return "VanillaIntervention()"


class AdditionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Activation addition: ``base[..., :k] += source[..., :k]``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def forward(self, base, source, subspaces=None, **kwargs):
        return _do_intervention_by_swap(
            base,
            source if self.source_representation is None else self.source_representation,
            "add",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
            use_fast=self.use_fast,
        )

    def __str__(self):
        return "AdditionIntervention()"


class SubtractionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Activation subtraction: ``base[..., :k] -= source[..., :k]``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def forward(self, base, source, subspaces=None, **kwargs):
        return _do_intervention_by_swap(
            base,
            source if self.source_representation is None else self.source_representation,
            "subtract",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
            use_fast=self.use_fast,
        )

    def __str__(self):
        return "SubtractionIntervention()"


# --------------------------------------------------------------------------- rotated spaces


class RotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Interchange in a learned orthogonal basis: ``swap(bR, sR) R^T``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        rotate_layer = RotateLayer(self.embed_dim)
        self.rotate_layer = torch.nn.utils.parametrizations.orthogonal(rotate_layer)

    def forward(self, base, source, subspaces=None, **kwargs):
        rotated_base = self.rotate_layer(base)
        rotated_source = self.rotate_layer(source)
        rotated_base = _do_intervention_by_swap(
            rotated_base,
            rotated_source,
            "interchange",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
            use_fast=self.use_fast,
        )
        output = torch.matmul(rotated_base, self.rotate_layer.weight.T)
        return output.to(base.dtype)

    def __str__(self):
        return "RotatedSpaceIntervention()"


class BoundlessRotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Interchange in the rotated space with a learned sigmoid boundary mask.

    Compatibility note: as in pyvene 0.1.8, ``temperature`` is an ``nn.Parameter`` with
    ``requires_grad=True`` (so it appears in ``parameters()`` and state dicts); callers
    normally anneal it with ``set_temperature`` rather than train it.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        rotate_layer = RotateLayer(self.embed_dim)
        self.rotate_layer = torch.nn.utils.parametrizations.orthogonal(rotate_layer)
        self.intervention_boundaries = torch.nn.Parameter(torch.tensor([0.5]), requires_grad=True)
        self.temperature = torch.nn.Parameter(torch.tensor(50.0))
        self.intervention_population = torch.nn.Parameter(
            torch.arange(0, self.embed_dim), requires_grad=False
        )

    def get_boundary_parameters(self):
        return self.intervention_boundaries

    def get_temperature(self):
        return self.temperature

    def set_temperature(self, temp: torch.Tensor):
        self.temperature.data = temp

    def set_intervention_boundaries(self, intervention_boundaries):
        self.intervention_boundaries = torch.nn.Parameter(
            torch.tensor([intervention_boundaries]), requires_grad=True
        )

    def forward(self, base, source, subspaces=None, **kwargs):
        batch_size = base.shape[0]
        rotated_base = self.rotate_layer(base)
        rotated_source = self.rotate_layer(source)
        intervention_boundaries = torch.clamp(self.intervention_boundaries, 1e-3, 1)
        boundary_mask = sigmoid_boundary(
            self.intervention_population.repeat(batch_size, 1),
            0.0,
            intervention_boundaries[0] * int(self.embed_dim),
            self.temperature,
        )
        boundary_mask = torch.ones(batch_size, device=base.device).unsqueeze(dim=-1) * boundary_mask
        boundary_mask = boundary_mask.to(rotated_base.dtype)
        rotated_output = (1.0 - boundary_mask) * rotated_base + boundary_mask * rotated_source
        output = torch.matmul(rotated_output, self.rotate_layer.weight.T)
        return output.to(base.dtype)

    def __str__(self):
        return "BoundlessRotatedSpaceIntervention()"


class SigmoidMaskRotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Interchange in the rotated space with per-dimension sigmoid masks.

    Compatibility note: ``temperature`` is an ``nn.Parameter`` as in pyvene 0.1.8.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        rotate_layer = RotateLayer(self.embed_dim)
        self.rotate_layer = torch.nn.utils.parametrizations.orthogonal(rotate_layer)
        # boundary masks are initialized to close to 1
        self.masks = torch.nn.Parameter(torch.tensor([100.0] * self.embed_dim), requires_grad=True)
        self.temperature = torch.nn.Parameter(torch.tensor(50.0))

    def get_boundary_parameters(self):
        # pyvene 0.1.8 returns a non-existent attribute here (AttributeError); kept as is.
        return self.intervention_boundaries

    def get_temperature(self):
        return self.temperature

    def set_temperature(self, temp: torch.Tensor):
        self.temperature.data = temp

    def forward(self, base, source, subspaces=None, **kwargs):
        batch_size = base.shape[0]
        rotated_base = self.rotate_layer(base)
        rotated_source = self.rotate_layer(source)
        boundary_mask = torch.sigmoid(self.masks / self.temperature)
        boundary_mask = torch.ones(batch_size, device=base.device).unsqueeze(dim=-1) * boundary_mask
        boundary_mask = boundary_mask.to(rotated_base.dtype)
        rotated_output = (1.0 - boundary_mask) * rotated_base + boundary_mask * rotated_source
        output = torch.matmul(rotated_output, self.rotate_layer.weight.T)
        return output.to(base.dtype)

    def __str__(self):
        return "SigmoidMaskRotatedSpaceIntervention()"


class SigmoidMaskIntervention(TrainableIntervention, LocalistRepresentationIntervention):
    """Interchange in the native basis with a sigmoid mask: ``(1-m) b + m s``.

    Compatibility note: ``temperature`` is an ``nn.Parameter`` as in pyvene 0.1.8, but (as
    there, where it goes through ``torch.tensor(...)``) it is detached in ``forward`` and so
    receives no gradient.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mask = torch.nn.Parameter(torch.zeros(self.embed_dim), requires_grad=True)
        self.temperature = torch.nn.Parameter(torch.tensor(0.01))

    def get_temperature(self):
        return self.temperature

    def set_temperature(self, temp: torch.Tensor):
        self.temperature.data = temp

    def forward(self, base, source, subspaces=None, **kwargs):
        mask_sigmoid = torch.sigmoid(self.mask / self.temperature.detach().clone())
        return (1.0 - mask_sigmoid) * base + mask_sigmoid * source

    def __str__(self):
        return "SigmoidMaskIntervention()"


class LowRankRotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Low-rank DAS: ``out = b + (sR - bR) R^T`` with R (n x r) orthonormal columns."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        rotate_layer = LowRankRotateLayer(self.embed_dim, kwargs["low_rank_dimension"])
        self.rotate_layer = torch.nn.utils.parametrizations.orthogonal(rotate_layer)

    def forward(self, base, source, subspaces=None, **kwargs):
        rotated_base = self.rotate_layer(base)
        rotated_source = self.rotate_layer(source)
        if subspaces is not None:
            diff = rotated_source - rotated_base
            assert rotated_base.shape[0] == len(subspaces)
            if self.use_fast or _can_use_fast(subspaces):
                sel_subspace_indices = _render_indices(subspaces[0], self.subspace_partition)
                batched_subspace = diff[..., sel_subspace_indices].unsqueeze(dim=1)
                batched_weights = self.rotate_layer.weight[..., sel_subspace_indices].T
                output = base + torch.matmul(batched_subspace, batched_weights).squeeze(dim=1)
            else:
                # pyvene asserts subspace_partition is not None here; fxvene also accepts
                # raw column indices.
                batched_subspace = []
                batched_weights = []
                for example_i in range(len(subspaces)):
                    sel_subspace_indices = _render_indices(
                        subspaces[example_i], self.subspace_partition
                    )
                    LHS = diff[example_i, sel_subspace_indices].unsqueeze(dim=0)
                    RHS = self.rotate_layer.weight[..., sel_subspace_indices].T
                    batched_subspace += [LHS]
                    batched_weights += [RHS]
                batched_subspace = torch.stack(batched_subspace, dim=0)
                batched_weights = torch.stack(batched_weights, dim=0)
                output = base + torch.matmul(batched_subspace, batched_weights).squeeze(dim=1)
        else:
            output = base + torch.matmul(
                (rotated_source - rotated_base), self.rotate_layer.weight.T
            )
        return output.to(base.dtype)

    def __str__(self):
        return "LowRankRotatedSpaceIntervention()"


class PCARotatedSpaceIntervention(BasisAgnosticIntervention, DistributedRepresentationIntervention):
    """Interchange in a (frozen) standardised PCA basis. Needs ``pca``, ``pca_mean``, ``pca_std``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        pca = kwargs["pca"]
        pca_mean = kwargs["pca_mean"]
        pca_std = kwargs["pca_std"]
        self.pca_components = torch.nn.Parameter(
            torch.tensor(pca.components_, dtype=torch.float32), requires_grad=False
        )
        self.pca_mean = torch.nn.Parameter(
            torch.tensor(pca_mean, dtype=torch.float32), requires_grad=False
        )
        self.pca_std = torch.nn.Parameter(
            torch.tensor(pca_std, dtype=torch.float32), requires_grad=False
        )
        self.trainable = False

    def forward(self, base, source, subspaces=None, **kwargs):
        base_norm = (base - self.pca_mean) / self.pca_std
        source_norm = (source - self.pca_mean) / self.pca_std
        rotated_base = torch.matmul(base_norm, self.pca_components.T)
        rotated_source = torch.matmul(source_norm, self.pca_components.T)
        rotated_base = _do_intervention_by_swap(
            rotated_base,
            rotated_source,
            "interchange",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
        )
        output = torch.matmul(rotated_base, self.pca_components)
        return (output * self.pca_std) + self.pca_mean

    def __str__(self):
        return "PCARotatedSpaceIntervention()"


# --------------------------------------------------------------------------- noise


_DEFAULT_NOISE_LEVEL = 0.13462981581687927  # ROME: 3 x std of GPT-2 XL token embeddings
_PYVENE_NOISE_ROWS = 4


class NoiseIntervention(ConstantSourceIntervention, LocalistRepresentationIntervention):
    """Adds fixed Gaussian noise: ``base[..., :k] += noise[:, :n] * noise_level``.

    ``noise`` is ``numpy.random.RandomState(seed).randn(1, n, embed_dim)`` (float64) for n
    positions (``base.shape[-2]``); ``seed`` defaults to 1 and the level to
    0.13462981581687927, so for n=4 this equals pyvene exactly. Unlike pyvene (4 positions
    only) any n works: the ``noise`` buffer keeps pyvene's (1, 4, d) shape for state-dict
    compatibility, and the rows beyond 4 (randn fills in C order, so they continue the same
    stream) are generated lazily and cached per n. A 2-D base (b, d) gets row 0.
    Accepts ``noise_level`` and pyvene's misspelled ``noise_leve``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        seed = kwargs.get("seed")
        self._noise_seed = 1 if seed is None else int(seed)
        noise_level = kwargs.get("noise_level")
        if noise_level is None:
            noise_level = kwargs.get("noise_leve")
        if noise_level is None:
            noise_level = _DEFAULT_NOISE_LEVEL
        rs = np.random.RandomState(self._noise_seed)
        self.register_buffer(
            "noise", torch.from_numpy(rs.randn(1, _PYVENE_NOISE_ROWS, int(self.embed_dim)))
        )
        self.register_buffer("noise_level", torch.tensor(noise_level))
        self._extra_noise = {}  # n -> rows [4, n) (not part of the state dict)

    def _noise_rows(self, n):
        if n <= self.noise.shape[1]:
            return self.noise[:, :n]
        extra = self._extra_noise.get(n)
        if extra is None:
            rs = np.random.RandomState(self._noise_seed)
            full = rs.randn(1, n, self.noise.shape[-1])
            extra = torch.from_numpy(full[:, self.noise.shape[1]:])
            self._extra_noise[n] = extra
        if extra.device != self.noise.device or extra.dtype != self.noise.dtype:
            extra = extra.to(device=self.noise.device, dtype=self.noise.dtype)
            self._extra_noise[n] = extra
        return torch.cat([self.noise, extra], dim=1)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        k = self._swap_dim()
        if base.dim() >= 3:
            noise = self._noise_rows(base.shape[-2])
        else:
            noise = self.noise[:, 0]
        base[..., :k] += noise[..., :k] * self.noise_level
        return base

    def __str__(self):
        return "NoiseIntervention()"


# --------------------------------------------------------------------------- autoencoders


class AutoencoderIntervention(TrainableIntervention):
    """Intervene in the latent space of an autoencoder.

    As in pyvene, ``interchange_dim`` is used as an *index* into the latent (not a prefix):
    call ``set_interchange_dim`` with the latent indices to swap.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if "latent_dim" not in kwargs:
            raise ValueError("Missing latent_dim in kwargs.")
        if "embed_dim" in kwargs:
            self.embed_dim = torch.tensor(kwargs["embed_dim"])
        self.autoencoder = AutoencoderLayer(self.embed_dim, kwargs["latent_dim"])

    def forward(self, base, source, subspaces=None, **kwargs):
        base_dtype = base.dtype
        base = base.to(self.autoencoder.encoder[0].weight.dtype)
        base_latent = self.autoencoder.encode(base)
        source_latent = self.autoencoder.encode(source)
        # clone: pyvene writes into the ReLU output in place, which breaks backward()
        base_latent = base_latent.clone()
        base_latent[..., self.interchange_dim] = source_latent[..., self.interchange_dim]
        inv_output = self.autoencoder.decode(base_latent)
        return inv_output.to(base_dtype)

    def __str__(self):
        return "AutoencoderIntervention()"


class JumpReLUAutoencoderIntervention(TrainableIntervention):
    """Interchange on JumpReLU SAE latents (zero-initialised; load pre-trained weights)."""

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "keep_last_dim": True})
        width = kwargs["low_rank_dimension"]
        self.W_enc = torch.nn.Parameter(torch.zeros(self.embed_dim, width))
        self.W_dec = torch.nn.Parameter(torch.zeros(width, self.embed_dim))
        self.threshold = torch.nn.Parameter(torch.zeros(width))
        self.b_enc = torch.nn.Parameter(torch.zeros(width))
        self.b_dec = torch.nn.Parameter(torch.zeros(self.embed_dim))

    def encode(self, input_acts):
        pre_acts = input_acts @ self.W_enc + self.b_enc
        mask = pre_acts > self.threshold
        return mask * torch.nn.functional.relu(pre_acts)

    def decode(self, acts):
        return acts @ self.W_dec + self.b_dec

    def forward(self, base, source=None, subspaces=None, **kwargs):
        base_latent = self.encode(base)
        source_latent = self.encode(source)
        intervened_latent = _do_intervention_by_swap(
            base_latent,
            source_latent,
            "interchange",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
            use_fast=self.use_fast,
        )
        return self.decode(intervened_latent)

    def __str__(self):
        return "JumpReLUAutoencoderIntervention()"


# --------------------------------------------------------------------------- lambda


class LambdaIntervention(torch.nn.Module):
    """Wraps a plain callable ``f(base, source)`` or ``f(base, source, subspaces)``.

    Mirrors pyvene's ``modeling_utils.LambdaIntervention`` plus the dispatch pyvene does in
    ``do_intervention``: ``subspaces`` is passed only when it is not None. ``source`` is None
    when there is no source run. No flattening applies to it.
    """

    def __init__(self, func):
        super().__init__()
        self.func = func

    def forward(self, base, source=None, subspaces=None, **kwargs):
        if subspaces is None:
            return self.func(base, source, **kwargs)
        return self.func(base, source, subspaces, **kwargs)

    def __str__(self):
        return f"LambdaIntervention({getattr(self.func, '__name__', repr(self.func))})"
