"""Other libraries' names for fxvene's sites: one table every component spelling consults.

TransformerLens names its hook points ``blocks.{layer}.{hook}``; SAELens records the hook an SAE was
trained on in that spelling (``hook_name``). ``TRANSFORMER_LENS`` maps the ``{hook}`` part to the
pyvene component at the same place of a Hugging Face model; ``split_alias`` turns a full name
into ``(component, layer)``. The table is data: a new spelling is a new row.

Where a hook has no component of its own (``hook_resid_mid``: the residual stream between attention
and MLP, inside the block), the row says so and resolving it is an error that suggests a module path.

May import: the standard library only.
"""

from __future__ import annotations

import re

# TransformerLens hook (the part after ``blocks.{layer}.``) -> pyvene component
TRANSFORMER_LENS = {
    "hook_resid_pre": "block_input",
    "hook_resid_post": "block_output",
    "hook_attn_out": "attention_output",
    "hook_mlp_out": "mlp_output",
    "attn.hook_z": "attention_value_output",  # heads flattened, as SAELens reshapes hook_z
    "attn.hook_q": "query_output",
    "attn.hook_k": "key_output",
    "attn.hook_v": "value_output",
    "attn.hook_pattern": "attention_weight",
    "mlp.hook_post": "mlp_activation",  # equal for ungated MLPs (GPT-2); gated ones differ, see the SAE guide
}

# hooks that name a place without a site of its own: hook -> what to use instead
UNPLACED = {
    "hook_resid_mid": "the input of the block's second norm, e.g. 'transformer.h[%s].ln_2.input' "
    "(GPT-2) or 'model.layers[%s].post_attention_layernorm.input' (Llama)",
}

# hooks that write into the residual stream (TransformerLens centres them when it centres writing weights)
RESIDUAL_WRITES = frozenset({"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"})

_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


def is_alias(component) -> bool:
    """Whether ``component`` is spelled as a TransformerLens hook name (``blocks.{layer}.hook_...``)
    rather than a module path (which ends in ``.output`` / ``.input``)."""
    return (
        isinstance(component, str) and component.startswith("blocks.") and not component.endswith((".output", ".input"))
    )


def known_aliases() -> list[str]:
    """Every hook this table resolves, as ``blocks.L.{hook}``."""
    return [f"blocks.L.{hook}" for hook in TRANSFORMER_LENS]


def hook_of(name: str) -> str | None:
    """The hook part of ``blocks.{layer}.{hook}`` (None for another spelling)."""
    m = _NAME.match(name.strip()) if isinstance(name, str) else None
    return m.group(2) if m else None


def split_alias(name: str) -> tuple[str, int]:
    """``(component, layer)`` of a TransformerLens hook name such as ``blocks.8.hook_resid_pre``.

    An unknown hook is a ``ValueError`` that lists the known ones.
    """
    m = _NAME.match(name.strip()) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"component {name!r}: a TransformerLens hook name is 'blocks.<layer>.<hook>'")
    layer, hook = int(m.group(1)), m.group(2)
    if hook in UNPLACED:
        raise ValueError(f"component {name!r} has no fxvene component; use " + UNPLACED[hook].replace("%s", str(layer)))
    if hook not in TRANSFORMER_LENS:
        raise ValueError(f"component {name!r}: unknown hook {hook!r}; known: {', '.join(TRANSFORMER_LENS)}")
    return TRANSFORMER_LENS[hook], layer
