"""The subspace swap every coordinate-wise intervention goes through.

An intervention picks coordinates of the last dimension of ``base`` and either writes
``source`` over them ("interchange"), adds or subtracts ``source`` there ("add",
"subtract"), or reads them out ("collect"). Which coordinates:

* no ``subspaces``: the first ``interchange_dim`` coordinates;
* ``subspaces``: one list per example of column indices, or of partition ids when a
  ``subspace_partition`` (a list of column lists) is given. When every example lists the
  same thing, or ``use_fast`` is set (then example 0's list is used), one index set serves
  the whole batch; otherwise each example gets exactly its own list.

Called directly on a 3-D ``base`` (pyvene's unit tests do this), a rectangular ``subspaces`` with
one row per entry of dimension -2 (and not one per example) applies row ``i`` to position ``i`` of
every example, as pyvene does; one row per example applies per example; any other count is a
``ValueError``. Where both counts are equal the direct call follows pyvene (per position). The
engine marks the subspaces it passes (``PerExampleSubspaces``): those are always per example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Partition = Sequence[Sequence[int]]
Index = tuple

MODES = ("interchange", "add", "subtract", "collect")


class CollectSourceError(ValueError, AssertionError):
    """A source was given to "collect", which only reads ``base``.

    Also an ``AssertionError``: pyvene asserts here, and code that catches that keeps working.
    """


def expand_partition(partition: Sequence[Sequence[int]] | None) -> list | None:
    """``[start, end]`` pairs become ``list(range(start, end))``; explicit index lists stay."""
    if partition is None:
        return None
    return [
        list(range(part[0], part[1])) if len(part) == 2 and isinstance(part[0], int) else part for part in partition
    ]


def subspace_columns(subspace: Sequence[int], partition: Partition | None) -> Sequence[int]:
    """The last-dim columns that one example's ``subspace`` names."""
    if partition is None:
        return subspace
    return [column for part_id in subspace for column in partition[part_id]]


def broadcast_tensor_v1(x: torch.Tensor, target_shape: Sequence[int]) -> torch.Tensor:
    """A view of ``x`` (one vector of size d, any leading 1s) expanded to ``target_shape``."""
    if target_shape[-1] != x.shape[-1]:
        raise ValueError(
            f"cannot broadcast a tensor with last dimension {x.shape[-1]} to shape "
            f"{tuple(target_shape)}: the last dimensions differ"
        )
    ones = [1] * (len(target_shape) - 1)
    return x.view(*ones, x.shape[-1]).expand(*target_shape)


def broadcast_tensor_v2(x: torch.Tensor, target_shape: Sequence[int]) -> torch.Tensor:
    """``x`` expanded over ``target_shape``'s leading dimensions, keeping its own last one."""
    if len(target_shape) == 0:
        raise ValueError("target_shape is empty; it needs at least the last dimension")
    return x.expand(*target_shape[:-1], x.shape[-1])


def _as_tensor(subspaces: Any) -> torch.Tensor | None:
    try:
        return torch.tensor(subspaces)
    except Exception:  # ragged, non-numeric, ...: not a rectangular table
        return None


def _can_cast_tensor(subspaces: Any) -> bool:
    """True when ``subspaces`` is a rectangular table of numbers."""
    return _as_tensor(subspaces) is not None


def _can_use_fast(subspaces: Any) -> bool:
    """True when ``subspaces`` is a rectangular table (2 levels or more) whose rows are all alike."""
    table = _as_tensor(subspaces)
    if table is None or table.dim() < 2:
        return False
    return bool((table == table[0]).all())


class PerExampleSubspaces(list):
    """Subspaces as the engine passes them: entry ``i`` is example ``i``'s list, whatever the
    shape of ``base`` (a plain list in a direct call on a 3-D ``base`` may mean one per position)."""


def _per_position(base: torch.Tensor, subspaces: Any) -> bool:
    """Whether a direct call's ``subspaces`` lists one entry per row of ``base``'s dimension -2
    (pyvene's semantics) rather than one per example; a count that fits neither is an error."""
    if base.dim() != 3 or isinstance(subspaces, PerExampleSubspaces):
        return False
    n, batch, rows = len(subspaces), base.shape[0], base.shape[-2]
    if n == rows and _can_cast_tensor(subspaces):
        return True
    if n != batch:
        raise ValueError(
            f"subspaces has {n} entries for a base of shape {tuple(base.shape)}: give one entry per example "
            f"({batch}), or (pyvene's direct-call form, equal-length lists) one per row of dimension -2 ({rows})"
        )
    return False


def _regions(
    base: torch.Tensor,
    interchange_dim: int | torch.Tensor | None,
    subspaces: Any,
    partition: Partition | None,
    use_fast: bool,
) -> tuple[list[Index], bool]:
    """Index tuples into ``base`` for the swap, and whether there is one per example."""
    if subspaces is None:
        return [(Ellipsis, slice(None, interchange_dim))], False
    if use_fast or _can_use_fast(subspaces):
        return [(Ellipsis, subspace_columns(subspaces[0], partition))], False
    if _per_position(base, subspaces):
        cols = torch.tensor([list(subspace_columns(s, partition)) for s in subspaces], device=base.device)
        rows = torch.arange(base.shape[-2], device=base.device).unsqueeze(-1)
        return [(Ellipsis, rows, cols)], False
    per_example = [(row, Ellipsis, subspace_columns(subspace, partition)) for row, subspace in enumerate(subspaces)]
    return per_example, True


def _do_intervention_by_swap(
    base: torch.Tensor,
    source: torch.Tensor | None,
    mode: str = "interchange",
    interchange_dim: int | torch.Tensor | None = None,
    subspaces: Any = None,
    subspace_partition: Partition | None = None,
    use_fast: bool = False,
) -> torch.Tensor:
    """Apply ``mode`` to the chosen coordinates (see the module docstring).

    "interchange", "add" and "subtract" write into ``base`` in place and return it; a
    ``(d,)`` source is broadcast over ``base``. "collect" returns the chosen coordinates of
    ``base`` and leaves it untouched (stacked over examples when each has its own list).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "collect":
        if source is not None:
            raise CollectSourceError("source: collecting reads base only, so source must be None")
    elif source is None:
        raise ValueError(f"source: mode {mode!r} writes a source into base, but source is None")
    elif source.shape != base.shape:
        try:
            source = broadcast_tensor_v1(source, base.shape)
        except Exception:
            raise ValueError(
                f"source has shape {tuple(source.shape)}, which does not broadcast to the base "
                f"shape {tuple(base.shape)}"
            ) from None
    regions, per_example = _regions(base, interchange_dim, subspaces, subspace_partition, use_fast)
    if mode == "collect":
        picked = [base[region] for region in regions]
        return torch.stack(picked, dim=0) if per_example else picked[0]
    for region in regions:
        if mode == "interchange":
            base[region] = source[region]
        elif mode == "add":
            base[region] += source[region]
        else:
            base[region] -= source[region]
    return base
