"""BART (BartModel, BartForConditionalGeneration): a post-norm encoder-decoder over token ids. pyvene 0.1.8
has no BART map; the names follow T5's rule (models/t5.py): the encoder carries pyvene's vocabulary
unprefixed, the decoder the same names prefixed ``decoder_`` (decoder positions), and the decoder's
cross-attention ``decoder_cross_attention_*``. A call passes ``decoder_input_ids`` with the inputs.

Both transformers lines name the modules alike: ``{encoder,decoder}.layers.{i}`` with ``self_attn``
(``q_proj``/``k_proj``/``v_proj``/``out_proj``), ``fc1``/``activation_fn``/``fc2``, and in the decoder
``encoder_attn``. ``attention_output`` and ``mlp_output`` are the sub-layers' outputs before the residual
add (dropout is off in eval mode). The cross-attention's keys and values (``decoder_cross_attention_key_output``
/ ``..._value_output``) lie over *encoder* positions; during cached generation they are computed at the
first step only and reused (see docs/models.md).

``stack_components`` is shared with Whisper (models/whisper.py), whose layers have the same module names.
"""

from .spec import Component, Family

_C = Component


def stack_components(stack, side, prefix=""):
    """The components of one stack (``stack`` = "encoder" or "decoder": its module path, ``side`` the config
    prefix of its sizes), named with ``prefix``; the decoder also gets its cross-attention."""
    lay = f"{stack}.layers.{{layer}}"
    heads, ffn, hd = f"{side}_attention_heads", f"{side}_ffn_dim", f"d_model/{side}_attention_heads"
    out = {}

    def attention(name, mod):
        q, k, v, o = (f"{lay}.{mod}.{p}_proj" for p in ("q", "k", "v", "out"))
        out[f"{name}_input"] = _C(f"{lay}.{mod}", "input", dim="d_model")
        out[f"{name}_output"] = _C(f"{lay}.{mod}", "output", dim="d_model")
        return q, k, v, o

    q, k, v, o = attention(f"{prefix}attention", "self_attn")
    out.update(
        {
            f"{prefix}block_input": _C(lay, "input", dim="d_model"),
            f"{prefix}block_output": _C(lay, "output", dim="d_model"),
            f"{prefix}mlp_input": _C(f"{lay}.fc1", "input", dim="d_model"),
            f"{prefix}mlp_activation": _C(f"{lay}.activation_fn", "output", dim=ffn),
            f"{prefix}mlp_output": _C(f"{lay}.fc2", "output", dim="d_model"),
            f"{prefix}attention_value_output": _C(o, "input", dim="d_model"),
            f"{prefix}head_attention_value_output": _C(o, "input", heads=heads, dim=hd),
            f"{prefix}query_output": _C(q, "output", dim="d_model"),
            f"{prefix}key_output": _C(k, "output", dim="d_model"),
            f"{prefix}value_output": _C(v, "output", dim="d_model"),
            f"{prefix}head_query_output": _C(q, "output", heads=heads, dim=hd),
            f"{prefix}head_key_output": _C(k, "output", heads=heads, dim=hd),
            f"{prefix}head_value_output": _C(v, "output", heads=heads, dim=hd),
        }
    )
    if stack == "decoder":
        x = f"{prefix}cross_attention"
        q, k, v, o = attention(x, "encoder_attn")
        out.update(
            {
                f"{x}_value_output": _C(v, "output", dim="d_model"),
                f"{x}_key_output": _C(k, "output", dim="d_model"),
                f"{x}_query_output": _C(q, "output", dim="d_model"),
                f"{x}_attention_value_output": _C(o, "input", dim="d_model"),
                f"{x}_head_attention_value_output": _C(o, "input", heads=heads, dim=hd),
                f"{x}_head_key_output": _C(k, "output", heads=heads, dim=hd),
                f"{x}_head_value_output": _C(v, "output", heads=heads, dim=hd),
            }
        )
    return out


COMPONENTS = {**stack_components("encoder", "encoder"), **stack_components("decoder", "decoder", "decoder_")}

FAMILY = Family(
    name="bart",
    prefixes={"BartModel": "", "BartForConditionalGeneration": "model."},
    components=COMPONENTS,
    n_layers="encoder_layers",
)
