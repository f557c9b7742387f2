"""The types a family spec is made of (``Component``, ``Family``), pyvene's dimension
expressions (``eval_dim``) and config look-ups through sub-configs (``config_value``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import distribution, version


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
    # False: bidirectional attention (an encoder): a patch at a position changes the positions before it too
    causal: bool = True


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


def config_value(config, name, default=None):
    """``config.<name>``, where ``name`` may be a dotted path into a sub-config (``text_config.hidden_size``:
    a vision-language model's language stack)."""
    for part in name.strip().split("."):
        config = getattr(config, part, None)
        if config is None:
            return default
    return config


def _attr(config, name):
    name = name.strip()
    if name.isdigit():
        return int(name)
    if "." in name:  # a sub-config's attribute (``kv_dim`` included)
        head, _, last = name.rpartition(".")
        sub = config_value(config, head)
        return None if sub is None else _attr(sub, last)
    if name == "kv_dim":  # GQA: k/v projections are num_key_value_heads * head_dim wide
        heads = getattr(config, "num_attention_heads", None)
        kv = getattr(config, "num_key_value_heads", None) or heads
        hd = getattr(config, "head_dim", None) or config.hidden_size // heads
        return kv * hd
    return getattr(config, name, None)


def transformers_source_has(module_file, marker):
    """Whether the installed transformers' ``module_file`` (e.g. ``models/vit/modeling_vit.py``) contains
    ``marker``: how a family whose module paths changed between transformers 4 and 5 picks its layout,
    without importing transformers. An unusual install (no readable source) decides by the major version."""
    try:
        src = distribution("transformers").locate_file(f"transformers/{module_file}").read_text()
    except Exception:  # noqa: BLE001 - an unusual install: decide by the line
        return int(version("transformers").split(".")[0]) >= 5
    return marker in src
