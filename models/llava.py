"""LLaVA (LlavaForConditionalGeneration) and LLaVA-NeXT (LlavaNextForConditionalGeneration): a CLIP-style
vision tower whose patch features, through a projector, replace the image placeholder tokens of a Llama-layout
language model's input. Positions are the language model's: the text with the image tokens spliced in.

Names follow pyvene 0.1.8's LLaVA map: unprefixed names are the language stack (pyvene's map, with the
widths of ``models/llama.py``: GQA-aware k/v); ``vision_`` names are the vision tower's encoder layers
(positions CLS + patches, row by row). Vision layers are indexed by the same ``layer`` argument; the tiny
configs and the released checkpoints differ in depth between the two stacks, so a vision layer must exist
in the vision tower too.

Module paths follow the installed transformers: transformers 4 nests ``language_model.model.layers`` and
``vision_tower.vision_model.encoder.layers``; transformers 5 has ``model.language_model.layers`` and
``model.vision_tower.encoder.layers``.
"""

import contextlib

from .llama import layout as llama_layout
from .spec import Component, Family, transformers_source_has

_C = Component
TEXT = "text_config."
VISION = "vision_config."


def _new_layout():
    """True where the installed transformers' LLaVA has a ``LlavaModel`` (transformers 5), read from the
    source file without importing transformers."""
    return transformers_source_has("models/llava/modeling_llava.py", "class LlavaModel(")


def _text(new):
    """The Llama layout under the language model, its dimension expressions read from ``text_config``."""
    base = "language_model." if new else "language_model.model."
    out = {}
    for name, c in llama_layout().items():
        dim = None if c.dim is None else "|".join(TEXT + alt if not alt.isdigit() else alt for alt in _alts(c.dim))
        heads = None if c.heads is None else TEXT + c.heads
        out[name] = Component(base + c.module, c.port, c.split3, heads, dim, c.pattern, c.needs, c.fused)
    return out


def _alts(expr):
    """The alternatives of a dimension expression with ``text_config.`` put before each attribute."""
    out = []
    for alt in expr.split("|"):
        for op in "*/":
            if op in alt:
                a, b = alt.split(op)
                alt = f"{a}{op}{TEXT}{b}"
                break
        out.append(alt)
    return out


def _vision(new):
    """The CLIP encoder layers of the vision tower (pre-norm: ``layer_norm1``, ``self_attn``, ``layer_norm2``,
    ``mlp`` with ``fc1`` / ``activation_fn`` / ``fc2``)."""
    lay = "vision_tower.encoder.layers.{layer}" if new else "vision_tower.vision_model.encoder.layers.{layer}"
    att = f"{lay}.self_attn"
    hidden, heads = VISION + "hidden_size", VISION + "num_attention_heads"
    head_dim = f"{hidden}/{heads}"
    return {
        "vision_block_input": _C(lay, "input", dim=hidden),
        "vision_block_output": _C(lay, "output", dim=hidden),
        "vision_mlp_input": _C(f"{lay}.mlp", "input", dim=hidden),
        "vision_mlp_activation": _C(f"{lay}.mlp.activation_fn", "output", dim=VISION + "intermediate_size"),
        "vision_mlp_output": _C(f"{lay}.mlp", "output", dim=hidden),
        "vision_attention_input": _C(att, "input", dim=hidden),
        "vision_attention_output": _C(att, "output", dim=hidden),
        "vision_attention_value_output": _C(f"{att}.out_proj", "input", dim=hidden),
        "vision_head_attention_value_output": _C(f"{att}.out_proj", "input", heads=heads, dim=head_dim),
        "vision_query_output": _C(f"{att}.q_proj", "output", dim=hidden),
        "vision_key_output": _C(f"{att}.k_proj", "output", dim=hidden),
        "vision_value_output": _C(f"{att}.v_proj", "output", dim=hidden),
        "vision_head_query_output": _C(f"{att}.q_proj", "output", heads=heads, dim=head_dim),
        "vision_head_key_output": _C(f"{att}.k_proj", "output", heads=heads, dim=head_dim),
        "vision_head_value_output": _C(f"{att}.v_proj", "output", heads=heads, dim=head_dim),
    }


def layout(new):
    return {**_text(new), **_vision(new)}


def image_token_count(config):
    """How many placeholder tokens one image fills in LLaVA's text: one per patch of the vision tower
    (plus CLS where ``vision_feature_select_strategy`` is ``"full"``; Gemma 3: ``mm_tokens_per_image``);
    None where the count depends on the image (LLaVA-NeXT's tiles)."""
    if getattr(config, "model_type", None) == "gemma3":  # Gemma 3 pools each image to a fixed token count
        return int(config.mm_tokens_per_image)
    if getattr(config, "model_type", None) != "llava":
        return None
    vc = config.vision_config
    side = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
    patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
    n = (int(side) // int(patch)) ** 2
    return n + 1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else n


_NEW = _new_layout()
_PREFIX = "model." if _NEW else ""

FAMILY = Family(
    name="llava",
    prefixes={"LlavaForConditionalGeneration": _PREFIX, "LlavaNextForConditionalGeneration": _PREFIX},
    components=layout(_NEW),
    n_layers=TEXT + "num_hidden_layers",
)


@contextlib.contextmanager
def batch_free_features(model):
    """While ``model`` is exported: its projector's output ``(images, patches, hidden)`` seen as one row
    ``(1, images x patches, hidden)``. Transformers 5's LLaVA turns the features into a list of images
    (``list(features)``) and concatenates them back, which would fix the traced batch size; one row
    concatenates to the same ``(images x patches, hidden)`` for any batch."""
    inner = getattr(model, "model", None)
    projector = getattr(inner, "multi_modal_projector", None)
    if getattr(getattr(model, "config", None), "model_type", None) != "llava" or projector is None:
        yield
        return
    handle = projector.register_forward_hook(lambda m, i, out: out.reshape(1, -1, out.shape[-1]))
    try:
        yield
    finally:
        handle.remove()
