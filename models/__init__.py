"""Per-architecture component specs: data, not logic.

A spec maps each pyvene component name to a :class:`Component`: the module path
(relative to the family's base model, ``{layer}`` filled in), the port (the module's
``input`` or ``output``), how to view it (``split3`` picks a third of a fused QKV
projection, ``heads`` splits the last dim into heads), and the dimension expression
pyvene uses for ``embed_dim``. A family lists the model classes it covers and, for each,
the prefix of the base model inside it (``transformer.`` for ``GPT2LMHeadModel``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Component:
    module: str  # e.g. "h.{layer}.attn.c_proj"
    port: str = "output"  # "output" | "input"
    split3: int | None = None  # slot of a fused qkv output
    heads: str | None = None  # config attribute giving the head count
    dim: str | None = None  # pyvene dimension expression ("n_embd", "n_embd/n_head", ...)
    pattern: str | None = None  # structural pattern inside the module region (e.g. "attention_probs")
    needs: str | None = None  # requirement checked at locate time (e.g. "eager")
    # how q/k/v lie in the fused output ``split3`` picks from: None = three equal thirds [q|k|v] (GPT-2);
    # else (layout, query-head-count expr, head-dim expr), layout "sizes" = [q heads | k heads | v heads]
    # (Phi-3, Falcon multi-query) or "grouped" = per key/value group [its q heads | k | v] (GPT-NeoX,
    # Falcon); the key/value head count follows from the output width. heads="layout": the slot's heads.
    fused: tuple | None = None


@dataclass(frozen=True)
class Family:
    name: str
    prefixes: dict  # model class name -> path prefix of the base model
    components: dict  # component name -> Component
    n_layers: str  # config attribute giving the layer count
    derived: bool = False  # True: derived from the model's module tree (models/derive.py), not hand-written
    missing: dict = field(default_factory=dict)  # derived only: component name -> why it could not be placed


_FAMILIES = None


def _families():
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
        for fam in _families():
            if cls.__name__ in fam.prefixes:
                return fam, fam.prefixes[cls.__name__]
    return None, None


_DERIVED = weakref.WeakKeyDictionary()  # model -> (Family | None, prefix | None, why | None)


def family_for(model):
    """The family spec and path prefix for ``model``: the hand-written one naming its class (or a
    base class), else one derived from its module tree (``Family.derived``; see models/derive.py),
    else ``(None, None)`` (:func:`why_underived` then says why)."""
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
    return sorted(n for fam in _families() for n in fam.prefixes)


def eval_dim(expr, config):
    """pyvene's dimension expressions: "attr", "attr*4", "a*b", "a/b", or a number. First alternative that resolves wins."""
    if expr is None:
        return None
    for alt in expr.split("|"):
        alt = alt.strip()
        try:
            if "*" in alt:
                a, b = alt.split("*")
                va, vb = _attr(config, a), _attr(config, b)
                if va is None or vb is None:
                    continue
                return int(va) * int(vb)
            if "/" in alt:
                a, b = alt.split("/")
                va, vb = _attr(config, a), _attr(config, b)
                if va is None or vb is None:
                    continue
                return int(va) // int(vb)
            if alt.isdigit():
                return int(alt)
            v = _attr(config, alt)
            if v is not None:
                return int(v)
        except (TypeError, ValueError):
            continue
    return None


def _attr(config, name):
    name = name.strip()
    if name.isdigit():
        return int(name)
    if name == "kv_dim":  # GQA: k/v projections are num_key_value_heads * head_dim wide
        heads = getattr(config, "num_attention_heads", None)
        kv = getattr(config, "num_key_value_heads", None) or heads
        hd = getattr(config, "head_dim", None) or config.hidden_size // heads
        return kv * hd
    return getattr(config, name, None)
