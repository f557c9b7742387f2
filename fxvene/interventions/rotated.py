"""Interventions in a changed basis: learned rotations (DAS and its boundary/mask variants),
a low-rank rotation, a frozen PCA basis, and a learned mask in the native basis.

``R`` is the rotation, ``b``/``s`` the base and source vectors and ``k`` ``interchange_dim``.
Every use of ``R`` goes through ``rotate_layer`` (an orthogonal parametrization), so the
gradients that reach ``rotate_layer`` are the same, to the bit, as pyvene's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fxvene.interventions.base import (
    BasisAgnosticIntervention,
    DistributedRepresentationIntervention,
    LocalistRepresentationIntervention,
    TrainableIntervention,
    short_str,
)
from fxvene.interventions.layers import LowRankRotateLayer, RotateLayer
from fxvene.interventions.swap import _can_use_fast, _do_intervention_by_swap, subspace_columns


def learned_rotation(embed_dim: Any, rank: Any = None) -> torch.nn.Module:
    """An orthogonally parametrized ``n x n`` rotation (``n x rank`` with a rank)."""
    n = int(embed_dim)
    layer = RotateLayer(n) if rank is None else LowRankRotateLayer(n, rank)
    return torch.nn.utils.parametrizations.orthogonal(layer)


def rotate_back(rotate_layer: torch.nn.Module, rotated: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``rotated @ R^T`` in ``dtype``."""
    return torch.matmul(rotated, rotate_layer.weight.T).to(dtype)


def blend_in_rotated_space(rotate_layer, base, source, mask_for_batch: Callable[[int], torch.Tensor]):
    """``((1 - m) bR + m sR) R^T`` with the mask row ``m`` repeated over the batch."""
    batch = base.shape[0]
    rotated_base = rotate_layer(base)
    rotated_source = rotate_layer(source)
    mask = torch.ones(batch, device=base.device).unsqueeze(dim=-1) * mask_for_batch(batch)
    mask = mask.to(rotated_base.dtype)
    return rotate_back(rotate_layer, (1.0 - mask) * rotated_base + mask * rotated_source, base.dtype)


def get_temperature(self) -> torch.nn.Parameter:
    """The mask's temperature."""
    return self.temperature


def set_temperature(self, temp: torch.Tensor) -> None:
    """Set the mask's temperature in place (it is annealed during training)."""
    self.temperature.data = temp


def sigmoid_boundary(_input: torch.Tensor, boundary_x, boundary_y, temperature) -> torch.Tensor:
    """A soft window: close to 1 for ``boundary_x < x < boundary_y``, close to 0 outside;
    ``temperature`` sets how soft the edges are."""
    rises = torch.sigmoid((_input - boundary_x) / temperature)
    falls = torch.sigmoid((boundary_y - _input) / temperature)
    return rises * falls


def harmonic_sigmoid_boundary(_input: torch.Tensor, boundary_x, boundary_y, temperature) -> torch.Tensor:
    """A soft window whose inside value is the sigmoid of half the harmonic mean of the
    distances to both edges; outside it falls off with a sigmoid of the distance to the edge."""
    x, lo, hi = _input, boundary_x, boundary_y
    inside = (x > lo) & (x < hi)
    half_harmonic = 1.0 / (0.5 * (1.0 / torch.abs(x - lo) + 1.0 / torch.abs(x - hi)))
    below = (x <= lo) * torch.sigmoid((x - lo) / temperature)
    above = (x >= hi) * torch.sigmoid((hi - x) / temperature)
    return below + above + inside * torch.sigmoid(half_harmonic / temperature)


class RotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Distributed interchange (DAS): swap the first ``k`` coordinates of ``bR`` and ``sR``,
    then rotate back: ``swap(bR, sR) R^T``."""

    __str__ = short_str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rotate_layer = learned_rotation(self.embed_dim)

    def forward(self, base, source, subspaces=None, **kwargs):
        rotated = self._swap(self.rotate_layer(base), self.rotate_layer(source), "interchange", subspaces)
        return rotate_back(self.rotate_layer, rotated, base.dtype)


class BoundlessRotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Boundless DAS: a soft interchange in the rotated space whose extent is learned.

    Coordinate ``i`` is mixed by ``m_i = sigmoid(i / T) * sigmoid((beta * n - i) / T)`` with
    ``beta = clamp(intervention_boundaries, 1e-3, 1)`` (starts at 0.5) and temperature ``T``
    (starts at 50; a Parameter, annealed with ``set_temperature``).
    """

    __str__ = short_str
    get_temperature = get_temperature
    set_temperature = set_temperature

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rotate_layer = learned_rotation(self.embed_dim)
        self.intervention_boundaries = torch.nn.Parameter(torch.tensor([0.5]), requires_grad=True)
        self.temperature = torch.nn.Parameter(torch.tensor(50.0))
        positions = torch.arange(0, int(self.embed_dim))
        self.intervention_population = torch.nn.Parameter(positions, requires_grad=False)

    def get_boundary_parameters(self) -> torch.nn.Parameter:
        return self.intervention_boundaries

    def set_intervention_boundaries(self, intervention_boundaries: float) -> None:
        """Restart the learned boundary at ``intervention_boundaries`` (a fraction of n)."""
        self.intervention_boundaries = torch.nn.Parameter(torch.tensor([intervention_boundaries]), requires_grad=True)

    def _mask(self, batch: int) -> torch.Tensor:
        beta = torch.clamp(self.intervention_boundaries, 1e-3, 1)
        coords = self.intervention_population.repeat(batch, 1)
        return sigmoid_boundary(coords, 0.0, beta[0] * int(self.embed_dim), self.temperature)

    def forward(self, base, source, subspaces=None, **kwargs):
        return blend_in_rotated_space(self.rotate_layer, base, source, self._mask)


class SigmoidMaskRotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """A soft interchange in the rotated space with one learned gate per coordinate:
    ``m = sigmoid(masks / T)``, ``masks`` starting at 100 and ``T`` at 50 (so m is about 0.88)."""

    __str__ = short_str
    get_temperature = get_temperature
    set_temperature = set_temperature

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rotate_layer = learned_rotation(self.embed_dim)
        self.masks = torch.nn.Parameter(torch.full((int(self.embed_dim),), 100.0), requires_grad=True)
        self.temperature = torch.nn.Parameter(torch.tensor(50.0))

    def get_boundary_parameters(self):
        # pyvene 0.1.8 names an attribute this class does not have: AttributeError, as there
        return self.intervention_boundaries

    def _mask(self, batch: int) -> torch.Tensor:
        return torch.sigmoid(self.masks / self.temperature)

    def forward(self, base, source, subspaces=None, **kwargs):
        return blend_in_rotated_space(self.rotate_layer, base, source, self._mask)


class SigmoidMaskIntervention(TrainableIntervention, LocalistRepresentationIntervention):
    """A learned gate per coordinate in the native basis: ``(1 - m) b + m s`` with
    ``m = sigmoid(mask / T)``; ``mask`` starts at 0 (m = 0.5), ``T`` at 0.01. ``T`` is a
    Parameter but gets no gradient (it is detached in the forward)."""

    __str__ = short_str
    get_temperature = get_temperature
    set_temperature = set_temperature

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mask = torch.nn.Parameter(torch.zeros(int(self.embed_dim)), requires_grad=True)
        self.temperature = torch.nn.Parameter(torch.tensor(0.01))

    def forward(self, base, source, subspaces=None, **kwargs):
        gate = torch.sigmoid(self.mask / self.temperature.detach())
        return (1.0 - gate) * base + gate * source


class LowRankRotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Low-rank DAS: ``b + (sR - bR) R^T`` with ``R`` (n x r, ``low_rank_dimension`` = r)
    having orthonormal columns; ``subspaces`` pick columns of ``R`` (per example if they differ)."""

    __str__ = short_str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rotate_layer = learned_rotation(self.embed_dim, kwargs["low_rank_dimension"])

    def forward(self, base, source, subspaces=None, **kwargs):
        rotated_base = self.rotate_layer(base)
        diff = self.rotate_layer(source) - rotated_base
        if subspaces is None:
            delta = torch.matmul(diff, self.rotate_layer.weight.T)
        elif len(subspaces) != diff.shape[0]:
            raise ValueError(
                f"subspaces has {len(subspaces)} rows for a batch of {diff.shape[0]}; give one per example"
            )
        else:
            delta = self._back_in_columns(diff, subspaces)
        return (base + delta).to(base.dtype)

    def _back_in_columns(self, diff: torch.Tensor, subspaces: Any) -> torch.Tensor:
        """``diff[:, cols] @ R[:, cols]^T`` for each example's columns."""
        part = self.subspace_partition
        if self.use_fast or _can_use_fast(subspaces):
            cols = subspace_columns(subspaces[0], part)
            picked = diff[..., cols].unsqueeze(dim=1)
            return torch.matmul(picked, self.rotate_layer.weight[..., cols].T).squeeze(dim=1)
        rows = [
            (
                diff[i, subspace_columns(sub, part)].unsqueeze(dim=0),
                self.rotate_layer.weight[..., subspace_columns(sub, part)].T,
            )
            for i, sub in enumerate(subspaces)
        ]
        picked = torch.stack([row for row, _ in rows], dim=0)
        weights = torch.stack([w for _, w in rows], dim=0)
        return torch.matmul(picked, weights).squeeze(dim=1)


def _frozen(value: Any) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(value, dtype=torch.float32), requires_grad=False)


class PCARotatedSpaceIntervention(BasisAgnosticIntervention, DistributedRepresentationIntervention):
    """Interchange in a frozen, standardised PCA basis ``C``: ``z = (x - mu) / sigma``,
    swap the first ``k`` coordinates of ``zC^T``, map back with ``(r C) sigma + mu``.
    Needs ``pca`` (anything with ``components_``), ``pca_mean`` and ``pca_std``."""

    __str__ = short_str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pca_components = _frozen(kwargs["pca"].components_)
        self.pca_mean = _frozen(kwargs["pca_mean"])
        self.pca_std = _frozen(kwargs["pca_std"])

    def _to_pca(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul((x - self.pca_mean) / self.pca_std, self.pca_components.T)

    def forward(self, base, source, subspaces=None, **kwargs):
        rotated_base, rotated_source = self._to_pca(base), self._to_pca(source)
        swapped = _do_intervention_by_swap(
            rotated_base,
            rotated_source,
            "interchange",
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
        )
        return torch.matmul(swapped, self.pca_components) * self.pca_std + self.pca_mean
