"""Gemma 3's image-text class (Gemma3ForConditionalGeneration; transformers 5 only): a SigLIP vision tower whose
patch features, average-pooled to ``mm_tokens_per_image`` tokens and projected, replace the image placeholder
tokens of a Gemma 3 language model's input. Its module tree is LLaVA's on transformers 5
(``model.language_model.layers``, ``model.vision_tower.encoder.layers`` with CLIP's module names), so the
map is ``models/llava.py``'s: the language stack unprefixed (the Llama layout, as the text-only
``models/gemma3.py``), ``vision_*`` the vision tower's layers (positions: the patches, row by row; SigLIP has
no CLS). ``pv.image_token_positions`` gives the image tokens per row.
"""

from .llava import TEXT, layout
from .spec import Family

FAMILY = Family(
    name="gemma3",
    prefixes={"Gemma3ForConditionalGeneration": "model."},
    components=layout(True),
    n_layers=TEXT + "num_hidden_layers",
)
