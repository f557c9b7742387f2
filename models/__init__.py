"""Per-architecture component specs: data, not logic.

A spec maps each pyvene component name to a ``Component``: the module path
(relative to the family's base model, ``{layer}`` filled in), the port (the module's
``input`` or ``output``), how to view it (``split3`` picks a third of a fused QKV
projection, ``heads`` splits the last dim into heads), and the dimension expression
pyvene uses for ``embed_dim``. A family lists the model classes it covers and, for each,
the prefix of the base model inside it (``transformer.`` for ``GPT2LMHeadModel``).

May import: torch, the standard library and fxvene.passes (data and pure functions; no fxvene runtime state).
"""

from __future__ import annotations

import weakref

from .spec import Component, Family, config_value, eval_dim  # the spec types, re-exported

_FAMILIES = None


def families():
    """Every family in this package: each module (name not starting with "_") that defines
    ``FAMILY`` (or a list ``FAMILIES``). Adding a family is adding a file."""
    global _FAMILIES
    if _FAMILIES is None:
        import importlib
        import pkgutil

        found = []
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            mod = importlib.import_module(f"{__name__}.{info.name}")
            if hasattr(mod, "FAMILY"):
                found.append(mod.FAMILY)
            found.extend(getattr(mod, "FAMILIES", ()))
        _FAMILIES = found
    return _FAMILIES


def hand_family_for(model):
    """The hand-written family spec and path prefix for ``model`` (by class name, following the MRO)."""
    for cls in type(model).__mro__:
        for fam in families():
            if cls.__name__ in fam.prefixes:
                return fam, fam.prefixes[cls.__name__]
    return None, None


_DERIVED = weakref.WeakKeyDictionary()  # model -> (Family | None, prefix | None, why | None)


def family_for(model):
    """The family spec and path prefix for ``model``: the hand-written one naming its class (or a
    base class), else one derived from its module tree (``Family.derived``; see models/derive.py),
    else ``(None, None)`` (``why_underived`` then says why)."""
    fam, prefix = hand_family_for(model)
    if fam is not None or getattr(model, "config", None) is None:
        return fam, prefix
    try:
        hit = _DERIVED.get(model)
    except TypeError:  # not weakly referenceable
        return None, None
    if hit is None:
        from .derive import DeriveError, derive_family

        try:
            fam = derive_family(model)
            hit = (fam, fam.prefixes[type(model).__name__], None)
        except DeriveError as e:
            hit = (None, None, str(e))
        _DERIVED[model] = hit
    return hit[0], hit[1]


def why_underived(model):
    """Why no spec could be derived for ``model`` (None if one was, or none was tried)."""
    hit = _DERIVED.get(model) if getattr(model, "config", None) is not None else None
    return None if hit is None else hit[2]


def supported_model_types():
    return sorted(n for fam in families() for n in fam.prefixes)
