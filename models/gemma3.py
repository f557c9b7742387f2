"""Gemma 3, text only (Gemma3TextModel, Gemma3ForCausalLM, Gemma3TextForSequenceClassification; transformers 5):
the Llama layout, like Gemma 2, plus q/k norms applied per head after ``q_proj``/``k_proj``
(``query_output``/``key_output`` are the projections' outputs, before the norms). The image-text
Gemma3ForConditionalGeneration has its own map: ``models/gemma3_vl.py``.
"""

from .llama import layout, prefixes
from .spec import Family

FAMILY = Family(
    name="gemma3_text",
    prefixes=prefixes("Gemma3", base="Gemma3TextModel", seq_cls="Gemma3TextForSequenceClassification"),
    components=layout(),
    n_layers="num_hidden_layers",
)
