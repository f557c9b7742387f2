"""Interventions in the latent space of an autoencoder (learned here, or a loaded SAE)."""

from __future__ import annotations

from typing import Any

import torch

from fxvene.interventions.base import TrainableIntervention, short_str
from fxvene.interventions.layers import AutoencoderLayer


class AutoencoderIntervention(TrainableIntervention):
    """Encodes base and source with an ``AutoencoderLayer`` (``latent_dim`` required), copies
    the source latents at ``interchange_dim`` into the base latent, and decodes.

    ``interchange_dim`` indexes the latent here (it is not a prefix length): set it to the
    latent units to swap with ``set_interchange_dim([...])``.
    """

    __str__ = short_str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if "latent_dim" not in kwargs:
            raise ValueError("AutoencoderIntervention needs latent_dim (the autoencoder's latent size)")
        self.autoencoder = AutoencoderLayer(int(self.embed_dim), kwargs["latent_dim"])

    def forward(self, base, source, subspaces=None, **kwargs):
        units = self.interchange_dim
        # a fresh tensor, so that writing into it keeps the encoder's ReLU output intact for backward
        latent = self.autoencoder.encode(base).clone()
        latent[..., units] = self.autoencoder.encode(source)[..., units]
        return self.autoencoder.decode(latent).to(base.dtype)


class JumpReLUAutoencoderIntervention(TrainableIntervention):
    """Swaps latents of a JumpReLU sparse autoencoder (e.g. Gemma Scope):
    ``a = [z > threshold] * ReLU(z)`` with ``z = x W_enc + b_enc``, decoded as ``a W_dec + b_dec``.

    The width is ``low_rank_dimension``. Weights start at zero, for loading a trained SAE.
    It always sees the unflattened units (``keep_last_dim`` is forced on).
    """

    __str__ = short_str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "keep_last_dim": True})
        d, width = int(self.embed_dim), kwargs["low_rank_dimension"]
        self.W_enc = torch.nn.Parameter(torch.zeros(d, width))
        self.W_dec = torch.nn.Parameter(torch.zeros(width, d))
        self.threshold = torch.nn.Parameter(torch.zeros(width))
        self.b_enc = torch.nn.Parameter(torch.zeros(width))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))

    def encode(self, input_acts: torch.Tensor) -> torch.Tensor:
        pre = input_acts @ self.W_enc + self.b_enc
        return (pre > self.threshold) * torch.nn.functional.relu(pre)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def forward(self, base, source=None, subspaces=None, **kwargs):
        latent = self._swap(self.encode(base), self.encode(source), "interchange", subspaces)
        return self.decode(latent)
