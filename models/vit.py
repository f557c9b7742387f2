"""ViT (ViTModel, ViTForImageClassification, ViTForMaskedImageModeling): a pre-norm encoder over the CLS
token and the image patches, traced on ``pixel_values``. Positions are the sequence CLS + patches (row by
row), as HF lays them out.

pyvene 0.1.8 has no ViT map; the names are pyvene's vocabulary, unprefixed (the model has one stack).
``attention_output`` and ``mlp_output`` are the sublayers' outputs before the residual add (the layer's
dropout is off in eval mode). The module paths follow the installed transformers: transformers 4 nests
``encoder.layer.{i}.attention.attention.query`` and the MLP as ``intermediate`` (fc + activation) and
``output.dense``; transformers 5 names ``layers.{i}.attention.q_proj`` and ``mlp.fc1 / activation_fn / fc2``.
"""

from .spec import Component, Family, transformers_source_has

_C = Component
HEAD_DIM = "hidden_size/num_attention_heads"


def _new_layout():
    """True where the installed transformers' ViT has ``layers`` and ``mlp`` (transformers 5); read from
    the source file without importing transformers."""
    return transformers_source_has("models/vit/modeling_vit.py", "class ViTMLP")


def layout(new):
    if new:
        lay, attn = "layers.{layer}", "layers.{layer}.attention"
        q, k, v, o = (f"{attn}.{p}_proj" for p in "qkvo")
        mlp_in, act, mlp_out = (f"{lay}.mlp", "input"), f"{lay}.mlp.activation_fn", (f"{lay}.mlp", "output")
    else:
        lay, attn = "encoder.layer.{layer}", "encoder.layer.{layer}.attention"
        q, k, v = (f"{attn}.attention.{p}" for p in ("query", "key", "value"))
        o = f"{attn}.output.dense"
        mlp_in, act = (f"{lay}.intermediate", "input"), f"{lay}.intermediate.intermediate_act_fn"
        mlp_out = (f"{lay}.output.dense", "output")
    heads = "num_attention_heads"
    return {
        "block_input": _C(lay, "input", dim="hidden_size"),
        "block_output": _C(lay, "output", dim="hidden_size"),
        "mlp_input": _C(mlp_in[0], mlp_in[1], dim="hidden_size"),
        "mlp_activation": _C(act, "output", dim="intermediate_size"),
        "mlp_output": _C(mlp_out[0], mlp_out[1], dim="hidden_size"),
        "attention_input": _C(attn, "input", dim="hidden_size"),
        "attention_output": _C(attn, "output", dim="hidden_size"),
        "attention_value_output": _C(o, "input", dim="hidden_size"),
        "head_attention_value_output": _C(o, "input", heads=heads, dim=HEAD_DIM),
        "query_output": _C(q, "output", dim="hidden_size"),
        "key_output": _C(k, "output", dim="hidden_size"),
        "value_output": _C(v, "output", dim="hidden_size"),
        "head_query_output": _C(q, "output", heads=heads, dim=HEAD_DIM),
        "head_key_output": _C(k, "output", heads=heads, dim=HEAD_DIM),
        "head_value_output": _C(v, "output", heads=heads, dim=HEAD_DIM),
    }


FAMILY = Family(
    name="vit",
    prefixes={"ViTModel": "", "ViTForImageClassification": "vit.", "ViTForMaskedImageModeling": "vit."},
    components=layout(_new_layout()),
    n_layers="num_hidden_layers",
    causal=False,  # bidirectional self-attention (the T5 encoder, ViT)
)
