"""BLIP (BlipForQuestionAnswering, BlipForImageTextRetrieval): a ViT-style vision tower, a BERT-style text
encoder whose layers cross-attend to the image patches, and (question answering only) a BERT-style answer
decoder that cross-attends to the text encoder's output. A call passes ``input_ids`` (the question or
caption) with ``pixel_values``; question answering also ``decoder_input_ids`` (the answer so far).

Names follow pyvene 0.1.8's BLIP maps: the text encoder is the unprefixed stack, at the module paths pyvene
names (``mlp_activation`` is ``intermediate.dense``'s output, before the activation; ``attention_output`` and
``mlp_output`` are the sub-layers' ``output`` modules, after their residual add and LayerNorm), and the
image-text matching class adds ``itm_output`` (the matching head's two scores). pyvene's dimension table
also lists ``cross_attention_input`` / ``_output`` / ``_value_output`` (with the module paths commented out);
here ``cross_attention_*`` are the text encoder's cross-attention to the image with the vocabulary of the
other cross-attentions (``models/bart.py``): ``cross_attention_key_output`` / ``_value_output`` are the key
and value projections, over image positions (CLS + patches), ``cross_attention_attention_value_output`` the
heads' context. ``vision_*`` are the vision tower's layers (positions CLS + patches; ``vision_query_output``
and the others are thirds of the fused ``qkv`` projection); ``decoder_*`` are the answer decoder's layers
(positions the decoder's tokens; its ``decoder_cross_attention_key_output`` / ``_value_output`` lie over the
question's tokens). Vision and decoder layers are indexed by the same ``layer`` argument as the text
encoder's.

The dimensions are the tensors' widths (pyvene's table gives ``image_text_hidden_size`` and
``projection_dim``, which differ from the text width in the released checkpoints; only a trainable
intervention's size notices). The module paths are the same on transformers 4 and 5.

Limit: ``BlipForQuestionAnswering.forward`` returns the vision tower's outputs and (with labels) the loss,
never the answer decoder's logits (on both transformers lines): an intervention on the text stacks shows
in components collected downstream of it, not in the returned outputs.
"""

from .spec import Component, Family

_C = Component
TEXT = "text_config."
HIDDEN, HEADS = TEXT + "hidden_size", TEXT + "num_attention_heads"
HEAD_DIM = f"{HIDDEN}/{HEADS}"


def _attention(attn, name, px):
    """The components of one BERT-style attention module ``attn`` (``self.query/key/value``, ``output.dense``):
    ``{name}_input`` / ``{name}_output``, and the projections and heads' context prefixed ``px``."""
    q, k, v = (f"{attn}.self.{p}" for p in ("query", "key", "value"))
    o = f"{attn}.output"
    out = {
        f"{name}_input": _C(attn, "input", dim=HIDDEN),
        f"{name}_output": _C(o, "output", dim=HIDDEN),
        f"{px}attention_value_output": _C(f"{o}.dense", "input", dim=HIDDEN),
        f"{px}head_attention_value_output": _C(f"{o}.dense", "input", heads=HEADS, dim=HEAD_DIM),
    }
    for p, path in (("query", q), ("key", k), ("value", v)):
        out[f"{px}{p}_output"] = _C(path, "output", dim=HIDDEN)
        out[f"{px}head_{p}_output"] = _C(path, "output", heads=HEADS, dim=HEAD_DIM)
    return out


def text_stack(lay, prefix=""):
    """A BLIP text stack's layers at ``lay`` (a path with ``{layer}``), named with ``prefix``: block, MLP,
    self-attention and cross-attention, at pyvene's module paths."""
    out = {
        **_attention(f"{lay}.attention", "attention", ""),
        **_attention(f"{lay}.crossattention", "cross_attention", "cross_attention_"),
    }
    out.update(
        {
            "block_input": _C(lay, "input", dim=HIDDEN),
            "block_output": _C(lay, "output", dim=HIDDEN),
            "mlp_input": _C(f"{lay}.intermediate", "input", dim=HIDDEN),
            "mlp_activation": _C(f"{lay}.intermediate.dense", "output", dim=TEXT + "intermediate_size"),
            "mlp_output": _C(f"{lay}.output", "output", dim=HIDDEN),
        }
    )
    return {prefix + name: c for name, c in out.items()}


def vision_stack(lay="vision_model.encoder.layers.{layer}"):
    """The vision tower's pre-norm layers (``self_attn`` with a fused ``qkv`` and ``projection``, ``mlp``)."""
    vh, vheads = "vision_config.hidden_size", "vision_config.num_attention_heads"
    vhd = f"{vh}/{vheads}"
    att = f"{lay}.self_attn"
    out = {
        "vision_block_input": _C(lay, "input", dim=vh),
        "vision_block_output": _C(lay, "output", dim=vh),
        "vision_mlp_input": _C(f"{lay}.mlp", "input", dim=vh),
        "vision_mlp_activation": _C(f"{lay}.mlp.activation_fn", "output", dim="vision_config.intermediate_size"),
        "vision_mlp_output": _C(f"{lay}.mlp", "output", dim=vh),
        "vision_attention_input": _C(att, "input", dim=vh),
        "vision_attention_output": _C(att, "output", dim=vh),
        "vision_attention_value_output": _C(f"{att}.projection", "input", dim=vh),
        "vision_head_attention_value_output": _C(f"{att}.projection", "input", heads=vheads, dim=vhd),
    }
    for slot, p in enumerate(("query", "key", "value")):
        out[f"vision_{p}_output"] = _C(f"{att}.qkv", "output", split3=slot, dim=vh)
        out[f"vision_head_{p}_output"] = _C(f"{att}.qkv", "output", split3=slot, heads=vheads, dim=vhd)
    return out


QA_COMPONENTS = {
    **text_stack("text_encoder.encoder.layer.{layer}"),
    **vision_stack(),
    **text_stack("text_decoder.bert.encoder.layer.{layer}", "decoder_"),
}
ITM_COMPONENTS = {
    **text_stack("text_encoder.encoder.layer.{layer}"),
    **vision_stack(),
    "itm_output": _C("itm_head", "output", dim="2"),
}

FAMILIES = [
    Family(
        name="blip",
        prefixes={"BlipForQuestionAnswering": ""},
        components=QA_COMPONENTS,
        n_layers=TEXT + "num_hidden_layers",
        causal=False,
    ),
    Family(
        name="blip_itm",
        prefixes={"BlipForImageTextRetrieval": ""},
        components=ITM_COMPONENTS,
        n_layers=TEXT + "num_hidden_layers",
        causal=False,
    ),
]
