"""What every intervention shares: the constructor contract, the flags the engine reads,
and the marker classes that say how an intervention sees its units.

The engine builds an intervention with every ``RepresentationConfig`` field plus
``embed_dim`` and ``use_fast`` as keyword arguments, so every class takes ``**kwargs``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from fxvene.interventions.swap import _do_intervention_by_swap, expand_partition


@dataclass
class InterventionOutput(ModelOutput):
    """An intervention's result together with a latent it computed on the way."""

    output: Any | None = None
    latent: Any | None = None


def short_str(intervention: torch.nn.Module) -> str:
    """``ClassName()``: how the built-in interventions print."""
    return f"{type(intervention).__name__}()"


class Intervention(torch.nn.Module):
    """Base class: maps the base activation (and a source activation) to a new activation.

    Keyword arguments read here: ``embed_dim`` (registered as the buffers ``embed_dim`` and
    ``interchange_dim``), ``subspace_partition``, ``use_fast``, ``keep_last_dim``,
    ``source_representation`` (a constant source, registered as a buffer) and
    ``hidden_source_representation`` (a constant source that will be loaded later).
    """

    trainable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.keep_last_dim = kwargs.get("keep_last_dim", False)
        self.use_fast = kwargs.get("use_fast", False)
        self.subspace_partition = expand_partition(kwargs.get("subspace_partition"))
        embed_dim = kwargs.get("embed_dim")
        if embed_dim is None:
            self.embed_dim = None
            self.interchange_dim = None
        else:
            self.register_buffer("embed_dim", torch.tensor(embed_dim))
            self.register_buffer("interchange_dim", torch.tensor(embed_dim))
        self._refresh_interchange_int()
        constant = kwargs.get("source_representation")
        hidden = kwargs.get("hidden_source_representation") is not None  # saved, set when loaded
        if constant is not None:
            self.register_buffer("source_representation", constant)
        elif not hidden:
            self.source_representation = None
        self.is_source_constant = constant is not None or hidden

    # ----------------------------------------------------------------- setters

    def set_source_representation(self, source_representation: torch.Tensor) -> None:
        """Use ``source_representation`` as a constant source from now on."""
        if "source_representation" not in self._buffers:
            self.__dict__.pop("source_representation", None)  # the plain ``None`` placeholder
        self.register_buffer("source_representation", source_representation)
        self.is_source_constant = True

    def set_interchange_dim(self, interchange_dim: int | list | torch.Tensor) -> None:
        """Swap ``interchange_dim`` coordinates from now on (an int, or indices for autoencoders)."""
        if isinstance(interchange_dim, torch.Tensor):
            self.interchange_dim = interchange_dim
        else:
            self.interchange_dim = torch.tensor(interchange_dim)
        self._refresh_interchange_int()

    # ----------------------------------------------------------------- the swap

    def _refresh_interchange_int(self) -> None:
        dim = self.interchange_dim
        scalar = isinstance(dim, torch.Tensor) and dim.dim() == 0
        self.__dict__["_interchange_int"] = int(dim) if scalar else None

    def _swap_dim(self) -> int | torch.Tensor | None:
        """``interchange_dim`` as a Python int when it is a scalar.

        Slicing with a tensor bound calls ``.item()``, which breaks a ``torch.compile``
        graph. So the int is re-read from the buffer on every eager call (a loaded state
        dict may have changed it) and, while compiling, the last int read is used.
        """
        dim = self.interchange_dim
        if not (isinstance(dim, torch.Tensor) and dim.dim() == 0):
            return dim
        if torch.compiler.is_compiling():
            cached = self.__dict__.get("_interchange_int")
            return dim if cached is None else cached
        self._refresh_interchange_int()
        return self.__dict__["_interchange_int"]

    def _source_or_constant(self, source: torch.Tensor | None) -> torch.Tensor | None:
        constant = getattr(self, "source_representation", None)
        return source if constant is None else constant

    def _swap(self, base: torch.Tensor, source: torch.Tensor | None, mode: str, subspaces: Any) -> torch.Tensor:
        return _do_intervention_by_swap(
            base,
            source,
            mode,
            self._swap_dim(),
            subspaces,
            subspace_partition=self.subspace_partition,
            use_fast=self.use_fast,
        )

    @abstractmethod
    def forward(self, base, source, subspaces=None): ...


class LocalistRepresentationIntervention(torch.nn.Module):
    """Marker: the intervention sees units unflattened, e.g. ``(batch, units, d)``."""

    is_repr_distributed = False


class DistributedRepresentationIntervention(torch.nn.Module):
    """Marker: the units are flattened into one vector, ``(batch, units * d)``, before the call."""

    is_repr_distributed = True


class TrainableIntervention(Intervention):
    """Base of interventions with learned parameters; they always read a source run."""

    trainable = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.is_source_constant = False

    def tie_weight(self, linked_intervention: TrainableIntervention) -> None:
        """Called for linked interventions; the built-in ones share the object, so nothing to do."""


class ConstantSourceIntervention(Intervention):
    """Base of interventions that run without a source forward."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.is_source_constant = True


class SourcelessIntervention(Intervention):
    """Base of interventions that need no source at all."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.is_source_constant = True


class BasisAgnosticIntervention(Intervention):
    """Base of interventions that may change the representation outside any fixed basis."""

    basis_agnostic = True


class SharedWeightsTrainableIntervention(TrainableIntervention):
    """Base of trainable interventions whose weights are shared between sites."""

    shared_weights = True


class LambdaIntervention(torch.nn.Module):
    """Wraps a plain function ``f(base, source)``, or ``f(base, source, subspaces)`` when
    subspaces are given. ``source`` is None without a source run; units are not flattened."""

    def __init__(self, func: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.func = func

    def forward(self, base, source=None, subspaces=None, **kwargs):
        args = (base, source) if subspaces is None else (base, source, subspaces)
        return self.func(*args, **kwargs)

    def __str__(self) -> str:
        return f"LambdaIntervention({getattr(self.func, '__name__', repr(self.func))})"
