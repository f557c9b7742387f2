"""Linear maps the trainable interventions learn: rotations and a one-layer autoencoder.

Parameter names and initialisation (and so the state dict a given ``torch.manual_seed``
produces) are pyvene 0.1.8's.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch

__all__ = [
    "InverseRotateLayer",
    "RotateLayer",
    "LowRankRotateLayer",
    "SubspaceLowRankRotateLayer",
    "AutoencoderLayerBase",
    "AutoencoderLayer",
]


def _orthogonal_weight(rows: int, cols: int, init_orth: bool) -> torch.nn.Parameter:
    """A ``rows x cols`` Parameter with orthonormal columns (or uninitialised)."""
    weight = torch.empty(rows, cols)
    if init_orth:
        torch.nn.init.orthogonal_(weight)
    return torch.nn.Parameter(weight, requires_grad=True)


class LowRankRotateLayer(torch.nn.Module):
    """``x @ W`` with ``W`` of shape ``(n, m)``, ``m <= n``, initialised with orthonormal columns.
    ``x`` is cast to ``W``'s dtype."""

    def __init__(self, n: int, m: int, init_orth: bool = True) -> None:
        super().__init__()
        self.weight = _orthogonal_weight(n, m, init_orth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x.to(self.weight.dtype), self.weight)


class RotateLayer(LowRankRotateLayer):
    """``x @ W`` with a square ``(n, n)`` ``W``, initialised orthogonal."""

    def __init__(self, n: int, init_orth: bool = True) -> None:
        super().__init__(n, n, init_orth)


class SubspaceLowRankRotateLayer(LowRankRotateLayer):
    """Like ``LowRankRotateLayer`` but uses only the columns ``l:r`` of ``W``."""

    def forward(self, x: torch.Tensor, l: int, r: int) -> torch.Tensor:  # noqa: E741
        return torch.matmul(x.to(self.weight.dtype), self.weight[:, l:r])


class InverseRotateLayer(torch.nn.Module):
    """Undoes ``lin_layer`` when its weight is orthogonal: ``x @ W^T``."""

    def __init__(self, lin_layer: torch.nn.Module) -> None:
        super().__init__()
        self.lin_layer = lin_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.lin_layer.weight.T)


class AutoencoderLayerBase(torch.nn.Module, metaclass=ABCMeta):
    """Interface of an autoencoder: ``encode`` to a latent, ``decode`` back."""

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...


class AutoencoderLayer(AutoencoderLayerBase):
    """``latent = ReLU(W_e (x - b_d) + b_e)``, ``x' = W_d latent + b_d``
    (``encoder = Sequential(Linear, ReLU)``, ``decoder = Sequential(Linear)``)."""

    def __init__(self, input_dim: int | torch.Tensor, latent_dim: int, **kwargs) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.encoder = torch.nn.Sequential(torch.nn.Linear(input_dim, latent_dim, bias=True), torch.nn.ReLU())
        self.decoder = torch.nn.Sequential(torch.nn.Linear(latent_dim, input_dim, bias=True))

    @property
    def _dtype(self) -> torch.dtype:
        return self.encoder[0].weight.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        centred = x.to(self._dtype) - self.decoder[0].bias
        return self.encoder(centred)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def forward(self, base: torch.Tensor, return_latent: bool = False):
        """The reconstruction in ``base``'s dtype, or ``{"latent", "output"}`` (weight dtype)."""
        latent = self.encode(base)
        output = self.decode(latent)
        return {"latent": latent, "output": output} if return_latent else output.to(base.dtype)
