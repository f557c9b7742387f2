"""T5 (T5Model, T5ForConditionalGeneration, T5EncoderModel): an encoder-decoder. pyvene 0.1.8 has no
built-in T5 map (its tutorial adds one by mutating ``type_to_module_mapping``: ``mlp_output`` at
``encoder.block[L].layer[1]``); fxvene's map keeps that name and adds the rest as data. Encoder
components carry pyvene's names; decoder components are prefixed ``decoder_`` (their positions are
decoder positions). A call passes ``decoder_input_ids`` with the inputs (T5EncoderModel takes none)."""

from .spec import Component, Family

_C = Component
COMPONENTS = {
    "block_input": _C("encoder.block.{layer}.layer.0", "input", dim="d_model"),
    # a block also returns its position biases: its hidden state is its last sub-layer's output
    "block_output": _C("encoder.block.{layer}.layer.1", "output", dim="d_model"),
    "attention_input": _C("encoder.block.{layer}.layer.0", "input", dim="d_model"),
    # attention modules also return their position bias: the attention output is the ``o`` projection's
    "attention_output": _C("encoder.block.{layer}.layer.0.SelfAttention.o", "output", dim="d_model"),
    "attention_value_output": _C("encoder.block.{layer}.layer.0.SelfAttention.o", "input", dim="d_model"),
    "head_attention_value_output": _C(
        "encoder.block.{layer}.layer.0.SelfAttention.o", "input", heads="num_heads", dim="d_kv"
    ),
    "query_output": _C("encoder.block.{layer}.layer.0.SelfAttention.q", "output", dim="d_model"),
    "key_output": _C("encoder.block.{layer}.layer.0.SelfAttention.k", "output", dim="d_model"),
    "value_output": _C("encoder.block.{layer}.layer.0.SelfAttention.v", "output", dim="d_model"),
    "mlp_input": _C("encoder.block.{layer}.layer.1.DenseReluDense", "input", dim="d_model"),
    "mlp_output": _C("encoder.block.{layer}.layer.1", "output", dim="d_model"),  # as pyvene's T5 example
    "mlp_activation": _C("encoder.block.{layer}.layer.1.DenseReluDense.act", "output", dim="d_ff"),
    "decoder_block_input": _C("decoder.block.{layer}.layer.0", "input", dim="d_model"),
    "decoder_block_output": _C("decoder.block.{layer}.layer.2", "output", dim="d_model"),
    "decoder_attention_output": _C("decoder.block.{layer}.layer.0.SelfAttention.o", "output", dim="d_model"),
    "decoder_cross_attention_output": _C("decoder.block.{layer}.layer.1.EncDecAttention.o", "output", dim="d_model"),
    "decoder_mlp_output": _C("decoder.block.{layer}.layer.2", "output", dim="d_model"),
    "decoder_mlp_activation": _C("decoder.block.{layer}.layer.2.DenseReluDense.act", "output", dim="d_ff"),
}

FAMILY = Family(
    name="t5",
    prefixes={"T5Model": "", "T5ForConditionalGeneration": "", "T5EncoderModel": ""},
    components=COMPONENTS,
    n_layers="num_layers",
    causal=False,  # bidirectional self-attention (the T5 encoder, ViT)
)
