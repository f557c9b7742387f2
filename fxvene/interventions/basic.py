"""Interventions that act on the activation's own coordinates, with no learned weights.

``k`` below is ``interchange_dim`` (all of ``embed_dim`` unless set); with ``subspaces`` the
chosen columns replace the first ``k`` (see ``swap.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fxvene.interventions.base import (
    BasisAgnosticIntervention,
    ConstantSourceIntervention,
    Intervention,
    LocalistRepresentationIntervention,
    short_str,
)


class VanillaIntervention(Intervention, LocalistRepresentationIntervention):
    """Interchange: ``base[..., :k] = source[..., :k]`` (the constant source when one is set)."""

    __str__ = short_str

    def forward(self, base, source, subspaces=None, **kwargs):
        return self._swap(base, self._source_or_constant(source), "interchange", subspaces)


class AdditionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Activation addition: ``base[..., :k] += source[..., :k]`` (or the constant source)."""

    __str__ = short_str

    def forward(self, base, source, subspaces=None, **kwargs):
        return self._swap(base, self._source_or_constant(source), "add", subspaces)


class SubtractionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Activation subtraction: ``base[..., :k] -= source[..., :k]`` (or the constant source)."""

    __str__ = short_str

    def forward(self, base, source, subspaces=None, **kwargs):
        return self._swap(base, self._source_or_constant(source), "subtract", subspaces)


class ZeroIntervention(ConstantSourceIntervention, LocalistRepresentationIntervention):
    """Ablation: ``base[..., :k] = 0``."""

    __str__ = short_str

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return self._swap(base, torch.zeros_like(base), "interchange", subspaces)


class SkipIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Skips the module: its output units take the values of its input (``source`` is the
    module input, gathered by the engine)."""

    __str__ = short_str

    def forward(self, base, source, subspaces=None, **kwargs):
        return self._swap(base, source, "interchange", subspaces)


class CollectIntervention(ConstantSourceIntervention):
    """Reads ``base[..., :k]`` (or the subspace columns) out; the model's output is unchanged."""

    __str__ = short_str

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return self._swap(base, source, "collect", subspaces)


# ROME's noise scale: three times the standard deviation of GPT-2 XL's token embeddings.
DEFAULT_NOISE_LEVEL = 0.13462981581687927
SAVED_NOISE_POSITIONS = 4  # the ``noise`` buffer's positions, the shape pyvene saves


class NoiseIntervention(ConstantSourceIntervention, LocalistRepresentationIntervention):
    """Adds fixed Gaussian noise: ``base[..., p, :k] += level * noise[p, :k]`` at position p.

    ``noise`` is ``numpy.random.RandomState(seed).randn(1, n, embed_dim)`` (float64) for the
    ``n`` positions of ``base`` (``seed`` 1, level 0.13462981581687927 by default). The
    buffer holds 4 positions; longer inputs draw the same stream further and cache it (not
    saved). A 2-D ``base`` gets position 0. The level is ``noise_level`` (``noise_leve``
    also accepted).
    """

    __str__ = short_str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        seed = kwargs.get("seed")
        self._noise_seed = 1 if seed is None else int(seed)
        level = kwargs.get("noise_level")
        if level is None:
            level = kwargs.get("noise_leve")
        self.register_buffer("noise", self._draw(SAVED_NOISE_POSITIONS))
        self.register_buffer("noise_level", torch.tensor(DEFAULT_NOISE_LEVEL if level is None else level))
        self._longer_noise: dict[int, torch.Tensor] = {}  # positions -> the draws past the buffer

    def _draw(self, positions: int) -> torch.Tensor:
        stream = np.random.RandomState(self._noise_seed)
        return torch.from_numpy(stream.randn(1, positions, int(self.embed_dim)))

    def _noise_at(self, positions: int) -> torch.Tensor:
        saved = self.noise.shape[1]
        if positions <= saved:
            return self.noise[:, :positions]
        tail = self._longer_noise.get(positions)
        if tail is None or tail.device != self.noise.device or tail.dtype != self.noise.dtype:
            # randn fills in C order, so a longer draw starts with the buffer's rows
            tail = self._draw(positions)[:, saved:].to(device=self.noise.device, dtype=self.noise.dtype)
            self._longer_noise[positions] = tail
        return torch.cat([self.noise, tail], dim=1)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        k = self._swap_dim()
        noise = self._noise_at(base.shape[-2]) if base.dim() >= 3 else self.noise[:, 0]
        base[..., :k] += noise[..., :k] * self.noise_level
        return base
