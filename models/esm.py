"""ESM protein language models (EsmModel, EsmForMaskedLM, EsmForSequenceClassification): pyvene 0.1.8's
ESM map, the same module paths on transformers 4 and 5.

ESM is a pre-norm bidirectional encoder whose attention and MLP modules add their own residual: pyvene's
``attention_output`` is the ``attention`` module's output and ``mlp_output`` the ``output`` module's, so
both already include the residual stream (``mlp_output`` equals ``block_output``). ``mlp_activation`` is
the ``intermediate`` module's output (its activation is a function call inside it). The dimensions are the
tensors' widths; pyvene's ESM dimension table gives some of them as head counts (``attention_input``:
``num_attention_heads``), which only a trainable intervention's size would notice."""

from .spec import Component, Family

_C = Component
HEAD_DIM = "hidden_size/num_attention_heads"
HEADS = "num_attention_heads"
LAYER = "encoder.layer.{layer}"
ATTN = LAYER + ".attention"


def components(layer=LAYER, attn=ATTN):
    """pyvene's ESM names at ``layer`` (a path with ``{layer}``) and its ``attn`` module."""
    q, k, v = (f"{attn}.self.{p}" for p in ("query", "key", "value"))
    return {
        "block_input": _C(layer, "input", dim="hidden_size"),
        "block_output": _C(layer, "output", dim="hidden_size"),
        "mlp_input": _C(f"{layer}.intermediate", "input", dim="hidden_size"),
        "mlp_activation": _C(f"{layer}.intermediate", "output", dim="intermediate_size"),
        "mlp_output": _C(f"{layer}.output", "output", dim="hidden_size"),
        "attention_value_output": _C(f"{attn}.output", "input", dim="hidden_size"),
        "head_attention_value_output": _C(f"{attn}.output", "input", heads=HEADS, dim=HEAD_DIM),
        "attention_input": _C(attn, "input", dim="hidden_size"),
        "attention_output": _C(attn, "output", dim="hidden_size"),
        "query_output": _C(q, "output", dim="hidden_size"),
        "key_output": _C(k, "output", dim="hidden_size"),
        "value_output": _C(v, "output", dim="hidden_size"),
        "head_query_output": _C(q, "output", heads=HEADS, dim=HEAD_DIM),
        "head_key_output": _C(k, "output", heads=HEADS, dim=HEAD_DIM),
        "head_value_output": _C(v, "output", heads=HEADS, dim=HEAD_DIM),
    }


FAMILY = Family(
    name="esm",
    prefixes={"EsmModel": "", "EsmForMaskedLM": "esm.", "EsmForSequenceClassification": "esm."},
    components=components(),
    n_layers="num_hidden_layers",
    causal=False,
)
