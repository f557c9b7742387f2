"""``unit_locations`` and ``subspaces``: pyvene 0.1.8's grammar, broadcast and validated.

Differences from pyvene (deliberate): shorthands never switch on a sticky ``use_fast``; a
per-example list whose length is not the batch size, a ragged list, or a wrong nesting depth
is a ``ValueError`` (pyvene silently gathers fewer rows).
"""

from __future__ import annotations

import torch


def list_depth(x):
    """Nesting depth of ``x``, judged over every entry (``[None, [[1]]]`` is 3 deep, as in pyvene's
    ``get_list_depth``); an empty list counts as no list."""
    if not isinstance(x, (list, tuple)) or len(x) == 0:
        return 0
    return 1 + max(list_depth(e) for e in x)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def broadcast_value(v, batch_size, n, base_only=False):
    """One value of the unit_locations dict -> (source_side, base_side); each side is None or a
    list (one entry per intervention) of per-example location lists (or None)."""
    if _is_int(v):
        side = [[[v]] * batch_size] * n
        return (None, side) if base_only else (side, side)
    if isinstance(v, (list, tuple)) and len(v) == 2:
        a, b = v
        if _is_int(a) and _is_int(b):
            return [[[a]] * batch_size] * n, [[[b]] * batch_size] * n
        if a is None and _is_int(b):
            return None, [[[b]] * batch_size] * n
        if _is_int(a) and b is None:
            return [[[a]] * batch_size] * n, None
    if isinstance(v, list) and list_depth(v) == 1:
        side = [[list(v)] * batch_size] * n
        return (None, side) if base_only else (side, side)
    if base_only:
        return None, v
    if not (isinstance(v, (list, tuple)) and len(v) == 2):
        raise ValueError(
            "unit_locations: expected an int, (source_pos, base_pos), a flat list of positions, or a pair "
            f"(source_locations, base_locations) of per-intervention lists; got {v!r}"
        )
    return v[0], v[1]


def broadcast_unit_locations(unit_locations, batch_size, keys, mode="parallel"):
    """Returns {dict_key: (src_per_key, base_per_key)} with per-key lists aligned to ``keys``.

    ``unit_locations=None`` means every intervention acts on the whole tensor.
    """
    n = len(keys)
    if unit_locations is None:
        return {"sources->base": ([None] * n, [None] * n)}
    if not isinstance(unit_locations, dict):
        raise TypeError(
            f"unit_locations must be a dict like {{'sources->base': ...}} or None, got {type(unit_locations).__name__}"
        )
    out = {}
    for k, v in unit_locations.items():
        base_only = False
        if mode == "parallel":
            if k == "base":
                base_only = True
                k = "sources->base"
            elif k != "sources->base":
                raise ValueError(f"unit_locations: unknown key {k!r} in parallel mode; use 'sources->base' or 'base'")
        elif "->" not in k:
            raise ValueError(
                f"unit_locations: serial-mode keys look like 'source_0->source_1' or 'source_1->base', got {k!r}"
            )
        src, base = broadcast_value(v, batch_size, n, base_only)
        # serial keys list one entry per intervention of their source group (pyvene), checked per group later
        exact = mode == "parallel"
        out[k] = (_per_key(src, n, "source", exact), _per_key(base, n, "base", exact))
    return out


class TooFewLocations(ValueError, IndexError):
    """A location list with fewer entries than interventions: a ValueError, and the IndexError that
    pyvene 0.1.8 raises there ("list index out of range"), so code catching either keeps working."""


def _per_key(side, n, which, exact=True):
    if side is None:
        return [None] * n
    if not isinstance(side, (list, tuple)):
        raise ValueError(
            f"unit_locations ({which} side): expected a list with one entry per intervention, got {side!r}"
        )
    if exact and len(side) != n:
        raise (TooFewLocations if len(side) < n else ValueError)(
            f"unit_locations ({which} side) has {len(side)} entries but the model has {n} interventions; "
            "give one per intervention (None to skip one)"
        )
    return list(side)


def to_index(locs, unit, batch_size, device, what):
    """Per-example lists -> LongTensor (b, n), or a pair of them for ``h.pos``."""
    if locs is None:
        return None
    if unit == "h.pos":
        if not (isinstance(locs, (list, tuple)) and len(locs) == 2):
            raise ValueError(f"{what}: unit 'h.pos' needs [heads_per_example, positions_per_example], got {locs!r}")
        return (
            to_index(locs[0], "pos", batch_size, device, what + " (heads)"),
            to_index(locs[1], "pos", batch_size, device, what + " (positions)"),
        )
    if isinstance(locs, torch.Tensor):
        t = locs.to(device=device, dtype=torch.long)
        if t.dim() == 1:
            t = t.unsqueeze(0).expand(batch_size, -1)
    else:
        if not isinstance(locs, (list, tuple)) or list_depth(locs) != 2:
            raise ValueError(f"{what}: expected one list of unit indices per example (depth 2), got {locs!r}")
        lens = {len(r) for r in locs}
        if len(lens) != 1:
            raise ValueError(f"{what}: every example must list the same number of units, got lengths {sorted(lens)}")
        if any(u is None for row in locs for u in row):
            raise TypeError(f"{what}: None among the unit indices (None stands for a whole intervention), got {locs!r}")
        t = torch.tensor(locs, dtype=torch.long, device=device)
    if t.shape[0] != batch_size:
        raise ValueError(f"{what}: {t.shape[0]} per-example entries for a batch of {batch_size}")
    return t


def broadcast_subspaces(subspaces, batch_size, n):
    if subspaces is None:
        return None
    if _is_int(subspaces):
        return [[[subspaces]] * batch_size] * n
    if isinstance(subspaces, list) and len(subspaces) > 0 and _is_int(subspaces[0]):
        return [[list(subspaces)] * batch_size] * n
    if isinstance(subspaces, list):
        if len(subspaces) != n:
            raise ValueError(f"subspaces has {len(subspaces)} entries but the model has {n} interventions")
        return subspaces
    # opaque metadata for custom interventions (pyvene passes anything through)
    return [subspaces] * n
