"""Whisper (WhisperModel, WhisperForConditionalGeneration): a pre-norm audio encoder over
``input_features`` (log-mel frames; two convolutions halve them into ``max_source_positions`` encoder
positions) and a text decoder with cross-attention. pyvene 0.1.8 has no Whisper map; pyvene's main branch
maps the *encoder* under pyvene's plain names (``encoder.layers[%s]...``), so here the audio encoder is the
unprefixed stack, the decoder is prefixed ``decoder_`` and its cross-attention ``decoder_cross_attention_*``
(T5's and BART's rule). Encoder positions are audio frames (after the convolutions); a call passes
``input_features`` and ``decoder_input_ids``.

The layers have BART's module names on both transformers lines (``models/bart.py``); ``attention_output``
and ``mlp_output`` are the sub-layers' outputs before the residual add.
"""

from .bart import stack_components
from .spec import Family

COMPONENTS = {**stack_components("encoder", "encoder"), **stack_components("decoder", "decoder", "decoder_")}

FAMILY = Family(
    name="whisper",
    prefixes={"WhisperModel": "", "WhisperForConditionalGeneration": "model."},
    components=COMPONENTS,
    n_layers="encoder_layers",
)
