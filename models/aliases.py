"""Other libraries' names for fxvene's sites: one table every component spelling consults.

TransformerLens names its hook points ``blocks.{layer}.{hook}``; SAELens records the hook an SAE was
trained on in that spelling (``hook_name``). ``TRANSFORMER_LENS`` maps the ``{hook}`` part to the
pyvene component at the same place of a Hugging Face model where the block is GPT-2's (one norm before
each sublayer, an ungated MLP). ``FAMILY_PLACES`` says, per family, where a hook means another place:
gated MLPs (TransformerLens's ``mlp.hook_post`` is ``act(gate(x)) * up(x)``, the input of
``down_proj``) and the post-sublayer norms of Gemma 2 / Gemma 3 / OLMo 2 (TransformerLens reads
``hook_attn_out`` / ``hook_mlp_out`` after them: what the sublayer adds to the residual stream).

A name is checked when a config is built (``check_alias``: the layer it names, an unknown hook is an
error listing the known ones) and placed once the model, and so its family, is known (``place``).
The tables are data: a new spelling or family is a new row.

May import: the standard library only.
"""

from __future__ import annotations

import re

# TransformerLens hook (the part after ``blocks.{layer}.``) -> pyvene component (GPT-2's block)
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
    "mlp.hook_post": "mlp_activation",
}

# hooks that name a place without a component of its own: hook -> what to use instead (families
# without a FAMILY_PLACES row for it)
UNPLACED = {
    "hook_resid_mid": "the input of the block's second norm, e.g. 'transformer.h[%s].ln_2.input' "
    "(GPT-2) or 'model.layers[%s].post_attention_layernorm.input' (Llama)",
}

# where a family's place differs: hook -> a component of the family, a module site under the family's
# base model ('<module path>.input' / '.output', ``{layer}`` filled in), or None (no such place)
_GATED = {
    "mlp.hook_post": "layers[{layer}].mlp.down_proj.input",  # act(gate(x)) * up(x)
    "hook_resid_mid": "layers[{layer}].post_attention_layernorm.input",
}
_SANDWICH = {  # a norm before and after each sublayer: TransformerLens reads after the post-norms
    "mlp.hook_post": "layers[{layer}].mlp.down_proj.input",
    "hook_attn_out": "layers[{layer}].post_attention_layernorm.output",
    "hook_mlp_out": "layers[{layer}].post_feedforward_layernorm.output",
    "hook_resid_mid": "layers[{layer}].pre_feedforward_layernorm.input",
}
_MOE = {"mlp.hook_post": None, "hook_resid_mid": _GATED["hook_resid_mid"]}  # experts, no single activation
FAMILY_PLACES = {
    "gpt2": {"hook_resid_mid": "h[{layer}].ln_2.input"},
    "gpt_neo": {"hook_resid_mid": "h[{layer}].ln_2.input"},
    "llama": _GATED,  # Llama, Mistral, Qwen2
    "gemma": _GATED,
    "granite": _GATED,
    "olmo": _GATED,
    "qwen3": _GATED,
    "phi3": _GATED,  # gate_up_proj: [gate | up], down_proj reads act(gate) * up
    "gemma2": _SANDWICH,
    "gemma3_text": _SANDWICH,
    "olmo2": {**_SANDWICH, "hook_resid_mid": "mlp_input"},  # no norm before the MLP
    "mixtral": _MOE,
    "qwen2_moe": _MOE,
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
    return [f"blocks.L.{hook}" for hook in (*TRANSFORMER_LENS, *UNPLACED)]


def hook_of(name: str) -> str | None:
    """The hook part of ``blocks.{layer}.{hook}`` (None for another spelling)."""
    m = _NAME.match(name.strip()) if isinstance(name, str) else None
    return m.group(2) if m else None


def check_alias(name: str) -> tuple[str, int]:
    """``(hook, layer)`` of a TransformerLens hook name such as ``blocks.8.hook_resid_pre``, before the
    model is known. A malformed name or an unknown hook is a ``ValueError`` that lists the known ones."""
    m = _NAME.match(name.strip()) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"component {name!r}: a TransformerLens hook name is 'blocks.<layer>.<hook>'")
    layer, hook = int(m.group(1)), m.group(2)
    if hook not in TRANSFORMER_LENS and hook not in UNPLACED:
        raise ValueError(
            f"component {name!r}: unknown hook {hook!r}; known: {', '.join((*TRANSFORMER_LENS, *UNPLACED))}"
        )
    return hook, layer


def place(name: str, family: str | None = None, prefix: str = "") -> tuple[str, int]:
    """``(site, layer)`` that a TransformerLens hook name means in a model of ``family`` (a family
    name of ``fxvene.models``; None or a family without a row: ``TRANSFORMER_LENS``) whose base model is reached by ``prefix``: a
    component of the family, or a module path ending in ``.input`` / ``.output``.

    A hook without a place in that family is a ``ValueError`` that says what to use instead.
    """
    hook, layer = check_alias(name)
    rows = FAMILY_PLACES.get(family, {})
    if hook in rows:
        site = rows[hook]
        if site is None:
            raise ValueError(
                f"component {name!r}: {hook!r} has no single place in a {family} model (its MLP is experts)"
            )
        if site.endswith((".input", ".output")):
            return prefix + site.format(layer=layer), layer
        return site, layer
    if hook in UNPLACED:
        where = f"a {family} model" if family else "a model without a family"
        raise ValueError(
            f"component {name!r}: no known place in {where}; use " + UNPLACED[hook].replace("%s", str(layer))
        )
    return TRANSFORMER_LENS[hook], layer
