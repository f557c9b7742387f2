"""BERT and RoBERTa (the base model, masked LM and sequence classifier): post-norm bidirectional encoders
with one layout, the same module paths on transformers 4 and 5.

pyvene 0.1.8 has no map for them; the names are pyvene's vocabulary, unprefixed (one stack). Each
sublayer adds its residual and normalises inside its ``output`` module (``LayerNorm(dense(x) + residual)``),
so ``attention_output`` and ``mlp_output`` are the sublayers' ``output.dense`` outputs: before the residual
add and the norm (the dropout between is off in eval mode). ``attention_value_output`` is the heads'
concatenated context, the input of ``attention.output.dense``."""

from .spec import Component, Family

_C = Component
HEAD_DIM = "hidden_size/num_attention_heads"
HEADS = "num_attention_heads"


def components():
    lay, attn = "encoder.layer.{layer}", "encoder.layer.{layer}.attention"
    q, k, v = (f"{attn}.self.{p}" for p in ("query", "key", "value"))
    o = f"{attn}.output.dense"
    return {
        "block_input": _C(lay, "input", dim="hidden_size"),
        "block_output": _C(lay, "output", dim="hidden_size"),
        "mlp_input": _C(f"{lay}.intermediate", "input", dim="hidden_size"),
        "mlp_activation": _C(f"{lay}.intermediate.intermediate_act_fn", "output", dim="intermediate_size"),
        "mlp_output": _C(f"{lay}.output.dense", "output", dim="hidden_size"),
        "attention_input": _C(attn, "input", dim="hidden_size"),
        "attention_output": _C(o, "output", dim="hidden_size"),
        "attention_value_output": _C(o, "input", dim="hidden_size"),
        "head_attention_value_output": _C(o, "input", heads=HEADS, dim=HEAD_DIM),
        "query_output": _C(q, "output", dim="hidden_size"),
        "key_output": _C(k, "output", dim="hidden_size"),
        "value_output": _C(v, "output", dim="hidden_size"),
        "head_query_output": _C(q, "output", heads=HEADS, dim=HEAD_DIM),
        "head_key_output": _C(k, "output", heads=HEADS, dim=HEAD_DIM),
        "head_value_output": _C(v, "output", heads=HEADS, dim=HEAD_DIM),
    }


def _family(name, cls, prefix):
    return Family(
        name=name,
        prefixes={f"{cls}Model": "", f"{cls}ForMaskedLM": prefix, f"{cls}ForSequenceClassification": prefix},
        components=components(),
        n_layers="num_hidden_layers",
        causal=False,
    )


FAMILIES = [_family("bert", "Bert", "bert."), _family("roberta", "Roberta", "roberta.")]
